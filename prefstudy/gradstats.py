"""Per-pair gradient statistics from the ordinary backward pass — no backward per pair.

For a linear layer y = W a, the gradient of W is Σ_rows Σ_t δ_t a_tᵀ, a sum over rows and tokens
of outer products of the layer's input a and the gradient δ arriving at its output. Keeping those
two tensors per row during the one batch backward pass gives every row's own contribution
(`einsum("nto,nti->noi")`), and a pair's gradient is the sum of its chosen row and its rejected
row. The statistics cover the weights of every trainable `nn.Linear` the model calls as a module
(the attention and MLP projections of the trainable blocks); norms, embeddings and the output
head are left out.

Per pair (B pairs in the batch, over all processes; ḡ = (1/B) Σ_j g_j the batch-mean gradient):

    grad_norm            |g_i|
    grad_cos             cos(g_i, Σ_{j≠i} g_j), the leave-one-out cosine: the pair against the
                         mean of the OTHER pairs of its batch (`leave_one_out_cosine`). Orthogonal
                         gradients give 0 whatever their norms; identical ones give 1.
    grad_cos_with_self   cos(g_i, ḡ), the cosine with a mean that includes the pair itself. It
                         is biased upwards by the pair's own share of ḡ: B orthogonal gradients
                         give |g_i| / √(Σ_j |g_j|²) (`with_self_orthogonal`), 1/√B at equal norms
                         (0.5 at B = 4). Kept so that the two can be compared, never reported alone.

Per step: the gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, "An
empirical model of large-batch training", Eq. 2.8 and App. A): tr(Σ) = Σ_i |g_i − ḡ|² / (B − 1)
and the unbiased |G|² = |ḡ|² − tr(Σ)/B.

`PerPairGradients.row_gram` serves the audit at the starting weights (prefstudy.gradaudit): the
Gram matrix of every row's gradient of any per-token weighting of the log-probs, from the same
hooks, without touching `.grad`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class PerPairStats:
    norm: Tensor  # (B_local,) |g_i|
    cos: Tensor  # (B_local,) leave-one-out cos(g_i, Σ_{j≠i} g_j)
    cos_with_self: Tensor  # (B_local,) cos(g_i, ḡ), ḡ including g_i
    step_stats: dict = field(default_factory=dict)


def leave_one_out_cosine(dot: Tensor, sq: Tensor, mean_sq: Tensor | float,
                         n: Tensor | int) -> Tensor:
    """cos(g_i, Σ_{j≠i} g_j) from g_i·ḡ (`dot`), |g_i|² (`sq`), |ḡ|² (`mean_sq`) and the batch
    size n, where ḡ = (1/n) Σ_j g_j includes g_i. Elementwise over broadcast tensors.

    The others' sum is s_i = n·ḡ − g_i, so g_i·s_i = n·dot − sq and |s_i|² = n²·mean_sq −
    2n·dot + sq (the mean of the others, s_i/(n − 1), has the same direction). NaN where it is
    undefined: one pair (n = 1), a zero gradient, or others that sum to zero (|s_i|² ≤ 0 after
    rounding). Rounding can put a cosine a hair outside [−1, 1]; it is clamped back.
    """
    others_sq = n * n * mean_sq - 2 * n * dot + sq
    cos = ((n * dot - sq) / (sq * others_sq).clamp(min=0).sqrt()).clamp(-1, 1)
    return torch.where((others_sq > 0) & (sq > 0), cos, torch.nan)


def with_self_orthogonal(sq: Tensor) -> Tensor:
    """What cos(g_i, ḡ) would be if the batch's gradients were orthogonal with these norms:
    g_i·ḡ = |g_i|²/n and |ḡ| = √(Σ_j |g_j|²)/n, so |g_i| / √(Σ_j |g_j|²). `sq`: |g_j|² of one
    batch. Shape: (n,). 1/√n at equal norms."""
    return sq.sqrt() / sq.sum().sqrt()


def noise_scale(sum_sq: float, mean_sq: float, n: int) -> dict[str, float]:
    """tr(Σ), |G|² (unbiased) and B_simple from Σ|g_i|², |ḡ|² and the batch size n."""
    if n < 2:
        return {"trace_sigma": math.nan, "grad_sq": math.nan, "gns": math.nan}
    trace = max(sum_sq - n * mean_sq, 0.0) / (n - 1)
    grad_sq = mean_sq - trace / n
    return {"trace_sigma": trace, "grad_sq": grad_sq, "mean_grad_sq": mean_sq,
            "gns": trace / grad_sq if grad_sq > 0 else math.nan}


def _row_gradients(a: Tensor, d: Tensor, bias: bool) -> Tensor:
    """Each row's own gradient of one linear layer, flattened: Σ_t δ_t a_tᵀ (and Σ_t δ_t for its
    bias). a: (rows, T, in), d: (rows, T, out). Shape: (rows, out·in [+ out])."""
    rows = torch.einsum("nto,nti->noi", d, a).flatten(1)
    return torch.cat([rows, d.sum(1)], dim=1) if bias else rows


def _has_bias(layer: nn.Linear) -> bool:
    return layer.bias is not None and layer.bias.requires_grad


class PerPairGradients:
    """Hooks a model's trainable linear layers and turns what they saw into per-row gradients.

    Training: `capture()` before the forward pass, backward as usual (and average gradients over
    processes), then `finish(pairs_in_this_process, processes)`.
    At fixed weights (no update): `capture(keep_outputs=True)` before one or more forward passes,
    then `row_gram(target, weights)` once per weighting of them, then `release()`.
    Rows are numbered across forward passes in the order the passes ran.
    """

    def __init__(self, model: nn.Module, within: nn.Module | None = None):
        """Hooks the trainable linear layers of `model`, or only those inside `within` (e.g. the
        model's top blocks)."""
        self.layers = [m for m in (model if within is None else within).modules()
                       if isinstance(m, nn.Linear) and m.weight.requires_grad]
        # per layer, one entry per forward pass since capture(): its input, its output (with
        # keep_outputs) or the gradient at its output (after a backward)
        self.inputs: dict[nn.Module, list[Tensor]] = {}
        self.outputs: dict[nn.Module, list[Tensor]] = {}
        self.grads: dict[nn.Module, dict[int, Tensor]] = {}
        self.active = False
        self.keep_outputs = False
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module, args, output):
        if not (self.active and torch.is_grad_enabled() and output.requires_grad):
            return
        calls = self.inputs.setdefault(module, [])
        calls.append(args[0].detach())
        if self.keep_outputs:  # row_gram differentiates with respect to it
            self.outputs.setdefault(module, []).append(output)
            return

        def keep(grad, module=module, call=len(calls) - 1):
            self.grads.setdefault(module, {})[call] = grad.detach()

        output.register_hook(keep)

    def capture(self, *, keep_outputs: bool = False) -> None:
        """Start recording the next forward pass(es); `keep_outputs` for `row_gram`."""
        self.release()
        self.active = True
        self.keep_outputs = keep_outputs

    def release(self) -> None:
        """Stop recording and drop what was kept (and with it the forward graph)."""
        self.active = False
        self.inputs.clear()
        self.grads.clear()
        self.outputs.clear()

    def remove(self) -> None:
        self.release()
        for h in self.handles:
            h.remove()

    def _rows(self, layer: nn.Linear, deltas: list[Tensor]) -> Tensor:
        """Every captured row's own gradient of `layer`, the forward passes' rows one after the
        other, given the gradient at its output in each pass. Shape: (rows, out·in [+ out])."""
        wide = torch.promote_types(deltas[0].dtype, torch.float32)
        return torch.cat([_row_gradients(a.to(wide), d.to(wide), _has_bias(layer))
                          for a, d in zip(self.inputs[layer], deltas)])

    def row_gram(self, target: Tensor, weights: Tensor) -> Tensor:
        """Gram matrix of each row's gradient of Σ_t weights·target, over the captured layers.

        target: a tensor computed from the captured forward pass(es) with one row per
        sequence, e.g. per-token log-probs, Shape: (rows, T); weights: its shape. Rows are
        separate sequences, so the gradient of the weighted sum splits exactly into one gradient
        per row, ∇_k = gradient of Σ_t weights[k, t]·target[k, t]. Returns Shape: (rows, rows),
        float64, ⟨∇_k, ∇_l⟩ over the weights (and trainable biases) of the captured layers, in
        the order the forward passes saw the rows (`target` may order them otherwise: the
        caller maps them). Only the gradients at the layers' outputs are computed
        (torch.autograd.grad: no `.grad` is touched), and the graph is kept for the next
        weighting.
        """
        layers = [m for m in self.layers if m in self.outputs]
        outputs = [o for m in layers for o in self.outputs[m]]
        deltas = iter(torch.autograd.grad(target, outputs, grad_outputs=weights,
                                          retain_graph=True, allow_unused=True))
        gram = None
        for layer in layers:
            calls = [next(deltas) for _ in self.outputs[layer]]
            if any(d is None for d in calls):  # the layer does not reach the target
                continue
            rows = self._rows(layer, calls)
            part = (rows @ rows.T).double().cpu()
            gram = part if gram is None else gram + part
        if gram is None:
            raise ValueError("row_gram: no captured layer reaches the target")
        return gram

    def finish(self, local_pairs: int, world: int = 1,
               reduce_sum: Callable[[Tensor], Tensor] | None = None) -> PerPairStats:
        """Statistics of the backward pass just run.

        The loss was the mean over `local_pairs` pairs per process, so each row's captured
        contribution is scaled by `local_pairs` to give the gradient of that pair's own loss; the
        batch-mean gradient ḡ is the (process-averaged) `.grad` of each layer, over all
        `local_pairs · world` pairs, which the leave-one-out cosine leaves each pair out of.
        """
        self.active = False
        b = local_pairs
        sq = torch.zeros(b, dtype=torch.float64)
        dot = torch.zeros(b, dtype=torch.float64)
        mean_sq = 0.0
        for layer in self.layers:
            if layer not in self.grads or layer.weight.grad is None:
                continue
            calls = self.grads[layer]
            rows = self._rows(layer, [calls[i] for i in range(len(calls))]) * b  # (2b, ...)
            per_pair = rows[:b] + rows[b:]  # chosen row + rejected row of each pair
            mean = layer.weight.grad.flatten()
            if _has_bias(layer):
                mean = torch.cat([mean, layer.bias.grad.flatten()])
            mean = mean.to(rows.dtype)
            sq += per_pair.pow(2).sum(1).double().cpu()
            dot += (per_pair @ mean).double().cpu()
            mean_sq += float(mean.pow(2).sum())
        self.release()
        return self._stats(sq, dot, mean_sq, b, world, reduce_sum)

    @staticmethod
    def _stats(sq: Tensor, dot: Tensor, mean_sq: float, b: int, world: int,
               reduce_sum: Callable[[Tensor], Tensor] | None) -> PerPairStats:
        norm = sq.sqrt()
        with_self = (dot / (norm * math.sqrt(mean_sq)).clamp(min=1e-30)).clamp(-1, 1)
        loo = leave_one_out_cosine(dot, sq, mean_sq, b * world)
        total_sq = sq.sum()
        if reduce_sum is not None and world > 1:
            total_sq = reduce_sum(total_sq.to(torch.float64))
        stats = noise_scale(float(total_sq), mean_sq, b * world)
        return PerPairStats(norm.float(), loo.float(), with_self.float(), stats)
