"""A study's runs and every table they hold, loaded once: what the report, the widgets and the
notebooks read.

A study folder (what `prefstudy study` writes; reports/runs is the committed one):

    <study>/study.json      the study's name, profile, seeds and label order (STUDY_FILE)
    <study>/audit/          the audit of the pairs it trains on, at the starting model (AUDIT_DIR)
    <study>/dose.parquet    length-controlled variants (DOSE_FILE; studies before the audit)
    <study>/<run>/          one folder per run (see `prefstudy.records`)

`load_tables(runs)` returns a `Tables`: the runs' records, evals, perplexity, generations and
steps (`records.load_runs`), the texts of the pairs their configs name (`run_pairs`), the
study's audit and the study's label order (`study_labels`). `runs` is, everywhere here, a folder of run
folders, one run folder, a list of run folders, or None for the committed study
(`records.default_runs_dir()`, i.e. reports/runs or `$PREFSTUDY_RUNS`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .config import resolve_path
from .data import load_any
from .records import default_runs_dir, load_runs, read_config, read_meta, run_label, run_list

STUDY_FILE = "study.json"  # the study's name, profile, seeds and label order, beside its runs
DOSE_FILE = "dose.parquet"  # the length-controlled variants of studies before the audit
AUDIT_DIR = "audit"  # the audit of the pairs the study trains on (study.audit_study)
PAIR_COLUMNS = ["pair_id", "prompt", "chosen", "rejected", "split"]  # run_pairs, beside meta

Runs = str | os.PathLike | Iterable | None


def study_dir(runs: Runs = None) -> Path | None:
    """The folder the runs sit in, where their study.json and dose.parquet are; None when the
    runs do not share one (or there are none)."""
    parents = {folder.parent for folder in run_list(runs)}
    return parents.pop() if len(parents) == 1 else None


@dataclass
class Tables:
    """Everything the analysis reads, loaded once. Every table is a DataFrame: empty where the
    runs have none (the diagnostics take an empty optional table as "not there").

    records, evals, perplexity, generations, steps: `records.load_runs` of each table.
    pairs:  `run_pairs`, the texts of the training and held-out pairs the runs name.
    dose:   the dose.parquet of a study made before studies were audited, else empty.
    audit:  the audit of the pairs the study trains on (`<study>/audit`, `audit.read_audit`),
            None if it has none; audit_heldout: the held-out pairs' (`<study>/audit/heldout`).
    runs:   one row per run folder (`run_table`).
    labels: the labels present, in the study's order (`study_labels`).
    folders: the run folders.
    """

    records: pd.DataFrame
    evals: pd.DataFrame
    perplexity: pd.DataFrame
    generations: pd.DataFrame
    steps: pd.DataFrame
    pairs: pd.DataFrame
    dose: pd.DataFrame
    labels: list[str]
    folders: list[Path]
    audit: Any = None  # prefstudy.audit.Audit
    audit_heldout: Any = None  # the same of the held-out pairs, where the study has it
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # `run_table`: one row per run

    @property
    def heldout_or_records(self) -> pd.DataFrame:
        """The pairs final-state numbers are measured on: the held-out evals where the runs have
        them, else the training records (as `diagnostics.summary_table` chooses)."""
        return self.evals if len(self.evals) else self.records


def load_tables(runs: Runs = None) -> Tables:
    """Every table of the runs `runs` names (see the module docstring); FileNotFoundError when
    there are no runs."""
    folders = run_list(runs)
    if not folders:
        raise FileNotFoundError(f"{runs or default_runs_dir()}: no runs (run `prefstudy study` "
                                "first)")
    loaded = {name: load_runs(folders, name)
              for name in ("records", "evals", "perplexity", "generations", "steps")}
    root = study_dir(folders)
    dose = root / DOSE_FILE if root is not None else None
    present = pd.concat([df[["label"]] for df in (loaded["records"], loaded["evals"])
                         if "label" in df.columns], ignore_index=True)
    labels = study_labels(present, folders) if len(present) else []
    return Tables(**loaded, pairs=run_pairs(folders),
                  dose=pd.read_parquet(dose) if dose and dose.exists() else pd.DataFrame(),
                  labels=labels, folders=folders, runs=run_table(folders),
                  audit=_audit(root and root / AUDIT_DIR),
                  audit_heldout=_audit(root and root / AUDIT_DIR / "heldout"))


def _audit(folder: Path | None):
    from .audit import read_audit

    return read_audit(folder) if folder is not None and (folder / "audit.json").exists() \
        else None


RUN_COLUMNS = ["run_id", "label", "objective", "family", "lr", "seed", "steps", "status",
               "seconds"]


def run_table(runs: Runs = None) -> pd.DataFrame:
    """One row per run: RUN_COLUMNS from its config and meta (family: `objectives.family_of`;
    seconds: from its start to its end, NaN where either is missing). A field a run's config
    lacks (a run made elsewhere) is NaN."""
    from .objectives import family_of

    rows = []
    for folder in run_list(runs):
        cfg, meta = read_config(folder), read_meta(folder)
        try:
            family = family_of(cfg.get("objective"), cfg.get("params") or {})
        except (KeyError, ValueError):
            family = None
        began, ended = (pd.to_datetime(meta.get(k), errors="coerce") for k in ("started", "ended"))
        rows.append({"run_id": folder.name, "label": run_label(cfg.get("objective"),
                     str((cfg.get("params") or {}).get("norm", "")), cfg.get("label")),
                     "objective": cfg.get("objective"), "family": family, "lr": cfg.get("lr"),
                     "seed": cfg.get("seed"), "steps": cfg.get("steps"),
                     "status": meta.get("status"),
                     "seconds": (ended - began).total_seconds() if pd.notna(began)
                     and pd.notna(ended) else float("nan")})
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


def run_pairs(runs: Runs = None) -> pd.DataFrame:
    """The texts of the pairs the runs trained and were evaluated on, from their configs' `data`
    and `heldout` paths: pair_id, prompt, chosen, rejected, the meta columns (lang, category…)
    and split ("train" / "heldout"). One row per pair id."""
    sources = {}
    for folder in run_list(runs):
        cfg = read_config(folder)
        for split, key in (("train", "data"), ("heldout", "heldout")):
            if cfg.get(key):
                sources.setdefault(str(resolve_path(cfg[key])), split)
    frames = []
    for path, split in sources.items():
        if Path(path).exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # skipped records are the loader's business
                frames.append(load_any(path).to_frame().assign(split=split))
    if not frames:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    return pd.concat(frames, ignore_index=True).drop_duplicates("pair_id").reset_index(drop=True)


__all__ = ["AUDIT_DIR", "DOSE_FILE", "RUN_COLUMNS", "STUDY_FILE", "Tables", "load_tables",
           "run_list", "run_pairs", "run_table", "study_dir", "study_labels"]
