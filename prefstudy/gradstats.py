"""Per-pair gradient statistics from the ordinary backward pass — no backward per pair.

For a linear layer y = W a, the gradient of W is Σ_rows Σ_t δ_t a_tᵀ, a sum over rows and tokens
of outer products of the layer's input a and the gradient δ arriving at its output. Keeping those
two tensors per row during the one batch backward pass gives every row's own contribution
(`einsum("nto,nti->noi")`), and a pair's gradient is the sum of its chosen row and its rejected
row. The statistics cover the weights of every trainable `nn.Linear` the model calls as a module
(the attention and MLP projections of the trainable blocks); norms and the output head are left
out.

Per pair:  grad_norm = |g_i|,  grad_cos = cos(g_i, ḡ) with ḡ the batch-mean gradient.
Per step:  the gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, "An
empirical model of large-batch training", Eq. 2.8 and App. A): tr(Σ) = Σ_i |g_i − ḡ|² / (B − 1)
and the unbiased |G|² = |ḡ|² − tr(Σ)/B.
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
    cos: Tensor  # (B_local,) cos(g_i, ḡ)
    step_stats: dict = field(default_factory=dict)


def noise_scale(sum_sq: float, mean_sq: float, n: int) -> dict[str, float]:
    """tr(Σ), |G|² (unbiased) and B_simple from Σ|g_i|², |ḡ|² and the batch size n."""
    if n < 2:
        return {"trace_sigma": math.nan, "grad_sq": math.nan, "gns": math.nan}
    trace = max(sum_sq - n * mean_sq, 0.0) / (n - 1)
    grad_sq = mean_sq - trace / n
    return {"trace_sigma": trace, "grad_sq": grad_sq, "mean_grad_sq": mean_sq,
            "gns": trace / grad_sq if grad_sq > 0 else math.nan}


class PerPairGradients:
    """Hooks a model's trainable linear layers; `finish()` after backward gives per-pair stats.

    Use: `capture()` before the forward pass, backward as usual (and average gradients over
    processes), then `finish(pairs_in_this_process, processes)`.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.Linear) and m.weight.requires_grad]
        self.inputs: dict[nn.Module, Tensor] = {}
        self.grads: dict[nn.Module, Tensor] = {}
        self.active = False
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module, args, output):
        if not (self.active and torch.is_grad_enabled()):
            return
        self.inputs[module] = args[0].detach()

        def keep(grad, module=module):
            self.grads[module] = grad.detach()

        output.register_hook(keep)

    def capture(self) -> None:
        self.inputs.clear()
        self.grads.clear()
        self.active = True

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def finish(self, local_pairs: int, world: int = 1,
               reduce_sum: Callable[[Tensor], Tensor] | None = None) -> PerPairStats:
        """Statistics of the backward pass just run.

        The loss was the mean over `local_pairs` pairs per process, so each row's captured
        contribution is scaled by `local_pairs` to give the gradient of that pair's own loss; the
        batch-mean gradient ḡ is the (process-averaged) `.grad` of each layer.
        """
        self.active = False
        b = local_pairs
        sq = torch.zeros(b, dtype=torch.float64)
        dot = torch.zeros(b, dtype=torch.float64)
        mean_sq = 0.0
        for layer in self.layers:
            if layer not in self.grads or layer.weight.grad is None:
                continue
            a, d = self.inputs[layer].float(), self.grads[layer].float()
            rows = torch.einsum("nto,nti->noi", d, a) * b  # (2b, out, in)
            per_pair = rows[:b] + rows[b:]  # chosen row + rejected row of each pair
            if layer.bias is not None and layer.bias.requires_grad:
                bias = d.sum(1) * b
                per_pair = torch.cat([per_pair.flatten(1), (bias[:b] + bias[b:])], dim=1)
                mean = torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()])
            else:
                per_pair, mean = per_pair.flatten(1), layer.weight.grad.flatten()
            mean = mean.float()
            sq += per_pair.pow(2).sum(1).double().cpu()
            dot += (per_pair @ mean).double().cpu()
            mean_sq += float(mean.pow(2).sum())
        self.inputs.clear()
        self.grads.clear()
        norm = sq.sqrt()
        cos = dot / (norm * math.sqrt(mean_sq)).clamp(min=1e-30)
        total_sq = sq.sum()
        if reduce_sum is not None and world > 1:
            total_sq = reduce_sum(total_sq.to(torch.float64))
        stats = noise_scale(float(total_sq), mean_sq, b * world)
        return PerPairStats(norm.float(), cos.float(), stats)
