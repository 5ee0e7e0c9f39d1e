"""The training loop: an objective in, per-pair records out.

`train(config)` runs on `accelerate`: one process by default, several under `accelerate launch`
or `torchrun` (each process takes an equal share of every batch, gradients are averaged, and each
process records its own pairs, so every pair is recorded exactly once per step). Reference
log-probs are computed once per pair with the frozen starting model and cached on disk, and so
are the starting model's step-0 evaluations, which every run of a study shares. A
non-finite loss stops the run cleanly and marks it `diverged`: a diverging run is data.

What the loop calls lives in its own module: the inputs and the batch order in
prefstudy.inputs, one step (forward, objective, backward, update) in prefstudy.step, evaluation
in prefstudy.evaluate, resumable state in prefstudy.checkpoint, the record store in
prefstudy.records.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import checkpoint
from .config import TrainConfig
from .encode import Batch, collate
from .evaluate import evaluate
from .gradstats import PerPairGradients
from .inputs import Inputs, batch_indices, prepare_inputs
from .models import load_model, set_trainable
from .objectives import get_objective
from .records import RunWriter, load_table, read_meta
from .step import Optimisation, StepResult, reference_logps, train_step

ENDED = ("completed", "diverged")  # statuses of a run that is evaluated, compacted, not resumed


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
    ref_held: dict | None  # and of the held-out pairs
    opt: Optimisation
    writer: RunWriter
    start: int = 0  # the last step already done (a resumed run)

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
                 self.accelerator.device, step)


def _open(cfg: TrainConfig, resume: bool) -> Run:
    """Check the config, then load the model and inputs and compute the reference log-probs."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = cfg.resolved()  # fails on a bad config before anything is loaded
    accelerator = Accelerator(cpu=cfg.device == "cpu")
    world = accelerator.num_processes
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the {world} processes")
    folder = Path(cfg.output) / cfg.run_id
    if (folder / "meta.json").exists() and not resume:
        raise FileExistsError(f"{folder} exists; pass resume=True (--resume) or choose another "
                              "run_id")
    set_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    device = accelerator.device
    model, tokenizer = load_model(cfg.model, device=str(device), dtype=cfg.dtype,
                                  seed=cfg.model_seed)
    set_trainable(model, cfg.trainable_blocks)
    inputs = prepare_inputs(cfg, tokenizer)
    pad = tokenizer.pad_token_id
    ref = ref_held = None
    if get_objective(cfg.objective).needs_reference:
        ref = reference_logps(model, inputs.train, cfg, pad, device)
        if inputs.heldout is not None:
            ref_held = reference_logps(model, inputs.heldout, cfg, pad, device)
    return Run(cfg, folder, accelerator, model, tokenizer, inputs, ref, ref_held,
               Optimisation.create(model, cfg), RunWriter(folder, rank=accelerator.process_index))


def _begin(run: Run, resume: bool) -> None:
    """Resume from the checkpoint if asked, write config and meta, and evaluate at step 0."""
    if resume and (run.folder / "meta.json").exists():
        read_meta(run.folder)  # checks the schema version
        run.start = checkpoint.resume(run.folder, run.model, run.opt)
        if run.is_main:
            run.writer.truncate(after_step=run.start)  # steps after the checkpoint are redone
    run.accelerator.wait_for_everyone()
    if run.is_main:
        config = {**run.cfg.to_dict(), "pairs_train": len(run.inputs.train),
                  "pairs_dropped_by_truncation": run.inputs.dropped,
                  "num_processes": run.accelerator.num_processes}
        run.writer.start(config, resume=resume and run.start > 0)
        if run.start == 0:
            run.evaluate(0)
    run.accelerator.wait_for_everyone()


def _after_step(run: Run, step: int, out: StepResult, bar: tqdm | None) -> None:
    """Write the step's records, show progress, evaluate and checkpoint when due."""
    cfg = run.cfg
    run.writer.append("records", out.records, step=step)
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
            checkpoint.save(run.folder / "checkpoint", run.model, run.opt.optimizer, step)
    run.accelerator.wait_for_everyone()


def _finish(run: Run, status: str, detail: dict) -> None:
    """The final evaluation of a run that ended (at its last good step), and its status."""
    if run.is_main:
        if status in ENDED:
            run.evaluate(detail.get("diverged_step", run.cfg.steps + 1) - 1)
        run.writer.finish(status, **detail)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train under `cfg` and return the run folder. See the module docstring."""
    run = _open(cfg, resume)
    _begin(run, resume)
    grads = PerPairGradients(run.model) if run.cfg.grad_stats else None
    run.model.train()
    show = progress and run.is_main
    bar = tqdm(range(run.start + 1, run.cfg.steps + 1), initial=run.start, total=run.cfg.steps,
               disable=not show, desc=run.cfg.run_id)
    status, detail = "completed", {}
    try:
        for step in bar:
            out = train_step(run.model, run.batch(step), run.cfg, run.ref, run.opt,
                             run.accelerator, step, grads)
            if out.diverged:
                status, detail = "diverged", {"diverged_step": step, "reason": out.diverged}
                break
            _after_step(run, step, out, bar if show else None)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if grads is not None:
            grads.remove()
        _finish(run, status, detail)
        bar.close()
    run.accelerator.wait_for_everyone()
    if run.is_main and status in ENDED:
        run.writer.compact()  # one file per table instead of one per step
        shutil.rmtree(run.folder / "checkpoint", ignore_errors=True)  # an ended run is not resumed
    return run.folder


def completed_steps(run: Path) -> int:
    """The last step with records on disk (0 if none)."""
    rec = load_table(run, "records")
    return int(rec.step.max()) if len(rec) else 0


def train_many(configs: Sequence[TrainConfig], *, resume: bool = True, progress: bool = True):
    """Train several configs one after the other; returns their run folders."""
    out = []
    for cfg in configs:
        started = time.time()
        out.append(train(cfg, resume=resume, progress=progress))
        if progress:
            print(f"{out[-1].name}: {time.time() - started:.0f} s")
    return out


__all__ = ["batch_indices", "completed_steps", "reference_logps", "train", "train_many"]
