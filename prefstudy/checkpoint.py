"""Resumable state: the trainable weights and the optimiser, every `checkpoint_every` steps.

A run killed at any moment resumes from its last checkpoint: records of the steps after it are
removed and those steps redone, and since the batch order is a pure function of the step
(prefstudy.inputs.batch_indices) the resumed run records what an uninterrupted one would have.
An ended run keeps no checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .cache import save_torch, write_atomic
from .step import Optimisation

STATE = "state.pt"


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save(folder: Path, model, optimizer, step: int) -> None:
    """The trainable weights and the optimiser after `step`, in `folder`."""
    state = {"step": step, "model": _trainable_state(model), "optimizer": optimizer.state_dict()}
    write_atomic(Path(folder) / STATE, lambda tmp: save_torch(state, tmp))


def load(folder: Path, model, optimizer) -> int:
    """Restore the trainable weights and optimiser; returns the step they belong to (0 if none)."""
    path = Path(folder) / STATE
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu")
    missing = model.load_state_dict(state["model"], strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def resume(folder: Path, model, opt: Optimisation) -> int:
    """Weights, optimiser and learning-rate schedule as they were after the last checkpointed
    step of the run in `folder`; returns that step (0 without a checkpoint)."""
    done = load(Path(folder) / "checkpoint", model, opt.optimizer)
    for _ in range(done):
        opt.scheduler.step()
    return done


def due(step: int, every: int, last: int) -> bool:
    """Whether the state after `step` is saved: every `every` steps and after the last one."""
    return step % every == 0 or step == last
