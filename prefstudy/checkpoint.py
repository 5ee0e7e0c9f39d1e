"""Resumable state: the trainable weights and the optimiser, every `checkpoint_every` steps.

A run killed at any moment resumes from its last checkpoint: records of the steps after it are
removed and those steps redone, and since the batch order is a pure function of the step
(prefstudy.inputs.batch_indices) the resumed run records what an uninterrupted one would have.
An ended run keeps no checkpoint.

A checkpoint names the run it belongs to (`owner`: a digest of the run's configuration, data and
model, prefstudy.train.run_identity) and is read back as data only (`torch.load(weights_only=
True)`: tensors, numbers, strings, nothing unpickled). One that cannot be read, belongs to
another run or does not fit the model is a CheckpointError naming the file: it is never
half-loaded into a run that then goes on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .cache import failure_reason, save_torch, write_atomic
from .errors import PrefstudyError
from .step import Optimisation

STATE = "state.pt"


class CheckpointError(PrefstudyError):
    """A checkpoint that cannot be resumed from; the message names the file and why."""


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save(folder: Path, model, optimizer, step: int, owner: str | None = None) -> None:
    """The trainable weights and the optimiser after `step`, in `folder`; `owner` names the run."""
    state = {"step": step, "owner": owner, "model": _trainable_state(model),
             "optimizer": optimizer.state_dict()}
    write_atomic(Path(folder) / STATE, lambda tmp: save_torch(state, tmp))


def _problem(state, model, owner: str | None) -> str | None:
    """Why `state` cannot be resumed into `model` (None: it can)."""
    if not isinstance(state, dict) or not {"step", "model", "optimizer"} <= state.keys():
        return "not a prefstudy checkpoint"
    if owner is not None and state.get("owner") not in (None, owner):
        return "it belongs to another run (another configuration, data or model)"
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"its step {step!r} is not a step"
    weights = state["model"]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not isinstance(weights, dict) or set(weights) != set(trainable):
        return "its weights are not this run's trainable parameters"
    for name, p in trainable.items():
        if not isinstance(weights[name], torch.Tensor) or weights[name].shape != p.shape:
            return f"its weight {name} does not fit the model"
    return None


def load(folder: Path, model, optimizer, owner: str | None = None) -> int:
    """Restore the trainable weights and optimiser; returns the step they belong to (0 if none).
    CheckpointError, naming the file, for one that cannot be read or does not fit."""
    path = Path(folder) / STATE
    if not path.exists():
        return 0
    fix = "delete it to train the run again from step 0"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the damage, one line naming the file
        raise CheckpointError(f"{path}: not a readable checkpoint ({failure_reason(e)}); "
                              f"{fix}") from e
    problem = _problem(state, model, owner)
    if problem:
        raise CheckpointError(f"{path}: cannot resume from it: {problem}; {fix}")
    try:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: cannot resume from it: its optimiser state does not fit "
                              f"({failure_reason(e)}); {fix}") from e
    return state["step"]


def resume(folder: Path, model, opt: Optimisation, owner: str | None = None) -> int:
    """Weights, optimiser and learning-rate schedule as they were after the last checkpointed
    step of the run in `folder`; returns that step (0 without a checkpoint). `owner`: the run's
    identity, which a checkpoint that names one must carry."""
    done = load(Path(folder) / "checkpoint", model, opt.optimizer, owner)
    with warnings.catch_warnings():  # the optimiser took these steps before the checkpoint
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for _ in range(done):
            opt.scheduler.step()
    return done


def due(step: int, every: int, last: int) -> bool:
    """Whether the state after `step` is saved: every `every` steps and after the last one."""
    return step % every == 0 or step == last
