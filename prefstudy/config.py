"""Training configuration: a dataclass, loadable from TOML, checked before any model is loaded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PrefstudyError
from .models import DTYPES, PRESETS
from .objectives import get_objective, resolve_params


class ConfigError(PrefstudyError):
    """A configuration that cannot run; the message names the field and what is allowed."""


@dataclass
class TrainConfig:
    # --- what is trained
    objective: str = "naive"
    params: dict[str, Any] = field(default_factory=dict)  # objective parameters (registry defaults)
    # WPO (Zhou et al. 2024, Eq. 2; TRL's name): each pair's loss × w(y_c)·w(y_r), the policy's
    # per-token probability of the response relative to Σ_v p_v²; not with batch-level objectives
    use_weighting: bool = False
    model: str = "tiny"  # preset, hub id or local path
    seed: int = 0  # data order; the tiny model's weights use model_seed
    model_seed: int = 0  # only for the random `tiny` preset: the same start for every run

    # --- data (relative paths are tried from the working directory, then the repository)
    data: str = "data/pairs"
    heldout: str | None = "data/heldout"  # held-out pairs, evaluated, never trained on
    neutral_text: str | None = "data/neutral"  # held-out text for perplexity
    probes: str | None = "data/probes"  # prompts for greedy generations
    lang: str | None = None  # keep only pairs whose meta.lang is this
    max_pairs: int | None = None  # a stratified sample of N training pairs (after `lang`); None = all
    n_heldout: int = 32  # held-out pairs evaluated at each evaluation
    n_neutral: int = 32  # held-out passages for perplexity
    n_probes: int = 6  # probe prompts for generations (spread over languages and kinds)
    max_length: int = 256  # prompt + response tokens per side
    max_prompt_length: int = 128

    # --- optimisation
    steps: int = 20
    batch_size: int = 4  # pairs per optimiser step, over all processes
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then constant
    max_grad_norm: float | None = 1.0  # clipping, as TRL's default; None disables
    trainable_blocks: int | None = None  # train only the top k transformer blocks; None = all
    # with trainable_blocks: run the frozen blocks once per sequence and reuse their output in
    # every step, evaluation and run of the process (prefstudy.frozen); the same numbers up to
    # summation order, most of a step's forward cost saved
    cache_frozen: bool = True
    device: str = "auto"
    dtype: str = "auto"

    # --- measurement
    eval_every: int = 0  # evaluate every N steps; 0 = at the start and the end only
    gen_max_new_tokens: int = 32
    grad_stats: bool = False  # per-pair gradient norm and cosine, gradient noise scale
    checkpoint_every: int = 10  # resumable state every N steps
    output: str = "runs"  # runs go to <output>/<run_id>
    run_id: str | None = None  # default: objective, parameters and seed
    label: str | None = None  # the name figures use; default objective[-norm]

    def resolved(self) -> TrainConfig:
        """A checked copy with the objective's parameters filled in and a run id."""
        check(self)
        cfg = dataclasses.replace(self, params=resolve_params(self.objective, self.params))
        if cfg.run_id is None:
            cfg.run_id = default_run_id(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def norm(self) -> str:
        return str(self.params.get("norm", ""))


def default_run_id(cfg: TrainConfig) -> str:
    """`<objective>[-<norm>]-<hash of everything else>-s<seed>`: readable and unique per config.

    The hash covers the fields (and objective parameters) that differ from their defaults, so a
    field or parameter added later, at its default, leaves existing runs' ids as they were."""
    defaults = TrainConfig()
    body = {k: v for k, v in cfg.to_dict().items()
            if k not in ("run_id", "output", "seed", "params") and v != getattr(defaults, k)}
    standard = resolve_params(cfg.objective)
    body["params"] = {p: v for p, v in cfg.params.items() if standard.get(p) != v}
    digest = hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:6]
    norm = f"-{cfg.params['norm']}" if "norm" in cfg.params else ""
    return f"{cfg.objective}{norm}-{digest}-s{cfg.seed}"


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


KINDS = {"int": int, "float": float, "str": str, "bool": bool, "dict[str, Any]": dict}
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
POSITIVE = ("steps", "batch_size", "lr", "max_length", "max_prompt_length", "gen_max_new_tokens",
            "checkpoint_every", "max_grad_norm", "max_pairs")  # > 0 (or None where allowed)


def _kind(annotation: str) -> tuple[type, bool]:
    """(the field's type, whether None is allowed) from its annotation string."""
    base, _, none = annotation.partition(" | ")
    return KINDS[base], none == "None"


def _check_type(name: str, value: Any) -> None:
    kind, nullable = _kind(FIELDS[name].type)
    if value is None:
        if not nullable:
            raise ConfigError(f"config field {name!r} = None: a value is required")
        return
    wanted = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
              dict: "a table of objective parameters"}[kind]
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ConfigError(f"config field {name!r} = {value!r}: must be finite")
    else:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"config field {name!r} = {value!r}: must be {wanted}"
                          f"{' or None' if nullable else ''}, got {type(value).__name__}")


def _check_range(name: str, value: Any) -> None:
    if value is None or isinstance(value, (str, bool, dict)):
        return
    if value < 0 or (value == 0 and name in POSITIVE):
        raise ConfigError(f"config field {name!r} = {value!r}: must be "
                          f"{'> 0' if name in POSITIVE else '>= 0'}")


def check(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the field for anything that cannot run. Loads nothing."""
    for name in FIELDS:
        _check_type(name, getattr(cfg, name))
        _check_range(name, getattr(cfg, name))
    try:
        get_objective(cfg.objective)
        resolve_params(cfg.objective, cfg.params)
    except ValueError as e:
        raise ConfigError(f"config field 'objective'/'params': {e}") from None
    if cfg.use_weighting and get_objective(cfg.objective).batch_level:
        raise ConfigError(f"config field 'use_weighting' = true with objective "
                          f"{cfg.objective!r}: it couples the pairs of a batch (sorts across "
                          "it), so per-pair WPO weights would not line up with per-pair losses")
    if cfg.max_prompt_length >= cfg.max_length:
        raise ConfigError(f"config field 'max_prompt_length' = {cfg.max_prompt_length} must be "
                          f"below 'max_length' = {cfg.max_length}")
    if cfg.dtype != "auto" and cfg.dtype not in DTYPES:
        raise ConfigError(f"config field 'dtype' = {cfg.dtype!r}; allowed: 'auto', "
                          f"{', '.join(map(repr, DTYPES))}")
    if not DEVICE.match(cfg.device):
        raise ConfigError(f"config field 'device' = {cfg.device!r}; allowed: 'auto', 'cpu', "
                          "'cuda', 'cuda:N' (N a GPU index) or 'mps'")
    if cfg.run_id is not None and (not cfg.run_id.strip() or cfg.run_id in (".", "..")
                                   or any(c in cfg.run_id for c in "/\\\0")):
        raise ConfigError(f"config field 'run_id' = {cfg.run_id!r}: must be a plain folder name "
                          "(no path separators)")
    if not cfg.model.strip():
        raise ConfigError(f"config field 'model' = {cfg.model!r}: name a preset "
                          f"({', '.join(PRESETS)}) or a Hugging Face id / local path")


def from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(FIELDS)}")
    return TrainConfig(**values)


def read_toml(path: Path, kind: str) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file for a missing file or bad TOML."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {kind} file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a TOML file (top-level fields, objective parameters under [params]),
    with `overrides` (None values ignored) applied on top."""
    path = Path(path)
    values = read_toml(path, "config")
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "objective" in overrides and overrides["objective"] and "params" not in overrides:
        values.pop("params", None)  # another objective's parameters would not fit
    return from_dict(values, str(path))
