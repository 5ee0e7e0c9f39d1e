"""A study's runs and every table they hold, read from disk once: the only reader of a study
folder, and what the findings, the report, the widgets and the notebooks start from.

A study folder (what `prefstudy study` writes; reports/runs is the committed one):

    <study>/study.json      the study's name, profile, seeds and label order (STUDY_FILE)
    <study>/audit/          the audit of the pairs it trains on, at the starting model (AUDIT_DIR),
                            and audit/heldout/ of its held-out pairs
    <study>/<run>/          one folder per run (see `prefstudy.records`), its per-pair facts in
                            <run>/pairs.parquet (`records.PAIRS_FILE`)

`load_tables(runs)` returns a `Tables`. Everything a report needs is in the study folder, so it
regenerates from a copy of the folder anywhere, without the data it was trained on. `runs` is,
everywhere here, a folder of run folders, one run folder, a list of run folders, or None for the
committed study (`records.default_runs_dir()`, i.e. reports/runs or `$PREFSTUDY_RUNS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .records import (
    PAIRS_FILE,
    TABLES,
    RunError,
    check_disjoint,
    check_folders,
    default_runs_dir,
    load_run,
    read_config,
    read_meta,
    run_label,
    run_list,
)

STUDY_FILE = "study.json"  # the study's name, profile, seeds and label order, beside its runs
AUDIT_DIR = "audit"  # the audit of the pairs the study trains on (study.audit_study)
# A run's per-pair facts: PAIR_COLUMNS always; the texts (`paths.TEXT_COLUMNS`: prompt, chosen,
# rejected) only where the run kept them (a run of third-party pairs in reports/ does not).
PAIR_COLUMNS = ["pair_id", "split", "len_ratio", "edit_distance"]
# One row per run (`run_table`): what its config and meta say of it.
RUN_COLUMNS = ["run_id", "label", "objective", "family", "lr", "seed", "steps", "warmup_steps",
               "status", "seconds", "above_uniform_step"]
PER_RUN = ("lr", "family")  # run columns every table carries (`Tables.with_runs`)

Runs = str | os.PathLike | Iterable | None


def study_dir(runs: Runs = None) -> Path | None:
    """The folder the runs sit in, where their study.json and audit are; None when the runs do
    not share one (or there are none)."""
    parents = {folder.parent for folder in run_list(runs)}
    return parents.pop() if len(parents) == 1 else None


@dataclass
class Tables:
    """Everything the analysis reads, loaded once. Every table is a DataFrame: empty where the
    runs have none (the diagnostics take an empty optional table as "not there").

    records, evals, perplexity, generations, steps: `records.load_run` of each table, each row
        with its run's configured `lr` and `family` (`with_runs`).
    pairs:   the per-pair facts of the pairs the runs trained and evaluated on (PAIR_COLUMNS,
             the texts where the runs kept them, and the pairs' meta columns: lang,
             category, …), one row per pair id.
    runs:    one row per run (`run_table`); configs, metas: each run's config.json and
             meta.json, by run id.
    labels:  the labels present, in the study's order (`study_labels`); order: the same as
             figures list them, family by family where every label has a family; families:
             label → family then, else None (figures colour by label).
    audit, audit_heldout: the audits of the study's training and held-out pairs
             (`audit.read_audit`), None where it has none.
    folders: the run folders.
    """

    records: pd.DataFrame
    evals: pd.DataFrame
    perplexity: pd.DataFrame
    generations: pd.DataFrame
    steps: pd.DataFrame
    pairs: pd.DataFrame
    runs: pd.DataFrame
    configs: dict[str, dict]
    metas: dict[str, dict]
    labels: list[str]
    order: list[str]
    families: dict[str, str] | None
    folders: list[Path]
    audit: Any = None  # prefstudy.audit.Audit
    audit_heldout: Any = None
    root: Path | None = field(default=None)  # the study folder, where the runs share one

    def with_runs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame` (with a run_id column) with each run's PER_RUN columns joined on run_id."""
        return _with_runs(frame, self.runs)


def load_tables(runs: Runs = None) -> Tables:
    """Every table of the runs `runs` names (see the module docstring); FileNotFoundError when
    there are no runs."""
    folders = run_list(runs)
    if not folders:
        raise FileNotFoundError(f"{runs or default_runs_dir()}: no runs (run `prefstudy study` "
                                "first)")
    check_folders(folders)  # RunError: a folder twice, two folders of one name
    configs = {folder.name: read_config(folder) for folder in folders}
    _check_config_ids(configs, folders)
    metas = {folder.name: read_meta(folder) for folder in folders}
    runs_table = run_table(folders, configs, metas)
    loaded = {name: _joined(_concat([load_run(f, name, configs[f.name], metas[f.name])
                                     for f in folders]), runs_table) for name in TABLES}
    root = study_dir(folders)
    present = _concat([df[["label"]] for df in (loaded["records"], loaded["evals"])
                       if "label" in df.columns])
    labels = study_labels(present, folders) if len(present) else []
    order, families = _display_order(labels, runs_table)
    return Tables(**loaded, pairs=_pairs(folders), runs=runs_table, configs=configs,
                  metas=metas, labels=labels, order=order, families=families, folders=folders,
                  audit=_audit(root and root / AUDIT_DIR),
                  audit_heldout=_audit(root and root / AUDIT_DIR / "heldout"), root=root)


def _check_config_ids(configs: dict[str, dict], folders: list[Path]) -> None:
    """RunError where two run folders hold one run id (their config.json's run_id, else the
    folder's name): a copied run folder, whose records carry the same id as the original's."""
    seen: dict[str, Path] = {}
    for folder in folders:
        run_id = str(configs[folder.name].get("run_id") or folder.name)
        other = seen.setdefault(run_id, folder)
        if other != folder:
            raise RunError(f"run id {run_id!r} twice among the runs given: {other} and {folder} "
                           "(a copied run folder?); read them apart, or remove the copy")


def _check_pairs(folder: Path, frame: pd.DataFrame) -> None:
    """PairsOverlapWarning where one run's training and held-out pairs share pairs."""
    if {"pair_id", "split"} <= set(frame.columns):
        check_disjoint(frame.pair_id[frame.split == "train"],
                       frame.pair_id[frame.split == "heldout"],
                       train=f"{folder.name}'s training pairs",
                       heldout=f"{folder / PAIRS_FILE}", stacklevel=3)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _with_runs(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    extra = runs[["run_id", *PER_RUN]].drop_duplicates("run_id")
    return frame.drop(columns=[c for c in PER_RUN if c in frame.columns]).merge(
        extra, on="run_id", how="left")


def _joined(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """A loaded table with its runs' PER_RUN columns (an empty table stays as it is)."""
    return _with_runs(frame, runs) if len(frame) else frame


def _audit(folder: Path | None):
    from .audit import read_audit

    return read_audit(folder) if folder is not None and (folder / "audit.json").exists() \
        else None


def _pairs(folders: list[Path]) -> pd.DataFrame:
    """The per-pair facts every run folder holds (PAIRS_FILE), one row per pair id."""
    frames = [pd.read_parquet(f / PAIRS_FILE) for f in folders if (f / PAIRS_FILE).exists()]
    for folder, frame in zip([f for f in folders if (f / PAIRS_FILE).exists()], frames):
        _check_pairs(folder, frame)
    if not frames:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    return pd.concat(frames, ignore_index=True).drop_duplicates("pair_id").reset_index(drop=True)


def run_table(folders: list[Path], configs: dict[str, dict],
              metas: dict[str, dict]) -> pd.DataFrame:
    """One row per run: RUN_COLUMNS from its config and meta (family: `objectives.family_of`;
    seconds: from its start to its end, NaN where either is missing). A field a run's config
    lacks (a run made elsewhere) is NaN."""
    from .objectives import family_of

    rows = []
    for folder in folders:
        cfg, meta = configs[folder.name], metas[folder.name]
        params = cfg.get("params") or {}
        try:
            family = family_of(cfg.get("objective"), params)
        except (KeyError, ValueError):
            family = None
        began, ended = (pd.to_datetime(meta.get(k), errors="coerce") for k in ("started", "ended"))
        rows.append({"run_id": folder.name, "objective": cfg.get("objective"),
                     "label": run_label(cfg.get("objective"), str(params.get("norm", "")),
                                        cfg.get("label")),
                     "family": family, "lr": cfg.get("lr"), "seed": cfg.get("seed"),
                     "steps": cfg.get("steps"), "warmup_steps": cfg.get("warmup_steps"),
                     "status": meta.get("status"),
                     "seconds": (ended - began).total_seconds() if pd.notna(began)
                     and pd.notna(ended) else float("nan"),
                     "above_uniform_step": meta.get("above_uniform_step")})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def study_labels(records: pd.DataFrame, runs: Runs = None) -> list[str]:
    """The labels present in `records`, in the order the study lists them (the study.json beside
    the runs), then any it does not list in the order they first appear."""
    present = list(dict.fromkeys(records["label"]))
    root = study_dir(runs)
    study = root / STUDY_FILE if root is not None else None
    if study is None or not study.exists():
        return present
    listed = [lab for lab in json.loads(study.read_text()).get("labels", []) if lab in present]
    return listed + [lab for lab in present if lab not in listed]


def _display_order(labels: list[str], runs: pd.DataFrame) -> tuple[list[str], dict | None]:
    """The labels as figures list them and label → family: family by family
    (`theme.family_order`), each family in the study's order, where every label's objective has
    a family; else the study's own order and None (colour by label)."""
    from .theme import family_order

    known = runs.dropna(subset=["family"]).drop_duplicates("label")
    family = dict(zip(known.label, known.family))
    if not labels or not set(labels) <= set(family):
        return list(labels), None
    families = {label: family[label] for label in labels}
    return family_order(families), families


__all__ = ["AUDIT_DIR", "PAIR_COLUMNS", "RUN_COLUMNS", "STUDY_FILE", "Tables", "load_tables",
           "run_table", "study_dir", "study_labels"]
