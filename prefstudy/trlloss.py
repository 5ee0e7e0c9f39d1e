"""TRL's DPO loss, pair by pair: a DPOConfig's loss as prefstudy's objectives compute it.

`trl_loss(args)` reads a DPOConfig's loss_type, loss_weights, ld_alpha, f_divergence_type,
use_weighting and each loss type's options, and returns a `TrlLoss`: its terms (`TrlComponent`,
a registry objective with its parameters and its loss_weights entry, on LD-weighted log-probs
under ld_alpha) and whether WPO weights them. `TrlLoss.per_pair` gives (pair_loss, margin),
Shape: (batch,) each, whose batch mean is TRL's loss (`PAIR_LOSS` says how). `TRL_OBJECTIVES`
maps every TRL 1.16 loss_type to its objective (`TrlMapping`); the module docstring of
prefstudy.integrations lists the mapping, and what `PerPairDPOTrainer`, which computes these
losses from the log-probs of TRL's own forward passes, records. What has no per-pair counterpart
is refused in one line naming the option (`trl_loss`).

Nothing here imports TRL or transformers: a DPOConfig is read only for its fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from .logprobs import TokenLogps, wpo_weights
from .objectives import PairLogps, compute, resolve_params

# The TRL versions whose DPO loss this module reproduces and whose DPOTrainer internals
# prefstudy.integrations reads (its `check_trl` refuses any other).
SUPPORTED_TRL = ">=1.16,<1.17"


def loss_types(args) -> list[str]:
    """A DPOConfig's loss_type as a list: TRL takes one name or several (with loss_weights)."""
    loss = args.loss_type
    return [loss] if isinstance(loss, str) else list(loss)


_F_OPTIONS = {"f_divergence": "f_divergence_type", "f_alpha": "f_alpha_divergence_coef"}


@dataclass(frozen=True)
class TrlMapping:
    """How prefstudy computes one TRL loss_type per pair: the objective, which of its parameters
    each DPOConfig field sets (`options`, parameter → field) and those TRL fixes (`fixed`). Every
    parameter of the objective is one or the other, so none is left at a prefstudy default.

    batch_token_mean: TRL's "sft", the micro-batch's token-mean NLL of the chosen responses, not
    a per-pair loss: see `TrlComponent.per_pair` for how it is shared out among the pairs.
    """

    objective: str
    options: Mapping[str, str]
    fixed: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    batch_token_mean: bool = False

    def params(self, args, loss_type: str) -> dict[str, Any]:
        """The objective's parameters under `args`; ValueError naming the DPOConfig fields."""
        if self.batch_token_mean:
            return {"norm": "batch"}
        given = {p: getattr(args, f) for p, f in self.options.items()}
        try:
            return resolve_params(self.objective, {**given, **self.fixed})
        except ValueError as e:
            fields = ", ".join(f"{f}={getattr(args, f)!r}" for f in self.options.values())
            raise ValueError(f"loss_type={loss_type!r} with {fields}: {e}") from None


def _trl(objective: str, *options: str, f_divergence: bool = False,
         fixed: Mapping[str, Any] | None = None, **renamed: str) -> TrlMapping:
    """A TrlMapping: `options` are DPOConfig fields of the parameter's own name, `renamed` maps
    a parameter to the field of another name, f_divergence adds f_divergence and f_alpha."""
    fields = {**{o: o for o in options}, **renamed, **(_F_OPTIONS if f_divergence else {})}
    return TrlMapping(objective, MappingProxyType(fields), MappingProxyType(dict(fixed or {})))


# TRL loss_type → how prefstudy computes it per pair (each objective's `trl` in the registry says
# the same). TRL's β is IPO's τ, and TRL divides IPO's and sigmoid_norm's log-ratios by length.
TRL_OBJECTIVES: dict[str, TrlMapping] = {
    "sigmoid": _trl("dpo", "beta", f_divergence=True),
    "hinge": _trl("hinge", "beta", f_divergence=True),
    "ipo": _trl("ipo", tau="beta", f_divergence=True, fixed={"norm": "mean"}),
    "exo_pair": _trl("exo_pair", "beta", "label_smoothing", f_divergence=True),
    "nca_pair": _trl("nca_pair", "beta"),
    "robust": _trl("robust", "beta", "label_smoothing", f_divergence=True),
    "bco_pair": _trl("bco_pair", "beta"),
    "sppo_hard": _trl("sppo_hard", "beta"),
    "aot": _trl("aot", "beta", "label_smoothing"),
    "aot_unpaired": _trl("aot_unpaired", "beta", "label_smoothing"),
    "apo_zero": _trl("apo_zero", "beta"),
    "apo_down": _trl("apo_down", "beta"),
    "discopop": _trl("discopop", "beta", tau="discopop_tau", f_divergence=True),
    "sft": TrlMapping("sft", MappingProxyType({}), batch_token_mean=True),
    "sigmoid_norm": _trl("book_dpo", "beta", f_divergence=True,
                         fixed={"w_chosen": 1.0, "w_rejected": 1.0}),
}
# With ld_alpha, TRL's sigmoid under reverse KL is the registry's ld_dpo. (On `_ld_view`, whose
# tokens all sit where LD-DPO weighs them by 1, ld_dpo computes DPO on the LD-weighted sums.)
_LD_DPO = _trl("ld_dpo", "beta", alpha="ld_alpha")
_TRL_CANNOT_WEIGHT = ("sft", "hinge")  # TRL 1.16's use_weighting fails on these (`_unmappable`)


def _ld_sum(side: TokenLogps, public: Tensor, alpha: float) -> Tensor:
    """LD-DPO's log π̂(y) = Σ_{t<l} log p_t + α·Σ_{t>=l} log p_t (objectives.ld_dpo), l =
    `public`, summed as TRL sums it (the two parts apart), so the loss matches TRL's in float32
    too. Shape: (batch,)."""
    tail = side.position() >= public[:, None]
    return (side.logps * (side.mask & ~tail)).sum(-1) + alpha * (side.logps * tail).sum(-1)


def _ld_view(logps: PairLogps, alpha: float) -> PairLogps:
    """What TRL's ld_alpha gives every loss type but sft: each side's log π̂ (`_ld_sum`, the
    pair's shorter response the public length) as a sum on its first token, so `.sum`, `.mean`
    and `.count` are exact (every TRL loss reads only those). A precomputed reference (already
    LD-weighted, on its first token: weight 1) passes through unchanged."""
    public = torch.minimum(logps.chosen.count, logps.rejected.count)
    return PairLogps(*(None if s is None else TokenLogps.from_sums(_ld_sum(s, public, alpha).float(), s.mask)
                       for s in (logps.chosen, logps.rejected, logps.ref_chosen,
                                 logps.ref_rejected)))


@dataclass(frozen=True)
class TrlComponent:
    """One term of a DPOConfig's loss: `weight` (its loss_weights entry) times the per-pair loss
    of the prefstudy `objective` with `params`; ld_alpha: LD-DPO's α, applied to the log-probs
    the objective reads (`_ld_view`; None where it is not)."""

    loss_type: str
    weight: float
    objective: str
    params: Mapping[str, Any]
    ld_alpha: float | None = None

    @property
    def label(self) -> str:
        """The objective's name, as ld(<objective>) on LD-weighted log-probs (ld_dpo is that
        already) and prefixed by the weight unless it is 1: "dpo", "ld(hinge)", "0.5*sft"."""
        plain = self.ld_alpha is None or self.objective == "ld_dpo"
        name = self.objective if plain else f"ld({self.objective})"
        return name if self.weight == 1 else f"{self.weight:g}*{name}"

    def describe(self) -> dict[str, Any]:
        return {"loss_type": self.loss_type, "objective": self.objective, "weight": self.weight,
                "params": dict(self.params), "ld_alpha_on_logps": self.ld_alpha}

    def per_pair(self, logps: PairLogps, wpo: Tensor | None) -> tuple[Tensor, Tensor]:
        """(loss, margin) of this term per pair, before `weight`; Shape: (batch,) each.

        wpo: the per-pair WPO weights (None without use_weighting), which TRL multiplies each
        term by. TRL's sft term is one number, Σ chosen NLL / N over the micro-batch's N chosen
        tokens; pair i gets nll_sum_i · B / N (B pairs): its own tokens' share of that mean (and
        of its gradient), averaging to TRL's term exactly. Its margin is the token-mean gap, as
        the registry's sft. (TRL 1.16 cannot WPO-weight its sft term: `_unmappable`.)
        """
        if self.loss_type == "sft":
            chosen = logps.chosen
            loss = -chosen.sum * (chosen.count.numel() / chosen.count.sum())
            return loss, chosen.mean - logps.rejected.mean
        view = logps if self.ld_alpha is None else _ld_view(logps, self.ld_alpha)
        out = compute(self.objective, view, **self.params)
        return (out.loss if wpo is None else out.loss * wpo), out.margin


PAIR_LOSS = ("Σ_k weight_k · loss_k per pair (TRL's loss_weights), each term times the pair's WPO "
             "weight under use_weighting; sft's term is the pair's chosen NLL sum · B / N (N chosen "
             "tokens in the micro-batch of B pairs); the batch mean is TRL's loss. margin: the "
             "first term's other than sft, else sft's.")


@dataclass(frozen=True)
class TrlLoss:
    """A DPOConfig's loss as prefstudy computes it per pair: its terms, and WPO weighting."""

    components: tuple[TrlComponent, ...]
    use_weighting: bool = False
    ld_alpha: float | None = None  # DPOConfig's, as given

    @property
    def name(self) -> str:
        """The records' `objective`: a registry name where the loss is that objective on the
        recorded log-probs (and TRL's sft alone: "sft", norm "batch", see PAIR_LOSS), else the
        terms' labels joined by "+", wrapped in wpo(...) under WPO weighting: "dpo", "ld_dpo",
        "dpo+sft", "dpo+0.5*sft", "ld(ipo)", "wpo(dpo)"."""
        body = "+".join(c.label for c in self.components)
        return f"wpo({body})" if self.use_weighting else body

    @property
    def params(self) -> dict[str, Any]:
        """The one term's parameters (what its objective takes), or every term's description."""
        if len(self.components) == 1:
            return dict(self.components[0].params)
        return {"components": [c.describe() for c in self.components]}

    def describe(self) -> dict[str, Any]:
        """What config.json keeps as `trl_loss`: TRL's options and how each term is computed."""
        return {"loss_type": [c.loss_type for c in self.components],
                "loss_weights": [c.weight for c in self.components],
                "ld_alpha": self.ld_alpha, "use_weighting": self.use_weighting,
                "components": [c.describe() for c in self.components], "pair_loss": PAIR_LOSS}

    def per_pair(self, logps: PairLogps, log_sum_sq: tuple[Tensor, Tensor] | None = None
                 ) -> tuple[Tensor, Tensor]:
        """(pair_loss, margin), Shape: (batch,) each (see PAIR_LOSS). log_sum_sq: (chosen,
        rejected) log Σ_v π(v|·)² per token, which WPO weighting needs."""
        wpo = None
        if self.use_weighting:
            if log_sum_sq is None:
                raise ValueError("use_weighting needs the policy's log_sum_sq_probs")
            wpo = wpo_weights(logps.chosen, log_sum_sq[0], logps.rejected, log_sum_sq[1])
        terms = [(c, *c.per_pair(logps, wpo)) for c in self.components]
        loss = sum(c.weight * term for c, term, _ in terms)
        margins = [m for c, _, m in terms if c.loss_type != "sft"] or [terms[0][2]]
        return loss, margins[0]


def _unmappable(args) -> list[str]:
    """What in a DPOConfig has no per-pair counterpart, one phrase each."""
    losses, problems = loss_types(args), []
    unknown = [t for t in losses if t not in TRL_OBJECTIVES]
    if unknown:
        problems.append(f"loss_type {unknown} (not a TRL {SUPPORTED_TRL} loss type)")
    if args.f_divergence_type != "reverse_kl":
        without = [t for t in losses if t in TRL_OBJECTIVES and t != "sft"
                   and "f_divergence" not in TRL_OBJECTIVES[t].options]
        if without:
            problems.append(f"f_divergence_type={args.f_divergence_type!r} with loss_type "
                            f"{without}, which have no f-divergence form (TRL refuses it too)")
    unweightable = [t for t in losses if t in _TRL_CANNOT_WEIGHT]
    if args.use_weighting and unweightable:
        problems.append(f"use_weighting=True with loss_type {unweightable} (TRL 1.16 fails on "
                        "it: it multiplies each term by the WPO weights in place, which its sft "
                        "term, an expanded tensor, and its hinge term, relu's output kept for "
                        "the backward pass, do not allow)")
    return problems


def _component(loss_type: str, weight: float, args) -> TrlComponent:
    mapping, ld = TRL_OBJECTIVES[loss_type], args.ld_alpha
    if ld is not None and loss_type == "sigmoid" and args.f_divergence_type == "reverse_kl":
        mapping = _LD_DPO  # by name; computed on the LD-weighted sums, where it is DPO's formula
    if mapping.batch_token_mean:
        ld = None  # TRL's sft reads the plain per-token log-probs
    return TrlComponent(loss_type, weight, mapping.objective, mapping.params(args, loss_type), ld)


def trl_loss(args) -> TrlLoss:
    """A DPOConfig's loss (loss_type, loss_weights, ld_alpha, f_divergence_type, use_weighting
    and each loss type's options) as prefstudy computes it per pair.

    ValueError naming what has no counterpart (`_unmappable`) or an option value the prefstudy
    objective does not allow (e.g. robust's label_smoothing >= 0.5).
    """
    problems = _unmappable(args)
    if problems:
        raise ValueError("PerPairDPOTrainer cannot record per-pair losses for this DPOConfig: "
                         + "; ".join(problems) + f". Supported: loss types {list(TRL_OBJECTIVES)}"
                         ", alone or combined by loss_weights. Use DPOTrainer for this configuration.")
    losses = loss_types(args)
    weights = args.loss_weights or [1.0] * len(losses)
    try:
        components = tuple(_component(t, float(w), args) for t, w in zip(losses, weights,
                                                                          strict=True))
    except ValueError as e:
        raise ValueError(f"PerPairDPOTrainer cannot record this DPOConfig: {e}") from None
    return TrlLoss(components, bool(args.use_weighting), args.ld_alpha)


__all__ = ["PAIR_LOSS", "SUPPORTED_TRL", "TRL_OBJECTIVES", "TrlComponent", "TrlLoss",
           "TrlMapping", "loss_types", "trl_loss"]
