"""The training loop: an objective in, per-pair records out.

`train(config)` runs on `accelerate`: one process by default, several under `accelerate launch`
or `torchrun` (each process takes an equal share of every batch, gradients are averaged, and each
process records its own pairs, so every pair is recorded exactly once per step). Reference
log-probs are computed once per pair with the frozen starting model and cached on disk, and so
are the starting model's step-0 evaluations, which every run of a study shares; the main
process keeps a copy of the starting model (its trainable part) for the KL that every later
evaluation measures from it (prefstudy.evaluate.keep_starting_model). A
non-finite loss stops the run cleanly and marks it `diverged`: a diverging run is data, and so is
one whose per-token losses pass ln|V|, the loss of a uniform guess, by more than a nat
(`meta.json` flags it with `above_uniform_step`). Any
other exception marks the run `failed` with the step, the exception's type and its message.

One writer per run folder: the main process holds an exclusive lock (`.<run_id>.lock` beside the
folder) while it trains, and a second process is refused. Resuming a run that ended does nothing
and says so; resuming with a configuration that changes results is refused, naming the fields,
and so is a run, ended or not, whose data or model changed in content since it was made (its
config.json records their fingerprints, prefstudy.fingerprint). A checkpoint or cache that
cannot be written (a full disk, a file-size limit) fails the run like any other error, with
one line naming the file and the reason (cache.WriteError).

What the loop calls lives in its own module: the inputs and the batch order in
prefstudy.inputs, one step (forward, objective, backward, update) in prefstudy.step, evaluation
in prefstudy.evaluate, resumable state in prefstudy.checkpoint, the record store in
prefstudy.records.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import checkpoint, fingerprint, frozen
from .config import ConfigError, TrainConfig
from .data import load_probes
from .encode import Batch, collate
from .evaluate import StartingModel, answered, evaluate, keep_starting_model
from .gradstats import PerPairGradients
from .inputs import (
    Inputs,
    _in_lang,
    batch_indices,
    heldout_pairs,
    neutral_texts,
    prepare_inputs,
    training_pairs,
)
from .locks import held as _lock  # the run folder's one writer
from .models import load_model, set_trainable, source_fingerprint
from .objectives import get_objective, resolve_params
from .paths import resolve_path
from .records import RunError, RunWriter, read_config, read_meta
from .step import Optimisation, StepResult, reference_logps, train_step

ENDED = ("completed", "diverged")  # statuses of a run that is evaluated, compacted, not resumed
# Config fields that may differ when a run is resumed: where it is written, what figures call it,
# which device runs it, how often it saves state, whether frozen blocks are cached, how the
# objective was spelled (a TRL name for the same objective) and whether its pairs.parquet keeps
# the pair texts. Every other field changes its results.
RESUMABLE_CHANGES = ("output", "label", "device", "checkpoint_every", "cache_frozen",
                     "objective_given", "keep_text", "report_to")
# A run is flagged when a pair's per-token loss passes ln|V| by more than this (nats): worse than
# a uniform guess by a factor e per token. The margin keeps a random starting model, whose losses
# hover around ln|V|, from being flagged at its first step.
UNIFORM_MARGIN = 1.0


@dataclass
class Run:
    """One run while it trains: its config and folder, model, inputs, optimiser and writer."""

    cfg: TrainConfig
    folder: Path
    accelerator: Any
    model: Any
    tokenizer: Any
    inputs: Inputs
    ref: dict | None  # reference log-probs of the training pairs, where the objective has one
    ref_held: dict | None  # and of the held-out pairs (`ref` covers the inputs.train_eval ones)
    opt: Optimisation
    writer: RunWriter
    start: int = 0  # the last step already done (a resumed run)
    step: int = 0  # the step in progress
    above_uniform: dict = field(default_factory=dict)  # first step and largest loss past ln|V|
    prints: dict = field(default_factory=dict)  # `fingerprints`: the content it is made from
    # the starting model its evaluations measure KL and squeezing against (main process only)
    starting: StartingModel | None = None

    @property
    def identity(self) -> str:
        """What its checkpoints carry: `run_identity`."""
        return run_identity(self.cfg, self.prints)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def batch(self, step: int) -> Batch:
        """This process's share of the pairs of `step`."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        idx = batch_indices(len(self.inputs.train), self.cfg.batch_size, self.cfg.seed, step)
        items = [self.inputs.train.items[i] for i in idx[rank::world]]
        return collate(items, self.tokenizer.pad_token_id).to(self.accelerator.device)

    def evaluate(self, step: int) -> None:
        evaluate(self.writer, self.model, self.tokenizer, self.inputs, self.cfg, self.ref_held,
                 self.accelerator.device, step, ref=self.ref, starting=self.starting)


def _open(cfg: TrainConfig, folder: Path, accelerator) -> Run:
    """Load the model and inputs, compute the reference log-probs and keep the starting model
    for evaluations (before `_begin` loads a checkpoint: so it is the starting model on resume
    too)."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    device = accelerator.device
    model, tokenizer = load_model(cfg.model, device=str(device), dtype=cfg.dtype,
                                  seed=cfg.model_seed)
    set_trainable(model, cfg.trainable_blocks)
    if cfg.cache_frozen and cfg.trainable_blocks is not None and frozen.supports(model):
        frozen.attach(model, len(model.model.layers) - cfg.trainable_blocks, shared=True)
    inputs = prepare_inputs(cfg, tokenizer)
    pad = tokenizer.pad_token_id
    ref = ref_held = None
    if get_objective(cfg.objective).needs_reference:
        ref = reference_logps(model, inputs.train, cfg, pad, device)
        if inputs.heldout is not None:
            ref_held = reference_logps(model, inputs.heldout, cfg, pad, device)
    # only the main process evaluates
    starting = keep_starting_model(model, inputs) if accelerator.is_main_process else None
    return Run(cfg, folder, accelerator, model, tokenizer, inputs, ref, ref_held,
               Optimisation.create(model, cfg), RunWriter(folder, rank=accelerator.process_index),
               prints=fingerprints(cfg), starting=starting)


def _accelerator(cfg: TrainConfig, folder: Path | None = None):
    """The accelerator for cfg.device: "auto" takes CUDA where there is one; a named device must
    exist (ConfigError otherwise), and cuda:N becomes this process's CUDA device."""
    from accelerate import Accelerator

    kind, _, index = cfg.device.partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config field 'device' = {cfg.device!r}, but no CUDA device is "
                          "available here; use 'cpu' or 'auto'")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"config field 'device' = {cfg.device!r}, but MPS is not available "
                          "here; use 'cpu' or 'auto'")
    if index:
        if int(index) >= torch.cuda.device_count():
            raise ConfigError(f"config field 'device' = {cfg.device!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(int(index))
    # "auto" on a machine without an accelerator is the CPU: said explicitly, so that several
    # processes (`accelerate launch --multi_gpu` on a CPU-only machine) join one gloo group
    # instead of each training alone.
    on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()
                                      and not torch.backends.mps.is_available())
    trackers = {"log_with": cfg.report_to, "project_dir": str(folder / TRACKERS)} \
        if cfg.report_to and folder is not None else {}
    accelerator = Accelerator(cpu=on_cpu, **trackers)
    world = accelerator.num_processes
    if cfg.batch_size % world:
        raise ConfigError(f"config field 'batch_size' = {cfg.batch_size} must be a multiple of "
                          f"the {world} processes")
    return accelerator


def _comparable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# What a run is made of besides its config fields, as the messages name it: each input's
# content and the model's (`fingerprints`).
INPUTS = {"data": "the training pairs", "heldout": "the held-out pairs",
          "neutral_text": "the neutral text", "probes": "the probe prompts",
          "model": "the model's files"}


def fingerprints(cfg: TrainConfig) -> dict[str, str | None]:
    """The content of what `cfg` trains and evaluates on and starts from (prefstudy.fingerprint):
    the training pairs, held-out pairs, neutral text and probes it uses, and the files its
    model is loaded from (models.source_fingerprint); None for an input it has none of.

    Recorded in a run's config.json; a run is kept as done, resumed or given its checkpoint only
    where they are unchanged (`resume_changes`). Loads the data, not the model: 0.12 s for the
    default study's data on two cores; the model's files are hashed once per process (0.8 s for
    SmolLM2's 538 MB)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what a load skips is said where the run loads it
        prints = {"data": fingerprint.pairs(training_pairs(cfg)),
                  "heldout": fingerprint.pairs(heldout_pairs(cfg)), "neutral_text": None,
                  "probes": None}
        neutral = neutral_texts(cfg)
        if neutral is not None:
            prints["neutral_text"] = fingerprint.frame(neutral)
        if cfg.probes and cfg.n_probes:
            probes = load_probes(resolve_path(cfg.probes))
            prints["probes"] = fingerprint.frame(_in_lang(probes, cfg, cfg.n_probes))
    prints["model"] = source_fingerprint(cfg.model, seed=cfg.model_seed)
    return prints


def run_identity(cfg: TrainConfig, prints: dict) -> str:
    """A digest of what a run's results depend on: its config fields that change them (at values
    other than their defaults, so that a field added later leaves it as it was) and its
    `fingerprints`. A checkpoint carries it, so that one from another run is never resumed."""
    defaults = TrainConfig().to_dict()
    fields = {k: v for k, v in cfg.to_dict().items()
              if k not in (*RESUMABLE_CHANGES, "params") and v != defaults.get(k)}
    standard = resolve_params(cfg.objective)
    fields["params"] = {p: v for p, v in cfg.params.items() if standard.get(p) != v}
    return fingerprint.digest(fields, prints)


def resume_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """The fields, as `name: saved → new`, in which `cfg` would change a saved run's results;
    and the inputs whose content changed since it was made (where the run recorded its
    `fingerprints`), as `<input> (<where>): content changed`.

    A field (or objective parameter) the saved config lacks — one added to prefstudy after the
    run was saved — counts as its default, which is what the run was trained with. A run saved
    before fingerprints were recorded is compared on its fields only."""
    recorded = saved.get("fingerprints") or {}
    saved = {**TrainConfig().to_dict(), **saved}
    try:
        saved["params"] = resolve_params(saved["objective"], saved.get("params"))
    except ValueError:
        pass  # an objective or parameter this prefstudy does not know: compared as saved
    new = cfg.to_dict()
    changes = [f"{k}: {saved.get(k)!r} → {new[k]!r}" for k in new
               if k not in RESUMABLE_CHANGES and _comparable(saved.get(k)) != _comparable(new[k])]
    if changes or not recorded:
        return changes
    now = fingerprints(cfg)
    return [f"{INPUTS[k]} ({new[k]}): content changed" for k in INPUTS
            if recorded.get(k) and now.get(k) and recorded[k] != now[k]]


def _ended_already(folder: Path, cfg: TrainConfig, resume: bool) -> str | None:
    """The status of a run that has ended (resume is then a no-op), None if it is to train.

    Refuses a run folder that exists when `resume` is off, and a run — ended or not — whose
    config or inputs changed since it was made (`resume_changes`): it is neither resumed nor
    kept as done, and the fields or inputs that differ are named."""
    if not (folder / "meta.json").exists():
        return None
    if not resume:
        raise RunError(f"{folder}: the run exists; pass resume=True (--resume) or choose another "
                       "run_id")
    status = read_meta(folder).get("status")
    changes = resume_changes(read_config(folder), cfg)
    if changes:
        raise ConfigError(f"{folder}: cannot resume with a configuration that changes results, "
                          f"nor keep the run as done; it differs in {'; '.join(changes)}; delete "
                          "the run folder or choose another run_id")
    return status if status in ENDED else None


def _begin(run: Run, resume: bool) -> None:
    """Resume from the checkpoint if asked, write config and meta, the starting model's greedy
    answers (`evaluate.answered`), and evaluate at step 0."""
    if resume and (run.folder / "meta.json").exists():
        read_meta(run.folder)  # checks the schema version
        run.start = checkpoint.resume(run.folder, run.model, run.opt, run.identity)
        if run.is_main:
            run.writer.truncate(after_step=run.start)  # steps after the checkpoint are redone
    run.accelerator.wait_for_everyone()
    if run.is_main:
        config = {**run.cfg.to_dict(), "pairs_train": len(run.inputs.train),
                  "pairs_dropped_by_truncation": run.inputs.dropped, **run.inputs.counts,
                  "num_processes": run.accelerator.num_processes, "fingerprints": run.prints}
        run.writer.start(config, resume=resume and run.start > 0)
        run.writer.pairs(run.inputs.pairs)
        if run.starting is not None:  # its greedy answers, cached: a step-0 evaluation
            run.starting = answered(run.starting, run.tokenizer, run.inputs.heldout, run.cfg,
                                    run.accelerator.device)
        if run.start == 0:
            run.evaluate(0)
    run.accelerator.wait_for_everyone()


def _after_step(run: Run, step: int, out: StepResult, bar: tqdm | None) -> None:
    """Write the step's records, show progress, evaluate and checkpoint when due."""
    cfg = run.cfg
    run.writer.append("records", out.records, step=step)
    _watch_uniform(run, step, out.records)
    _track(run, step, out)
    if run.is_main:
        if out.stats:
            run.writer.append("steps", [out.stats], step=step)
        if bar is not None:
            rec = out.records
            bar.set_postfix(loss_p=f"{rec.loss_p.mean():.3f}", loss_n=f"{rec.loss_n.mean():.3f}",
                            gap=f"{rec.gap.mean():.3f}")
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            run.evaluate(step)
        if checkpoint.due(step, cfg.checkpoint_every, cfg.steps):
            checkpoint.save(run.folder / "checkpoint", run.model, run.opt.optimizer, step,
                            run.identity)
    run.accelerator.wait_for_everyone()


TRACKERS = "trackers"  # <run>/trackers: what `report_to`'s trackers write, where they write files


def _track(run: Run, step: int, out: StepResult) -> None:
    """The step's batch means, over every process's pairs, to the config's trackers
    (`report_to`, through accelerate): pair loss, reward accuracy (margin > 0, a tie ½),
    margin, loss_p, loss_n, the batch gradient's norm before clipping, and the learning rate."""
    if not run.cfg.report_to:
        return
    rec = out.records
    correct = (rec.margin > 0) + 0.5 * (rec.margin == 0)
    sums = torch.tensor([rec.pair_loss.sum(), correct.sum(), rec.margin.sum(), rec.loss_p.sum(),
                         rec.loss_n.sum(), len(rec)], dtype=torch.float64,
                        device=run.accelerator.device)
    sums = run.accelerator.reduce(sums, reduction="sum").cpu()
    loss, accuracy, margin, loss_p, loss_n = (sums[:5] / sums[5]).tolist()
    run.accelerator.log({"train/loss": loss, "train/reward_accuracy": accuracy,
                         "train/margin": margin, "train/loss_p": loss_p, "train/loss_n": loss_n,
                         "train/grad_norm": run.opt.last_grad_norm,
                         "train/lr": float(rec.step_lr.iloc[0])}, step=step)


def uniform_loss(model) -> float:
    """ln|V|: the per-token cross-entropy of a uniform guess over the model's vocabulary."""
    return math.log(model.get_output_embeddings().weight.shape[0])


def _watch_uniform(run: Run, step: int, records) -> None:
    """Note the first step at which a pair's per-token loss passed ln|V| by more than
    UNIFORM_MARGIN, and the largest such loss."""
    worst = float(records[["loss_p", "loss_n"]].max().max())
    if math.isfinite(worst) and worst > uniform_loss(run.model) + UNIFORM_MARGIN:
        seen = run.above_uniform
        seen.setdefault("above_uniform_step", step)
        seen["above_uniform_max_loss"] = max(worst, seen.get("above_uniform_max_loss", worst))


def _failure(step: int, error: BaseException, where: str = "") -> dict:
    return {"failed_step": step, "error_type": type(error).__name__,
            "error": (f"{where}: " if where else "") + str(error)[:2000]}


def _finish(run: Run, status: str, detail: dict) -> None:
    """The final evaluation of a run that ended (at its last good step), and its status; a
    final evaluation that fails leaves the run failed."""
    if not run.is_main:
        return
    error = None
    if status in ENDED:
        last = detail.get("diverged_step", run.cfg.steps + 1) - 1
        try:
            run.evaluate(last)
        except Exception as e:  # noqa: BLE001 - recorded, then raised
            status, detail, error = "failed", _failure(last, e, "final evaluation"), e
    flags = {"uniform_loss": uniform_loss(run.model), **run.above_uniform}
    run.writer.finish(status, **detail, **flags)
    if error is not None:
        raise error


def _loop(run: Run, progress: bool) -> str:
    """Train the remaining steps; returns the run's status (exceptions mark it failed)."""
    grads = PerPairGradients(run.model) if run.cfg.grad_stats else None
    run.model.train()
    show = progress and run.is_main
    bar = tqdm(range(run.start + 1, run.cfg.steps + 1), initial=run.start, total=run.cfg.steps,
               disable=not show, desc=run.cfg.run_id)
    status, detail = "completed", {}
    try:
        for run.step in bar:
            out = train_step(run.model, run.batch(run.step), run.cfg, run.ref, run.opt,
                             run.accelerator, run.step, grads)
            if out.diverged:
                status, detail = "diverged", {"diverged_step": run.step, "reason": out.diverged}
                break
            _after_step(run, run.step, out, bar if show else None)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as e:
        status, detail = "failed", _failure(run.step, e)
        raise
    finally:
        if grads is not None:
            grads.remove()
        bar.close()
        _finish(run, status, detail)
    return status


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train under `cfg` and return the run folder. See the module docstring."""
    cfg = cfg.resolved()  # fails on a bad config before anything is loaded
    folder = Path(cfg.output) / cfg.run_id
    accelerator = _accelerator(cfg, folder)
    with _lock(folder, accelerator.is_main_process):
        ended = _ended_already(folder, cfg, resume)
        if ended:
            if progress and accelerator.is_main_process:
                print(f"{folder}: already {ended}; nothing to resume", file=sys.stderr)
            return folder
        run = _open(cfg, folder, accelerator)
        try:
            _begin(run, resume)
        except Exception as e:
            if run.is_main and (folder / "meta.json").exists():
                run.writer.finish("failed", **_failure(run.start, e, "start"))
            raise
        if cfg.report_to:  # the run's settings beside its curves; flat, as trackers want them
            accelerator.init_trackers(cfg.run_id, config={
                k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                for k, v in cfg.to_dict().items()})
        try:
            status = _loop(run, progress)
        finally:
            if cfg.report_to:
                accelerator.end_training()
        run.accelerator.wait_for_everyone()
        if run.is_main and status in ENDED:
            run.writer.compact()  # one file per table instead of one per step
            shutil.rmtree(folder / "checkpoint", ignore_errors=True)  # an ended run is not resumed
    return folder


__all__ = ["batch_indices", "reference_logps", "train"]
