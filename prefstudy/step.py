"""One optimiser step: forward, objective, backward, gradients averaged over processes, update.

`train_step` is what the loop in prefstudy.train calls once per step; `forward` is also what
held-out evaluation runs. Reference log-probs come from the frozen starting model, computed once
per pair and kept on disk (`reference_logps`). With `use_weighting`, each pair's loss is scaled
by its WPO weight, from the policy's own output distribution (`forward`). A step whose loss,
log-probs or gradient norm is not finite on any process updates nothing and says why: the loop
then ends the run as diverged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from . import fingerprint
from .cache import ForeignEntry, cached, load_torch_entry, save_torch_entry
from .config import TrainConfig
from .encode import Batch, Encoded, collate
from .gradstats import PerPairGradients
from .logprobs import TokenLogps, split_pairs, token_logps, wpo_weights
from .models import cache_dir
from .objectives import PairLogps, compute
from .records import pair_records

# --------------------------------------------------------------------------- reference log-probs


def _reference_key(model, encoded: Encoded, device) -> str:
    """What reference log-probs depend on: the model's content (fingerprint.model: its config and
    weights, so its name, seed and dtype), the device type, the encoding settings and every
    token of every pair (so the tokenizer and the data)."""
    return fingerprint.digest({
        "model": fingerprint.model(model), "device": torch.device(device).type,
        "encoding": encoded.settings,
        "pairs": [(e.pair_id, e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in encoded.items]})


@torch.no_grad()
def _per_pair_logps(model, encoded: Encoded, pad_id: int, device,
                    batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    was_training = model.training
    model.eval()
    out = {}
    for start in range(0, len(encoded.items), batch_size):
        items = encoded.items[start:start + batch_size]
        chosen, rejected = split_pairs(token_logps(model, collate(items, pad_id).to(device)))
        for i, e in enumerate(items):
            out[e.pair_id] = (chosen.logps[i][chosen.mask[i]].cpu(),
                              rejected.logps[i][rejected.mask[i]].cpu())
    model.train(was_training)
    return out


def reference_logps(model, encoded: Encoded, cfg: TrainConfig, pad_id: int, device,
                    *, batch_size: int = 8) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """pair_id → (chosen, rejected) per-token reference log-probs of `model` as it is now,
    cached on disk.

    The cache key (`_reference_key`) covers the model's weights and config, the device type, the
    encoding settings and every token, so a change to any of them computes afresh; an entry that
    is damaged, foreign or does not hold every pair's log-probs is computed again (CacheWarning).
    `cfg` is not read: what the log-probs depend on is in the model and `encoded`.
    """
    key = _reference_key(model, encoded, device)

    def load(path):
        return _checked(load_torch_entry(path, key), encoded)

    return cached(cache_dir() / "reference" / f"{key[:20]}.pt",
                  lambda: _per_pair_logps(model, encoded, pad_id, device, batch_size),
                  save=lambda value, path: save_torch_entry(value, path, key), load=load)


def _checked(entry, encoded: Encoded) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A reference entry that holds a float vector per response of every pair, of the response's
    length; ForeignEntry otherwise."""
    if not isinstance(entry, dict):
        raise ForeignEntry(f"holds a {type(entry).__name__}, not log-probs by pair")
    for e in encoded.items:
        sides = entry.get(e.pair_id)
        ok = (isinstance(sides, tuple | list) and len(sides) == 2
              and all(isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() == 1
                      for t in sides)
              and (len(sides[0]), len(sides[1])) == (e.len_chosen, e.len_rejected))
        if not ok:
            raise ForeignEntry(f"no usable log-probs for pair {e.pair_id}")
    return entry


def _scatter(like: TokenLogps, per_pair: Sequence[torch.Tensor]) -> TokenLogps:
    """Per-pair token vectors placed on the mask of `like`."""
    flat = torch.cat(list(per_pair)).to(like.logps.device)
    return TokenLogps(torch.zeros_like(like.logps).masked_scatter(like.mask, flat), like.mask)


# --------------------------------------------------------------------------- one forward


@dataclass
class Forward:
    """What one forward pass over a batch produced, per pair."""

    logps: PairLogps
    loss: torch.Tensor  # (B,) objective loss, times `weight` where weighted
    margin: torch.Tensor  # (B,) the objective's margin (never weighted)
    weight: torch.Tensor | None = None  # (B,) WPO weight w(y_c)·w(y_r), with use_weighting


def forward(model, batch: Batch, cfg: TrainConfig, ref: dict | None, *,
            start: dict | None = None, logps: TokenLogps | None = None) -> Forward:
    """Per-token log-probs of the batch, and the objective's loss and margin per pair.

    start: per-token log-probs of the untrained starting model (`reference_logps`' output, for
    these pairs), standing in for the model's forward pass when the model is that model.
    logps: the model's own per-token log-probs of the batch where the caller has them already
    (evaluation computes them with the KL, logprobs.token_logps_kl), standing in for its
    forward pass; with log_sum_sq where cfg.use_weighting.
    cfg.use_weighting: the loss is the objective's per-pair loss times the pair's WPO weight
    (logprobs.wpo_weights, Zhou et al. 2024 Eq. 2, as TRL's use_weighting), from the policy's
    log Σ_v p_v² at each token; a weight, so no gradient flows through it. `start` has no
    Σ_v p_v², so it cannot stand in then (ValueError): run the model instead.
    """
    if logps is not None:
        chosen, rejected = split_pairs(logps)
    elif start is None:
        chosen, rejected = split_pairs(token_logps(model, batch, sum_sq=cfg.use_weighting))
    elif cfg.use_weighting:
        raise ValueError("forward: `start` log-probs carry no Σ_v p_v², which use_weighting "
                         "needs; run the model (start=None)")
    else:
        mask = batch.response_mask[:, 1:]
        like = split_pairs(TokenLogps(torch.zeros(mask.shape, device=mask.device), mask))
        chosen = _scatter(like[0], [start[p][0] for p in batch.pair_ids])
        rejected = _scatter(like[1], [start[p][1] for p in batch.pair_ids])
    ref_c = ref_r = None
    if ref is not None:
        ref_c = _scatter(chosen, [ref[p][0] for p in batch.pair_ids])
        ref_r = _scatter(rejected, [ref[p][1] for p in batch.pair_ids])
    logps = PairLogps(chosen, rejected, ref_c, ref_r)
    out = compute(cfg.objective, logps, **cfg.params)
    if not cfg.use_weighting:
        return Forward(logps, out.loss, out.margin)
    weight = wpo_weights(chosen, chosen.log_sum_sq, rejected, rejected.log_sum_sq)
    return Forward(logps, out.loss * weight, out.margin, weight)


def forward_records(fw: Forward, batch: Batch, cfg: TrainConfig, step: int, step_lr: float,
                    batch_id: str, **per_pair) -> pd.DataFrame:
    """The records of the batch's pairs (prefstudy.records.RECORD_COLUMNS); `batch_id` names
    the batch they shared; `per_pair`: the gradient statistics, where measured."""
    c, r = fw.logps.chosen.detach(), fw.logps.rejected.detach()
    ref_c, ref_r = fw.logps.ref_chosen, fw.logps.ref_rejected
    return pair_records(
        batch.pair_ids, logp_p=c.sum, logp_n=r.sum, len_p=c.mask.sum(-1), len_n=r.mask.sum(-1),
        ref_logp_p=None if ref_c is None else ref_c.sum,
        ref_logp_n=None if ref_r is None else ref_r.sum,
        margin=fw.margin.detach(), pair_loss=fw.loss.detach(), **per_pair,
        batch=batch_id, run_id=cfg.run_id, objective=cfg.objective, norm=cfg.norm,
        seed=cfg.seed, step=step, step_lr=step_lr)


# --------------------------------------------------------------------------- one update


@dataclass
class Optimisation:
    """What updates the weights: the trainable parameters, AdamW and its warm-up schedule."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    max_grad_norm: float | None
    last_grad_norm: float = float("nan")  # the last update's gradient norm before clipping

    @classmethod
    def create(cls, model, cfg: TrainConfig) -> Optimisation:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = max(cfg.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        return cls(params, optimizer, scheduler, cfg.max_grad_norm)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def update(self) -> bool:
        """Clip, step the optimiser and the schedule; False (nothing updated) if the gradient
        norm is not finite. The norm before clipping is kept in `last_grad_norm` (NaN without
        clipping)."""
        self.last_grad_norm = float("nan")
        if self.max_grad_norm:
            total = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.last_grad_norm = float(total)
            if not torch.isfinite(total):
                return False
        self.optimizer.step()
        self.scheduler.step()
        return True


def _all_finite(accelerator, *tensors) -> bool:
    """Whether every tensor is finite on every process."""
    ok = torch.tensor([float(all(torch.isfinite(t).all() for t in tensors))],
                      device=accelerator.device)
    return bool(accelerator.reduce(ok, reduction="sum").item() == accelerator.num_processes)


def _why(fw: Forward) -> str:
    parts = []
    for name, t in (("pair loss", fw.loss), ("chosen log-probs", fw.logps.chosen.logps),
                    ("rejected log-probs", fw.logps.rejected.logps)):
        if not torch.isfinite(t).all():
            parts.append(f"non-finite {name}")
    return ", ".join(parts) or "non-finite values on another process"


def _average_gradients(params, accelerator) -> None:
    """Each process holds an equal share of the batch: the batch gradient is their mean."""
    if accelerator.num_processes > 1:
        for p in params:
            if p.grad is not None:
                p.grad = accelerator.reduce(p.grad, reduction="mean")


@dataclass
class StepResult:
    """What one step recorded, or why it stopped the run."""

    records: pd.DataFrame | None  # one row per pair of this process; None if it diverged
    stats: dict = field(default_factory=dict)  # the step's row of the `steps` table, if measured
    diverged: str | None = None  # the reason, if the step updated nothing


def train_step(model, batch: Batch, cfg: TrainConfig, ref: dict | None, opt: Optimisation,
               accelerator, step: int, grads: PerPairGradients | None = None) -> StepResult:
    """Forward, objective, backward of the batch-mean loss, gradients averaged over processes,
    per-pair gradient statistics (with `grads`), clipping and the update."""
    lr = opt.lr
    if grads is not None:
        grads.capture()
    fw = forward(model, batch, cfg, ref)
    if not _all_finite(accelerator, fw.loss, fw.logps.chosen.logps, fw.logps.rejected.logps):
        return StepResult(None, diverged=_why(fw))
    opt.optimizer.zero_grad(set_to_none=True)
    fw.loss.mean().backward()
    _average_gradients(opt.params, accelerator)
    per_pair, stats = {}, {}
    if grads is not None:
        out = grads.finish(batch.size, accelerator.num_processes,
                           lambda t: accelerator.reduce(t.to(accelerator.device), "sum").cpu())
        per_pair = {"grad_norm": out.norm, "grad_cos": out.cos,
                    "grad_cos_with_self": out.cos_with_self}
        stats = {"step": step, **out.step_stats, "step_lr": lr}
    records = forward_records(fw, batch, cfg, step, lr, f"s{step}-r{accelerator.process_index}",
                              **per_pair)
    if not opt.update():
        return StepResult(None, diverged="non-finite gradient norm")
    return StepResult(records, stats)
