"""Objectives against values worked out by hand from the published formulas.

The hand values are plain Python float arithmetic (math.log, math.exp) on the response tokens of
three pairs of different lengths; the tensors put the same numbers after a prompt and before
padding, so masks matter. Everything that should hold for every objective is parametrised over
`OBJECTIVES`, the registry.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch

from prefstudy.hyperparams import Param
from prefstudy.logprobs import TokenLogps
from prefstudy.objectives import (
    OBJECTIVES,
    ObjectiveOutput,
    PairLogps,
    compute,
    get_objective,
    register,
    resolve_params,
)
from prefstudy.paths import in_repo
from prefstudy.recompute import cannot_recompute, has_reference_logps, sequence_logps, sums_suffice
from prefstudy.records import load_runs, read_config, run_folders


class Pair(NamedTuple):
    """Response-token log-probs of one pair: policy chosen/rejected, reference chosen/rejected."""

    c: list[float]
    r: list[float]
    rc: list[float]
    rr: list[float]


# Σc = −1.7, −2.0, −0.7   Σr = −2.2, −2.7, −0.85   Σrc = −2.0, −1.5, −0.8   Σrr = −1.8, −3.0, −0.8
# so h = (Σc − Σrc) − (Σr − Σrr) = 0.7, −0.8, 0.15. In pair 1 the policy gives the chosen response
# less likelihood than the reference (DPOP's penalty is active), and the rejected one is longer.
PAIRS = [
    Pair(c=[-0.5, -1.0, -0.2], r=[-1.5, -0.7], rc=[-0.7, -0.9, -0.4], rr=[-1.2, -0.6]),
    Pair(c=[-2.0], r=[-0.3, -0.4, -1.1, -0.9], rc=[-1.5], rr=[-0.5, -0.3, -1.0, -1.2]),
    Pair(c=[-0.1, -0.6], r=[-0.8, -0.05], rc=[-0.3, -0.5], rr=[-0.6, -0.2]),
]
PROMPT_LEN = [2, 1, 3]  # masked prompt tokens before each response; padding after it

# The defaults the study's design fixes (the brief); the registry must agree.
DEFAULTS = {
    "sft": {"norm": "mean"},
    "naive": {"norm": "sum"},
    "negative_only": {"norm": "mean"},
    "unlikelihood": {"norm": "mean", "alpha": 1.0},
    "dpo": {"beta": 0.1, "f_divergence": "reverse_kl", "f_alpha": 0.5},
    "book_dpo": {"beta": 0.1, "w_chosen": 0.8, "w_rejected": 0.2, "f_divergence": "reverse_kl", "f_alpha": 0.5},
    "ipo": {"tau": 0.1, "norm": "sum", "f_divergence": "reverse_kl", "f_alpha": 0.5},
    "simpo": {"beta": 2.0, "gamma": 1.0},
    "rdpo": {"beta": 0.1, "alpha": 0.01},
    "dpop": {"beta": 0.1, "lam": 50.0},
    "rpo": {"beta": 0.1, "alpha": 1.0},
    "orpo": {"lam": 0.1},
    "hinge": {"beta": 0.1, "f_divergence": "reverse_kl", "f_alpha": 0.5},
    "robust": {"beta": 0.1, "label_smoothing": 0.1, "f_divergence": "reverse_kl", "f_alpha": 0.5},
    "ld_dpo": {"beta": 0.1, "alpha": 0.5},
    "exo_pair": {"beta": 0.1, "label_smoothing": 1e-3, "f_divergence": "reverse_kl", "f_alpha": 0.5},
    "nca_pair": {"beta": 0.1},
    "bco_pair": {"beta": 0.1},
    "sppo_hard": {"beta": 0.1},
    "apo_zero": {"beta": 0.1},
    "apo_down": {"beta": 0.1},
    "discopop": {"beta": 0.1, "tau": 0.05, "f_divergence": "reverse_kl", "f_alpha": 0.5},
    "aot": {"beta": 0.1, "label_smoothing": 0.0},
    "aot_unpaired": {"beta": 0.1, "label_smoothing": 0.0},
}
NEEDS_REFERENCE = {"dpo", "book_dpo", "ipo", "rdpo", "dpop", "rpo", "hinge", "robust", "ld_dpo",
                   "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
                   "discopop", "aot", "aot_unpaired"}
BATCH_LEVEL = {"aot", "aot_unpaired"}  # their hand checks take the whole batch


# ---------------------------------------------------------------------------------------------
# Building tensors


def _side(rows: list[list[float]], width: int, dtype, fill: float = 0.0) -> TokenLogps:
    logps = torch.full((len(rows), width), fill, dtype=dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, (row, start) in enumerate(zip(rows, PROMPT_LEN)):
        logps[b, start:start + len(row)] = torch.tensor(row, dtype=dtype)
        mask[b, start:start + len(row)] = True
    return TokenLogps(logps.requires_grad_(), mask)


def make_logps(pairs=PAIRS, dtype=torch.float64, fill: float = 0.0) -> PairLogps:
    """PairLogps of `pairs`; chosen and rejected have different widths. Leaves require grad."""
    return PairLogps(
        chosen=_side([p.c for p in pairs], 7, dtype, fill),
        rejected=_side([p.r for p in pairs], 8, dtype, fill),
        ref_chosen=_side([p.rc for p in pairs], 7, dtype, fill),
        ref_rejected=_side([p.rr for p in pairs], 8, dtype, fill),
    )


def scaled(side: TokenLogps, factor: float) -> TokenLogps:
    """The same side with every log-prob multiplied by `factor` (< 1 raises the likelihood)."""
    return TokenLogps(side.logps.detach() * factor, side.mask)


# ---------------------------------------------------------------------------------------------
# The formulas, by hand, for one pair. Each returns (loss, margin, chosen_reward, rejected_reward).


def total(xs):
    return math.fsum(xs)


def mean(xs):
    return math.fsum(xs) / len(xs)


AGG = {"sum": total, "mean": mean}


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def dpo_h(p, agg=total):
    return (agg(p.c) - agg(p.rc)) - (agg(p.r) - agg(p.rr))


def f_prime(log_t, f_divergence, f_alpha):
    """f′(t) of Wang et al. 2023 as TRL writes it, t = exp(log_t)."""
    if f_divergence == "forward_kl":
        return 1 - math.exp(-log_t)
    if f_divergence == "js_divergence":
        return math.log(2) + log_sigmoid(log_t)
    if f_divergence == "alpha_divergence" and abs(f_alpha - 1) >= 1e-6:
        return (math.exp((f_alpha - 1) * log_t) - 1) / (f_alpha - 1)
    return log_t


def f_delta(p, f_divergence, f_alpha, norm="sum"):
    """f′(t_c) − f′(t_r) of the summed log-ratios, each divided by its length for norm mean."""
    c = f_prime(total(p.c) - total(p.rc), f_divergence, f_alpha)
    r = f_prime(total(p.r) - total(p.rr), f_divergence, f_alpha)
    return c / len(p.c) - r / len(p.r) if norm == "mean" else c - r


def rewards(p, beta):
    return beta * (total(p.c) - total(p.rc)), beta * (total(p.r) - total(p.rr))


def hand_sft(p, norm):
    a = AGG[norm]
    return -a(p.c), a(p.c) - a(p.r), None, None


def hand_naive(p, norm):
    a = AGG[norm]
    loss_p, loss_n = -a(p.c), -a(p.r)
    return loss_p - loss_n, loss_n - loss_p, None, None


def hand_negative_only(p, norm):
    a = AGG[norm]
    return a(p.r), a(p.c) - a(p.r), None, None


def hand_unlikelihood(p, norm, alpha):
    a = AGG[norm]
    penalties = [-math.log(1.0 - math.exp(x)) for x in p.r]
    return -a(p.c) + alpha * a(penalties), a(p.c) - a(p.r), None, None


def hand_dpo(p, beta, f_divergence="reverse_kl", f_alpha=0.5):
    h = f_delta(p, f_divergence, f_alpha)
    return (-log_sigmoid(beta * h), beta * h, *rewards(p, beta))


def hand_book_dpo(p, beta, w_chosen, w_rejected, f_divergence, f_alpha):
    # CE_ref(y) − CE_pol(y) = f′(t)/|y| under reverse KL: mean(π) − mean(π_ref)
    r_c = f_prime(total(p.c) - total(p.rc), f_divergence, f_alpha) / len(p.c)
    r_r = f_prime(total(p.r) - total(p.rr), f_divergence, f_alpha) / len(p.r)
    m = beta * (w_chosen * r_c - w_rejected * r_r)
    return -log_sigmoid(m), m, beta * (mean(p.c) - mean(p.rc)), beta * (mean(p.r) - mean(p.rr))


def hand_ipo(p, tau, norm, f_divergence, f_alpha):
    a = AGG[norm]
    h = f_delta(p, f_divergence, f_alpha, norm)
    return (h - 1 / (2 * tau)) ** 2, h, tau * (a(p.c) - a(p.rc)), tau * (a(p.r) - a(p.rr))


def hand_simpo(p, beta, gamma):
    m = beta / len(p.c) * total(p.c) - beta / len(p.r) * total(p.r) - gamma
    return -log_sigmoid(m), m, beta / len(p.c) * total(p.c), beta / len(p.r) * total(p.r)


def hand_rdpo(p, beta, alpha):
    _, _, cr, rr = hand_dpo(p, beta)
    m = beta * dpo_h(p) - alpha * (len(p.c) - len(p.r))
    return -log_sigmoid(m), m, cr, rr


def hand_dpop(p, beta, lam):
    _, _, cr, rr = hand_dpo(p, beta)
    m = beta * (dpo_h(p) - lam * max(0.0, total(p.rc) - total(p.c)))
    return -log_sigmoid(m), m, cr, rr


def hand_rpo(p, beta, alpha):
    loss, m, cr, rr = hand_dpo(p, beta)
    return loss + alpha * -mean(p.c), m, cr, rr


def hand_orpo(p, lam):
    def log_odds(xs):
        return mean(xs) - math.log(1 - math.exp(mean(xs)))

    ratio = log_odds(p.c) - log_odds(p.r)
    return -mean(p.c) - lam * log_sigmoid(ratio), ratio, None, None


def hand_hinge(p, beta, f_divergence, f_alpha):
    _, m, cr, rr = hand_dpo(p, beta, f_divergence, f_alpha)
    return max(0.0, 1 - m), m, cr, rr


def hand_robust(p, beta, label_smoothing, f_divergence, f_alpha):
    eps = label_smoothing
    _, m, cr, rr = hand_dpo(p, beta, f_divergence, f_alpha)
    return ((1 - eps) * -log_sigmoid(m) + eps * log_sigmoid(-m)) / (1 - 2 * eps), m, cr, rr


def sigmoid(x):
    return math.exp(log_sigmoid(x))


def hand_exo_pair(p, beta, label_smoothing, f_divergence, f_alpha):
    # Ji et al. 2024, Eq. 16, K = 2: KL(q ‖ [1 − ε, ε]) with q = [σ(m), σ(−m)]
    eps, m = label_smoothing, beta * f_delta(p, f_divergence, f_alpha)
    loss = (sigmoid(m) * (log_sigmoid(m) - math.log(1 - eps))
            + sigmoid(-m) * (log_sigmoid(-m) - math.log(eps)))
    return (loss, m, *rewards(p, beta))


def hand_nca_pair(p, beta):
    chosen_reward, rejected_reward = rewards(p, beta)
    loss = (-log_sigmoid(chosen_reward) - 0.5 * log_sigmoid(-chosen_reward)
            - 0.5 * log_sigmoid(-rejected_reward))
    return loss, chosen_reward - rejected_reward, chosen_reward, rejected_reward


def hand_bco_pair(p, beta):
    chosen_reward, rejected_reward = rewards(p, beta)
    loss = -log_sigmoid(chosen_reward) - log_sigmoid(-rejected_reward)
    return loss, chosen_reward - rejected_reward, chosen_reward, rejected_reward


def hand_sppo_hard(p, beta):
    cl, rl = total(p.c) - total(p.rc), total(p.r) - total(p.rr)
    # Wu et al. 2024, Eq. 4.7, η = 1/β, P(chosen wins) = 1, P(rejected wins) = 0
    loss = (cl - (1 / beta) * (1 - 0.5)) ** 2 + (rl - (1 / beta) * (0 - 0.5)) ** 2
    return (loss, beta * (cl - rl), *rewards(p, beta))


def hand_apo_zero(p, beta):
    chosen_reward, rejected_reward = rewards(p, beta)
    loss = (1 - sigmoid(chosen_reward)) + sigmoid(rejected_reward)
    return loss, chosen_reward - rejected_reward, chosen_reward, rejected_reward


def hand_apo_down(p, beta):
    chosen_reward, rejected_reward = rewards(p, beta)
    loss = sigmoid(chosen_reward) + (1 - sigmoid(chosen_reward - rejected_reward))
    return loss, chosen_reward - rejected_reward, chosen_reward, rejected_reward


def hand_discopop(p, beta, tau, f_divergence, f_alpha):
    rho = beta * f_delta(p, f_divergence, f_alpha)
    blend = sigmoid(rho / tau)
    return (-log_sigmoid(rho) * (1 - blend) + math.exp(-rho) * blend, rho, *rewards(p, beta))


def _aot_by_hand(pairs, policy, reference, beta, label_smoothing):
    """Sort both lists; the i-th term goes to the pair whose policy value is the i-th smallest."""
    order = sorted(range(len(pairs)), key=lambda b: policy[b])
    delta = [beta * (u - v) for u, v in zip(sorted(policy), sorted(reference))]
    out = [None] * len(pairs)
    for rank, b in enumerate(order):
        d = delta[rank]
        loss = -log_sigmoid(d) * (1 - label_smoothing) - log_sigmoid(-d) * label_smoothing
        out[b] = (loss, d, *rewards(pairs[b], beta))
    return out


def hand_aot(pairs, beta, label_smoothing):
    policy = [total(p.c) - total(p.r) for p in pairs]
    reference = [total(p.rc) - total(p.rr) for p in pairs]
    return _aot_by_hand(pairs, policy, reference, beta, label_smoothing)


def hand_aot_unpaired(pairs, beta, label_smoothing):
    chosen = [total(p.c) - total(p.rc) for p in pairs]
    rejected = [total(p.r) - total(p.rr) for p in pairs]
    return _aot_by_hand(pairs, chosen, rejected, beta, label_smoothing)


def hand_ld_dpo(p, beta, alpha):
    public = min(len(p.c), len(p.r))

    def ld(xs):
        return total(xs[:public]) + alpha * total(xs[public:])

    chosen_lr, rejected_lr = ld(p.c) - ld(p.rc), ld(p.r) - ld(p.rr)
    m = beta * (chosen_lr - rejected_lr)
    return -log_sigmoid(m), m, beta * chosen_lr, beta * rejected_lr


HAND = {name[len("hand_"):]: fn for name, fn in globals().items() if name.startswith("hand_")}

# One case with the defaults and at least one with every parameter changed, per objective.
NON_DEFAULT = {
    "sft": [{"norm": "sum"}],
    "naive": [{"norm": "mean"}],
    "negative_only": [{"norm": "sum"}],
    "unlikelihood": [{"norm": "sum", "alpha": 0.5}],
    "dpo": [{"beta": 0.5}, {"f_divergence": "forward_kl"}, {"f_divergence": "js_divergence"},
            {"beta": 0.5, "f_divergence": "alpha_divergence", "f_alpha": 0.3}],
    "book_dpo": [{"beta": 1.0, "w_chosen": 0.5, "w_rejected": 1.5},
                 {"beta": 1.0, "w_chosen": 0.5, "w_rejected": 1.5, "f_divergence": "forward_kl",
                  "f_alpha": 0.2}],
    "ipo": [{"tau": 0.5, "norm": "mean"}, {"tau": 2.0},
            {"tau": 0.5, "norm": "mean", "f_divergence": "js_divergence", "f_alpha": 2.0}],
    "simpo": [{"beta": 2.5, "gamma": 0.3}],
    "rdpo": [{"beta": 0.3, "alpha": 0.2}],
    "dpop": [{"beta": 0.2, "lam": 5.0}],
    "rpo": [{"beta": 0.2, "alpha": 0.5}],
    "orpo": [{"lam": 0.5}],
    "hinge": [{"beta": 5.0},  # pair 0: 1 − 5·0.7 < 0, the hinge is flat there
              {"beta": 5.0, "f_divergence": "alpha_divergence", "f_alpha": 1.5}],
    "robust": [{"beta": 0.5, "label_smoothing": 0.3},
               {"beta": 0.5, "label_smoothing": 0.3, "f_divergence": "forward_kl",
                "f_alpha": 0.1}],
    "ld_dpo": [{"beta": 0.2, "alpha": 0.25}, {"alpha": 0.0}],
    "exo_pair": [{"beta": 2.0, "label_smoothing": 0.2, "f_divergence": "js_divergence",
                  "f_alpha": 0.9}],
    "nca_pair": [{"beta": 2.0}],
    "bco_pair": [{"beta": 2.0}],
    "sppo_hard": [{"beta": 2.0}],
    "apo_zero": [{"beta": 3.0}],
    "apo_down": [{"beta": 3.0}],
    "discopop": [{"beta": 2.0, "tau": 0.5, "f_divergence": "alpha_divergence", "f_alpha": 0.7}],
    "aot": [{"beta": 2.0, "label_smoothing": 0.2}],
    "aot_unpaired": [{"beta": 2.0, "label_smoothing": 0.2}],
}
CASES = [(name, {}) for name in DEFAULTS] + [
    (name, params) for name, cases in NON_DEFAULT.items() for params in cases
]


def assert_matches_hand(out: ObjectiveOutput, name: str, params: dict) -> None:
    params = {**DEFAULTS[name], **params}
    expected = (HAND[name](PAIRS, **params) if name in BATCH_LEVEL
                else [HAND[name](p, **params) for p in PAIRS])
    for field, column in zip(("loss", "margin", "chosen_reward", "rejected_reward"),
                             zip(*expected)):
        got = getattr(out, field)
        if column[0] is None:
            assert got is None, f"{name}.{field} should be None"
        else:
            torch.testing.assert_close(got, torch.tensor(column, dtype=got.dtype),
                                       msg=lambda m, f=field: f"{name}.{f}: {m}")


# ---------------------------------------------------------------------------------------------
# Every objective against its formula


def test_every_objective_has_a_hand_check_and_the_designed_defaults():
    assert set(HAND) == set(OBJECTIVES) == set(DEFAULTS) == set(NON_DEFAULT)
    for name in OBJECTIVES:
        assert resolve_params(name) == DEFAULTS[name], name
        for params in NON_DEFAULT[name]:
            assert all(params[k] != DEFAULTS[name][k] for k in params), name
    assert all(any(set(p) == set(DEFAULTS[n]) for p in NON_DEFAULT[n]) for n in NON_DEFAULT)


@pytest.mark.parametrize(("name", "params"), CASES,
                         ids=[f"{n}-{p or 'defaults'}" for n, p in CASES])
def test_matches_the_published_formula_by_hand(name, params):
    assert_matches_hand(compute(name, make_logps(), **params), name, params)


def test_dpo_literal_numbers():
    # h = 0.7, −0.8, 0.15 (see PAIRS); β = 0.1; −log σ(x) = log(1 + e^(−x)).
    out = compute("dpo", make_logps())
    expected = [math.log1p(math.exp(-0.07)), math.log1p(math.exp(0.08)),
                math.log1p(math.exp(-0.015))]
    torch.testing.assert_close(out.loss, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out.chosen_reward,
                               torch.tensor([0.03, -0.05, 0.01], dtype=torch.float64))


def test_naive_literal_numbers_and_length_flip():
    # Summed: loss = Σr − Σc = −0.5, −0.7, −0.15; the margin (= −loss) is positive for all three.
    summed = compute("naive", make_logps())
    torch.testing.assert_close(summed.loss, torch.tensor([-0.5, -0.7, -0.15], dtype=torch.float64))
    torch.testing.assert_close(summed.margin, -summed.loss)
    # Token-mean: pair 1 has one chosen token (−2.0) against four rejected (mean −0.675), so
    # its margin changes sign: the length mismatch the study is about.
    meaned = compute("naive", make_logps(), norm="mean")
    assert meaned.margin[1].item() == pytest.approx(-2.0 + 0.675)
    assert not torch.allclose(summed.loss, meaned.loss)


# ---------------------------------------------------------------------------------------------
# Properties of every objective


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtype_and_finite(name, dtype):
    out = compute(name, make_logps(dtype=dtype))
    for field in ("loss", "margin", "chosen_reward", "rejected_reward"):
        value = getattr(out, field)
        if value is None:
            assert field.endswith("reward")
            continue
        assert value.shape == (len(PAIRS),), field
        assert value.dtype == dtype, field
        assert torch.isfinite(value).all(), field


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_gradients_reach_the_policy_only(name):
    logps = make_logps()
    compute(name, logps).loss.sum().backward()
    assert logps.ref_chosen.logps.grad is None
    assert logps.ref_rejected.logps.grad is None
    grads = [side.logps.grad for side in (logps.chosen, logps.rejected)]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    for side, grad in zip((logps.chosen, logps.rejected), grads):
        if grad is not None:
            assert torch.isfinite(grad).all()
            assert (grad[~side.mask] == 0).all(), "gradient off the response tokens"


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_off_mask_values_are_ignored(name):
    clean = compute(name, make_logps())
    dirty = compute(name, make_logps(fill=-7.0))
    torch.testing.assert_close(dirty.loss, clean.loss)
    torch.testing.assert_close(dirty.margin, clean.margin)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_margin_rises_with_chosen_and_falls_with_rejected(name):
    logps = make_logps()
    base = compute(name, logps).margin
    chosen_up = compute(name, replace(logps, chosen=scaled(logps.chosen, 0.5))).margin
    rejected_up = compute(name, replace(logps, rejected=scaled(logps.rejected, 0.5))).margin
    if OBJECTIVES[name].batch_level:  # margins belong to ranks, which may change hands
        base, chosen_up, rejected_up = (m.sort().values for m in (base, chosen_up, rejected_up))
    assert (chosen_up > base).all()
    assert (rejected_up < base).all()


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_finite_when_a_token_has_probability_one(name):
    pairs = [Pair(c=[0.0, 0.0], r=[0.0, -0.5, -1e-9], rc=[-0.1, -0.2], rr=[-0.3, -0.1, -0.2]),
             Pair(c=[-1.0], r=[0.0], rc=[-1.0], rr=[-0.5])]
    logps = make_logps(pairs)
    out = compute(name, logps)
    assert torch.isfinite(out.loss).all() and torch.isfinite(out.margin).all()
    out.loss.sum().backward()
    for side in (logps.chosen, logps.rejected):
        if side.logps.grad is not None:
            assert torch.isfinite(side.logps.grad).all()


def test_unlikelihood_clamp_gives_a_large_finite_penalty():
    pairs = [Pair(c=[-1.0], r=[0.0, -0.5], rc=[-1.0], rr=[-1.0, -1.0])]
    out = compute("unlikelihood", make_logps(pairs))
    # −log(1 − p) with 1 − p clamped at 1e-6 for the p = 1 token.
    expected = 1.0 + (-math.log(1e-6) - math.log(1 - math.exp(-0.5))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Identities and signs


def assert_same_output(a: ObjectiveOutput, b: ObjectiveOutput) -> None:
    for field in ("loss", "margin", "chosen_reward", "rejected_reward"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), msg=field)


@pytest.mark.parametrize(("name", "params"), [
    ("ld_dpo", {"alpha": 1.0}),
    ("robust", {"label_smoothing": 0.0}),
    ("rpo", {"alpha": 0.0}),
    ("dpop", {"lam": 0.0}),
    ("rdpo", {"alpha": 0.0}),
])
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_reduces_to_dpo(name, params, beta):
    logps = make_logps()
    assert_same_output(compute(name, logps, beta=beta, **params), compute("dpo", logps, beta=beta))


def test_book_dpo_with_unit_weights_is_dpo_on_token_means():
    out = compute("book_dpo", make_logps(), w_chosen=1.0, w_rejected=1.0)
    h_mean = [dpo_h(p, mean) for p in PAIRS]
    torch.testing.assert_close(out.margin, 0.1 * torch.tensor(h_mean, dtype=torch.float64))


def test_naive_sum_and_mean_differ_on_unequal_lengths():
    logps = make_logps()
    summed, meaned = compute("naive", logps), compute("naive", logps, norm="mean")
    unequal = logps.chosen.count != logps.rejected.count
    assert unequal.tolist() == [True, True, False]
    assert (summed.loss[unequal] != meaned.loss[unequal]).all()
    # Pair 2 has two tokens on each side: token-mean is the summed loss over 2.
    torch.testing.assert_close(meaned.loss[2], summed.loss[2] / 2)


def test_dpo_loss_falls_when_the_policy_raises_chosen_over_the_reference():
    logps = make_logps()
    base = compute("dpo", logps).loss
    raised = compute("dpo", replace(logps, chosen=scaled(logps.chosen, 0.5))).loss
    assert (raised < base).all()
    raised_ref = compute("dpo", replace(logps, ref_chosen=scaled(logps.ref_chosen, 0.5))).loss
    assert (raised_ref > base).all()  # the same policy is now worse relative to the reference


def test_naive_margin_positive_when_chosen_more_likely():
    pairs = [Pair(c=[-0.1, -0.2], r=[-1.0, -2.0], rc=[-1.0, -1.0], rr=[-1.0, -1.0])]
    out = compute("naive", make_logps(pairs))
    assert out.margin.item() > 0 and out.loss.item() < 0


def test_dpop_penalises_only_a_chosen_likelihood_below_the_reference():
    logps = make_logps()
    dpo_loss, dpop_loss = compute("dpo", logps).loss, compute("dpop", logps).loss
    # Pairs 0 and 2: πc > rc, no penalty. Pair 1: πc = −2.0 < rc = −1.5, penalty λ·0.5 = 25.
    torch.testing.assert_close(dpop_loss[[0, 2]], dpo_loss[[0, 2]])
    assert dpop_loss[1] > dpo_loss[1] + 1.0


def test_ipo_loss_is_zero_at_its_target():
    pairs = [Pair(c=[-1.0], r=[-1.0], rc=[-3.0], rr=[-1.0])]  # h = 2 = 1/(2·0.25)
    out = compute("ipo", make_logps(pairs), tau=0.25)
    assert out.loss.item() == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------
# Parameters, errors and the registry


def test_needs_reference_flags():
    assert {n for n, o in OBJECTIVES.items() if o.needs_reference} == NEEDS_REFERENCE


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_documented(name):
    objective = get_objective(name)
    assert objective.name == name and objective.summary and objective.source
    assert "Shape: (batch,)" in objective.fn.__doc__
    assert all(p.help for p in objective.params.values())


def test_resolve_params_fills_defaults_and_converts_ints():
    reverse_kl = {"f_divergence": "reverse_kl", "f_alpha": 0.5}
    assert resolve_params("dpo") == {"beta": 0.1, **reverse_kl}
    assert resolve_params("dpo", None) == {"beta": 0.1, **reverse_kl}
    resolved = resolve_params("book_dpo", {"beta": 1})
    assert resolved == {"beta": 1.0, "w_chosen": 0.8, "w_rejected": 0.2, **reverse_kl}
    assert type(resolved["beta"]) is float


def test_unknown_objective_lists_the_allowed_names():
    for call in (lambda: resolve_params("dpoo"), lambda: get_objective("dpoo"),
                 lambda: compute("dpoo", make_logps())):
        with pytest.raises(ValueError, match="unknown objective 'dpoo'") as err:
            call()
        assert all(name in str(err.value) for name in OBJECTIVES)


def test_unknown_param_names_objective_param_and_allowed():
    with pytest.raises(ValueError) as err:
        resolve_params("simpo", {"betta": 1.0})
    message = str(err.value)
    assert "'simpo'" in message and "'betta'" in message
    assert "beta" in message and "gamma" in message


@pytest.mark.parametrize(("name", "params", "allowed"), [
    ("naive", {"norm": "median"}, "one of 'sum', 'mean'"),
    ("dpo", {"beta": 0.0}, "> 0"),
    ("dpo", {"beta": -1.0}, "> 0"),
    ("dpo", {"beta": float("nan")}, "finite"),
    ("dpo", {"beta": float("inf")}, "finite"),
    ("dpo", {"beta": "0.1"}, "number"),
    ("dpo", {"beta": True}, "number"),
    ("sft", {"norm": 1}, "one of"),
    ("ipo", {"tau": 0}, "> 0"),
    ("robust", {"label_smoothing": 0.5}, "< 0.5"),
    ("robust", {"label_smoothing": -0.1}, ">= 0"),
    ("ld_dpo", {"alpha": 1.5}, "<= 1"),
    ("dpop", {"lam": -1.0}, ">= 0"),
])
def test_bad_values_name_objective_param_value_and_allowed(name, params, allowed):
    (param, value), = params.items()
    for call in (lambda: resolve_params(name, params), lambda: compute(name, make_logps(),
                                                                      **params)):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert f"'{name}'" in message and f"'{param}'" in message
        assert repr(value) in message and allowed in message


def test_boundary_values_allowed():
    assert resolve_params("robust", {"label_smoothing": 0.0})["label_smoothing"] == 0.0
    assert resolve_params("ld_dpo", {"alpha": 1})["alpha"] == 1.0
    assert resolve_params("ld_dpo", {"alpha": 0})["alpha"] == 0.0


@pytest.mark.parametrize("name", sorted(NEEDS_REFERENCE))
@pytest.mark.parametrize("missing", [("ref_chosen", "ref_rejected"), ("ref_rejected",)])
def test_missing_reference_is_a_clear_error(name, missing):
    logps = replace(make_logps(), **dict.fromkeys(missing))
    with pytest.raises(ValueError, match=f"'{name}' needs reference log-probs") as err:
        compute(name, logps)
    assert all(m in str(err.value) for m in missing)
    assert "simpo" in str(err.value)  # it points at the reference-free objectives


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - NEEDS_REFERENCE))
def test_reference_free_objectives_run_without_reference(name):
    logps = replace(make_logps(), ref_chosen=None, ref_rejected=None)
    assert_matches_hand(compute(name, logps), name, {})


def test_mismatched_batches_are_refused():
    logps = make_logps()
    with pytest.raises(ValueError, match="batch sizes differ"):
        compute("dpo", replace(logps, rejected=logps.rejected.index(slice(0, 2))))
    with pytest.raises(ValueError, match="ref_chosen"):
        compute("dpo", replace(logps, ref_chosen=logps.ref_chosen.index(slice(0, 2))))


def test_register_refuses_duplicates_and_mismatched_signatures():
    before = dict(OBJECTIVES)
    with pytest.raises(ValueError, match="already registered"):
        register("dpo", needs_reference=True, source="x")(lambda logps: None)

    def no_beta(logps):
        """Doc. Shape: (batch,)."""

    with pytest.raises(ValueError, match="must take"):
        register("test_only", needs_reference=False, source="x",
                 beta=Param(0.1, above=0.0, help="β"))(no_beta)

    def bad_default(logps, *, beta):
        """Doc. Shape: (batch,)."""

    with pytest.raises(ValueError, match="'beta' = -1"):
        register("test_only", needs_reference=False, source="x",
                 beta=Param(-1.0, above=0.0, help="β"))(bad_default)
    assert OBJECTIVES == before


# ---------------------------------------------------------------------------------------------
# Recomputing an objective from logged sums (the what-if view's formulas)

COMMITTED = in_repo("reports", "runs")


def hand_records():
    """Three per-pair records whose logged sums are easy to check by hand."""
    return pd.DataFrame({
        "run_id": "r", "label": "dpo", "seed": 0, "step": 1, "pair_id": ["a", "b", "c"],
        "nll_sum_p": [10.0, 40.0, 6.0], "nll_sum_n": [12.0, 20.0, 9.0],
        "len_p": [5, 20, 3], "len_n": [4, 10, 3],
        "ref_logp_p": [-11.0, -38.0, -6.0], "ref_logp_n": [-11.0, -22.0, -10.0],
    })


def test_sequence_logps_keeps_the_logged_sums_means_and_counts():
    records = hand_records()
    logps = sequence_logps(records)
    assert logps.chosen.sum.tolist() == pytest.approx([-10.0, -40.0, -6.0])
    assert logps.rejected.mean.tolist() == pytest.approx([-3.0, -2.0, -3.0])
    assert logps.chosen.count.tolist() == [5, 20, 3]
    assert logps.ref_rejected.sum.tolist() == pytest.approx([-11.0, -22.0, -10.0])
    no_ref = sequence_logps(records.drop(columns=["ref_logp_p", "ref_logp_n"]))
    assert no_ref.ref_chosen is None and no_ref.ref_rejected is None


def test_sums_suffice_is_checked_against_the_registry():
    verdict = {name: sums_suffice(name) for name in OBJECTIVES}
    # per-token objectives: log(1 − p_t) per token; position-weighted tokens
    assert verdict["unlikelihood"] is False and verdict["ld_dpo"] is False
    for name in ("naive", "sft", "negative_only", "dpo", "ipo", "simpo", "book_dpo", "rpo"):
        assert verdict[name] is True, name


def test_cannot_recompute_says_why():
    assert cannot_recompute("naive", has_reference=False) == ""
    assert "each token's log-probability" in cannot_recompute("unlikelihood", has_reference=True)
    assert "reference log-probs" in cannot_recompute("dpo", has_reference=False)
    assert cannot_recompute("dpo", has_reference=True) == ""
    records = hand_records()
    assert has_reference_logps(records).tolist() == [True, True, True]
    assert not has_reference_logps(records.drop(columns="ref_logp_n")).any()


@pytest.mark.skipif(not COMMITTED.exists(), reason="no committed runs in reports/runs yet")
def test_logged_losses_are_reproduced_from_the_logged_sums():
    """Every committed run of an objective that sums suffice for: its own objective, recomputed
    from the records' sums through the registry, gives the pair_loss and margin it logged."""
    checked = 0
    for folder in run_folders(COMMITTED):
        config = read_config(folder)
        if not sums_suffice(config["objective"]):
            continue
        records = load_runs([folder])
        if records.empty:  # a run that has not reached its first step
            continue
        out = compute(config["objective"], sequence_logps(records), **config["params"])
        scale = 1.0 + records.pair_loss.abs().to_numpy()
        assert np.abs(out.loss.numpy() - records.pair_loss.to_numpy()).max() < 1e-4 * scale.max()
        assert np.allclose(out.margin.numpy(), records.margin.to_numpy(), rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked


# ---------------------------------------------------------------------------------------------
# The TRL loss types: identities, limits and signs


@pytest.mark.parametrize("name", ["dpo", "hinge", "robust", "ipo", "exo_pair", "discopop",
                                  "book_dpo"])
def test_alpha_divergence_tends_to_reverse_kl_as_alpha_tends_to_one(name):
    logps = make_logps()
    reverse = compute(name, logps)
    assert_same_output(compute(name, logps, f_divergence="alpha_divergence", f_alpha=1.0), reverse)
    near = compute(name, logps, f_divergence="alpha_divergence", f_alpha=1.0 + 1e-5)
    torch.testing.assert_close(near.loss, reverse.loss, atol=1e-5, rtol=1e-5)


def test_every_f_divergence_is_zero_at_the_reference():
    # f′(1) is 0 for every divergence of TRL's list (log 1, 1 − 1, log(2/2), (1 − 1)/(α − 1)),
    # so a policy equal to its reference has margin 0 and DPO loss log 2 under each of them.
    logps = make_logps()
    at_ref = replace(logps, chosen=logps.ref_chosen, rejected=logps.ref_rejected)
    for f in ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"):
        out = compute("dpo", at_ref, f_divergence=f, f_alpha=0.3)
        torch.testing.assert_close(out.margin, torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(out.loss, torch.full((3,), math.log(2), dtype=torch.float64))


def _chosen_gradient(name, **params):
    logps = make_logps()
    compute(name, logps, **params).loss.sum().backward()
    return logps.chosen.logps.grad[logps.chosen.mask]


def test_apo_zero_pushes_the_chosen_likelihood_up_and_apo_down_pushes_it_down():
    # gradient descent moves log π(chosen) against the gradient: negative gradient = pushed up
    assert (_chosen_gradient("apo_zero") < 0).all()
    assert (_chosen_gradient("apo_down", beta=1.0) > 0).all()


def test_exo_needs_a_positive_label_smoothing():
    with pytest.raises(ValueError, match="'label_smoothing' = 0.*> 0"):
        compute("exo_pair", make_logps(), label_smoothing=0.0)


def test_exo_is_zero_where_the_model_matches_the_target():
    # q_w = σ(β·h) = 1 − ε: the KL to [1 − ε, ε] vanishes
    eps, beta = 0.2, 1.0
    h = math.log((1 - eps) / eps) / beta
    pairs = [Pair(c=[h], r=[-1.0], rc=[0.0], rr=[-1.0])]
    out = compute("exo_pair", make_logps(pairs), beta=beta, label_smoothing=eps)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)


def test_sppo_hard_is_zero_at_its_targets():
    beta = 0.5  # targets: chosen log-ratio +1/(2β) = 1, rejected −1
    pairs = [Pair(c=[0.0], r=[-2.0], rc=[-1.0], rr=[-1.0])]
    assert compute("sppo_hard", make_logps(pairs), beta=beta).loss.item() == pytest.approx(0.0)


def test_aot_with_one_pair_is_dpo():
    # one pair: nothing to sort, δ = β·((πc − πr) − (rc − rr)) = β·h
    one = make_logps(PAIRS[:1])
    dpo = compute("dpo", one)
    for name in ("aot", "aot_unpaired"):
        out = compute(name, one)
        torch.testing.assert_close(out.loss, dpo.loss)
        torch.testing.assert_close(out.margin, dpo.margin)


def test_aot_is_batch_level_permutation_equivariant_and_coupled():
    assert {n for n, o in OBJECTIVES.items() if o.batch_level} == BATCH_LEVEL
    order = [2, 0, 1]
    for name in BATCH_LEVEL:
        out = compute(name, make_logps())
        permuted = compute(name, make_logps([PAIRS[i] for i in order]))
        torch.testing.assert_close(permuted.loss, out.loss[order])
        # changing pair 2 alone changes another pair's loss: the pairs are coupled
        moved = [*PAIRS[:2], PAIRS[2]._replace(c=[0.0, 0.0])]  # from the lowest rank to the top
        assert not torch.allclose(compute(name, make_logps(moved)).loss[:2], out.loss[:2])


def test_every_trl_loss_type_is_registered_under_its_own_name():
    trl_names = ["exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
                 "discopop", "aot", "aot_unpaired"]
    for name in trl_names:
        assert OBJECTIVES[name].trl == f'loss_type="{name}"' or \
            OBJECTIVES[name].trl.startswith(f'loss_type="{name}" ')
    for name, loss_type in (("dpo", "sigmoid"), ("hinge", "hinge"), ("ipo", "ipo"),
                            ("robust", "robust"), ("book_dpo", "sigmoid_norm"), ("sft", "sft")):
        assert OBJECTIVES[name].trl.startswith(f'loss_type="{loss_type}"')


def test_wpo_weights_by_hand():
    # Zhou et al. 2024, Eq. 2: w(y) = exp(mean_t(log p_t − log Σ_v p_v²)); the pair's weight is
    # w(y_c)·w(y_r). Per-token log Σ p² values chosen by hand, padding filled with junk.
    logps = make_logps()
    sq_c = [[-0.4, -0.9, -0.3], [-1.2], [-0.2, -0.5]]
    sq_r = [[-1.0, -0.6], [-0.2, -0.3, -0.9, -0.8], [-0.7, -0.1]]
    chosen_sq = _side(sq_c, 7, torch.float64, fill=5.0).logps.detach()
    rejected_sq = _side(sq_r, 8, torch.float64, fill=5.0).logps.detach()
    from prefstudy.logprobs import wpo_weights

    got = wpo_weights(logps.chosen, chosen_sq, logps.rejected, rejected_sq)
    expected = [math.exp(mean([a - b for a, b in zip(p.c, sc)]))
                * math.exp(mean([a - b for a, b in zip(p.r, sr)]))
                for p, sc, sr in zip(PAIRS, sq_c, sq_r)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    assert not got.requires_grad  # a weight, not a loss


def test_the_readme_lists_exactly_the_registry():
    from prefstudy.formatting import catalogue_table
    from prefstudy.objectives import catalogue

    readme = in_repo("README.md").read_text()
    listed = readme.split("<!-- objectives:start -->\n")[1].split("\n<!-- objectives:end -->")[0]
    assert listed == catalogue_table(catalogue()), "regenerate: prefstudy objectives --markdown"
    for name in OBJECTIVES:
        assert f"| `{name}` |" in listed


def test_prefstudy_objectives_prints_every_objective(capsys):
    from prefstudy.cli import main

    assert main(["objectives"]) == 0
    out = capsys.readouterr().out
    for name, objective in OBJECTIVES.items():
        assert f"{name}  (" in out and objective.summary in out and objective.source in out
    assert 'TRL: loss_type="apo_zero"' in out and "batch-level" in out
