"""Preference objectives: per-token log-probs in, one loss per pair out.

Every objective is a small pure function `fn(logps: PairLogps, **params) -> ObjectiveOutput`,
registered by name in `OBJECTIVES`. That registry is the only list of objective names in
prefstudy: config validation, error messages and the tests all read it. Call objectives through
`compute(name, logps, **params)`, which validates the parameters, checks that a reference is
there when one is needed, and detaches the reference. Losses are never reduced here: the train
step takes `.mean()` where the optimiser steps, and the per-pair values go into the records.

Notation in the docstrings, per pair (y_c chosen, y_r rejected, |y| = number of response tokens):

    πc, πr    summed policy log-probs log π(y|x);   rc, rr   the same under the frozen reference
    agg       `.sum` or `.mean` over response tokens, picked by a `norm` parameter
    loss_p    −agg(πc), the chosen cross-entropy;    loss_n   −agg(πr), the rejected one
    h         (πc − rc) − (πr − rr), the DPO log-ratio difference (summed log-probs)
    σ         the logistic sigmoid; −log σ is computed with `F.logsigmoid` for stability
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from operator import attrgetter
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from prefstudy.hyperparams import Param
from prefstudy.logprobs import TokenLogps

# ---------------------------------------------------------------------------------------------
# Inputs and outputs


@dataclass(frozen=True)
class PairLogps:
    """Per-token log-probs of a batch of preference pairs; row b of each side is pair b.

    The reference sides are None when no reference model is used; `compute` refuses an objective
    that needs them. Each reference side has the same mask as its policy side.
    """

    chosen: TokenLogps  # policy, chosen responses
    rejected: TokenLogps  # policy, rejected responses
    ref_chosen: TokenLogps | None = None
    ref_rejected: TokenLogps | None = None


@dataclass(frozen=True)
class ObjectiveOutput:
    """What an objective returns. Every tensor has Shape: (batch,).

    loss:    per-pair loss the optimiser minimises (never reduced here).
    margin:  the preference margin the objective pushes up (for the sigmoid family, the argument
             of the sigmoid; for likelihood objectives, the gap agg(πc) − agg(πr) = loss_n − loss_p).
    chosen_reward / rejected_reward: the implicit rewards where the objective defines them
             (DPO: β·(log π − log π_ref)), else None.
    """

    loss: Tensor
    margin: Tensor
    chosen_reward: Tensor | None = None
    rejected_reward: Tensor | None = None


# ---------------------------------------------------------------------------------------------
# Parameters, each declared as a `hyperparams.Param`

# agg: how a `norm` parameter reduces token log-probs to one number per sequence.
_AGGREGATES: dict[str, Callable[[TokenLogps], Tensor]] = {
    "sum": attrgetter("sum"),
    "mean": attrgetter("mean"),
}


def _beta(default: float = 0.1) -> Param:
    return Param(default, above=0.0, help="DPO's β, the scale of the log-ratio")


def _norm(default: str) -> Param:
    return Param(default, choices=tuple(_AGGREGATES), help="reduce token log-probs by sum or mean")


# ---------------------------------------------------------------------------------------------
# Registry


# The four families figures and tables group objectives by, in the order they list them:
#   likelihood         loss_p / loss_n terms alone, no reference: sft, naive (summed by default),
#                      negative_only, unlikelihood
#   length-normalised  token-mean (length-normalised) rewards: simpo, orpo, ld_dpo, book_dpo;
#                      and naive with norm="mean" (see `family_of`)
#   reference-based    log-ratios against a frozen reference: dpo and its variants
#   anchored           a reference log-ratio plus a term that holds the chosen likelihood up or
#                      pins a reward to zero: dpop, rpo, apo_zero, apo_down
# Summed losses come before token-mean ones and those before reference ones; this one tuple is
# that order, read by every figure and table that groups by family.
FAMILIES = ("likelihood", "length-normalised", "reference-based", "anchored")

# (objective, parameter, value) → the family that parameter value puts the objective in instead
# of its registered one: naive under a token mean is the first normalisation, not a summed loss.
FAMILY_BY_PARAM = {("naive", "norm", "mean"): "length-normalised"}


@dataclass(frozen=True)
class Objective:
    """A registered objective. `summary` is the first line of `fn`'s docstring."""

    name: str
    fn: Callable[..., ObjectiveOutput]
    params: Mapping[str, Param]
    needs_reference: bool
    summary: str
    source: str
    family: str  # one of FAMILIES, at the default parameters (see `family_of`)
    trl: str | None = None  # the TRL DPOTrainer loss_type (and options) computing the same loss
    batch_level: bool = False  # a pair's loss depends on the other pairs of its batch


OBJECTIVES: dict[str, Objective] = {}


def register(name: str, *, needs_reference: bool, source: str, family: str | None = None,
             trl: str | None = None, batch_level: bool = False, **params: Param):
    """Decorator: add `fn(logps, *, <params>)` to `OBJECTIVES` under `name`.

    family: one of FAMILIES (required; None is refused like any other value outside them).
    trl: how TRL's DPOTrainer spells the same loss (its loss_type, with any options), if it has
    it. batch_level: the objective couples the pairs of a batch (AOT sorts across it), so a
    pair's loss is not a function of that pair alone.
    Checks at import time that the keyword-only arguments of `fn` are exactly `params`, that each
    default is allowed by its own Param, that `fn` has a docstring and that `family` is one of
    FAMILIES.
    """

    def decorator(fn: Callable[..., ObjectiveOutput]) -> Callable[..., ObjectiveOutput]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        signature = list(inspect.signature(fn).parameters.values())
        keywords = {p.name for p in signature[1:] if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if len(signature) != len(params) + 1 or keywords != set(params):
            raise ValueError(
                f"objective {name!r}: {fn.__name__} must take (logps, *, {', '.join(params)})"
            )
        for pname, param in params.items():
            _validated(name, pname, param, param.default)
        doc = inspect.getdoc(fn)
        if not doc:
            raise ValueError(f"objective {name!r}: {fn.__name__} needs a docstring")
        if family not in FAMILIES:
            raise ValueError(f"objective {name!r}: family {family!r}; allowed: "
                             f"{', '.join(FAMILIES)}")
        OBJECTIVES[name] = Objective(
            name=name,
            fn=fn,
            params=MappingProxyType(dict(params)),
            needs_reference=needs_reference,
            summary=doc.splitlines()[0],
            source=source,
            family=family,
            trl=trl,
            batch_level=batch_level,
        )
        return fn

    return decorator


def catalogue() -> list[dict[str, Any]]:
    """Every registered objective as one row: name, summary, source, params (name → default and
    allowed values, in words), needs_reference, trl (TRL's loss_type, '' where TRL has none),
    batch_level, family (at the default parameters). What `prefstudy objectives` prints and the
    README lists."""
    return [{"name": o.name, "summary": o.summary, "source": o.source,
             "params": {p: f"{spec.default!r} ({spec.describe()})" for p, spec in o.params.items()},
             "needs_reference": o.needs_reference, "trl": o.trl or "",
             "batch_level": o.batch_level, "family": o.family}
            for o in OBJECTIVES.values()]


def family_of(objective: str, params: Mapping | None = None) -> str:
    """The family (one of FAMILIES) of `objective` under `params` (defaults for the rest).

    The registered family, unless a parameter value moves it (FAMILY_BY_PARAM: naive with
    norm="mean" is "length-normalised"). Raises ValueError as `resolve_params` does for an unknown
    objective or a parameter it does not take or allow.
    """
    resolved = resolve_params(objective, params)
    for (name, pname, value), family in FAMILY_BY_PARAM.items():
        if name == objective and resolved.get(pname) == value:
            return family
    return OBJECTIVES[objective].family


def get_objective(name: str) -> Objective:
    """The registered objective called `name`; ValueError listing the allowed names otherwise."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown objective {name!r}{_did_you_mean(name, OBJECTIVES)}; "
            f"allowed: {', '.join(OBJECTIVES)}"
        ) from None


def resolve_params(name: str, params: Mapping | None = None) -> dict:
    """All parameters of objective `name`: the given ones, checked, and defaults for the rest.

    Pure (no tensors), so a configuration can be checked before any model is loaded. Raises
    ValueError for an unknown objective, an unknown parameter, or a value of the wrong type,
    outside its choices or bounds, or not finite; the message names the objective, the parameter,
    the value and what is allowed.
    """
    objective = get_objective(name)
    given = dict(params or {})
    unknown = [p for p in given if p not in objective.params]
    if unknown:
        allowed = ", ".join(
            f"{p} ({spec.describe()}, default {spec.default!r})"
            for p, spec in objective.params.items()
        )
        hint = _did_you_mean(unknown[0], objective.params) if len(unknown) == 1 else ""
        raise ValueError(
            f"objective {name!r} has no parameter {', '.join(map(repr, unknown))}{hint}; "
            f"allowed parameters: {allowed or 'none'}"
        )
    return {
        p: _validated(name, p, spec, given.get(p, spec.default))
        for p, spec in objective.params.items()
    }


def compute(name: str, logps: PairLogps, **params) -> ObjectiveOutput:
    """Per-pair loss of objective `name`; every field of the output has Shape: (batch,).

    Resolves `params` (see `resolve_params`), checks that the reference log-probs are present when
    the objective needs them and that all sides have the same batch size, detaches the reference
    (it is frozen: no gradient may reach it), and calls the objective.
    """
    objective = get_objective(name)
    resolved = resolve_params(name, params)
    _check_inputs(objective, logps)
    detached = {
        side: getattr(logps, side).detach()
        for side in ("ref_chosen", "ref_rejected")
        if getattr(logps, side) is not None
    }
    return objective.fn(replace(logps, **detached), **resolved)


def _validated(objective: str, pname: str, spec: Param, value):
    coerced = spec.coerce(value)
    if coerced is None:
        raise ValueError(
            f"objective {objective!r}: parameter {pname!r} = {value!r} is not allowed; "
            f"expected {spec.describe()} ({pname}: {spec.help})"
        )
    return coerced


def _did_you_mean(word, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_inputs(objective: Objective, logps: PairLogps) -> None:
    if objective.needs_reference and (logps.ref_chosen is None or logps.ref_rejected is None):
        missing = [s for s in ("ref_chosen", "ref_rejected") if getattr(logps, s) is None]
        free = [n for n, o in OBJECTIVES.items() if not o.needs_reference]
        raise ValueError(
            f"objective {objective.name!r} needs reference log-probs, but PairLogps."
            f"{' and PairLogps.'.join(missing)} {'is' if len(missing) == 1 else 'are'} None; "
            f"compute them with the frozen reference "
            f"model, or use a reference-free objective: {', '.join(free)}"
        )
    batch = logps.chosen.logps.shape[0]
    if logps.rejected.logps.shape[0] != batch:
        raise ValueError(
            f"chosen and rejected batch sizes differ: {batch} vs {logps.rejected.logps.shape[0]}"
        )
    for policy, ref in (("chosen", "ref_chosen"), ("rejected", "ref_rejected")):
        ref_side = getattr(logps, ref)
        if ref_side is not None and ref_side.logps.shape != getattr(logps, policy).logps.shape:
            raise ValueError(
                f"{ref} has shape {tuple(ref_side.logps.shape)} but {policy} has "
                f"{tuple(getattr(logps, policy).logps.shape)}; they must be the same tokens"
            )


# ---------------------------------------------------------------------------------------------
# Shared helpers


# Unlikelihood and ORPO need log(1 − p). At p = 1 it is −inf (and its gradient nan), and a
# log-softmax in finite precision returns log p = 0 once one logit dominates enough. We clamp
# 1 − p >= 1e-6: log(1 − p) >= log(1e-6) ≈ −13.8, a large finite penalty; beyond the clamp the
# term is constant, so it gives no gradient rather than a nan one.
_MIN_ONE_MINUS_P = 1e-6


def _log1m_exp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x <= 0, clamped so it stays finite at x = 0. Shape: as `x`.

    Two branches (Mächler 2012): log(−expm1(x)) near 0, log1p(−exp(x)) further away.
    """
    x = x.clamp(max=math.log1p(-_MIN_ONE_MINUS_P))
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _logratios(logps: PairLogps, norm: str = "sum") -> tuple[Tensor, Tensor]:
    """(agg πc − agg rc, agg πr − agg rr). Shape: (batch,) each."""
    agg = _AGGREGATES[norm]
    return (agg(logps.chosen) - agg(logps.ref_chosen),
            agg(logps.rejected) - agg(logps.ref_rejected))


def _sigmoid_output(margin: Tensor, chosen_reward=None, rejected_reward=None) -> ObjectiveOutput:
    """loss = −log σ(margin). Shape: (batch,)."""
    return ObjectiveOutput(-F.logsigmoid(margin), margin, chosen_reward, rejected_reward)


def _dpo_terms(chosen_lr: Tensor, rejected_lr: Tensor, beta: float):
    """(β·(chosen_lr − rejected_lr), β·chosen_lr, β·rejected_lr): DPO margin and rewards."""
    chosen_reward, rejected_reward = beta * chosen_lr, beta * rejected_lr
    return chosen_reward - rejected_reward, chosen_reward, rejected_reward


# f-divergences (Wang et al. 2023, Beyond Reverse KL, Thm. 1): DPO holds for any f-divergence
# with f′(t) where DPO has log t, t = π(y|x) / π_ref(y|x). As TRL's `f_divergence_type`, each
# f′ here is a function of log t (and α):
#   reverse_kl        f′(t) = log t                       (plain DPO, the default)
#   forward_kl        f′(t) = 1 − 1/t
#   js_divergence     f′(t) = log(2t / (1 + t)) = log 2 + log σ(log t)
#   alpha_divergence  f′(t) = (t^(α−1) − 1) / (α − 1)     (TRL's convention; → log t as α → 1;
#                     (α − 1)·log t is clamped at 80 as TRL does, so exp stays finite in float32)
def _alpha_prime(log_t: Tensor, alpha: float) -> Tensor:
    if abs(alpha - 1.0) < 1e-6:  # the α → 1 limit: reverse KL
        return log_t
    return torch.expm1(torch.clamp((alpha - 1.0) * log_t, max=80.0)) / (alpha - 1.0)


F_PRIME: dict[str, Callable[[Tensor, float], Tensor]] = {
    "reverse_kl": lambda log_t, alpha: log_t,
    "forward_kl": lambda log_t, alpha: -torch.expm1(-log_t),
    "js_divergence": lambda log_t, alpha: math.log(2.0) + F.logsigmoid(log_t),
    "alpha_divergence": _alpha_prime,
}
F_DIVERGENCE = {
    "f_divergence": Param("reverse_kl", choices=tuple(F_PRIME),
                          help="the f-divergence whose f′ scores each log-ratio (TRL's "
                               "f_divergence_type); reverse_kl is DPO"),
    "f_alpha": Param(0.5, help="α of alpha_divergence (TRL's f_alpha_divergence_coef); the "
                               "other divergences ignore it"),
}


def _f_scores(logps: PairLogps, f_divergence: str, f_alpha: float,
              norm: str = "sum") -> tuple[Tensor, Tensor]:
    """(f′(t_c), f′(t_r)) of the summed log-ratios; norm="mean" then divides each by its response
    length, as TRL's ipo and sigmoid_norm do. Shape: (batch,) each."""
    prime = F_PRIME[f_divergence]
    chosen, rejected = (prime(lr, f_alpha) for lr in _logratios(logps))
    if norm == "mean":
        return chosen / logps.chosen.count, rejected / logps.rejected.count
    return chosen, rejected


def _f_terms(logps: PairLogps, beta: float, f_divergence: str, f_alpha: float,
             norm: str = "sum") -> tuple[Tensor, Tensor, Tensor]:
    """(β·(f′(t_c) − f′(t_r)), β·(agg πc − agg rc), β·(agg πr − agg rr)): the margin of the DPO
    family under an f-divergence, and the usual log-ratio rewards."""
    chosen_score, rejected_score = _f_scores(logps, f_divergence, f_alpha, norm)
    _, chosen_reward, rejected_reward = _dpo_terms(*_logratios(logps, norm), beta)
    return beta * (chosen_score - rejected_score), chosen_reward, rejected_reward


# ---------------------------------------------------------------------------------------------
# Likelihood objectives (no reference)


@register("sft", family="likelihood", needs_reference=False,
          source="supervised fine-tuning on the chosen response",
          trl='loss_type="sft" (TRL: the batch\'s token-mean NLL; here each pair\'s, norm="mean")',
          norm=_norm("mean"))
def sft(logps: PairLogps, *, norm: str) -> ObjectiveOutput:
    """Supervised fine-tuning on the chosen response: loss = loss_p = −agg(πc).

    The rejected response is ignored; it is the baseline every preference objective is compared
    with. Token-mean by default, as the usual cross-entropy. margin = agg(πc) − agg(πr), reported
    only so the gap can be followed under SFT too. No rewards.
    Shape: (batch,) for every field.
    """
    agg = _AGGREGATES[norm]
    return ObjectiveOutput(loss=-agg(logps.chosen), margin=agg(logps.chosen) - agg(logps.rejected))


@register("naive", family="likelihood", needs_reference=False,
          source="a textbook section on aligning language models with human preferences "
          "(§2.10): min_θ (loss_p − loss_n)", norm=_norm("sum"))
def naive(logps: PairLogps, *, norm: str) -> ObjectiveOutput:
    """The objective under study: loss = loss_p − loss_n = −agg(πc) + agg(πr).

    Unbounded below: it can be driven to −∞ by making loss_n huge, however badly loss_p fares
    (the collapse the study measures). Summed by default, the un-normalised form whose per-pair
    gap swings with the length difference; norm="mean" is the first normalisation (token-mean).
    margin = loss_n − loss_p = agg(πc) − agg(πr). No rewards.
    Shape: (batch,) for every field.
    """
    agg = _AGGREGATES[norm]
    loss_p, loss_n = -agg(logps.chosen), -agg(logps.rejected)
    return ObjectiveOutput(loss=loss_p - loss_n, margin=loss_n - loss_p)


@register("negative_only", family="likelihood", needs_reference=False,
          source="degenerate case of the naive objective (negative term alone)",
          norm=_norm("mean"))
def negative_only(logps: PairLogps, *, norm: str) -> ObjectiveOutput:
    """The negative term alone, the degenerate limit of the naive objective: loss = −loss_n.

    = agg(πr); minimising it only pushes the rejected likelihood down, which collapses the model.
    margin = agg(πc) − agg(πr), as for naive. No rewards.
    Shape: (batch,) for every field.
    """
    agg = _AGGREGATES[norm]
    return ObjectiveOutput(loss=agg(logps.rejected),
                           margin=agg(logps.chosen) - agg(logps.rejected))


@register("unlikelihood", family="likelihood", needs_reference=False,
          source="Welleck et al. 2019, Neural text generation with unlikelihood training, Eq. 4",
          norm=_norm("mean"),
          alpha=Param(1.0, low=0.0, help="weight α of the unlikelihood term"))
def unlikelihood(logps: PairLogps, *, norm: str, alpha: float) -> ObjectiveOutput:
    """Likelihood on chosen, bounded unlikelihood on rejected: loss_p + α·agg_t(−log(1 − p_t)).

    p_t = exp(log π(y_r,t | ·)) over the rejected tokens; Welleck et al. 2019, Eq. 4. The paper's
    negative candidates are earlier context tokens; here (a choice the paper leaves to the use)
    they are the rejected response's own tokens, each at its position. Unlike −loss_n the penalty
    is >= 0 and vanishes as p_t → 0, so the negative term cannot run away. 1 − p_t is clamped at
    1e-6 (see `_log1m_exp`): a rejected token with p_t = 1 costs ≈ 13.8, not ∞.
    margin = agg(πc) − agg(πr). No rewards.
    Shape: (batch,) for every field.
    """
    agg = _AGGREGATES[norm]
    rejected = logps.rejected
    penalty = TokenLogps(-_log1m_exp(rejected.logps) * rejected.mask, rejected.mask)
    return ObjectiveOutput(loss=-agg(logps.chosen) + alpha * agg(penalty),
                           margin=agg(logps.chosen) - agg(rejected))


# ---------------------------------------------------------------------------------------------
# Reference-normalised objectives (DPO family)


@register("dpo", family="reference-based", needs_reference=True,
          source="Rafailov et al. 2023, Direct Preference Optimization, Eq. 7",
          trl='loss_type="sigmoid"', beta=_beta(), **F_DIVERGENCE)
def dpo(logps: PairLogps, *, beta: float, f_divergence: str, f_alpha: float) -> ObjectiveOutput:
    """Direct preference optimisation: loss = −log σ(β·h), h = (πc − rc) − (πr − rr).

    Rafailov et al. 2023, Eq. 7, with summed log-probs. Rewards β·(πc − rc), β·(πr − rr)
    (ibid. §5); margin = β·h. With an f-divergence (Wang et al. 2023; see F_PRIME),
    h = f′(t_c) − f′(t_r) instead; reverse_kl is the formula above.
    Shape: (batch,) for every field.
    """
    return _sigmoid_output(*_f_terms(logps, beta, f_divergence, f_alpha))


@register("book_dpo", family="length-normalised", needs_reference=True,
          source="a textbook section on aligning language models with human preferences "
          "(§2.10): weighted DPO on token-mean cross-entropies",
          trl='loss_type="sigmoid_norm" (with w_chosen = w_rejected = 1)',
          beta=_beta(),
          w_chosen=Param(0.8, low=0.0, help="weight w_c of the chosen reward"),
          w_rejected=Param(0.2, low=0.0, help="weight w_r of the rejected reward"),
          **F_DIVERGENCE)
def book_dpo(logps: PairLogps, *, beta: float, w_chosen: float, w_rejected: float,
             f_divergence: str, f_alpha: float) -> ObjectiveOutput:
    """A textbook's weighted DPO: loss = −log σ(β·(w_c·r_c − w_r·r_r)) on token-mean rewards.

    r_c = CE_ref(y_c) − CE_pol(y_c) = mean(πc) − mean(rc), r_r = mean(πr) − mean(rr): how much
    better than the reference the policy predicts each response, per token. This is our reading
    of that textbook section's recipe (see `source`: per pair, token-mean cross-entropies,
    weights on the two rewards); with w_c = w_r = 1 it is DPO on token-mean log-ratios. Because
    w_c > w_r by default it rewards raising the chosen likelihood more than lowering the
    rejected one.
    margin = β·(w_c·r_c − w_r·r_r). Rewards β·r_c, β·r_r (unweighted, comparable with DPO's).
    With an f-divergence, r = f′(t)/|y| from the summed log-ratio, as TRL's sigmoid_norm.
    Shape: (batch,) for every field.
    """
    r_c, r_r = _f_scores(logps, f_divergence, f_alpha, "mean")
    _, chosen_reward, rejected_reward = _dpo_terms(*_logratios(logps, "mean"), beta)
    margin = beta * (w_chosen * r_c - w_rejected * r_r)
    return _sigmoid_output(margin, chosen_reward, rejected_reward)


@register("ipo", family="reference-based", needs_reference=True,
          source="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from "
                 "Human Preferences, Eq. 17",
          trl='loss_type="ipo" (norm="mean"; TRL\'s beta is τ)',
          tau=Param(0.1, above=0.0, help="regularisation τ; the target margin is 1/(2τ)"),
          norm=_norm("sum"), **F_DIVERGENCE)
def ipo(logps: PairLogps, *, tau: float, norm: str, f_divergence: str,
        f_alpha: float) -> ObjectiveOutput:
    """Identity preference optimisation: loss = (h − 1/(2τ))², a bounded target for the margin.

    Azar et al. 2023, Eq. 17, where h uses summed log-ratios (norm="sum"). TRL divides each
    log-ratio by the response length; norm="mean" gives that variant. margin = h (the quantity
    regressed on 1/(2τ)). IPO defines no reward; like TRL we report τ·(agg πc − agg rc) and
    τ·(agg πr − agg rr), τ playing β's role. With an f-divergence, each log-ratio is f′(t) of the
    summed one (divided by the length under norm="mean"), as TRL.
    Shape: (batch,) for every field.
    """
    chosen_lr, rejected_lr = _logratios(logps, norm)
    chosen_score, rejected_score = _f_scores(logps, f_divergence, f_alpha, norm)
    h = chosen_score - rejected_score
    return ObjectiveOutput(loss=(h - 1.0 / (2.0 * tau)) ** 2, margin=h,
                           chosen_reward=tau * chosen_lr, rejected_reward=tau * rejected_lr)


@register("rdpo", family="reference-based", needs_reference=True,
          source="Park et al. 2024, Disentangling Length from Quality in Direct Preference "
                 "Optimization, Eq. 9",
          beta=_beta(), alpha=Param(0.01, low=0.0, help="weight α of the length difference"))
def rdpo(logps: PairLogps, *, beta: float, alpha: float) -> ObjectiveOutput:
    """Length-regularised DPO: loss = −log σ(β·h − α·(|y_c| − |y_r|)).

    Park et al. 2024, Eq. 9; |y| counts response tokens. margin = the argument of σ. Rewards as
    DPO: β·(πc − rc), β·(πr − rr).
    Shape: (batch,) for every field.
    """
    margin, chosen_reward, rejected_reward = _dpo_terms(*_logratios(logps), beta)
    length_gap = logps.chosen.count - logps.rejected.count
    return _sigmoid_output(margin - alpha * length_gap, chosen_reward, rejected_reward)


@register("dpop", family="anchored", needs_reference=True,
          source="Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation with "
                 "DPO-Positive, Eq. 3",
          beta=_beta(),
          lam=Param(50.0, low=0.0, help="weight λ of the penalty on a falling chosen likelihood"))
def dpop(logps: PairLogps, *, beta: float, lam: float) -> ObjectiveOutput:
    """DPO-Positive: loss = −log σ(β·(h − λ·max(0, rc − πc))).

    Pal et al. 2024, Eq. 3, summed log-probs as in the paper (λ = 50 is its default). The penalty
    is active only while the policy gives the chosen response less likelihood than the reference,
    the displacement DPO allows. margin = the argument of σ. Rewards as DPO.
    Shape: (batch,) for every field.
    """
    chosen_lr, rejected_lr = _logratios(logps)
    _, chosen_reward, rejected_reward = _dpo_terms(chosen_lr, rejected_lr, beta)
    penalty = torch.clamp(-chosen_lr, min=0.0)  # max(0, rc − πc)
    margin = beta * (chosen_lr - rejected_lr - lam * penalty)
    return _sigmoid_output(margin, chosen_reward, rejected_reward)


@register("rpo", family="anchored", needs_reference=True,
          source="Pang et al. 2024, Iterative Reasoning Preference Optimization (DPO+NLL)",
          trl='loss_type=["sigmoid", "sft"], loss_weights=[1, α] (TRL\'s sft term is the '
              "batch's token-mean NLL, this one each pair's)",
          beta=_beta(), alpha=Param(1.0, low=0.0, help="weight α of the chosen NLL term"))
def rpo(logps: PairLogps, *, beta: float, alpha: float) -> ObjectiveOutput:
    """DPO plus an NLL anchor on the chosen response: loss = −log σ(β·h) − α·mean(πc).

    Pang et al. 2024 (their L_DPO+NLL). The paper divides the chosen log-likelihood by
    |x| + |y_c| (prompt and response); the prompt is masked here, so we take the token-mean over
    the response, as TRL's `rpo_alpha` does. margin = β·h; rewards as DPO.
    Shape: (batch,) for every field.
    """
    out = _sigmoid_output(*_dpo_terms(*_logratios(logps), beta))
    return replace(out, loss=out.loss - alpha * logps.chosen.mean)


@register("hinge", family="reference-based", needs_reference=True,
          source="Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human "
                 "Feedback, calibration loss, in TRL's reference-normalised form",
          trl='loss_type="hinge"', beta=_beta(), **F_DIVERGENCE)
def hinge(logps: PairLogps, *, beta: float, f_divergence: str, f_alpha: float) -> ObjectiveOutput:
    """SLiC hinge on the DPO log-ratio: loss = max(0, 1 − β·h).

    Zhao et al. 2023 put a hinge with margin δ on the un-normalised log-likelihood difference
    (plus a regulariser); we follow TRL's loss_type="hinge": the reference-normalised h, δ = 1
    and β scaling h, no regulariser. margin = β·h; rewards as DPO; h under an f-divergence as
    for `dpo`.
    Shape: (batch,) for every field.
    """
    margin, chosen_reward, rejected_reward = _f_terms(logps, beta, f_divergence, f_alpha)
    return ObjectiveOutput(torch.relu(1.0 - margin), margin, chosen_reward, rejected_reward)


@register("robust", family="reference-based", needs_reference=True,
          source="Chowdhury et al. 2024, Provably Robust DPO: Aligning Language Models with "
                 "Noisy Feedback, Eq. 9",
          beta=_beta(),
          trl='loss_type="robust"',
          label_smoothing=Param(0.1, low=0.0, below=0.5,
                                help="assumed rate ε of flipped preference labels"),
          **F_DIVERGENCE)
def robust(logps: PairLogps, *, beta: float, label_smoothing: float, f_divergence: str,
           f_alpha: float) -> ObjectiveOutput:
    """Robust DPO: loss = ((1 − ε)·(−log σ(β·h)) + ε·log σ(−β·h)) / (1 − 2ε).

    Chowdhury et al. 2024, Eq. 9 (as TRL's loss_type="robust"): an unbiased DPO loss when a
    fraction ε of labels are flipped; ε < 1/2 keeps the denominator positive, ε = 0 is DPO.
    The loss can be negative. margin = β·h; rewards as DPO; h under an f-divergence as for
    `dpo`.
    Shape: (batch,) for every field.
    """
    eps = label_smoothing
    margin, chosen_reward, rejected_reward = _f_terms(logps, beta, f_divergence, f_alpha)
    loss = ((1 - eps) * -F.logsigmoid(margin) + eps * F.logsigmoid(-margin)) / (1 - 2 * eps)
    return ObjectiveOutput(loss, margin, chosen_reward, rejected_reward)


@register("ld_dpo", family="length-normalised", needs_reference=True,
          source="Liu et al. 2024, Length Desensitization in Directed Preference Optimization "
                 "(arXiv:2409.06411)",
          trl='loss_type="sigmoid" with ld_alpha=α',
          beta=_beta(),
          alpha=Param(0.5, low=0.0, high=1.0,
                      help="weight α of tokens beyond the pair's shorter length (1 = DPO)"))
def ld_dpo(logps: PairLogps, *, beta: float, alpha: float) -> ObjectiveOutput:
    """Length-desensitised DPO: DPO on log π̂(y) = Σ_{t<l} log p_t + α·Σ_{t>=l} log p_t.

    Liu et al. 2024: l = min(|y_c|, |y_r|) is the pair's public length; tokens past it (only the
    longer response has any) count with weight α, for the policy and the reference alike.
    t is the token's position within its response. α = 1 is DPO. margin = β·ĥ with ĥ the DPO
    log-ratio difference of the desensitised log-probs; rewards β·(log π̂ − log π̂_ref).
    Shape: (batch,) for every field.
    """
    public = torch.minimum(logps.chosen.count, logps.rejected.count)
    c, r = _desensitised(logps.chosen, public, alpha), _desensitised(logps.rejected, public, alpha)
    rc = _desensitised(logps.ref_chosen, public, alpha)
    rr = _desensitised(logps.ref_rejected, public, alpha)
    return _sigmoid_output(*_dpo_terms(c - rc, r - rr, beta))


def _desensitised(side: TokenLogps, public: Tensor, alpha: float) -> Tensor:
    """Σ_{t<l} log p_t + α·Σ_{t>=l} log p_t per row, l = `public` (batch,). Shape: (batch,)."""
    excess = side.position() >= public[:, None]
    weight = 1.0 + (alpha - 1.0) * excess.to(side.logps.dtype)
    return TokenLogps(side.logps * weight, side.mask).sum


# ---------------------------------------------------------------------------------------------
# Reference-free preference objectives


@register("simpo", family="length-normalised", needs_reference=False,
          source="Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free "
                 "Reward, Eq. 6",
          beta=_beta(2.0),
          gamma=Param(1.0, low=0.0, help="target reward margin γ"))
def simpo(logps: PairLogps, *, beta: float, gamma: float) -> ObjectiveOutput:
    """SimPO: loss = −log σ(β/|y_c|·πc − β/|y_r|·πr − γ), length-normalised and reference-free.

    Meng et al. 2024, Eq. 6. Rewards β/|y|·log π(y|x) = β·mean (ibid. Eq. 4); margin = the
    argument of σ (the reward difference minus γ).
    Shape: (batch,) for every field.
    """
    chosen_reward, rejected_reward = beta * logps.chosen.mean, beta * logps.rejected.mean
    return _sigmoid_output(chosen_reward - rejected_reward - gamma, chosen_reward, rejected_reward)


@register("orpo", family="length-normalised", needs_reference=False,
          source="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference "
                 "Model, Eq. 6-7",
          lam=Param(0.1, low=0.0, help="weight λ of the odds-ratio term"))
def orpo(logps: PairLogps, *, lam: float) -> ObjectiveOutput:
    """ORPO: loss = −mean(πc) − λ·log σ(log odds(y_c) − log odds(y_r)).

    Hong et al. 2024, Eq. 6-7: P(y|x) = exp(mean(π)) (the geometric-mean token probability) and
    log odds(y) = log P − log(1 − P). The SFT term is the token-mean NLL of y_c. 1 − P is clamped
    at 1e-6 (see `_log1m_exp`). margin = the log odds ratio. No rewards.
    Shape: (batch,) for every field.
    """
    chosen_mean = logps.chosen.mean
    log_odds_ratio = _log_odds(chosen_mean) - _log_odds(logps.rejected.mean)
    loss = -chosen_mean - lam * F.logsigmoid(log_odds_ratio)
    return ObjectiveOutput(loss=loss, margin=log_odds_ratio)


def _log_odds(mean_logp: Tensor) -> Tensor:
    """log(P / (1 − P)) with P = exp(mean_logp). Shape: as `mean_logp`."""
    return mean_logp - _log1m_exp(mean_logp)


# ---------------------------------------------------------------------------------------------
# The rest of TRL's DPOTrainer loss types (TRL 1.16), under TRL's names
#
# cl, rl below are the summed log-ratios πc − rc and πr − rr; Δ = f′(t_c) − f′(t_r) (= h under
# reverse KL, see F_PRIME). Rewards are β·cl, β·rl throughout, as TRL logs them.


def _flip_rate(default: float = 0.0) -> Param:
    return Param(default, low=0.0, below=0.5, help="assumed rate ε of flipped preference labels")


@register("exo_pair", family="reference-based", needs_reference=True,
          source="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model "
                 "Alignment (EXO), Eq. 16",
          trl='loss_type="exo_pair"', beta=_beta(),
          label_smoothing=Param(1e-3, above=0.0, below=1.0,
                                help="ε of the target distribution [1 − ε, ε]; > 0 (log ε)"),
          **F_DIVERGENCE)
def exo_pair(logps: PairLogps, *, beta: float, label_smoothing: float, f_divergence: str,
             f_alpha: float) -> ObjectiveOutput:
    """EXO: loss = KL(q_θ ‖ p) over {chosen, rejected}, q_θ = softmax of β·Δ, p = [1 − ε, ε].

    Ji et al. 2024, Eq. 16 with K = 2: q_w = σ(β·Δ), q_l = σ(−β·Δ), loss = q_w·(log q_w −
    log(1 − ε)) + q_l·(log q_l − log ε). It needs ε > 0 (log ε): TRL's label_smoothing, which the
    EXO authors set to 1e-3, our default. The minimum, 0, is at q_w = 1 − ε: a bounded margin.
    margin = β·Δ.
    Shape: (batch,) for every field.
    """
    margin, chosen_reward, rejected_reward = _f_terms(logps, beta, f_divergence, f_alpha)
    eps = label_smoothing
    loss = (torch.sigmoid(margin) * (F.logsigmoid(margin) - math.log1p(-eps))
            + torch.sigmoid(-margin) * (F.logsigmoid(-margin) - math.log(eps)))
    return ObjectiveOutput(loss, margin, chosen_reward, rejected_reward)


@register("nca_pair", family="reference-based", needs_reference=True,
          source="Chen et al. 2024, Noise Contrastive Alignment of Language Models with "
                 "Explicit Rewards (NCA), paired form",
          trl='loss_type="nca_pair"', beta=_beta())
def nca_pair(logps: PairLogps, *, beta: float) -> ObjectiveOutput:
    """NCA: loss = −log σ(β·cl) − ½·log σ(−β·cl) − ½·log σ(−β·rl).

    Chen et al. 2024, the pairwise NCA loss as TRL implements it: each response's own reward
    β·cl, β·rl is pushed, not only their difference, so the chosen likelihood cannot fall
    freely (unlike DPO, NCA's optimum raises it). margin = β·(cl − rl).
    Shape: (batch,) for every field.
    """
    margin, chosen_reward, rejected_reward = _dpo_terms(*_logratios(logps), beta)
    loss = (-F.logsigmoid(chosen_reward) - 0.5 * F.logsigmoid(-chosen_reward)
            - 0.5 * F.logsigmoid(-rejected_reward))
    return ObjectiveOutput(loss, margin, chosen_reward, rejected_reward)


@register("bco_pair", family="reference-based", needs_reference=True,
          source="Jung et al. 2024, Binary Classifier Optimization for Large Language Model "
                 "Alignment (BCO), paired form",
          trl='loss_type="bco_pair"', beta=_beta())
def bco_pair(logps: PairLogps, *, beta: float) -> ObjectiveOutput:
    """BCO, paired: loss = −log σ(β·cl) − log σ(−β·rl), a binary classifier on each response.

    Jung et al. 2024 train a logistic classifier with the implicit reward as its logit; the paper
    subtracts a running mean δ of the rewards, which TRL's paired form (and this one) leaves out.
    margin = β·(cl − rl).
    Shape: (batch,) for every field.
    """
    margin, chosen_reward, rejected_reward = _dpo_terms(*_logratios(logps), beta)
    loss = -F.logsigmoid(chosen_reward) - F.logsigmoid(-rejected_reward)
    return ObjectiveOutput(loss, margin, chosen_reward, rejected_reward)


@register("sppo_hard", family="reference-based", needs_reference=True,
          source="Wu et al. 2024, Self-Play Preference Optimization for Language Model "
                 "Alignment (SPPO), Eq. 4.7 with hard probabilities",
          trl='loss_type="sppo_hard"', beta=_beta())
def sppo_hard(logps: PairLogps, *, beta: float) -> ObjectiveOutput:
    """SPPO with hard probabilities: loss = (cl − 1/(2β))² + (rl + 1/(2β))².

    Wu et al. 2024, Eq. 4.7: (log π/π_t − η·(P(y ≻ π_t) − ½))² with η = 1/β and P = 1 for the
    chosen, 0 for the rejected response (TRL's sppo_hard): each log-ratio regresses on its own
    target, ±1/(2β), so the chosen likelihood is pulled up. margin = β·(cl − rl).
    Shape: (batch,) for every field.
    """
    chosen_lr, rejected_lr = _logratios(logps)
    margin, chosen_reward, rejected_reward = _dpo_terms(chosen_lr, rejected_lr, beta)
    target = 0.5 / beta
    loss = (chosen_lr - target) ** 2 + (rejected_lr + target) ** 2
    return ObjectiveOutput(loss, margin, chosen_reward, rejected_reward)


@register("apo_zero", family="anchored", needs_reference=True,
          source="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive "
                 "Revisions (APO), Eq. 7",
          trl='loss_type="apo_zero"', beta=_beta())
def apo_zero(logps: PairLogps, *, beta: float) -> ObjectiveOutput:
    """APO-zero: loss = (1 − σ(β·cl)) + σ(β·rl): raise the chosen, lower the rejected likelihood.

    D'Oosterlinck et al. 2024, Eq. 7, for chosen answers better than the model's own: each
    side is anchored to the reference separately, so the chosen log-ratio is pushed up, never
    traded for the rejected one. margin = β·(cl − rl).
    Shape: (batch,) for every field.
    """
    margin, chosen_reward, rejected_reward = _dpo_terms(*_logratios(logps), beta)
    loss = (1.0 - torch.sigmoid(chosen_reward)) + torch.sigmoid(rejected_reward)
    return ObjectiveOutput(loss, margin, chosen_reward, rejected_reward)


@register("apo_down", family="anchored", needs_reference=True,
          source="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive "
                 "Revisions (APO), Eq. 8",
          trl='loss_type="apo_down"', beta=_beta())
def apo_down(logps: PairLogps, *, beta: float) -> ObjectiveOutput:
    """APO-down: loss = σ(β·cl) + (1 − σ(β·(cl − rl))): lower both, the rejected one more.

    D'Oosterlinck et al. 2024, Eq. 8, for chosen answers worse than the model's own: the chosen
    log-ratio is pushed down while the margin is pushed up. margin = β·(cl − rl).
    Shape: (batch,) for every field.
    """
    margin, chosen_reward, rejected_reward = _dpo_terms(*_logratios(logps), beta)
    loss = torch.sigmoid(chosen_reward) + (1.0 - torch.sigmoid(margin))
    return ObjectiveOutput(loss, margin, chosen_reward, rejected_reward)


@register("discopop", family="reference-based", needs_reference=True,
          source="Chris Lu et al. 2024, Discovering Preference Optimization Algorithms with and "
                 "for Large Language Models (DiscoPOP), Eq. 5",
          trl='loss_type="discopop" (tau is TRL\'s discopop_tau)', beta=_beta(),
          tau=Param(0.05, above=0.0, help="temperature τ of the logistic/exponential blend"),
          **F_DIVERGENCE)
def discopop(logps: PairLogps, *, beta: float, tau: float, f_divergence: str,
             f_alpha: float) -> ObjectiveOutput:
    """DiscoPOP (log-ratio modulated): loss = (1 − m)·(−log σ(ρ)) + m·exp(−ρ), m = σ(ρ/τ).

    Chris Lu et al. 2024, Eq. 5, ρ = β·Δ: a blend of the logistic (DPO) and exponential losses,
    weighted by the margin itself (τ = 0.05, the paper's choice). exp(−ρ) overflows to inf for
    ρ < −88 in float32, as in TRL. margin = ρ.
    Shape: (batch,) for every field.
    """
    margin, chosen_reward, rejected_reward = _f_terms(logps, beta, f_divergence, f_alpha)
    blend = torch.sigmoid(margin / tau)
    loss = -F.logsigmoid(margin) * (1.0 - blend) + torch.exp(-margin) * blend
    return ObjectiveOutput(loss, margin, chosen_reward, rejected_reward)


def _by_rank(values: Tensor, sorted_terms: Tensor) -> Tensor:
    """sorted_terms[i] given back to the pair whose value ranks i-th (stable ties). Shape: as
    `values`."""
    order = torch.sort(values, dim=0, stable=True).indices
    return torch.empty_like(sorted_terms).scatter(0, order, sorted_terms)


def _aot_output(policy: Tensor, reference: Tensor, beta: float, eps: float,
                chosen_reward: Tensor, rejected_reward: Tensor) -> ObjectiveOutput:
    """The AOT loss on δ_i = sort(policy)_i − sort(reference)_i, each term given back to the pair
    whose policy value ranks i-th; the rewards pass through."""
    delta = beta * (torch.sort(policy, dim=0, stable=True).values
                    - torch.sort(reference, dim=0, stable=True).values)
    loss = -F.logsigmoid(delta) * (1 - eps) - F.logsigmoid(-delta) * eps
    return ObjectiveOutput(_by_rank(policy, loss), _by_rank(policy, delta), chosen_reward,
                           rejected_reward)


@register("aot", family="reference-based", needs_reference=True, batch_level=True,
          source="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal "
                 "Transport (AOT), paired",
          trl='loss_type="aot"', beta=_beta(), label_smoothing=_flip_rate())
def aot(logps: PairLogps, *, beta: float, label_smoothing: float) -> ObjectiveOutput:
    """AOT (paired): DPO-style loss on sorted log-ratios, δ_i = sort(πc − πr)_i − sort(rc − rr)_i.

    Melnyk et al. 2024: first-order stochastic dominance of the chosen over the rejected
    reward distribution, a 1-D optimal transport solved by sorting over the batch; loss_i =
    −(1 − ε)·log σ(β·δ_i) − ε·log σ(−β·δ_i) (TRL's aot). A batch-level objective: the i-th term
    is given to the pair whose policy log-ratio ranks i-th, so a pair's loss depends on the other
    pairs of its batch (the batch mean is TRL's loss exactly). margin = β·δ of that rank.
    Shape: (batch,) for every field.
    """
    _, chosen_reward, rejected_reward = _dpo_terms(*_logratios(logps), beta)
    policy = logps.chosen.sum - logps.rejected.sum
    reference = logps.ref_chosen.sum - logps.ref_rejected.sum
    return _aot_output(policy, reference, beta, label_smoothing, chosen_reward, rejected_reward)


@register("aot_unpaired", family="reference-based", needs_reference=True, batch_level=True,
          source="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal "
                 "Transport (AOT), unpaired",
          trl='loss_type="aot_unpaired"', beta=_beta(),
          label_smoothing=_flip_rate())
def aot_unpaired(logps: PairLogps, *, beta: float, label_smoothing: float) -> ObjectiveOutput:
    """AOT (unpaired): the same loss on δ_i = sort(cl)_i − sort(rl)_i, chosen and rejected
    log-ratios sorted apart.

    Melnyk et al. 2024 (TRL's aot_unpaired): the chosen and rejected answers need not come in
    pairs; the i-th term is given to the pair whose chosen log-ratio ranks i-th. Batch-level, as
    `aot`. margin = β·δ of that rank.
    Shape: (batch,) for every field.
    """
    chosen_lr, rejected_lr = _logratios(logps)
    _, chosen_reward, rejected_reward = _dpo_terms(chosen_lr, rejected_lr, beta)
    return _aot_output(chosen_lr, rejected_lr, beta, label_smoothing, chosen_reward,
                       rejected_reward)
