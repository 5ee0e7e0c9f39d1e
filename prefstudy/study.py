"""A study: many objectives × seeds on the same model and data, described by one TOML file.

    model = "smollm2-135m-instruct"           # any TrainConfig field: shared by every run
    [[runs]]                                  # one entry per configuration compared
    label = "naive-sum"                       # the name figures and tables use
    objective = "naive"
    params = { norm = "sum" }
    [profiles.cpu]                            # what a 2-core machine can finish in minutes
    seeds = [0]
    lrs = [1e-4, 3e-4, 1e-3]                  # a learning-rate sweep: every run at every lr
    labels = ["naive-sum", "dpo"]             # optional: only these runs in this profile
    steps = 24                                # any TrainConfig field, overriding the shared ones
    [profiles.gpu]                            # the full-size study
    seeds = [0, 1, 2]

Objectives are compared at matched progress along the sweep (prefstudy.progress), never at one
learning rate: a run's id is `<label>-lr<lr>-s<seed>` in a sweep, `<label>-s<seed>` without one.

`run_study` trains what is missing (a completed or diverged run is kept, a killed one resumed),
so re-running a study after an interruption finishes it, and audits the pairs it trains on
(`audit_study`: claims C1 and C2 at the starting model).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import FIELDS, ConfigError, TrainConfig, from_dict, read_toml
from .paths import resolve_path
from .records import default_runs_dir, read_meta, run_folders
from .tables import AUDIT_DIR, STUDY_FILE

DEFAULT_STUDY = "configs/study.toml"  # relative to the working directory, else the repository


@dataclass(frozen=True)
class RunSpec:
    label: str
    objective: str
    params: dict[str, Any]


@dataclass
class Study:
    name: str
    profile: str
    seeds: list[int]
    runs: list[RunSpec]
    shared: dict[str, Any]  # TrainConfig fields common to every run (profile applied)
    output: Path
    lrs: list[float] | None = None  # the learning-rate sweep; None: the one lr of `shared`

    def configs(self) -> list[TrainConfig]:
        """One checked TrainConfig per (run, lr, seed), seeds outermost, then learning rates: a
        study stopped early has every configuration at every lr with its first seeds."""
        out = []
        for seed in self.seeds:
            for lr in self.lrs or [None]:
                out += [self._config(spec, seed, lr) for spec in self.runs]
        return out

    def _config(self, spec: RunSpec, seed: int, lr: float | None) -> TrainConfig:
        swept = {} if lr is None else {"lr": lr}
        run_id = f"{spec.label}-s{seed}" if lr is None else f"{spec.label}-lr{lr:g}-s{seed}"
        values = {**self.shared, **swept, "objective": spec.objective,
                  "params": dict(spec.params), "label": spec.label, "seed": seed,
                  "output": str(self.output), "run_id": run_id}
        where = f"study {self.name!r}, runs[label={spec.label!r}]"
        try:
            return from_dict(values, where).resolved()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def hardware_profile() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def load_study(path: str | Path, *, profile: str | None = None, seeds: Sequence[int] | None = None,
               output: str | Path | None = None,
               overrides: dict[str, Any] | None = None) -> Study:
    """Read a study file and apply a profile ("cpu", "gpu", or any profile the file names;
    None → from the hardware), then `overrides` (TrainConfig fields for every run, None values
    ignored: e.g. a user's own `data`, `heldout` and `model`).

    `profiles` is a table of profiles, or the name of another study file (relative to this one)
    whose profiles this study shares (all but their `labels`, which name that study's runs)."""
    path = Path(path)
    doc = read_toml(path, "study")
    profiles = doc.pop("profiles", {})
    if isinstance(profiles, str):  # another study's profiles; its `labels` name its own runs
        profiles = {name: {k: v for k, v in values.items() if k != "labels"} for name, values
                    in read_toml(path.parent / profiles, "study").get("profiles", {}).items()}
    runs = doc.pop("runs", [])
    name = doc.pop("name", path.stem)
    profile = profile or hardware_profile()
    if profiles and profile not in profiles:
        raise ConfigError(f"{path}: no profile {profile!r}; profiles: {', '.join(profiles)}")
    shared = {**doc, **profiles.get(profile, {}),
              **{k: v for k, v in (overrides or {}).items() if v is not None}}
    study_seeds = list(seeds) if seeds is not None else list(shared.pop("seeds", [0]))
    shared.pop("seeds", None)
    lrs, only = _sweep(path, shared.pop("lrs", None)), shared.pop("labels", None)
    for key in ("objective", "params", "seed", "run_id", "label", "output"):
        if key in shared:
            raise ConfigError(f"{path}: {key!r} is set per run, not for the whole study")
    unknown = [k for k in shared if k not in FIELDS]
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; allowed: {', '.join(FIELDS)}, "
                          "and seeds, lrs, labels")
    if not runs:
        raise ConfigError(f"{path}: no [[runs]]")
    specs = []
    for i, run in enumerate(runs):
        extra = set(run) - {"label", "objective", "params"}
        if "objective" not in run or extra:
            raise ConfigError(f"{path}: runs[{i}] needs 'objective' (and optionally 'label', "
                              f"'params'){'; unknown: ' + str(sorted(extra)) if extra else ''}")
        specs.append(RunSpec(run.get("label", run["objective"]), run["objective"],
                             run.get("params", {})))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: labels must be unique: {labels}")
    if only is not None:
        if not isinstance(only, list) or not only or set(only) - set(labels):
            raise ConfigError(f"{path}: profile {profile!r}: labels = {only!r} must be a "
                              f"non-empty list of the study's run labels: {', '.join(labels)}")
        specs = [s for s in specs if s.label in only]
    out = Path(output) if output else Path("runs") / f"{name}-{profile}"
    study = Study(name, profile, study_seeds, specs, shared, out, lrs)
    study.configs()  # every run checked before anything is trained
    return study


def _sweep(path: Path, lrs: Any) -> list[float] | None:
    """The study's learning rates: a non-empty list of distinct positive numbers, or None."""
    if lrs is None:
        return None
    ok = (isinstance(lrs, list) and lrs and len(set(lrs)) == len(lrs)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in lrs))
    if not ok:
        raise ConfigError(f"{path}: lrs = {lrs!r} must be a non-empty list of distinct "
                          "learning rates > 0")
    return [float(v) for v in lrs]


def pending(study: Study) -> list[TrainConfig]:
    """The configs of runs that have not ended (completed or diverged) yet."""
    todo = []
    for cfg in study.configs():
        folder = study.output / cfg.run_id
        if (folder / "meta.json").exists() and read_meta(folder)["status"] in ("completed",
                                                                                "diverged"):
            continue
        todo.append(cfg)
    return todo


def run_study(study: Study, *, progress: bool = True) -> list[Path]:
    """Train every run of the study that has not ended, then audit the pairs it trains on
    (`audit_study`) if not done yet; returns all run folders."""
    from .inputs import heldout_pairs, training_pairs
    from .train import train

    first = study.configs()[0]
    training_pairs(first)  # a bad dataset fails here, in one line, before any model loads
    heldout_pairs(first)
    study.output.mkdir(parents=True, exist_ok=True)
    (study.output / STUDY_FILE).write_text(json.dumps(
        {"name": study.name, "profile": study.profile, "seeds": study.seeds, "lrs": study.lrs,
         "labels": [s.label for s in study.runs]}, indent=2) + "\n")
    for cfg in pending(study):
        resume = (study.output / cfg.run_id / "meta.json").exists()
        train(cfg, resume=resume, progress=progress)
    if not (study.output / AUDIT_DIR / "audit.json").exists():
        audit_study(study)
    return [study.output / cfg.run_id for cfg in study.configs()]


def audit_study(study: Study) -> Path:
    """Claims C1 and C2 at the start, on the pairs the study trains on: `prefstudy.audit` of
    the first run's training pairs (`inputs.training_pairs`: every run trains on the same
    sample), cut as training cuts them, with the length dose-response and per-pair gradients,
    at the study's starting model. Written to `<study output>/audit/` (`audit.write_audit`),
    which the report reads; the held-out pairs' audit (per-pair gradients of every one, for
    the entanglement and CHES that claim C4 compares with displacement) to `audit/heldout/`.
    Returns the training pairs' audit page."""
    from .audit import audit, write_audit
    from .inputs import heldout_pairs, training_pairs

    cfg = study.configs()[0]
    given = dict(model=cfg.model, max_length=cfg.max_length, device=cfg.device, dtype=cfg.dtype,
                 max_prompt_length=cfg.max_prompt_length, gradients=True)
    pairs = training_pairs(cfg)
    result = audit(pairs, **given)
    result.settings["source"] = f"{cfg.data} (the {len(pairs)} pairs the study trains on)"
    held = heldout_pairs(cfg)
    if held is not None:  # entanglement and CHES of the pairs displacement is measured on
        result_held = audit(held, **given, factors=(), gradient_pairs=None,
                            objectives=(("dpo", {}),))  # a pair's own: one objective suffices
        result_held.settings["source"] = f"{cfg.heldout} (the {len(held)} held-out pairs)"
        write_audit(result_held, study.output / AUDIT_DIR / "heldout")
    return write_audit(result, study.output / AUDIT_DIR)


def describe(study: Study) -> str:
    cfgs = study.configs()
    steps = cfgs[0].steps if cfgs else 0
    sweep = f"{len(study.lrs)} learning rates × " if study.lrs else ""
    return (f"study {study.name!r}, profile {study.profile}: {len(study.runs)} configurations × "
            f"{sweep}{len(study.seeds)} seed(s) = {len(cfgs)} runs of {steps} steps on "
            f"{study.shared.get('model', TrainConfig.model)} → {study.output}")


def notebook_runs(rerun: bool = False, *, profile: str = "tiny",
                  output: str | Path | None = None, progress: bool = False) -> Path:
    """The folder of runs a notebook reads: the notebooks' one switch.

    rerun=False: the committed study runs (`records.default_runs_dir()`, i.e. reports/runs or
    `$PREFSTUDY_RUNS`). rerun=True: train the default study (configs/study.toml) afresh into
    `output` (default: a new temporary folder) and return that folder. profile: one of the study
    file's profiles; "tiny" is the study on the random tiny model, one seed, a few minutes on two
    cores; "cpu" takes tens of minutes on two cores.
    """
    if not rerun:
        root = default_runs_dir()
        if not run_folders(root):
            raise FileNotFoundError(f"{root}: no committed runs. Set RERUN = True to train a "
                                    "tiny study, or run `prefstudy study`.")
        return root
    output = Path(output) if output else Path(tempfile.mkdtemp(prefix="prefstudy-runs-"))
    run_study(load_study(resolve_path(DEFAULT_STUDY), profile=profile, output=output),
              progress=progress)
    return output


__all__ = ["DEFAULT_STUDY", "RunSpec", "Study", "dataclasses", "describe", "load_study",
           "notebook_runs", "pending", "run_study", "audit_study"]
