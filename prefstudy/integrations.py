"""Per-pair records for runs trained elsewhere: TRL's DPOTrainer and a Hugging Face Trainer.

TRL and the Hugging Face Trainer log batch means only. The trainers here are drop-in subclasses
that also write prefstudy's per-pair records (prefstudy.records.RECORD_COLUMNS, one row per pair
per optimiser step) to a run folder, so `load_run`, the diagnostics, the figures and the widgets
work on the run unchanged:

    from prefstudy.integrations import PerPairDPOTrainer      # needs the `trl` extra

    trainer = PerPairDPOTrainer(model=model, ref_model=ref, args=DPOConfig(...),
                                train_dataset=dataset, processing_class=tokenizer,
                                records_dir="runs/my-dpo")   # default: <output_dir>/prefstudy
    trainer.train()
    df = prefstudy.records.load_run("runs/my-dpo")

Building the trainer opens its records folder as `prefstudy train` opens a run folder: created,
checked writable and locked (prefstudy.locks) until training ends, so a second trainer or process
writing into it is refused; so is a train_dataset whose pair ids repeat. Each refusal is one line,
raised before TRL tokenises anything.

`PerPairDPOTrainer` supports TRL 1.16 (`SUPPORTED_TRL`, the `trl` extra pins it). It reads the
per-token log-probabilities inside TRL's DPO loss (the fused LM head TRL 1.15 introduced), which
other versions compute differently or may change, so with any other version building a trainer
fails, with a message naming the supported range. (TRL 1.15's loss code is the same, but its
DPOTrainer runs only where Triton does, so it was never tested here and is not admitted.) Nothing
is computed twice: the policy's and the reference's per-token log-probs are taken from TRL's own
forward passes (forward hooks, only inside a training step's `compute_loss`), or from the batch
when TRL precomputed the reference. What is recorded:

- step: the optimiser step (trainer.state.global_step + 1), the same for every micro-batch of a
  gradient-accumulation step; rows of step s are computed with the weights before update s.
  Evaluation batches are not recorded.
- pair_id: `PreferencePair.pair_id` of the dataset row's prompt / chosen / rejected (the id
  prefstudy's own loaders give the same pair), or the dataset's own `pair_id` column where it has
  one, else a hash of the row's token ids.
- len_*, loss_*, nll_sum_*, gap: from TRL's per-token log-probs of the completion tokens it scores
  (after its tokenisation, chat template and truncation; the EOS TRL appends is a response token).
- ref_logp_*: TRL's summed reference log-probs (NaN with ld_alpha and precompute_ref_log_probs:
  TRL then precomputes only LD-weighted sums, which serve the loss but are not log π_ref).
- batch: 's<step>-r<process>-m<micro-batch>', the pairs TRL's loss saw together (AOT sorts
  within it, sft averages over its tokens).
- objective, margin, pair_loss: TRL's loss as prefstudy computes it per pair (`trl_loss`, in
  prefstudy.trlloss with the rest of the mapping; the terms and their parameters are kept in config.json as `trl_loss`, `params` holds the objective's
  parameters, or every term's for a combination). Every TRL 1.16 loss_type maps to a registry
  objective (`TRL_OBJECTIVES`; each objective's `trl` says the same): sigmoid → dpo, hinge, ipo
  (norm="mean", TRL's β as τ), exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot,
  aot_unpaired, apo_zero, apo_down, discopop (discopop_tau as τ), sigmoid_norm → book_dpo with
  w_chosen = w_rejected = 1, sft; β, label_smoothing, f_divergence_type and
  f_alpha_divergence_coef are passed on where the objective takes them. Besides:
    * loss_weights (several loss types, e.g. ["sigmoid", "sft"], DPO + NLL): pair_loss =
      Σ_k weight_k · loss_k, the weighted sum of each term's own per-pair loss; objective is the
      terms joined by "+", a weight other than 1 in front ("dpo+sft", "dpo+0.5*sft"); margin is
      the first term's other than sft.
    * sft: TRL's term is one number per micro-batch, the token-mean NLL of the chosen responses
      (Σ NLL / N over its N chosen tokens). A pair's row holds its own share of it,
      nll_sum_p · B / N (B pairs), so the rows average to TRL's term exactly and each row is what
      that pair's tokens contribute, gradient included; norm is "batch" (the registry's sft
      divides by the pair's own length instead, which does not average to TRL's loss).
    * ld_alpha: sigmoid (reverse KL) → ld_dpo with α; every other loss type but sft (which TRL
      computes from the unweighted log-probs) is computed on LD-DPO's length-desensitised
      log-probs of all four sides, recorded as "ld(<objective>)".
    * use_weighting (WPO): each term's per-pair loss times the pair's WPO weight
      (`logprobs.wpo_weights`, from the log Σ_v π² TRL's fused head returns), before
      loss_weights, as TRL; recorded as "wpo(<objective>)".
  Every micro-batch checks that the rows' mean equals the loss TRL back-propagates and stops the
  run if it does not, so the recorded losses are the ones TRL optimised (meta.json keeps the
  largest difference as `loss_parity`; a Mixture-of-Experts router loss is batch-level, left out
  of pair_loss and of the check). Refused when the trainer is built, naming the option: what
  has no per-pair counterpart (a loss_type TRL 1.16 does not have; f_divergence_type with a loss
  type without an f-divergence form, which TRL refuses too), what TRL 1.16 itself cannot train
  (use_weighting with sft or hinge: it fails mid-step), and option values the prefstudy
  objective does not allow (e.g. robust's label_smoothing >= 0.5, β <= 0).

`PerExampleLossTrainer` is the modest version for a plain `transformers.Trainer`: you give it a
function returning one loss per example (and, optionally, the chosen and rejected log-probs); it
back-propagates the batch mean and records what the function returned. Columns it was not given
are NaN, and the diagnostics that need them (length, collapse) have nothing to work on.

Records from anywhere else: `as_records(df, ...)` (prefstudy.records.as_records) turns any per-pair
DataFrame with the required columns (prefstudy.records.REQUIRED_COLUMNS, or nll_sum_*/len_* from
which loss_* and gap are derived) into the full record schema; the diagnostics take such a frame as
they take `load_run`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from transformers import Trainer, TrainerCallback

from . import locks
from .data import DataError, UnusableRecord, parse_record
from .logprobs import TokenLogps, split_pairs
from .objectives import PairLogps, compute
from .records import RunWriter, as_records, pair_records
from .trlloss import (  # TRL's loss per pair; re-exported here, where users import them
    SUPPORTED_TRL,
    TRL_OBJECTIVES,
    TrlComponent,
    TrlLoss,
    TrlMapping,
    loss_types,
    trl_loss,
)

TRL_INSTALL = f"pip install 'trl{SUPPORTED_TRL}'"
EXTRA_INSTALL = "pip install -e '.[trl]'"  # the `trl` extra, from a prefstudy checkout

# --------------------------------------------------------------------------- pair ids


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def text_pair_id(example: Mapping) -> str:
    """The pair id of a dataset row with prompt / chosen / rejected text.

    The same id prefstudy's loaders give the pair (plain strings, conversational messages with or
    without a separate prompt, Anthropic-HH transcripts). A row they would refuse (an empty or
    identical response, messages of another shape) gets a hash of its text instead.
    """
    fields = {k: example[k] for k in ("prompt", "chosen", "rejected") if k in example}
    try:
        return parse_record(fields, "dataset row").pair_id
    except (DataError, UnusableRecord):  # a row prefstudy would not read as a pair:
        return _digest(fields)  # still a stable id


def token_pair_id(example: Mapping) -> str:
    """A hash of the token-id fields of a tokenised row (`*_ids`), for rows without text."""
    ids = {k: v.tolist() if hasattr(v, "tolist") else list(v)
           for k, v in example.items() if k.endswith("_ids") and v is not None}
    return _digest(ids or dict(example))


def _has_pair_id_column(dataset) -> bool:
    """Whether a dataset (a `datasets` dataset, or a sequence of row mappings) has its own
    `pair_id` column."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        return "pair_id" in columns
    if isinstance(dataset, Sequence) and len(dataset) and isinstance(dataset[0], Mapping):
        return "pair_id" in dataset[0]
    return False


def _pair_id_column(dataset) -> list[str] | None:
    """The `pair_id` of every row of a map-style dataset (a `datasets` Dataset or a sequence of
    row mappings); None where it cannot be read without iterating a stream, or rows lack one."""
    if isinstance(getattr(dataset, "column_names", None), list) and hasattr(dataset, "__len__"):
        return [str(p) for p in dataset["pair_id"]] if "pair_id" in dataset.column_names else None
    if isinstance(dataset, Sequence) and all(isinstance(r, Mapping) and "pair_id" in r
                                             for r in dataset):
        return [str(r["pair_id"]) for r in dataset]
    return None


def check_unique_pair_ids(dataset, *, derived: bool = False) -> None:
    """DataError, one line, where a dataset's `pair_id` column repeats an id: the records hold
    one row per pair and step, so two rows with one id cannot both be recorded.

    derived: the ids were computed from the rows' text (`with_pair_ids`), so a repeat is the
    same pair twice. A stream (IterableDataset) is not read ahead; its rows are checked as
    they are written (prefstudy.records).
    """
    ids = _pair_id_column(dataset)
    if ids is None:
        return
    first: dict[str, int] = {}
    repeats = []  # (first row, repeating row, pair id)
    for i, pid in enumerate(ids):
        if pid in first:
            repeats.append((first[pid], i, pid))
        first.setdefault(pid, i)
    if not repeats:
        return
    (a, b, pid), n = repeats[0], len({p for *_, p in repeats})
    what = ("the same pair (prompt, chosen, rejected): drop the repeats, or give each row its "
            "own pair_id column" if derived else "the same pair_id: make the column unique")
    raise DataError(f"train_dataset: {n} pair id(s) repeat (e.g. rows {a} and {b}, pair_id "
                    f"{pid!r}, are {what}); prefstudy records one row per pair and step")


def _records_folder(records_dir, args) -> Path | None:
    """The records folder: records_dir, else <output_dir>/prefstudy; None while unknown."""
    if records_dir:
        return Path(records_dir)
    if args is not None and getattr(args, "output_dir", None):
        return Path(args.output_dir) / "prefstudy"
    return None


def _add_pair_id(example: Mapping) -> dict[str, str]:
    return {"pair_id": text_pair_id(example)}


def with_pair_ids(dataset):
    """A `datasets` dataset with a `pair_id` column from its text, unless it has one or no text.

    Other datasets are returned as they are; their rows get `token_pair_id` at collation.
    """
    try:
        from datasets import Dataset, IterableDataset
    except ImportError:
        return dataset
    if not isinstance(dataset, (Dataset, IterableDataset)):
        return dataset
    first = next(iter(dataset), None)
    if first is None or "pair_id" in first or not {"chosen", "rejected"} <= set(first):
        return dataset
    if isinstance(dataset, Dataset):
        return dataset.map(_add_pair_id, desc="prefstudy pair ids")
    return dataset.map(_add_pair_id)


@dataclass
class PairIdCollator:
    """Wraps a data collator: takes `pair_id` out of each row and hands the batch a list of them.

    Rows without a `pair_id` get `token_pair_id`. The wrapped collator never sees the strings.
    """

    collator: Callable

    def __call__(self, features: Sequence):
        ids, rows = [], []
        for feature in features:
            if isinstance(feature, Mapping):
                feature = dict(feature)
                pid = feature.pop("pair_id", None)
                ids.append(str(pid) if pid is not None else token_pair_id(feature))
            else:
                ids.append(_digest(repr(feature)))
            rows.append(feature)
        batch = self.collator(rows)
        batch["pair_id"] = ids
        return batch


# --------------------------------------------------------------------------- per-pair rows


def _floats(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().float()


def _side(t: TokenLogps | None) -> tuple[Tensor | None, Tensor | None]:
    """(summed log-probs, response tokens) of one side of the pairs; (None, None) without it."""
    return (None, None) if t is None else (_floats(t.sum), t.mask.sum(-1))


@dataclass
class PerExample:
    """What a per-example loss hands the recorder. Every tensor has Shape: (batch,).

    loss:      what the optimiser minimises, per example (the trainer back-propagates its mean).
    chosen, rejected: the policy's log-probs of the chosen and rejected responses; they give
               len_*, loss_*, nll_sum_* and gap. Without them those columns are NaN.
    ref_chosen, ref_rejected: summed reference log-probs, where there is a reference.
    margin:    the objective's margin, where it has one.
    """

    loss: Tensor
    chosen: TokenLogps | None = None
    rejected: TokenLogps | None = None
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    margin: Tensor | None = None

    @classmethod
    def from_objective(cls, name: str, logps: PairLogps, **params) -> PerExample:
        """A registered prefstudy objective's per-pair loss and margin, with its inputs."""
        out = compute(name, logps, **params)
        return cls(out.loss, logps.chosen, logps.rejected,
                   None if logps.ref_chosen is None else logps.ref_chosen.sum,
                   None if logps.ref_rejected is None else logps.ref_rejected.sum, out.margin)

    def rows(self, pair_ids: Sequence[str], **constants: Any) -> pd.DataFrame:
        """One record per example (prefstudy.records.pair_records): `constants` (run_id,
        objective, norm, seed, step, step_lr, batch) and what this holds; NaN for what it does not."""
        n = len(pair_ids)
        if self.loss.shape != (n,):
            raise ValueError(f"expected one loss per example, Shape: ({n},); got a loss of shape "
                             f"{tuple(self.loss.shape)}")
        (logp_p, len_p), (logp_n, len_n) = _side(self.chosen), _side(self.rejected)
        return pair_records(
            pair_ids, logp_p=logp_p, logp_n=logp_n, len_p=len_p, len_n=len_n,
            ref_logp_p=_floats(self.ref_chosen), ref_logp_n=_floats(self.ref_rejected),
            margin=_floats(self.margin), pair_loss=_floats(self.loss), **constants)

    def finite(self) -> bool:
        parts = [self.loss] + [s.sum for s in (self.chosen, self.rejected) if s is not None]
        return all(bool(torch.isfinite(t.detach()).all()) for t in parts)


# --------------------------------------------------------------------------- the recorder


LOCK_HINT = ("pass another records_dir (a trainer holds its records folder from when it is "
             "built until its training ends)")


def _lock_records(folder: Path):
    """The records folder, created, checked writable and locked (prefstudy.locks, as `prefstudy
    train` locks its run folder); RunError, one line, where it cannot be."""
    locks.check_writable(folder, create=True)
    return locks.acquire(folder, writer="recording", hint=LOCK_HINT)


class _Recorder:
    """Buffers one optimiser step's rows, writes them as one shard, and keeps the run's meta.

    The main process holds the records folder's lock (`lock`, taken when the trainer is built)
    until a training ends; a later training takes it again (`hold`)."""

    def __init__(self, folder: Path, rank: int, is_main: bool, config: dict[str, Any],
                 lock=None):
        self.writer = RunWriter(folder, rank=rank)
        self.is_main, self.config, self.lock = is_main, config, lock
        self.pending: list[pd.DataFrame] = []  # records of the optimiser step in progress
        self.nonfinite_step: int | None = None
        self.started = False

    def hold(self) -> None:
        """Take the records folder's lock (main process), unless it is held already."""
        if self.is_main and not (self.lock is not None and self.lock.is_locked):
            self.lock = _lock_records(self.writer.folder)

    def release(self) -> None:
        if self.lock is not None and self.lock.is_locked:
            self.lock.release()

    def start(self, global_step: int) -> None:
        self.hold()
        self.started = True
        if not self.is_main:
            return
        resume = global_step > 0 and (self.writer.folder / "meta.json").exists()
        if resume:
            self.writer.truncate(after_step=global_step)  # steps after the checkpoint are redone
        self.writer.start(self.config, resume=resume)

    def micro_batches(self, step: int) -> int:
        """How many micro-batches of optimiser step `step` have been added so far."""
        return sum(1 for f in self.pending if len(f) and int(f.step.iloc[0]) == step)

    def add(self, records: pd.DataFrame, finite: bool) -> None:
        self.pending.append(records)
        if not finite and self.nonfinite_step is None and len(records):
            self.nonfinite_step = int(records.step.iloc[0])

    def flush(self, step: int) -> None:
        frames, self.pending = [f[f.step == step] for f in self.pending], []
        frames = [f for f in frames if len(f)]
        if frames:
            self.writer.append("records", pd.concat(frames, ignore_index=True), step=step)

    def finish(self, status: str, **detail: Any) -> None:
        self.pending = []  # a step that never reached the optimiser is not recorded
        if not (self.is_main and self.started):  # failed before training began: no run folder
            self.release()
            return
        if status == "completed" and self.nonfinite_step is not None:
            status, detail = "diverged", {
                **detail, "diverged_step": self.nonfinite_step,
                "reason": "non-finite per-pair loss or log-probs (the trainer kept training)"}
        try:
            self.writer.finish(status, **detail)
        finally:
            self.release()


class RecordsCallback(TrainerCallback):
    """Starts the run folder when training begins (holding its lock, taken again where an earlier
    training released it) and writes each optimiser step's rows."""

    def __init__(self, recorder: _Recorder):
        self.recorder = recorder

    def on_train_begin(self, args, state, control, **kwargs):
        self.recorder.start(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.recorder.flush(state.global_step)


class _Recording:
    """Mixin for `transformers.Trainer` subclasses that record per-pair rows.

    Keyword arguments it adds:
      records_dir: the run folder (default <output_dir>/prefstudy).
      run_id:      the run's name (default: the name of output_dir).
      label:       the name figures give the run (default objective[-norm]).
    Subclasses implement `_objective(args) -> (name, resolved params)` and, in `compute_loss`,
    call `self._record(PerExample, pair_ids)` for training batches.

    Before the parent trainer is built (before TRL tokenises anything), what cannot be recorded
    is refused, each in one line: the objective's options (`_objective`), a train_dataset whose
    pair ids repeat (`check_unique_pair_ids`), and a records folder that cannot be created or
    written, or that another process or trainer holds (its lock, prefstudy.locks, is taken then
    by the main process and held until training ends). Without `args` and `records_dir` the
    folder is known, and locked, only once the parent has built its default arguments.
    """

    def __init__(self, *args, records_dir: str | os.PathLike | None = None,
                 run_id: str | None = None, label: str | None = None, **kwargs):
        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs)
        given = bound.arguments.get("args")
        objective = self._objective(given) if given is not None else None  # fail before loading
        if bound.arguments.get("train_dataset") is not None:
            dataset = bound.arguments["train_dataset"]
            derived = not _has_pair_id_column(dataset)
            dataset = bound.arguments["train_dataset"] = with_pair_ids(dataset)
            check_unique_pair_ids(dataset, derived=derived)
        folder = _records_folder(records_dir, given)
        lock, created = None, folder is not None and not folder.exists()
        if folder is not None and given is not None and given.process_index == 0:
            lock = _lock_records(folder)
        try:
            super().__init__(*bound.args, **bound.kwargs)
            folder = folder or _records_folder(records_dir, self.args)
            if lock is None and self.accelerator.is_main_process:
                lock = _lock_records(folder)
        except BaseException:
            if lock is not None:
                lock.release()
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # the folder this opened, while it is still empty
            raise
        name, params = objective or self._objective(self.args)
        self.data_collator = PairIdCollator(self.data_collator)
        run_id = run_id or Path(self.args.output_dir).resolve().name
        self._constants = {"run_id": run_id, "objective": name,
                           "norm": str(params.get("norm", "")), "seed": self.args.seed}
        config = {"run_id": run_id, "objective": name, "params": params, "seed": self.args.seed,
                  "label": label, "source": f"prefstudy.integrations.{type(self).__name__}",
                  **self._provenance(), "training_args": self.args.to_dict()}
        self._recorder = _Recorder(folder, self.accelerator.process_index,
                                   self.accelerator.is_main_process, config, lock)
        self.add_callback(RecordsCallback(self._recorder))

    def _objective(self, args) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def _provenance(self) -> dict[str, Any]:
        model = getattr(self.model, "config", None)
        return {"model": getattr(model, "_name_or_path", None) or type(self.model).__name__}

    def _end_detail(self) -> dict[str, Any]:
        """What meta.json keeps about the run when it ends, besides its status."""
        return {}

    @property
    def records_dir(self) -> Path:
        return self._recorder.writer.folder

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "pair_id" not in self._signature_columns:  # keep the column for PairIdCollator
            self._signature_columns = [*self._signature_columns, "pair_id"]

    def _record(self, out: PerExample, pair_ids: Sequence[str] | None) -> None:
        if pair_ids is None:
            raise RuntimeError("the batch has no pair ids: the trainer's data collator must be "
                               "the PairIdCollator this trainer installs")
        step, rank = self.state.global_step + 1, self.accelerator.process_index
        batch = f"s{step}-r{rank}-m{self._recorder.micro_batches(step)}"  # the pairs seen together
        records = out.rows(pair_ids, **self._constants, step=step,
                           step_lr=self._get_learning_rate(),
                           batch=batch)
        self._recorder.add(records, out.finite())

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._recorder.hold()  # again, where an earlier training released it
        if not resume_from_checkpoint and (self.records_dir / "meta.json").exists():
            raise FileExistsError(f"{self.records_dir} already holds a run; pass another "
                                  "records_dir, delete it, or resume from a checkpoint")
        try:
            result = super().train(resume_from_checkpoint, *args, **kwargs)
        except KeyboardInterrupt:
            self._recorder.finish("interrupted", **self._end_detail())
            raise
        except Exception as e:
            self._recorder.finish("failed", reason=f"{type(e).__name__}: {e}",
                                  **self._end_detail())
            raise
        self._recorder.finish("completed", **self._end_detail())
        return result


# --------------------------------------------------------------------------- plain Trainer


class PerExampleLossTrainer(_Recording, Trainer):
    """A `transformers.Trainer` whose loss is the mean of per-example losses, each recorded.

    per_example_loss(model, inputs) -> PerExample (or a loss tensor of Shape: (batch,)): called
        on every batch, with the batch's `pair_id` list already taken out of `inputs`. Give it the
        chosen and rejected log-probs (`PerExample.from_objective` builds one from a prefstudy
        objective) and the records hold everything the diagnostics read; give it only a loss and
        they hold pair_id, step and pair_loss, with NaN elsewhere.
    objective: the name recorded for the loss; use the registry name of the prefstudy objective
        it computes where it computes one. params: its parameters (recorded in config.json).
    Plus `records_dir`, `run_id`, `label` (see `_Recording`) and everything `Trainer` takes.

    Pair ids come from a `pair_id` column, else from prompt / chosen / rejected text, else from a
    hash of the row's token ids. With `remove_unused_columns=True` (the default) the Trainer drops
    the columns the model's forward does not take, so a collator that needs other columns needs
    `remove_unused_columns=False`. Training batches are recorded, evaluation batches are not.
    """

    loss_is_scaled_for_ga = False  # a batch mean: the Trainer divides by accumulation steps

    def __init__(self, *args, per_example_loss: Callable[..., PerExample | Tensor],
                 objective: str = "custom", params: Mapping[str, Any] | None = None, **kwargs):
        self.per_example_loss = per_example_loss
        self._objective_spec = (objective, dict(params or {}))
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # transformers < 5.19 reads this instead

    def _objective(self, args) -> tuple[str, dict[str, Any]]:
        return self._objective_spec

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pair_ids = inputs.pop("pair_id", None)
        out = self.per_example_loss(model, inputs)
        out = out if isinstance(out, PerExample) else PerExample(out)
        if self.model.training:
            self._record(out, pair_ids)
        loss = out.loss.mean()
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if k != "pair_id"}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


# --------------------------------------------------------------------------- TRL

try:  # TRL is an optional extra; without it, PerPairDPOTrainer says how to install it
    from trl import DPOTrainer as _DPOTrainer
except ImportError:
    class _DPOTrainer:
        """Stands in for TRL's DPOTrainer where TRL is not installed."""


def check_trl() -> str:
    """TRL's version if it is one `PerPairDPOTrainer` supports; ImportError saying what to do."""
    try:
        import trl
    except ImportError:
        raise ImportError(f"PerPairDPOTrainer needs TRL, the `trl` extra: {EXTRA_INSTALL} (or "
                          f"{TRL_INSTALL})") from None
    from packaging.specifiers import SpecifierSet

    if trl.__version__ not in SpecifierSet(SUPPORTED_TRL):
        raise ImportError(
            f"prefstudy.integrations.PerPairDPOTrainer supports TRL {SUPPORTED_TRL}; trl "
            f"{trl.__version__} is installed. It reads the per-token log-probs inside TRL's DPO "
            f"loss, which other versions compute differently. Install a supported version: "
            f"{TRL_INSTALL}")
    return trl.__version__


@contextlib.contextmanager
def _outputs_of(**modules):
    """Records what each named module returns while the block runs: name → list of outputs."""
    seen: dict[str, list] = {name: [] for name in modules}
    handles = [module.register_forward_hook(lambda _m, _a, out, name=name: seen[name].append(out))
               for name, module in modules.items() if module is not None]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _token_logps(output, mask: Tensor) -> TokenLogps:
    """TRL's per-token log-probs (fused LM head output), aligned to the shifted completion mask."""
    logps = output.log_probs[:, -mask.shape[1]:].detach().float()
    return TokenLogps(logps * mask, mask)


class PerPairDPOTrainer(_Recording, _DPOTrainer):
    """TRL's DPOTrainer, also writing prefstudy's per-pair records (see the module docstring).

    Takes everything DPOTrainer takes, plus `records_dir`, `run_id` and `label`. Without TRL, or
    with a version other than SUPPORTED_TRL, building one raises ImportError saying what to
    install. `loss_parity` lists (recorded per-pair mean, TRL's loss) for every micro-batch
    checked so far; meta.json keeps the largest difference.
    """

    def __init__(self, *args, **kwargs):
        check_trl()
        self.loss_parity: list[tuple[float, float]] = []
        super().__init__(*args, **kwargs)

    def _objective(self, args) -> tuple[str, dict[str, Any]]:
        self._trl_loss = trl_loss(args)
        return self._trl_loss.name, self._trl_loss.params

    def _provenance(self) -> dict[str, Any]:
        import trl

        return {**super()._provenance(), "trl": trl.__version__,
                "trl_loss": self._trl_loss.describe()}

    def _end_detail(self) -> dict[str, Any]:
        diffs = [abs(ours - theirs) for ours, theirs in self.loss_parity]
        return {"loss_parity": {"micro_batches": len(diffs),
                                "max_abs_diff": max(diffs) if diffs else None}}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pair_ids = inputs.pop("pair_id", None)
        if not self.model.training:  # evaluation: not recorded
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with _outputs_of(policy=self.model, ref=self.ref_model) as seen:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        out = self._per_pair(inputs, seen)
        self._check_loss(out, result[0] if return_outputs else result)
        self._record(out, pair_ids)
        return result

    def _per_pair(self, inputs, seen) -> PerExample:
        """The objective's view of the batch, from the log-probs TRL just computed."""
        if not seen["policy"]:
            raise RuntimeError("the policy's forward pass was not seen (a wrapper that calls "
                               "the model without running its module hooks?); PerPairDPO"
                               "Trainer cannot record this run")
        policy, mask = seen["policy"][0], inputs["completion_mask"][:, 1:].bool()
        chosen, rejected = split_pairs(_token_logps(policy, mask))
        if self.precompute_ref_logps:
            ref_c = TokenLogps.from_sums(inputs["ref_chosen_logps"].float(), chosen.mask)
            ref_r = TokenLogps.from_sums(inputs["ref_rejected_logps"].float(), rejected.mask)
        else:  # a separate reference model, or (PEFT) the policy's second call
            ref_out = seen["ref"][0] if self.ref_model is not None else seen["policy"][1]
            ref_c, ref_r = split_pairs(_token_logps(ref_out, mask))
        log_sum_sq = None
        if self._trl_loss.use_weighting:
            log_sum_sq = policy.log_sum_sq_probs[:, -mask.shape[1]:].detach().float().chunk(2)
        loss, margin = self._trl_loss.per_pair(PairLogps(chosen, rejected, ref_c, ref_r),
                                               log_sum_sq)
        # With ld_alpha TRL precomputes LD-weighted reference sums: they serve the loss (a sum on
        # the first token keeps weight 1) but are not log π_ref, so they are not recorded.
        ref_known = not (self.precompute_ref_logps and self.ld_alpha is not None)
        return PerExample(loss, chosen, rejected, ref_c.sum if ref_known else None,
                          ref_r.sum if ref_known else None, margin)

    def _check_loss(self, out: PerExample, loss: Tensor) -> None:
        """Stop if the recorded per-pair losses do not average to the loss TRL optimises."""
        if self.aux_loss_enabled:  # TRL adds a batch-level router loss
            return
        ours, theirs = float(out.loss.mean()), float(loss.detach())
        if not (math.isfinite(ours) and math.isfinite(theirs)):  # recorded as diverged
            return
        self.loss_parity.append((ours, theirs))
        tol = max(torch.finfo(loss.dtype).eps ** 0.5, 1e-4) * (1.0 + abs(theirs))
        if not abs(ours - theirs) <= tol:
            raise RuntimeError(
                f"prefstudy's {self._constants['objective']} per-pair losses average "
                f"{ours:.6g}, but this DPOTrainer's loss is {theirs:.6g}: the trainer "
                f"computes another loss than the one prefstudy maps loss_type="
                f"{loss_types(self.args)} to (a subclass changing the loss, or a TRL "
                f"version outside {SUPPORTED_TRL}). The records would be wrong, so training "
                "stops.")

    def compute_ref_log_probs(self, model, inputs):
        inputs = {k: v for k, v in inputs.items() if k != "pair_id"}
        return super().compute_ref_log_probs(model, inputs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if k != "pair_id"}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


__all__ = ["SUPPORTED_TRL", "TRL_OBJECTIVES", "PairIdCollator", "PerExample",
           "PerExampleLossTrainer", "PerPairDPOTrainer", "RecordsCallback", "TrlComponent",
           "TrlLoss", "TrlMapping", "as_records", "check_trl", "check_unique_pair_ids",
           "text_pair_id", "token_pair_id", "trl_loss", "with_pair_ids"]
