"""Training configuration: a dataclass, loadable from TOML, checked before any model is loaded.

Types are checked against the dataclass's annotations (`typing.get_type_hints`); an objective may
be named as TRL's DPOConfig.loss_type names it (`resolve_objective`); a run's default id says
what it trains (`default_run_id`: `naive-sum-lr0.001-s0`); a file that cannot be read as a
configuration, however it is malformed, is one short line naming it (`read_toml`)."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import reprlib
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

from .errors import PrefstudyError
from .models import DTYPES, PRESETS
from .objectives import OBJECTIVES, get_objective, resolve_params


class ConfigError(PrefstudyError):
    """A configuration that cannot run; the message names the field and what is allowed."""


@dataclass
class TrainConfig:
    # --- what is trained
    # a registry name (`prefstudy objectives`) or a TRL loss_type (`resolve_objective`)
    objective: str = "naive"
    # objective parameters (registry defaults; TRL's where the objective is a TRL loss_type)
    params: dict[str, bool | int | float | str] = field(default_factory=dict)
    # the objective as the user wrote it, where that was not the registry name ("sigmoid",
    # "trl:ipo"); set by `resolved`, None where the two are the same
    objective_given: str | None = None
    # WPO (Zhou et al. 2024, Eq. 2; TRL's name): each pair's loss × w(y_c)·w(y_r), the policy's
    # per-token probability of the response relative to Σ_v p_v²; not with batch-level objectives
    use_weighting: bool = False
    model: str = "tiny"  # preset, hub id or local path
    seed: int = 0  # data order; the tiny model's weights use model_seed
    model_seed: int = 0  # only for the random `tiny` preset: the same start for every run

    # --- data (relative paths are tried from the working directory, then the bundled data)
    data: str = "data/pairs"
    heldout: str | None = "data/heldout"  # held-out pairs, evaluated, never trained on
    neutral_text: str | None = "data/neutral"  # held-out text for perplexity
    probes: str | None = "data/probes"  # prompts for greedy generations
    lang: str | None = None  # keep only pairs whose meta.lang is this
    # the layout of data and heldout (a name in `layouts.LAYOUTS`: alpaca_eval, arena, shp,
    # ultrafeedback, …); auto: recognised from each record's fields
    layout: str = "auto"
    # the files' column for each field the layout reads, e.g. "prompt=question,chosen=good"
    columns: str | None = None
    max_pairs: int | None = None  # a stratified sample of N training pairs (after `lang`); None = all
    # split `data` by prompt (prefstudy.split): every pair of this many prompts held out (instead
    # of `heldout`, which must then be ""), and one answer to each of neutral_prompts further
    # prompts as the neutral text (instead of `neutral_text`, then ""); no prompt on two sides
    heldout_prompts: int = 0
    neutral_prompts: int = 0
    # the neutral answer to a prompt: the one this model wrote (meta chosen_model /
    # rejected_model, e.g. AlpacaEval's reference "text_davinci_003"); None: a seeded side
    neutral_model: str | None = None
    # pairs longer than max_length (or with a prompt over max_prompt_length): "truncate" cuts
    # them; "drop" leaves them out, counted, before any sample (truncation can erase the length
    # difference a study measures)
    too_long: typing.Literal["truncate", "drop"] = "truncate"
    n_heldout: int = 32  # held-out pairs evaluated at each evaluation
    # training pairs evaluated like the held-out ones at each evaluation (evals rows with split
    # "train"): the same in every run of a study (`inputs.train_eval_pairs`); 0 = none
    n_train_eval: int = 0
    n_neutral: int = 32  # held-out passages for perplexity
    n_probes: int = 6  # probe prompts for generations (spread over languages and kinds)
    max_length: int = 256  # prompt + response tokens per side
    max_prompt_length: int = 128
    # whether <run>/pairs.parquet keeps the pair texts (prompt, chosen, rejected); their lengths
    # and edit distances are kept either way. None: `paths.text_rule`, left out only where the
    # run folder is in the repository's reports/ and the pairs are not the bundled ones
    # (third-party text is never committed); true / false force it
    keep_text: bool | None = None

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
    # trackers that also get each step's batch means (loss, accuracy, margin, gradient norm, lr)
    # through accelerate's tracking: "tensorboard", "wandb", "mlflow", "trackio", … (where
    # installed), written under <run>/trackers; the per-pair records stay the source of truth
    report_to: list[str] = field(default_factory=list)
    checkpoint_every: int = 10  # resumable state every N steps
    output: str = "runs"  # runs go to <output>/<run_id>
    run_id: str | None = None  # default: objective, lr and seed (`default_run_id`)
    label: str | None = None  # the name figures use; default objective[-norm]

    def resolved(self) -> TrainConfig:
        """A checked copy with the objective named as the registry names it (a TRL loss_type
        resolved, the spelling kept in `objective_given`), its parameters filled in, and a run
        id."""
        check(self)
        objective, params = resolve_objective(self.objective, self.params)
        given = self.objective_given or (self.objective if objective != self.objective else None)
        cfg = dataclasses.replace(self, objective=objective, params=params, objective_given=given)
        if cfg.run_id is None:
            cfg.run_id = default_run_id(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def norm(self) -> str:
        return str(self.params.get("norm", ""))


# Fields a run id leaves out: those it spells (objective, lr, seed; the norm of params), and those
# that change where a run is written, what it is called, how it runs or whether it keeps its
# pairs' texts, not what it trains.
_NOT_IN_RUN_ID = ("objective", "objective_given", "params", "lr", "seed", "run_id", "output",
                  "label", "device", "checkpoint_every", "cache_frozen", "keep_text",
                  "report_to", "layout", "columns")  # the last two: the data's fingerprint covers what they read


def default_run_id(cfg: TrainConfig) -> str:
    """`<objective>[-<norm>]-lr<lr>[-<hash>]-s<seed>`, e.g. `naive-sum-lr0.001-s0`: what was
    trained at a glance, and unique per configuration.

    The 6-character hash appears only where other settings (fields, or objective parameters other
    than norm) differ from their defaults, and covers just those, so a field or parameter added
    later, at its default, leaves existing runs' ids as they were. `cfg` is resolved (registry
    objective, complete params)."""
    defaults = TrainConfig()
    body = {k: v for k, v in cfg.to_dict().items()
            if k not in _NOT_IN_RUN_ID and v != getattr(defaults, k)}
    standard = resolve_params(cfg.objective)
    params = {p: v for p, v in cfg.params.items() if p != "norm" and standard.get(p) != v}
    if params:
        body["params"] = params
    digest = hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return run_name(cfg.objective + (f"-{cfg.params['norm']}" if "norm" in cfg.params else ""),
                    cfg.lr, cfg.seed, digest if body else None)


def run_name(label: str, lr: float | None, seed: int, digest: str | None = None) -> str:
    """The one spelling of a run id: `<label>[-lr<lr>][-<digest>]-s<seed>`."""
    lr_part = "" if lr is None else f"-lr{lr:g}"
    return f"{label}{lr_part}{'' if digest is None else '-' + digest}-s{seed}"


# --------------------------------------------------------------------------- objective names

TRL_PREFIX = "trl:"  # `trl:<loss_type>`: TRL's meaning, even where prefstudy has the name too
# TRL 1.16's DPOConfig defaults for the options `trlloss.TRL_OBJECTIVES` reads (a test
# compares them with DPOConfig's own where TRL is installed).
TRL_DEFAULTS = MappingProxyType({"beta": 0.1, "label_smoothing": 0.0,
                                 "f_divergence_type": "reverse_kl",
                                 "f_alpha_divergence_coef": 0.5, "discopop_tau": 0.05})


def resolve_objective(name: str, params: Mapping | None = None) -> tuple[str, dict[str, Any]]:
    """(registry objective, its complete checked parameters) for an objective named as prefstudy
    or as TRL's DPOConfig.loss_type names it. ValueError naming what is wrong otherwise.

    - A registry name (`prefstudy objectives`) is that objective, with prefstudy's defaults.
      Where TRL uses the same name, prefstudy's meaning wins: `ipo` sums log-ratios over tokens
      (norm="sum"), `robust` flips labels with probability 0.1.
    - A TRL loss_type that is no registry name (`sigmoid` → dpo, `sigmoid_norm` → book_dpo with
      w_chosen = w_rejected = 1), or any loss_type written `trl:<loss_type>` (`trl:ipo` → ipo
      with norm="mean", `trl:robust` → robust with label_smoothing 0), is what TRL 1.16 trains:
      the objective `trlloss.TRL_OBJECTIVES` maps it to, TRL's defaults for the options
      it reads (TRL_DEFAULTS) and the values TRL fixes. `params` may set an option by the
      objective's own parameter name or by TRL's field name (`beta` for trl:ipo's τ), never a
      value TRL fixes. TRL's `sft` is refused: it is one token mean over a whole batch, not a
      per-pair loss (the registry's `sft` is each pair's token mean).
    """
    given = dict(params or {})
    if not isinstance(name, str) or name in OBJECTIVES:
        return name, resolve_params(name, given)
    loss_type = name.removeprefix(TRL_PREFIX)
    mapping = _trl_mappings().get(loss_type)
    if mapping is None:
        per_pair = [t for t, m in _trl_mappings().items() if not m.batch_token_mean]
        close = difflib.get_close_matches(name, [*OBJECTIVES, *_trl_only(),
                                                 *(TRL_PREFIX + t for t in per_pair)], n=1)
        raise ValueError(f"unknown objective {shown(name)}"
                         + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; allowed: {', '.join(OBJECTIVES)}; or a TRL loss_type: "
                         f"{', '.join(_trl_only())}, or {TRL_PREFIX}<loss_type> for any of "
                         f"TRL's ({', '.join(per_pair)})")
    if mapping.batch_token_mean:
        raise ValueError(f"objective {name!r}: TRL's sft is one token-mean NLL over a whole "
                         "batch, not a per-pair loss prefstudy can record; use 'sft' (each "
                         "pair's token-mean NLL of the chosen response)")
    options = {f: p for p, f in mapping.options.items()}  # TRL's field name → parameter
    renamed = {options.get(k, k) if k not in OBJECTIVES[mapping.objective].params else k: v
               for k, v in given.items()}
    if len(renamed) < len(given):
        raise ValueError(f"objective {name!r}: parameters {sorted(given)} set the same "
                         "parameter twice (TRL's name and prefstudy's)")
    fixed = {p: v for p, v in mapping.fixed.items() if p in renamed and renamed[p] != v}
    if fixed:
        raise ValueError(f"objective {name!r}: TRL's loss_type={loss_type!r} fixes "
                         + ", ".join(f"{p} = {v!r}" for p, v in mapping.fixed.items())
                         + f"; use the registry's {mapping.objective!r} to set "
                         + ", ".join(sorted(fixed)))
    trl = mapping.params(SimpleNamespace(**TRL_DEFAULTS), loss_type)
    return mapping.objective, resolve_params(mapping.objective, {**trl, **renamed})


def _trl_mappings() -> Mapping:
    """TRL's loss_type → how prefstudy computes it (`trlloss.TRL_OBJECTIVES`, imported only
    where a name is not the registry's)."""
    from .trlloss import TRL_OBJECTIVES

    return TRL_OBJECTIVES


def _trl_only() -> list[str]:
    """TRL loss_types that are no registry name, accepted without the `trl:` prefix."""
    return [t for t in _trl_mappings() if t not in OBJECTIVES]


# --------------------------------------------------------------------------- checks

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)  # field → its type, as objects, not strings
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
POSITIVE = ("steps", "batch_size", "lr", "max_length", "max_prompt_length", "gen_max_new_tokens",
            "checkpoint_every", "max_grad_norm", "max_pairs")  # > 0 (or None where allowed)
# A value as an error message shows it: a few items, a few levels, a few dozen characters, so a
# malformed file of any size or depth still gives one short line.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 4, 60, 60
_SHOWN.maxlong = 40


def shown(value: Any) -> str:
    """repr(value), bounded (`_SHOWN`), for error messages."""
    try:
        return _SHOWN.repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply>"


def listed(names: Any, most: int = 12) -> str:
    """Names joined by commas, at most `most` of them (then how many more), each bounded."""
    names = [str(n)[:60] for n in names]
    more = f" (and {len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` has type `hint`: unions (X | None), Literal, list[...], dict[..., ...],
    Any, and bool kept apart from int (`true` is no step count); an int passes for a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin in (list, tuple):
        return isinstance(value, origin) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1])
                                               for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _wanted(hint: Any) -> str:
    """`hint` in words, as a configuration's author would read it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [_wanted(a) for a in args if a is not type(None)]
        return " or ".join(words + (["None"] if type(None) in args else []))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (list, tuple):
        return f"a list of {_wanted(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a table of names to " + _wanted(args[1]).replace(" or ", ", ")
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
            dict: "a table", list: "a list"}.get(hint, getattr(hint, "__name__", str(hint)))


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in `value`."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _check_type(name: str, value: Any) -> None:
    hint = HINTS[name]
    if value is None:
        if not _matches(None, hint):
            raise ConfigError(f"config field {name!r} = None: a value is required")
        return
    if not _matches(value, hint):
        wanted = ("a table of objective parameters (name = a number, a string or true/false)"
                  if name == "params" else _wanted(hint))
        raise ConfigError(f"config field {name!r} = {shown(value)}: must be {wanted}, "
                          f"got {type(value).__name__}")
    if not _finite(value):
        raise ConfigError(f"config field {name!r} = {shown(value)}: must be finite")


def _check_range(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if value < 0 or (value == 0 and name in POSITIVE):
        raise ConfigError(f"config field {name!r} = {value!r}: must be "
                          f"{'> 0' if name in POSITIVE else '>= 0'}")


def _check_layout(cfg: TrainConfig) -> None:
    from .layouts import LAYOUTS, column_map

    if cfg.layout != "auto" and cfg.layout not in LAYOUTS:
        raise ConfigError(f"config field 'layout' = {shown(cfg.layout)}; allowed: 'auto', "
                          f"{', '.join(map(repr, LAYOUTS))}")
    try:
        column_map(cfg.columns)
    except ValueError as e:
        raise ConfigError(f"config field 'columns': {e}") from None


def _check_trackers(cfg: TrainConfig) -> None:
    """report_to names trackers accelerate knows (`accelerate.tracking`); checked here, before
    anything loads. Whether one is installed is accelerate's to say when the run starts."""
    if not cfg.report_to:
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    unknown = [t for t in cfg.report_to if t not in LOGGER_TYPE_TO_CLASS and t != "all"]
    if unknown:
        raise ConfigError(f"config field 'report_to' = {shown(cfg.report_to)}: unknown "
                          f"tracker(s) {shown(unknown)}; allowed: 'all', "
                          f"{', '.join(map(repr, LOGGER_TYPE_TO_CLASS))}")


def _check_split(cfg: TrainConfig) -> None:
    """A prompt split replaces `heldout` / `neutral_text`: both at once would be ambiguous."""
    for count, other in (("heldout_prompts", "heldout"), ("neutral_prompts", "neutral_text")):
        if getattr(cfg, count) and getattr(cfg, other):
            raise ConfigError(f"config field {count!r} = {getattr(cfg, count)} takes the "
                              f"{other.replace('_', ' ')} from the data's own prompts; set "
                              f"{other} = \"\" (it is {shown(getattr(cfg, other))})")
    if cfg.neutral_model is not None and not cfg.neutral_prompts:
        raise ConfigError(f"config field 'neutral_model' = {shown(cfg.neutral_model)} needs "
                          "neutral_prompts > 0 (the prompts whose answers are neutral text)")


def check(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the field for anything that cannot run. Loads nothing."""
    for name in FIELDS:
        _check_type(name, getattr(cfg, name))
        _check_range(name, getattr(cfg, name))
    try:
        objective, _ = resolve_objective(cfg.objective, cfg.params)
    except ValueError as e:
        raise ConfigError(f"config field 'objective'/'params': {e}") from None
    if cfg.use_weighting and get_objective(objective).batch_level:
        raise ConfigError(f"config field 'use_weighting' = true with objective "
                          f"{cfg.objective!r}: it couples the pairs of a batch (sorts across "
                          "it), so per-pair WPO weights would not line up with per-pair losses")
    if cfg.max_prompt_length >= cfg.max_length:
        raise ConfigError(f"config field 'max_prompt_length' = {cfg.max_prompt_length} must be "
                          f"below 'max_length' = {cfg.max_length}")
    _check_layout(cfg)
    _check_split(cfg)
    _check_trackers(cfg)
    if cfg.dtype != "auto" and cfg.dtype not in DTYPES:
        raise ConfigError(f"config field 'dtype' = {shown(cfg.dtype)}; allowed: 'auto', "
                          f"{', '.join(map(repr, DTYPES))}")
    if not DEVICE.match(cfg.device):
        raise ConfigError(f"config field 'device' = {shown(cfg.device)}; allowed: 'auto', 'cpu', "
                          "'cuda', 'cuda:N' (N a GPU index) or 'mps'")
    if cfg.run_id is not None and (not cfg.run_id.strip() or cfg.run_id in (".", "..")
                                   or any(c in cfg.run_id for c in "/\\\0")):
        raise ConfigError(f"config field 'run_id' = {shown(cfg.run_id)}: must be a plain folder name "
                          "(no path separators)")
    if not cfg.model.strip():
        raise ConfigError(f"config field 'model' = {shown(cfg.model)}: name a preset "
                          f"({', '.join(PRESETS)}) or a Hugging Face id / local path")


def from_dict(values: Mapping[str, Any], where: str = "config") -> TrainConfig:
    """A TrainConfig of `values` (TrainConfig fields); ConfigError naming `where` for a field
    TrainConfig does not have. Not checked: `check` or `resolved` does that."""
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {shown(unknown)}; allowed: "
                          f"{', '.join(FIELDS)}")
    return TrainConfig(**values)


# A config or study file is a few KB (configs/study.toml: 5). Python's TOML parser takes time
# that grows with the product of a file's keys and their depth (one dotted key `a.a.a…` 10,000
# deep: seconds), so a file past 64 KiB, or with a key more than 8 dots deep, is refused
# before it is parsed.
MAX_TOML_BYTES = 64 << 10
MAX_KEY_DOTS = 8


def read_toml(path: str | Path, kind: str) -> dict[str, Any]:
    """A TOML file as a dict. However it is wrong (missing, not a regular file, larger than
    MAX_TOML_BYTES, not UTF-8, keys nested past MAX_KEY_DOTS, not TOML, nested past the
    parser's depth), ConfigError: one short line naming the file, in well under a second."""
    path = Path(path)
    try:
        if not path.exists():
            raise ConfigError(f"{path}: no such {kind} file")
        if not path.is_file():  # a folder, a pipe or a device is refused before it is opened
            raise ConfigError(f"{path}: not a regular file; a {kind} file is TOML text")
        with path.open("rb") as f:
            data = f.read(MAX_TOML_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {kind} file: {e.strerror or e}") from None
    if len(data) > MAX_TOML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_TOML_BYTES >> 10} KiB, not a {kind} file "
                          "(TOML text of a few KB)")
    try:
        text = data.decode("utf-8-sig")  # TOML is UTF-8; a byte-order mark is forgiven
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); a {kind} file is TOML "
                          "text") from None
    deep = next((i for i, line in enumerate(text.splitlines(), 1)
                 if line.partition("=")[0].count(".") > MAX_KEY_DOTS), None)
    if deep:
        raise ConfigError(f"{path}: line {deep}: a key nested more than {MAX_KEY_DOTS} levels "
                          f"deep, not a {kind} file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {shown(str(e))[1:-1]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None


def load_config(path: str | Path, *, extra_params: Mapping | None = None,
                **overrides: Any) -> TrainConfig:
    """A checked TrainConfig from a TOML file (top-level fields, objective parameters under
    [params]), with `overrides` (None values ignored) applied on top and `extra_params` added to
    its parameters. A new `objective` drops the file's parameters (another objective's would not
    fit). ConfigError naming the file for anything wrong."""
    path = Path(path)
    values = read_toml(path, "config")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "objective" in overrides and "params" not in overrides:
        values.pop("params", None)
    values.update(overrides)
    if extra_params:
        params = values.get("params", {})
        values["params"] = {**(params if isinstance(params, dict) else {}), **extra_params}
    cfg = from_dict(values, str(path))
    try:
        check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def describe(cfg: TrainConfig) -> str:
    """One line saying what a resolved config trains: objective and parameters (and the name it
    was given as), model, data, steps, batch, learning rate, seed, and where it is written."""
    params = ", ".join(f"{k}={v!r}" for k, v in cfg.params.items())
    given = f", given as {cfg.objective_given!r}" if cfg.objective_given else ""
    model = (f"{cfg.model} (random weights, for a smoke test; --model smollm2-135m-instruct for "
             "the real model)" if cfg.model == "tiny" else cfg.model)
    held = f", held-out {cfg.heldout}" if cfg.heldout else ", no held-out pairs"
    sample = f" ({cfg.max_pairs} of them)" if cfg.max_pairs else ""
    return (f"training {cfg.objective} ({params or 'no parameters'}{given}) on {model}, pairs "
            f"{cfg.data}{sample}{held}: {cfg.steps} steps of {cfg.batch_size} pairs at lr "
            f"{cfg.lr:g}, seed {cfg.seed} → {Path(cfg.output) / str(cfg.run_id)}")
