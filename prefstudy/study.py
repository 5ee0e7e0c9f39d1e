"""A study: many objectives × seeds on the same model and data, described by one TOML file.

    model = "smollm2-135m-instruct"           # any TrainConfig field: shared by every run
    [[runs]]                                  # one entry per configuration compared
    label = "naive-sum"                       # the name figures and tables use
    objective = "naive"
    params = { norm = "sum" }
    [profiles.cpu]                            # what a 2-core machine can finish in minutes
    seeds = [0]
    steps = 24                                # any TrainConfig field, overriding the shared ones
    [profiles.gpu]                            # the full-size study
    seeds = [0, 1, 2]

`run_study` trains what is missing (a completed or diverged run is kept, a killed one resumed),
so re-running a study after an interruption finishes it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .config import FIELDS, ConfigError, TrainConfig, from_dict, read_toml, resolve_path
from .records import default_runs_dir, read_meta, run_folders
from .tables import DOSE_FILE, STUDY_FILE

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

    def configs(self) -> list[TrainConfig]:
        """One checked TrainConfig per (run, seed), seeds outermost: a study stopped early has
        every configuration with its first seeds rather than some configurations with all."""
        out = []
        for seed in self.seeds:
            for spec in self.runs:
                values = {**self.shared, "objective": spec.objective, "params": dict(spec.params),
                          "label": spec.label, "seed": seed, "output": str(self.output),
                          "run_id": f"{spec.label}-s{seed}"}
                where = f"study {self.name!r}, runs[label={spec.label!r}]"
                try:
                    out.append(from_dict(values, where).resolved())
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
        return out


def hardware_profile() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def load_study(path: str | Path, *, profile: str | None = None, seeds: Sequence[int] | None = None,
               output: str | Path | None = None) -> Study:
    """Read a study file and apply a profile ("cpu", "gpu"; None → from the hardware).

    `profiles` is a table of profiles, or the name of another study file (relative to this one)
    whose profiles this study shares."""
    path = Path(path)
    doc = read_toml(path, "study")
    profiles = doc.pop("profiles", {})
    if isinstance(profiles, str):
        profiles = read_toml(path.parent / profiles, "study").get("profiles", {})
    runs = doc.pop("runs", [])
    name = doc.pop("name", path.stem)
    profile = profile or hardware_profile()
    if profiles and profile not in profiles:
        raise ConfigError(f"{path}: no profile {profile!r}; profiles: {', '.join(profiles)}")
    shared = {**doc, **profiles.get(profile, {})}
    study_seeds = list(seeds) if seeds is not None else list(shared.pop("seeds", [0]))
    shared.pop("seeds", None)
    for key in ("objective", "params", "seed", "run_id", "label", "output"):
        if key in shared:
            raise ConfigError(f"{path}: {key!r} is set per run, not for the whole study")
    unknown = [k for k in shared if k not in FIELDS]
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; allowed: {', '.join(FIELDS)}")
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
    out = Path(output) if output else Path("runs") / f"{name}-{profile}"
    study = Study(name, profile, study_seeds, specs, shared, out)
    study.configs()  # every run checked before anything is trained
    return study


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
    """Train every run of the study that has not ended, then score the length-controlled
    variants (`score_dose`) if not done yet; returns all run folders."""
    from .train import train

    study.output.mkdir(parents=True, exist_ok=True)
    (study.output / STUDY_FILE).write_text(json.dumps(
        {"name": study.name, "profile": study.profile, "seeds": study.seeds,
         "labels": [s.label for s in study.runs]}, indent=2) + "\n")
    for cfg in pending(study):
        resume = (study.output / cfg.run_id / "meta.json").exists()
        train(cfg, resume=resume, progress=progress)
    if not (study.output / DOSE_FILE).exists():
        score_dose(study)
    return [study.output / cfg.run_id for cfg in study.configs()]


def score_dose(study: Study, *, factors=(0.5, 1.0, 2.0, 4.0), n_pairs: int | None = None) -> Path:
    """Score length-controlled variants of the study's training pairs with the starting model.

    Only the rejected response changes length (`prefstudy.data.length_variants`), so the change
    in the gap across factors is the effect of length alone: claim C1's dose-response. Written
    to `<study output>/dose.parquet`, one row per (pair, factor), with the columns of
    `scoring.score_pairs` plus factor and achieved_ratio.
    """
    from .config import resolve_path
    from .data import length_variants, load_pairs
    from .models import load_model
    from .scoring import score_pairs

    cfg = study.configs()[0]
    pairs = load_pairs(resolve_path(cfg.data))
    if cfg.lang:
        pairs = pairs.filter(lang=cfg.lang)
    pairs = pairs[: n_pairs or cfg.max_pairs or len(pairs)]
    variants = length_variants(pairs, factors)
    model, tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype,
                                  seed=cfg.model_seed)
    scores = score_pairs(model, tokenizer, variants, max_length=cfg.max_length,
                         max_prompt_length=cfg.max_prompt_length)
    meta = pd.DataFrame([{"pair_id": v.pair_id, "variant_of": v.meta["variant_of"],
                          "factor": v.meta["factor"], "achieved_ratio": v.meta["achieved_ratio"]}
                         for v in variants])
    out = scores.merge(meta, on="pair_id")
    path = study.output / DOSE_FILE
    out.to_parquet(path, index=False)
    return path


def describe(study: Study) -> str:
    cfgs = study.configs()
    steps = cfgs[0].steps if cfgs else 0
    return (f"study {study.name!r}, profile {study.profile}: {len(study.runs)} configurations × "
            f"{len(study.seeds)} seed(s) = {len(cfgs)} runs of {steps} steps on "
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
           "notebook_runs", "pending", "run_study"]
