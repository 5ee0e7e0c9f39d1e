"""The per-pair record store: one row per (run, step, pair), append-only parquet shards.

A run folder:

    <run>/config.json            the resolved configuration
    <run>/meta.json              schema version, status, versions, commit, device, times
    <run>/records/*.parquet      per-pair training records (RECORD_COLUMNS), one shard per flush
    <run>/evals/*.parquet        the same columns, then EVAL_COLUMNS, for held-out pairs (and
                                 config n_train_eval training pairs), at evaluation steps
    <run>/perplexity/*.parquet   held-out text: step, text_id, lang, nll_sum, n_tokens
    <run>/generations/*.parquet  step, probe_id, lang, kind, prompt, text
    <run>/steps/*.parquet        per-step gradient statistics (gradient noise scale), when on
    <run>/pairs.parquet          the per-pair facts of the pairs it trains and evaluates on
                                 (PAIRS_FILE: ids, split, meta, edit distance, and the texts
                                 where the run keeps them: config keep_text, text_kept_why)
    <run>/checkpoint/            the latest resumable state (prefstudy.checkpoint owns it)

Each shard is written to a temporary name and renamed into place, so a run killed at any moment
leaves only complete shards behind: what was written stays readable and at most the step in
progress is lost. A shard is named `r<rank>-s<first step>.parquet` (`shard_name`), so several
processes append side by side without ever writing the same file; a run that has ended has its
shards merged into one `all-s<number of shards merged>.parquet` per table (`RunWriter.compact`).

Every record row is built by `pair_records` (training, held-out evaluation, the integrations)
or completed by `as_records` (records from anywhere else), so a column is added in one place.

The invariants of a run's records, checked where they are written (`RunWriter.append`) and
where they are read (`load_table`), each failure one RunError naming the run, the table and
what is wrong (`check_record_rows`):
- one row per (step, pair_id) of a table (per (step, pair_id, batch) where rows carry their
  batch: under TRL one optimiser step spans micro-batches, which may repeat a pair);
- training records at every step from 1 to the last (a step missing between them is lost rows).
Training and held-out pairs are disjoint; where a user means them to overlap, a
PairsOverlapWarning says how many and which files (`check_disjoint`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .cache import write_atomic
from .columns import SchemaError, parquet_safe
from .errors import PrefstudyError
from .paths import in_repo

SCHEMA_VERSION = 2
# Versions this prefstudy reads, each upgraded to SCHEMA_VERSION as it is read (`_upgrade`).
# Version 1: the learning rate applied at a step was a column `lr` (now `step_lr`; `lr` is the
# run's configured learning rate, from its config), evaluations carried an empty `lr`, and records
# older still held the with-self cosine as `grad_cos`.
READABLE_VERSIONS = (1, 2)
PAIRS_FILE = "pairs.parquet"  # beside config.json: the per-pair facts (`RunWriter.pairs`)
TABLES = ("records", "evals", "perplexity", "generations", "steps")
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")

# Column → meaning. Every training record has these; `margin`, `pair_loss` and the reference
# columns are the objective's view (NaN where an objective has no reference).
RECORD_COLUMNS = {
    "run_id": "the run's name",
    "objective": "objective name: a key of prefstudy.objectives.OBJECTIVES, or under TRL a "
                 "combination label such as 'dpo+sft', 'ld(hinge)', 'wpo(dpo)'",
    "norm": "the objective's normalisation where it has one ('sum' / 'mean'), else ''",
    "seed": "training seed",
    "step": "optimiser step the pair was seen at (1-based; 0 = before training, evals only)",
    "pair_id": "stable pair id (prefstudy.data.PreferencePair.pair_id)",
    "len_p": "chosen response tokens",
    "len_n": "rejected response tokens",
    "loss_p": "token-mean cross-entropy of the chosen response, nats",
    "loss_n": "token-mean cross-entropy of the rejected response, nats",
    "nll_sum_p": "summed cross-entropy of the chosen response, nats",
    "nll_sum_n": "summed cross-entropy of the rejected response, nats",
    "gap": "loss_n − loss_p (token-mean)",
    "ref_logp_p": "reference log π_ref(chosen), summed (NaN without a reference)",
    "ref_logp_n": "reference log π_ref(rejected), summed (NaN without a reference)",
    "margin": "the objective's own margin (e.g. β·h for DPO)",
    "pair_loss": "the objective's per-pair loss",
    "step_lr": "learning rate the optimiser applied at this step (the schedule's value; NaN in "
               "evaluations). The run's configured learning rate is its config's `lr`",
    "grad_norm": "this pair's gradient norm (NaN unless gradient statistics are on)",
    "grad_cos": "leave-one-out cosine of this pair's gradient to the mean gradient of the OTHER "
                "pairs of its batch; orthogonal gradients give 0 (NaN unless on)",
    "grad_cos_with_self": "cosine of this pair's gradient to the batch-mean gradient including "
                          "the pair itself: biased, 1/√B for B orthogonal equal-norm gradients "
                          "(NaN unless on)",
    "batch": "the pairs the objective saw together (a batch-level objective such as AOT couples "
             "them): 's<step>-r<process>' in training, 'e<step>-<chunk>' in evaluation "
             "('e<step>-t<chunk>' for training pairs evaluated), "
             "'s<step>-r<process>-m<micro-batch>' under TRL",
}
# Columns of evaluations (the `evals` table) after RECORD_COLUMNS: which pairs a row is of, and
# what an evaluation measures against the starting model (`prefstudy.evaluate`). A run written
# before a column existed reads as EVAL_DEFAULTS gives it (`eval_columns`): every row held out,
# the measures NaN.
EVAL_COLUMNS = {
    "split": "'heldout': a held-out pair; 'train': one of the config's n_train_eval training "
             "pairs, evaluated like the held-out ones",
    "kl_sum_p": "KL(π_t ‖ π_0) of the next-token distribution over the whole vocabulary, of the "
                "policy from the starting model, at each chosen-response token (teacher-forced), "
                "summed over them, nats (÷ len_p: per token); 0 at step 0",
    "kl_sum_n": "the same over the rejected response's tokens (÷ len_n: per token)",
    "greedy_logp_sum": "log π_t of the starting model's greedy answer to the pair's prompt, summed "
                       "over its tokens (≤ 0): the squeezing effect (Ren & Sutherland 2025); NaN "
                       "for an empty answer and for training pairs",
    "len_g": "tokens of that greedy answer (through its end-of-turn token); 0 for training pairs",
}
EVAL_DEFAULTS = {"split": "heldout"}  # what a run written before a column reads as; else NaN
REQUIRED_COLUMNS = ("run_id", "objective", "seed", "step", "pair_id", "len_p", "len_n",
                    "loss_p", "loss_n", "gap")
# The columns whose value a run gives all rows of a step alike; the others are measured per pair.
STEP_COLUMNS = ("run_id", "objective", "norm", "seed", "step", "step_lr")

SHARD = re.compile(r"r(?P<rank>\d+)-s(?P<step>\d+)\.parquet")  # one append: rank, first step
MERGED = re.compile(r"all-s(?P<shards>\d+)\.parquet")  # one compaction: shards merged


# --------------------------------------------------------------------------- record rows


def run_label(objective: str | None, norm: str = "", label: str | None = None) -> str | None:
    """The name figures and tables give a run: its own `label`, else `objective[-norm]`."""
    return label or (f"{objective}-{norm}" if norm else objective)


def _values(per_pair, n: int) -> list:
    """A per-pair sequence (list, array, 1-D tensor) as a list; None → n NaNs."""
    if per_pair is None:
        return [math.nan] * n
    return per_pair.tolist() if hasattr(per_pair, "tolist") else list(per_pair)


def _derive(out: pd.DataFrame) -> None:
    """Fill in, where missing and derivable: loss_* = nll_sum_* / len_*, nll_sum_* = loss_* ·
    len_*, gap = loss_n − loss_p."""
    for side in ("p", "n"):
        nll, loss, n = f"nll_sum_{side}", f"loss_{side}", f"len_{side}"
        if loss not in out.columns and {nll, n} <= set(out.columns):
            out[loss] = out[nll] / out[n]
        if nll not in out.columns and {loss, n} <= set(out.columns):
            out[nll] = out[loss] * out[n]
    if "gap" not in out.columns and {"loss_p", "loss_n"} <= set(out.columns):
        out["gap"] = out.loss_n - out.loss_p


def pair_records(pair_ids: Sequence[str], *, logp_p=None, logp_n=None, len_p=None, len_n=None,
                 **columns: Any) -> pd.DataFrame:
    """One record per pair, in RECORD_COLUMNS order: the one builder of record rows.

    logp_p, logp_n: the policy's summed log π(response | prompt) per pair; len_p, len_n: response
        tokens per pair. They give nll_sum_* (= −logp_*), loss_* (= nll_sum_* / len_*) and gap.
    columns: any other column of RECORD_COLUMNS, as one value per pair (a sequence or 1-D
        tensor, Shape: (pairs,)) or one value for every row (run_id, step, step_lr, ...).
        Columns not given (or None) are NaN, except the STEP_COLUMNS, left out for `as_records`
        to fill in.
    """
    built = ("pair_id", "len_p", "len_n", "nll_sum_p", "nll_sum_n", "loss_p", "loss_n", "gap")
    unknown = sorted(set(columns) - set(RECORD_COLUMNS).difference(built))
    if unknown:
        raise TypeError(f"pair_records: unknown column(s) {unknown}; it takes "
                        f"{[c for c in RECORD_COLUMNS if c not in built]}")
    n = len(pair_ids)
    out = pd.DataFrame({"pair_id": list(pair_ids)})
    for column, value in columns.items():
        if value is not None:
            out[column] = value.tolist() if hasattr(value, "tolist") else value
    out["len_p"], out["len_n"] = _values(len_p, n), _values(len_n, n)
    out["nll_sum_p"] = [-v for v in _values(logp_p, n)]
    out["nll_sum_n"] = [-v for v in _values(logp_n, n)]
    _derive(out)
    for column in RECORD_COLUMNS:
        if column not in out.columns and column not in STEP_COLUMNS:
            out[column] = math.nan
    return out[[c for c in RECORD_COLUMNS if c in out.columns]]


def as_records(df: pd.DataFrame, **constants: Any) -> pd.DataFrame:
    """Any per-pair DataFrame as prefstudy records (RECORD_COLUMNS first, other columns kept).

    constants: values for columns the frame lacks, e.g. run_id="x", objective="dpo", seed=0.
    Derived where missing: loss_p = nll_sum_p / len_p (and _n), gap = loss_n − loss_p, the sums
    from the means and lengths. Optional columns still missing are NaN ('' for norm), and
    `label` is `run_label(objective, norm)` as `load_run` gives it. Raises SchemaError naming
    the required columns that are still missing.
    """
    out = df.copy()
    for key, value in constants.items():
        if key not in out.columns:
            out[key] = value
    _derive(out)
    check_records(out, "as_records")
    for column in RECORD_COLUMNS:
        if column not in out.columns:
            out[column] = "" if column == "norm" else math.nan
    if "label" not in out.columns:
        norms = out.norm.fillna("").astype(str)
        out["label"] = [run_label(str(o), norm) for o, norm in zip(out.objective, norms)]
    rest = [c for c in out.columns if c not in RECORD_COLUMNS]
    return out[list(RECORD_COLUMNS) + rest]


def eval_columns(df: pd.DataFrame, **columns: Any) -> pd.DataFrame:
    """Evaluation records: `df` (RECORD_COLUMNS, from `pair_records`) with every EVAL_COLUMNS
    column after them, set from `columns` (one value per row or one for all), else kept from
    `df`, else as a run written before it reads (EVAL_DEFAULTS; NaN otherwise). A `split` left
    empty reads as its default too (shards merged across versions)."""
    unknown = sorted(set(columns) - set(EVAL_COLUMNS))
    if unknown:
        raise TypeError(f"eval_columns: unknown column(s) {unknown}; it takes {list(EVAL_COLUMNS)}")
    out = df.assign(**{c: v.tolist() if hasattr(v, "tolist") else v for c, v in columns.items()})
    for column in EVAL_COLUMNS:
        if column not in out.columns:
            out[column] = EVAL_DEFAULTS.get(column, math.nan)
    out["split"] = out.split.fillna(EVAL_DEFAULTS["split"])
    rest = [c for c in out.columns if c not in EVAL_COLUMNS]
    return out[rest + list(EVAL_COLUMNS)]


# --------------------------------------------------------------------------- provenance


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the working tree (with '+dirty' when it has changes), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=5)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment() -> dict[str, Any]:
    """Versions and machine: what a reader needs to know where numbers came from."""
    import accelerate
    import torch
    import transformers

    from . import __version__

    device = "cpu: " + (platform.processor() or platform.machine())
    if torch.cuda.is_available():
        device = "cuda: " + torch.cuda.get_device_name(0)
    return {
        "prefstudy": __version__, "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "pandas": pd.__version__,
        "platform": platform.platform(), "device": device, "cpu_count": os.cpu_count(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
    }


# --------------------------------------------------------------------------- writing


def _atomic_write_json(path: Path, obj: Mapping) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _write_parquet(path: Path, table: pa.Table, *, merged: list[str] | None = None) -> Path:
    """`table` at `path`; its metadata states the record schema version and, for a merged file,
    the shards it replaces."""
    metadata = {**(table.schema.metadata or {}), b"prefstudy_schema": str(SCHEMA_VERSION).encode()}
    if merged is not None:
        metadata[b"prefstudy_merged"] = json.dumps(merged).encode()
    table = table.replace_schema_metadata(metadata)
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def shard_name(rank: int, step: int) -> str:
    """The file one append writes: `r<rank>-s<first step>.parquet` (matches SHARD)."""
    return f"r{rank:02d}-s{step:07d}.parquet"


def merged_name(n_shards: int) -> str:
    """The file one compaction writes: `all-s<number of shards merged>.parquet` (matches MERGED)."""
    return f"all-s{n_shards:07d}.parquet"


def _first_step(shard: Path) -> int | None:
    """The first step of an appended shard; None for a merged file."""
    match = SHARD.fullmatch(shard.name)
    return int(match["step"]) if match else None


@dataclass
class RunWriter:
    """Appends tables of a run folder. One writer per process; `rank` keeps their shards apart."""

    folder: Path
    rank: int = 0
    _last: dict = field(default_factory=dict, init=False, repr=False)  # table → last step

    def __post_init__(self):
        self.folder = Path(self.folder)

    def start(self, config: Mapping[str, Any], *, resume: bool = False) -> None:
        """Write config.json and meta.json (status running). Only rank 0 calls this."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(self.folder / "config.json", config)
        meta = read_meta(self.folder) if resume and (self.folder / "meta.json").exists() else {}
        meta.update({"schema_version": SCHEMA_VERSION, "run_id": config.get("run_id"),
                     "status": "running", "environment": environment()})
        meta.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if resume:
            meta["resumed"] = meta.get("resumed", 0) + 1
        _atomic_write_json(self.folder / "meta.json", meta)

    def pairs(self, facts: pd.DataFrame) -> Path:
        """Write the per-pair facts of the run's pairs (`inputs.facts`) to PAIRS_FILE."""
        table = pa.Table.from_pandas(parquet_safe(facts.reset_index(drop=True)),
                                     preserve_index=False)
        return _write_parquet(self.folder / PAIRS_FILE, table)

    def append(self, table: str, rows: pd.DataFrame | Iterable[Mapping], *, step: int) -> Path:
        """Write one shard of `table` holding `rows`; returns its path.

        Records and evaluations are checked first (RunError, nothing written): every row at
        `step`, one row per (step, pair) (`check_record_rows`), and training records at the step
        after the last this process wrote (none skipped)."""
        if table not in TABLES:
            raise ValueError(f"table={table!r}; allowed: {TABLES}")
        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        path = self.folder / table / shard_name(self.rank, step)
        if table in ("records", "evals") and len(df):
            where = f"{self.folder}: {table} of step {step}"
            if "step" in df.columns and (df.step != step).any():
                raise RunError(f"{where}: rows of step(s) "
                               f"{sorted(set(df.step[df.step != step].tolist()))[:5]} among them")
            check_record_rows(df.assign(step=step), where)
            if table == "records":
                last = self._last.get(table)
                if last is None:
                    last = max((_first_step(p) or 0 for p in self._shards(table)), default=0)
                if step > last + 1:
                    raise RunError(f"{where}: step(s) {last + 1}–{step - 1} of this process "
                                   f"(rank {self.rank}) were never written; records must hold "
                                   "every step")
        written = _write_parquet(path, pa.Table.from_pandas(df, preserve_index=False))
        self._last[table] = step
        return written

    def _shards(self, table: str) -> list[Path]:
        """This process's appended shards of `table`."""
        return [p for p in (self.folder / table).glob(f"r{self.rank:02d}-s*.parquet")
                if SHARD.fullmatch(p.name)]

    def finish(self, status: str, **extra: Any) -> None:
        """Mark the run's end: status, end time and any detail (step, reason)."""
        if status not in STATUSES:
            raise ValueError(f"status={status!r}; allowed: {STATUSES}")
        meta = read_meta(self.folder)
        meta.update({"status": status, "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})
        _atomic_write_json(self.folder / "meta.json", meta)

    def compact(self) -> None:
        """Merge each table's shards into one file, for a run that has ended.

        The merged file lists the shards it replaces in its metadata and readers skip those, so a
        kill between writing it and deleting them never counts a row twice.
        """
        for table in TABLES:
            folder = self.folder / table
            appended = [p for p in folder.glob("*.parquet") if _first_step(p) is not None]
            if len(appended) < 2:
                continue
            live = _live_shards(folder)
            names = [p.name for p in live]
            merged = pa.concat_tables([pq.read_table(p) for p in live], promote_options="default")
            target = _write_parquet(folder / merged_name(len(names)), merged, merged=names)
            for p in folder.glob("*.parquet"):
                if p.name in names and p != target:
                    p.unlink()

    def truncate(self, after_step: int) -> int:
        """Remove shards whose first step is past `after_step` (resume from a checkpoint)."""
        self._last.clear()
        removed = 0
        for table in TABLES:
            for shard in (self.folder / table).glob("*.parquet"):
                step = _first_step(shard)
                if step is not None and step > after_step:
                    shard.unlink()
                    removed += 1
        return removed


# --------------------------------------------------------------------------- reading


class RunError(PrefstudyError):
    """A run folder whose files cannot be read; the message names the file and the run."""


class RunsLeftOutWarning(UserWarning):
    """A folder among the runs that looks like a run but cannot be read as one (no meta.json)."""


# Columns each table must have to be read at all (records and evals: the per-pair record).
TABLE_COLUMNS = {"records": REQUIRED_COLUMNS, "evals": REQUIRED_COLUMNS,
                 "perplexity": ("step", "text_id", "nll_sum", "n_tokens"),
                 "generations": ("step", "probe_id", "text"), "steps": ("step",)}


def _read_json(run: str | os.PathLike, name: str) -> dict[str, Any]:
    path = Path(run) / name
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing; {run} is not a complete run folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: damaged {name} of run {Path(run).name} ({e})") from None
    except OSError as e:
        raise RunError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(value, dict):
        raise RunError(f"{path}: damaged {name} of run {Path(run).name} (not a JSON object)")
    return value


def read_meta(run: str | os.PathLike) -> dict[str, Any]:
    if not (Path(run) / "meta.json").exists():
        raise FileNotFoundError(f"{run}: not a run folder (no meta.json)")
    meta = _read_json(run, "meta.json")
    if meta.get("schema_version") not in READABLE_VERSIONS:
        raise SchemaError(f"{run}: record schema version {meta.get('schema_version')!r}; this "
                          f"prefstudy reads versions {list(READABLE_VERSIONS)}. Re-run it, or "
                          "read it with the prefstudy version that wrote it.")
    return meta


def read_config(run: str | os.PathLike) -> dict[str, Any]:
    return _read_json(run, "config.json")


def _shard_metadata(shard: Path) -> dict[bytes, bytes]:
    try:
        return pq.read_schema(shard).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise RunError(f"{shard}: damaged parquet shard of run {shard.parent.parent.name} "
                       f"({e})") from None


def _live_shards(folder: Path) -> list[Path]:
    """The shards to read: merged files, and the shards that no merged file replaces."""
    shards = sorted(p for p in folder.glob("*.parquet") if p.is_file())
    replaced = set()
    for p in shards:
        if MERGED.fullmatch(p.name):
            replaced.update(json.loads(_shard_metadata(p).get(b"prefstudy_merged", b"[]")))
    return [p for p in shards if p.name not in replaced]


def _read_shard(shard: Path, table: str) -> pd.DataFrame:
    """One shard, checked (its schema version, the columns its table needs) and upgraded to
    SCHEMA_VERSION (`_upgrade`)."""
    version = _shard_metadata(shard).get(b"prefstudy_schema", b"?").decode(errors="replace")
    if version not in {str(v) for v in READABLE_VERSIONS}:
        raise SchemaError(f"{shard}: record schema version {version}; this prefstudy reads "
                          f"versions {list(READABLE_VERSIONS)}")
    try:
        df = pd.read_parquet(shard)
    except (pa.ArrowException, OSError) as e:
        raise RunError(f"{shard}: damaged parquet shard of run {shard.parent.parent.name} "
                       f"({e})") from None
    missing = [c for c in TABLE_COLUMNS[table] if c not in df.columns]
    if missing:
        raise SchemaError(f"{shard}: a {table} shard without the required column(s) {missing}")
    df = _upgrade(df, int(version), table)
    return eval_columns(df) if table == "evals" else df


def _upgrade(df: pd.DataFrame, version: int, table: str) -> pd.DataFrame:
    """A shard of schema `version` in SCHEMA_VERSION's columns. From version 1: the applied
    learning rate `lr` of records and steps becomes `step_lr`, evaluations' empty `lr` is
    dropped, and a `grad_cos` without `grad_cos_with_self` (the with-self cosine) becomes
    `grad_cos_with_self`, its leave-one-out `grad_cos` derived by `_leave_one_out_cosines`."""
    if version >= 2:
        return df
    if "lr" in df.columns:
        df = df.rename(columns={"lr": "step_lr"}) if table in ("records", "steps") \
            else df.drop(columns="lr")
    if "grad_cos" in df.columns and "grad_cos_with_self" not in df.columns:
        df = df.rename(columns={"grad_cos": "grad_cos_with_self"}).assign(grad_cos=math.nan)
    return df


def _leave_one_out_cosines(run: str | os.PathLike, df: pd.DataFrame) -> pd.DataFrame:
    """Fill grad_cos, the leave-one-out cosine, where version-1 records hold only
    grad_cos_with_self: exactly, from that cosine, grad_norm, the step's |ḡ|² (the steps
    table's mean_grad_sq) and the step's batch size (its rows), by
    gradstats.leave_one_out_cosine. Left NaN where the steps table lacks the step."""
    todo = df.grad_cos.isna() & df.grad_cos_with_self.notna()
    if not todo.any():
        return df
    steps = load_table(run, "steps")
    if "mean_grad_sq" not in steps.columns:
        return df
    import torch

    from .gradstats import leave_one_out_cosine

    per_step = steps.drop_duplicates("step").set_index("step").mean_grad_sq
    norm, with_self, mean_sq, n = (
        torch.tensor(column.to_numpy(float))
        for column in (df.grad_norm, df.grad_cos_with_self, df.step.map(per_step),
                       df.groupby("step").step.transform("size")))
    dot = with_self * norm * mean_sq.sqrt()
    loo = leave_one_out_cosine(dot, norm ** 2, mean_sq, n).numpy()
    return df.assign(grad_cos=np.where(todo, loo, df.grad_cos))


class PairsOverlapWarning(UserWarning):
    """Training and held-out pairs that share pairs: held-out numbers on those are not held out."""


def record_key(df: pd.DataFrame) -> list[str]:
    """The columns that name one record row: step, pair_id, and the batch where rows carry one
    (TRL's micro-batches of one optimiser step may repeat a pair)."""
    has_batch = "batch" in df.columns and df["batch"].notna().any()
    return ["step", "pair_id", *(["batch"] if has_batch else [])]


def check_record_rows(df: pd.DataFrame, where: str, *, every_step: bool = False) -> None:
    """RunError naming `where` unless `df` (records or evals) holds one row per `record_key`;
    with every_step, also unless its steps run from 1 to the last without a gap (training
    records: a missing step is rows lost)."""
    if not len(df) or not {"step", "pair_id"} <= set(df.columns):
        return
    key = record_key(df)
    repeated = df.duplicated(key, keep=False)
    if repeated.any():
        first = df[repeated].iloc[0]
        raise RunError(f"{where}: {int(df.duplicated(key).sum())} row(s) repeat a "
                       f"({', '.join(key)}) already there, e.g. pair {first.pair_id} at step "
                       f"{first.step}: one row per pair and step (a shard written twice, or "
                       "copied?)")
    if every_step:
        steps = set(pd.to_numeric(df.step, errors="coerce").dropna().astype(int).tolist())
        missing = sorted(set(range(1, max(steps, default=0) + 1)) - steps)
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" …" if len(missing) > 5 else "")
            raise RunError(f"{where}: no rows at step(s) {shown} of 1–{max(steps)} "
                           f"({len(missing)} missing): a shard lost or deleted?")


def check_disjoint(train_ids: Iterable[str], heldout_ids: Iterable[str], *, train: Any,
                   heldout: Any, stacklevel: int = 2) -> int:
    """How many pair ids are both training and held-out pairs; a PairsOverlapWarning naming
    how many, one of them and where each set comes from (`train`, `heldout`) when any are."""
    held, trained = list(dict.fromkeys(heldout_ids)), set(train_ids)
    shared = [pid for pid in held if pid in trained]
    if shared:
        warnings.warn(f"{len(shared)} of the {len(held)} held-out pairs ({heldout}) are also "
                      f"training pairs ({train}), e.g. {shared[0]}: their held-out numbers are "
                      "not held out", PairsOverlapWarning, stacklevel=stacklevel + 1)
    return len(shared)


def load_table(run: str | os.PathLike, table: str = "records", *,
               meta: Mapping | None = None) -> pd.DataFrame:
    """All shards of one table of one run, in step order (an empty frame if none), in
    SCHEMA_VERSION's columns whatever version wrote them (`_upgrade`, `_leave_one_out_cosines`).
    Records and evaluations are checked (`check_record_rows`: RunError on a repeated row or,
    in records, a step missing).
    meta: the run's meta.json where the caller has read it already (its version is checked).
    """
    if table not in TABLES:
        raise ValueError(f"table={table!r}; allowed: {TABLES}")
    if meta is None:
        read_meta(run)  # checks the schema version
    shards = _live_shards(Path(run) / table)
    if not shards:
        return pd.DataFrame()
    df = pd.concat([_read_shard(shard, table) for shard in shards], ignore_index=True)
    if table in ("records", "evals"):  # RunError: repeated rows, a step missing
        check_record_rows(df, f"{Path(run)}/{table}", every_step=table == "records")
    if table == "records" and {"grad_cos", "grad_cos_with_self"} <= set(df.columns):
        df = _leave_one_out_cosines(run, df)
    order = [c for c in ("step", "pair_id", "text_id", "probe_id") if c in df.columns]
    return df.sort_values(order, kind="stable").reset_index(drop=True) if order else df


def load_run(run: str | os.PathLike, table: str = "records", config: Mapping | None = None,
             meta: Mapping | None = None) -> pd.DataFrame:
    """A run's table as a tidy DataFrame.

    Adds, where the table lacks them: run_id, objective, norm, seed, and `label` (the name a study
    gives the configuration, by default `objective[-norm]`); and always the run's `status` and
    `diverged_step` (NaN unless it diverged). config, meta: the run's config.json and meta.json
    where the caller has read them already.
    """
    meta = read_meta(run) if meta is None else meta
    cfg = read_config(run) if config is None else config
    df = load_table(run, table, meta=meta)
    norm = (cfg.get("params") or {}).get("norm", "")
    label = run_label(cfg.get("objective"), norm, cfg.get("label"))
    for key, value in (("run_id", cfg.get("run_id")), ("objective", cfg.get("objective")),
                       ("norm", norm), ("seed", cfg.get("seed")), ("label", label)):
        if key not in df.columns:
            df[key] = value
    df["status"] = meta.get("status")
    df["diverged_step"] = meta.get("diverged_step", float("nan"))
    return df


def default_runs_dir() -> Path:
    """The committed study runs (`$PREFSTUDY_RUNS` overrides)."""
    env = os.environ.get("PREFSTUDY_RUNS")
    return Path(env) if env else in_repo("reports", "runs")


def _looks_like_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("config.json", "checkpoint", *TABLES))


def run_folders(root: str | os.PathLike | None = None) -> list[Path]:
    """Run folders directly under `root` (default: the committed study runs), by name.

    A folder that looks like a run (a config.json, a checkpoint or a table folder) but has no
    meta.json is left out with a RunsLeftOutWarning naming it, never silently.
    """
    root = Path(root) if root else default_runs_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of runs")
    if (root / "meta.json").exists():
        return [root]
    folders = sorted(p.parent for p in root.glob("*/meta.json"))
    left_out = sorted(p for p in root.glob("*") if p.is_dir() and p not in folders
                      and not p.name.startswith(".") and _looks_like_a_run(p))
    if left_out:
        warnings.warn(f"{root}: left out {len(left_out)} folder(s) without meta.json, not "
                      f"readable as runs: {', '.join(p.name for p in left_out)}",
                      RunsLeftOutWarning, stacklevel=2)
    return folders


def run_list(runs: str | os.PathLike | Iterable | None = None) -> list[Path]:
    """The run folders `runs` names: those under a folder (or the folder itself when it is one
    run), a list of run folders as given, or the committed study's runs for None."""
    if runs is None or isinstance(runs, (str, os.PathLike)):
        return run_folders(runs)
    return [Path(r) for r in runs]


def check_folders(folders: Sequence[Path]) -> None:
    """RunError where the run folders given name one folder twice, or two folders of one name
    (what every table keys its runs by)."""
    seen: dict[str, Path] = {}
    for folder in map(Path, folders):
        other = seen.setdefault(folder.name, folder)
        if other is folder:
            continue
        if os.path.abspath(other) == os.path.abspath(folder):
            raise RunError(f"run folder {folder} given twice; each run is read once")
        raise RunError(f"two run folders named {folder.name!r} among the runs given: {other} and "
                       f"{folder}; read them apart, or rename one")


def load_runs(runs: str | os.PathLike | Iterable | None = None,
              table: str = "records") -> pd.DataFrame:
    """Several runs' tables in one tidy DataFrame.

    runs: a folder of run folders, a list of run folders, or None for the committed study runs.
    """
    folders = run_list(runs)
    if not folders:
        raise FileNotFoundError(f"no runs found in {runs or default_runs_dir()}")
    check_folders(folders)
    frames = [load_run(f, table) for f in folders]
    owner: dict = {}
    for folder, frame in zip(folders, frames):  # a copied run folder: its rows carry one id
        for run_id in frame["run_id"].unique() if "run_id" in frame.columns else ():
            other = owner.setdefault(run_id, folder)
            if other != folder:
                raise RunError(f"run id {run_id!r} in two run folders: {other} and {folder} "
                               "(a copied run folder?); read them apart, or remove the copy")
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# What `runs_summary` shows of each run's config and meta besides its losses.
SUMMARY_COUNTS = ("records_skipped", "pairs_dropped_by_truncation", "pairs_truncated")


def _summary_row(folder: Path) -> dict[str, Any]:
    meta, cfg = read_meta(folder), read_config(folder)
    rec = load_table(folder)
    by_step = rec.groupby("step")[["loss_p", "loss_n"]].mean() if len(rec) else None

    def at(column: str, i: int) -> float:
        return float(by_step[column].iloc[i]) if by_step is not None else float("nan")

    return {
        "run_id": cfg.get("run_id", folder.name), "objective": cfg.get("objective"),
        "lr": cfg.get("lr", float("nan")), "seed": cfg.get("seed"), "status": meta.get("status"),
        "steps": int(rec.step.max()) if len(rec) else 0,
        "loss_p_first": at("loss_p", 0), "loss_p_final": at("loss_p", -1),
        "loss_n_first": at("loss_n", 0), "loss_n_final": at("loss_n", -1),
        "above_uniform_step": meta.get("above_uniform_step", float("nan")),
        **{k: cfg.get(k, float("nan")) for k in SUMMARY_COUNTS},
        "error": (f"{meta.get('error_type')} at step {meta.get('failed_step')}: "
                  f"{meta.get('error')}" if meta.get("status") == "failed" else ""),
        "path": str(folder),
    }


def runs_summary(runs: str | os.PathLike | Iterable | None = None) -> pd.DataFrame:
    """One row per run: run_id, objective, lr, seed, status, steps, first and final step-mean loss_p
    and loss_n, above_uniform_step (first step a per-token loss passed ln|V|, NaN if none),
    what loading and truncation left out (SUMMARY_COUNTS), the error of a failed run, path."""
    return pd.DataFrame([_summary_row(folder) for folder in run_list(runs)])


def check_records(df: pd.DataFrame, where: str = "records") -> pd.DataFrame:
    """Raise SchemaError naming the missing columns if `df` cannot serve as per-pair records."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"{where}: missing required column(s) {missing}; a per-pair record "
                          f"needs {list(REQUIRED_COLUMNS)} (see prefstudy.records.RECORD_COLUMNS)")
    return df
