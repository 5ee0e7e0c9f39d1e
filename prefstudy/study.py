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
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import FIELDS, ConfigError, TrainConfig, from_dict
from .records import read_meta


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
        """One checked TrainConfig per (run, seed), seeds innermost."""
        out = []
        for spec in self.runs:
            for seed in self.seeds:
                values = {**self.shared, "objective": spec.objective, "params": dict(spec.params),
                          "label": spec.label, "seed": seed, "output": str(self.output),
                          "run_id": f"{spec.label}-s{seed}"}
                out.append(from_dict(values, f"study {self.name}, run {spec.label!r}").resolved())
        return out


def hardware_profile() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def load_study(path: str | Path, *, profile: str | None = None, seeds: Sequence[int] | None = None,
               output: str | Path | None = None) -> Study:
    """Read a study file and apply a profile ("cpu", "gpu"; None → from the hardware)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such study file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    profiles = doc.pop("profiles", {})
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
    """Train every run of the study that has not ended; returns all run folders."""
    from .train import train

    for cfg in pending(study):
        resume = (study.output / cfg.run_id / "meta.json").exists()
        train(cfg, resume=resume, progress=progress)
    return [study.output / cfg.run_id for cfg in study.configs()]


def describe(study: Study) -> str:
    cfgs = study.configs()
    steps = cfgs[0].steps if cfgs else 0
    return (f"study {study.name!r}, profile {study.profile}: {len(study.runs)} configurations × "
            f"{len(study.seeds)} seed(s) = {len(cfgs)} runs of {steps} steps on "
            f"{study.shared.get('model', TrainConfig.model)} → {study.output}")


__all__ = ["Study", "RunSpec", "load_study", "run_study", "pending", "describe", "dataclasses"]
