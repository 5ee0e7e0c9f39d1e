"""The judge's length bias, and how one audit's length effect differs from another's.

A preference dataset labelled by a judge (AlpacaEval: GPT-4 comparing text-davinci-003's answer
with another model's; `chosen_model`, `rejected_model` and `judge` in each pair's meta) passes
the judge's taste for length on to every model trained on it. `judge_length_bias` measures that
taste from the audit's per-pair table alone (`Audit.pairs`: pair_id, len_p, len_n in tokens, the
meta columns); `compare_audits` sets the length effect the starting model shows on one dataset
beside another's (a real judge's pairs beside the bundled, hand-written ones).

Rules, as in `prefstudy.auditstats`: every pair is one unit, and every interval either resamples
pairs (a percentile bootstrap, seeded: the same tables give the same interval) or is an exact
Clopper–Pearson interval of a share. An undefined number is NaN, never a number averaged over
what was left, and its row's `reason` says why ('' where every number is defined).

The logistic fit. Each pair's answers are named A and B by a fixed coin from its pair_id
(`orient_pairs`), so that which answer is A does not follow the file's order; x = log2 len_A −
log2 len_B (the length difference on a log scale: x = 1 where A is twice as long), y = 1 where
A is the judge's choice, and P(y = 1) = σ(β·x) without an
intercept: the judge sees two answers, not an A and a B, so naming them the other way round must
give σ(−β·x) = 1 − σ(β·x). Renaming one pair's answers (x → −x, y → 1 − y) leaves its likelihood
as it was, so β does not depend on the coin at all; the coin spreads the figure's points over
both signs of x. σ(β) is the probability that the judge prefers an answer twice as long as the
other (one half: length does not sway it). The length-controlled AlpacaEval win rate (Dubois et
al. 2024, arXiv:2404.04475) exists because this judge's σ(β) is above one half.

Why a log scale: real answers' lengths have long tails (an answer of 1,800 tokens beside one of
60), and on a linear scale a few such pairs carry the whole likelihood. On the AlpacaEval files
a fit on (len_A − len_B) / 100 tokens gave β ≈ 0 for two of the three comparisons whose judge
chose the longer answer in 57% and 61% of pairs, because their runaway answers lost; the log
ratio weighs a pair by how many times longer one answer is, as the audit's dose-response does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import expit

from . import diagnostics as dg
from .auditstats import AUDIT_GAPS, LENGTH_KINDS, length_kinds
from .columns import require_columns
from .stats import MIN_CLUSTERS, finite_rows, interval_reason, join_reasons, share_interval

if TYPE_CHECKING:
    from .audit import Audit

MODEL_COLUMNS = ("chosen_model", "rejected_model")  # meta keys: which model wrote each answer
JUDGE_COLUMN = "judge"  # meta key: who chose (AlpacaEval: "alpaca_eval_gpt4", …)
ALL = "all"  # the group value of the row over every pair
NEWTON_STEPS = 60  # Newton's method from β = 0 climbs monotonically (the log-likelihood's
# curvature only falls away from 0), so a step this small is convergence
NEWTON_TOLERANCE = 1e-10
MAX_RESAMPLE_CELLS = 2 ** 20  # resamples are drawn in batches of at most this many indices


# ---------------------------------------------------------------------------------------------
# The pairs' models and judge


def meta_column(pairs: pd.DataFrame, name: str) -> str | None:
    """The column of meta key `name` in an audit's pairs table: meta_<name> where the audit's
    own column took the name, else `name`; None where neither is there."""
    for column in (f"meta_{name}", name):
        if column in pairs.columns:
            return column
    return None


def has_models(pairs: pd.DataFrame) -> bool:
    """Whether the pairs say which model wrote each answer (chosen_model and rejected_model)."""
    return all(meta_column(pairs, name) for name in MODEL_COLUMNS)


def comparison(pairs: pd.DataFrame) -> pd.Series:
    """Each pair's comparison, named comparison: the unordered pair of models whose answers it
    holds, their names sorted and joined by " vs " ("alpaca-7b vs text_davinci_003"), from the
    chosen_model and rejected_model meta columns (meta_-prefixed or not). NA where a pair lacks
    either name, and for every pair of a table without the columns."""
    columns = [meta_column(pairs, name) for name in MODEL_COLUMNS]
    if None in columns:
        return pd.Series(pd.NA, index=pairs.index, dtype="object", name="comparison")
    names = [" vs ".join(sorted((str(a), str(b)))) if pd.notna(a) and pd.notna(b) else pd.NA
             for a, b in zip(pairs[columns[0]], pairs[columns[1]])]
    return pd.Series(names, index=pairs.index, dtype="object", name="comparison")


def judges(pairs: pd.DataFrame) -> list[str]:
    """The distinct judges the pairs name (the judge meta column), sorted; [] without one."""
    column = meta_column(pairs, JUDGE_COLUMN)
    return [] if column is None else sorted({str(v) for v in pairs[column].dropna()})


def coin(pair_ids: pd.Series) -> np.ndarray:
    """A fixed coin per pair, True where its answer A is the chosen one: the parity of the first
    byte of the SHA-256 of its pair_id, a function of the id alone (not of the row's place, not
    of the id's format). Shape: (len(pair_ids),)."""
    return np.array([hashlib.sha256(str(pid).encode()).digest()[0] & 1 == 1
                     for pid in pair_ids], dtype=bool)


def _with_groups(pairs: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """`pairs` with a comparison column where `by` asks for one the table lacks."""
    if "comparison" in by and "comparison" not in pairs.columns:
        return pairs.assign(comparison=comparison(pairs))
    return pairs


def orient_pairs(pairs: pd.DataFrame, *, by: Sequence[str] = ()) -> pd.DataFrame:
    """One row per pair with finite, positive token lengths, its answers named A and B by `coin`:
    pair_id, `by`, len_a, len_b, log_ratio_ab = log2(len_a / len_b), a_chosen (1.0 where A
    is the judge's choice, else 0.0). Sorted by pair_id: the rows, and so every resample of them,
    do not depend on the table's order. by: columns to carry ("comparison" is computed by
    `comparison` where the table lacks it)."""
    by = list(by)
    frame = _with_groups(pairs, by)
    require_columns(frame, ["pair_id", "len_p", "len_n", *by], "orient_pairs")
    kept = finite_rows(frame, ["len_p", "len_n"])
    kept = kept[(kept.len_p > 0) & (kept.len_n > 0)]  # a ratio needs two answers with tokens
    heads = coin(kept.pair_id)
    p, n = kept.len_p.to_numpy(float), kept.len_n.to_numpy(float)
    out = kept[["pair_id", *by]].assign(len_a=np.where(heads, p, n), len_b=np.where(heads, n, p))
    out["log_ratio_ab"] = np.log2(out.len_a / out.len_b)
    out["a_chosen"] = heads.astype(float)
    return out.sort_values("pair_id", kind="stable").reset_index(drop=True)


def _groups(oriented: pd.DataFrame, by: Sequence[str], *, every: bool = True
            ) -> Iterator[tuple[dict, pd.DataFrame]]:
    """(key, rows) per group of `by` whose values are all present (sorted), then the ALL group
    of every row (every=False: only where no other group exists)."""
    by = list(by)
    named = oriented.dropna(subset=by) if by else oriented.iloc[:0]
    found = False
    for key, rows in named.groupby(by, sort=True) if by else ():
        found = True
        yield dict(zip(by, key if isinstance(key, tuple) else (key,))), rows
    if every or not found:
        yield dict.fromkeys(by, ALL), oriented


# ---------------------------------------------------------------------------------------------
# The logistic fit and its bootstrap


def logistic_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """The maximum-likelihood β of P(y = 1) = σ(β·x) without an intercept, by Newton's method,
    for every row of x and y at once. Shape: (resamples, pairs) → (resamples,), or (pairs,) → a
    float. NaN where no finite β maximises the likelihood: y follows the sign of x in every pair
    with x ≠ 0 (the MLE is ±∞), or every x is 0."""
    xs, ys = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    beta = np.zeros(len(xs))
    step = np.full(len(xs), np.inf)
    for _ in range(NEWTON_STEPS):
        p = expit(beta[:, None] * xs)
        score = (xs * (ys - p)).sum(axis=1)
        information = (xs * xs * p * (1 - p)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.where(information > 0, score / information, np.nan)
        beta = beta + np.nan_to_num(step)
        if not (np.abs(step) > NEWTON_TOLERANCE).any():
            break
    signed = xs * (2 * ys - 1)
    separated = (signed >= 0).all(axis=1) | (signed <= 0).all(axis=1)
    beta = np.where(separated | ~(np.abs(step) <= NEWTON_TOLERANCE), np.nan, beta)
    return beta if np.ndim(x) > 1 else float(beta[0])


def _distribution(statistic: Callable[[np.ndarray], np.ndarray], n_units: int, *, n_boot: int,
                  rng: np.random.Generator) -> np.ndarray:
    """`statistic` of `n_boot` resamples of `n_units` units drawn with replacement by `rng`:
    statistic maps an index matrix (resamples × units) to one value per resample. Shape:
    (n_boot,)."""
    batch = max(1, min(n_boot, MAX_RESAMPLE_CELLS // max(n_units, 1)))
    parts = [statistic(rng.integers(0, n_units, size=(min(batch, n_boot - start), n_units)))
             for start in range(0, n_boot, batch)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of a bootstrap distribution; NaN where it is empty or holds an
    undefined (non-finite) resample: such a resample is never left out."""
    if not len(values) or not np.isfinite(values).all():
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


def _resample_reason(values: np.ndarray, n_units: int, n_boot: int, what: str) -> str:
    """Why a bootstrap gives no interval ('' where it does): too few units or resamples, or
    resamples where the statistic is undefined (`what` says when it is)."""
    reason = interval_reason(n_units, n_boot, "pair_id")
    if reason:
        return reason
    bad = int((~np.isfinite(values)).sum())
    return f"{bad} of {n_boot} resamples leave {what}: no interval" if bad else ""


# ---------------------------------------------------------------------------------------------
# The judge's length bias


BIAS_COLUMNS = ("n_pairs", "n_equal", "n", "k", "share", "share_lo", "share_hi", "beta",
                "beta_lo", "beta_hi", "p_longer", "p_longer_lo", "p_longer_hi", "reason")


def _bias_row(rows: pd.DataFrame, *, n_boot: int, seed: int, confidence: float) -> dict:
    """`judge_length_bias`'s numbers for one group of `orient_pairs` rows."""
    differ = rows[rows.log_ratio_ab != 0]
    x, y = differ.log_ratio_ab.to_numpy(float), differ.a_chosen.to_numpy(float)
    k = int(((x > 0) == (y == 1)).sum())  # the judge's choice is the longer answer
    share, share_lo, share_hi = share_interval(k, len(differ), confidence)
    beta = logistic_slope(x, y) if len(differ) else float("nan")
    resampled = (_distribution(lambda idx: logistic_slope(x[idx], y[idx]), len(differ),
                               n_boot=n_boot, rng=np.random.default_rng(seed))
                 if np.isfinite(beta) and len(differ) >= MIN_CLUSTERS else np.zeros(0))
    lo, hi = _percentile_interval(resampled, confidence)
    if not len(differ):
        reason = "no pair whose answers differ in length"
    elif not np.isfinite(beta):
        reason = (f"the judge chose the {'longer' if k else 'shorter'} answer in every one of "
                  f"the {len(differ)} pairs: no finite β")
    else:
        reason = _resample_reason(resampled, len(differ), n_boot,
                                  "β undefined (the longer answer always won, or never)")
    return {"n_pairs": len(rows), "n_equal": len(rows) - len(differ), "n": len(differ), "k": k,
            "share": share, "share_lo": share_lo, "share_hi": share_hi, "beta": beta,
            "beta_lo": lo, "beta_hi": hi, "p_longer": float(expit(beta)),
            "p_longer_lo": float(expit(lo)), "p_longer_hi": float(expit(hi)), "reason": reason}


def judge_length_bias(pairs: pd.DataFrame, *, by: Sequence[str] = ("comparison",),
                      n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
                      ) -> pd.DataFrame:
    """How much the judge prefers the longer answer, per group of `by` and over every pair.

    pairs: the audit's per-pair table (`Audit.pairs`: pair_id, len_p, len_n in tokens of the
    chosen and rejected answers, and `by`; "comparison" is `comparison(pairs)` where the table
    lacks it). One row per group whose `by` values are all present (sorted), then one whose
    `by` values are ALL ("all", every pair; the only row where no pair has a group).
    Returns `by`, n_pairs (with finite lengths), n_equal (answers of equal length: they say
    nothing of length), n (the others), k (of those, pairs whose chosen answer is the longer),
    share = k / n with share_lo, share_hi (exact Clopper–Pearson), beta (the logistic fit's β
    per doubling of the length ratio, see the module's docstring) with beta_lo, beta_hi (percentile
    bootstrap over the n pairs, `n_boot` resamples seeded by `seed`), p_longer = σ(β), the
    probability that the judge prefers an answer twice as long as the other, with p_longer_lo,
    p_longer_hi (σ of β's bounds), reason (why a number is undefined; '' where none is).
    The unit is the pair.
    """
    by = list(by)
    oriented = orient_pairs(pairs, by=by)
    rows = [{**key, **_bias_row(group, n_boot=n_boot, seed=seed, confidence=confidence)}
            for key, group in _groups(oriented, by, every=True)]
    return pd.DataFrame(rows, columns=[*by, *BIAS_COLUMNS])


def judge_length_bins(pairs: pd.DataFrame, *, by: Sequence[str] = ("comparison",),
                      bins: int = 8, confidence: float = 0.95) -> pd.DataFrame:
    """The empirical side of `judge_length_bias`'s fit, for its figure: the pairs whose answers
    differ in length, in `bins` bins of log_ratio_ab (equal counts over all of them, pooled; tied
    edges merge), per group of `by` (ALL alone where no pair has a group).
    Returns `by`, bin (its edges, in log2 of the length ratio), n (pairs), k (where the judge chose A),
    a_chosen = k / n with a_chosen_lo, a_chosen_hi (exact Clopper–Pearson), log_ratio_ab (the mean
    over the bin's pairs: where its point is drawn)."""
    by = list(by)
    oriented = orient_pairs(pairs, by=by)
    oriented = oriented[oriented.log_ratio_ab != 0]
    columns = [*by, "bin", "n", "k", "a_chosen", "a_chosen_lo", "a_chosen_hi", "log_ratio_ab"]
    if not len(oriented):
        return pd.DataFrame(columns=columns)
    edges = np.unique(np.quantile(oriented.log_ratio_ab, np.linspace(0, 1, bins + 1)))
    cut = (pd.cut(oriented.log_ratio_ab, edges, include_lowest=True, labels=dg._bin_labels(edges))
           .astype(str) if len(edges) > 1 else f"[{edges[0]:g}, {edges[0]:g}]")
    oriented = oriented.assign(bin=cut)  # the same interval labels as diagnostics.length_bins
    rows = []
    for key, group in _groups(oriented, by, every=False):
        for name, rows_in in group.groupby("bin", sort=False):
            k, n = int(rows_in.a_chosen.sum()), len(rows_in)
            share, lo, hi = share_interval(k, n, confidence)
            rows.append({**key, "bin": name, "n": n, "k": k, "a_chosen": share,
                         "a_chosen_lo": lo, "a_chosen_hi": hi,
                         "log_ratio_ab": float(rows_in.log_ratio_ab.mean())})
    return pd.DataFrame(rows, columns=columns).sort_values([*by, "log_ratio_ab"], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Two audits side by side


@dataclass(frozen=True)
class _Measure:
    """One measure of an audit: the value, unit count and interval its table holds, and how to
    recompute the value on a resample of its units (`statistic`: an index matrix, resamples ×
    `units`, to one value per resample)."""

    n: int
    value: float
    lo: float
    hi: float
    units: int
    statistic: Callable[[np.ndarray], np.ndarray]


def _share_statistic(hit: np.ndarray, kept: np.ndarray) -> Callable:
    """The share of `hit` among `kept` rows of a resample (NaN where it keeps none)."""
    hit, kept = hit.astype(float), kept.astype(float)

    def statistic(idx: np.ndarray) -> np.ndarray:
        den = kept[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, hit[idx].sum(axis=1) / den, np.nan)
    return statistic


def _r2_statistic(x: np.ndarray, y: np.ndarray) -> Callable:
    """R² of the OLS fit of y on x in a resample, over its rows with a finite x and y (as
    `stats.fit_line`: NaN under 3 rows or for a constant x, 0 for a constant y)."""
    ok = np.isfinite(x) & np.isfinite(y)
    w = ok.astype(float)
    xc = np.where(ok, x - (x[ok].mean() if ok.any() else 0.0), 0.0)  # centred: well conditioned
    yc = np.where(ok, y - (y[ok].mean() if ok.any() else 0.0), 0.0)

    def statistic(idx: np.ndarray) -> np.ndarray:
        n, sx, sy = w[idx].sum(1), xc[idx].sum(1), yc[idx].sum(1)
        sxx, syy, sxy = (xc * xc)[idx].sum(1), (yc * yc)[idx].sum(1), (xc * yc)[idx].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            vxx, vyy, vxy = sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n
            r2 = np.where(vyy > 0, np.minimum(vxy * vxy / (vxx * vyy), 1.0), 0.0)
        return np.where((n >= 3) & (vxx > 1e-12 * np.maximum(sxx, 1e-300)), r2, np.nan)
    return statistic


def _table_row(table: pd.DataFrame, **match) -> pd.Series | None:
    """The first row of `table` whose columns equal `match`, None where there is none."""
    if not len(table) or any(c not in table.columns for c in match):
        return None
    sel = table
    for column, value in match.items():
        sel = sel[sel[column].astype(str) == str(value)]
    return sel.iloc[0] if len(sel) else None


def _measure(row: pd.Series | None, name: str, n: str, units: int, statistic) -> _Measure | None:
    if row is None:
        return None
    return _Measure(int(row[n]), float(row[name]), float(row.get(f"{name}_lo", np.nan)),
                    float(row.get(f"{name}_hi", np.nan)), units, statistic)


COMPARED = ("R² of the gap on Δlen", "share of pairs whose chosen answer is longer",
            "accuracy at the start", "dose slope (nats per doubling)")


def _measures(result: Audit) -> dict[tuple[str, str, str], _Measure | None]:
    """Every measure `compare_audits` compares, keyed (measure, normalisation, length_kind),
    in COMPARED order; None where the audit's table lacks it."""
    pairs = result.pairs
    kinds = pairs.length_kind if "length_kind" in pairs else length_kinds(pairs)
    lp, ln = pairs.len_p.to_numpy(float), pairs.len_n.to_numpy(float)
    gaps = dg.gap_normalisations(pairs, keep=("pair_id",))
    out: dict = {}
    for norm in AUDIT_GAPS:
        rows = gaps[gaps.normalisation == norm]
        out[(COMPARED[0], norm, "")] = _measure(
            _table_row(result.length, normalisation=norm), "r2", "n", len(rows),
            _r2_statistic(rows.dlen.to_numpy(float), rows.gap_value.to_numpy(float)))
    kept = np.isfinite(lp) & np.isfinite(ln)
    out[(COMPARED[1], "", "")] = _measure(
        _table_row(result.chosen_longer), "share", "n", len(pairs),
        _share_statistic(kept & (lp > ln), kept))
    for norm, column in AUDIT_GAPS.items():
        gap = pairs[column].to_numpy(float)
        for kind in (*LENGTH_KINDS, ALL):
            kept = np.isfinite(gap) & ((kinds == kind).to_numpy() if kind != ALL else True)
            out[(COMPARED[2], norm, kind)] = _measure(
                _table_row(result.accuracy, normalisation=norm, length_kind=kind), "accuracy",
                "n", len(pairs), _share_statistic(kept & (gap > 0), kept))
    slopes = (finite_rows(result.dose_slopes, ["slope"]) if len(result.dose_slopes)
              else pd.DataFrame({"normalisation": [], "slope": []}))
    for norm in AUDIT_GAPS:
        values = slopes.slope[slopes.normalisation == norm].to_numpy(float)
        out[(COMPARED[3], norm, "")] = _measure(
            _table_row(result.dose_summary, normalisation=norm), "slope", "n_pairs",
            len(values), lambda idx, v=values: v[idx].mean(axis=1))
    return out


def _compare_row(real: _Measure | None, reference: _Measure | None, *, n_boot: int, seed: int,
                 confidence: float) -> dict:
    """`compare_audits`' numbers for one measure."""
    nan = float("nan")
    side = {f"{name}{end}": nan for name in ("real", "reference") for end in ("", "_lo", "_hi")}
    for name, m in (("real", real), ("reference", reference)):
        if m is not None:
            side.update({f"n_{name}": m.n, name: m.value, f"{name}_lo": m.lo,
                         f"{name}_hi": m.hi})
    missing = [name for name, m in (("real", real), ("reference", reference)) if m is None]
    if missing:
        return {**side, "difference": nan, "difference_lo": nan, "difference_hi": nan,
                "reason": f"not in the {' and the '.join(missing)} audit's tables"}
    units = min(real.units, reference.units)
    diffs = np.zeros(0)
    if n_boot > 0 and units >= MIN_CLUSTERS:
        diffs = (_distribution(real.statistic, real.units, n_boot=n_boot,
                               rng=np.random.default_rng([seed, 0]))
                 - _distribution(reference.statistic, reference.units, n_boot=n_boot,
                                 rng=np.random.default_rng([seed, 1])))
    lo, hi = _percentile_interval(diffs, confidence)
    reason = join_reasons(
        "" if np.isfinite(real.value) and np.isfinite(reference.value)
        else "undefined on one side (its table's reason says why)",
        _resample_reason(diffs, units, n_boot, "it undefined on one side (e.g. no pair of the "
                         "kind, or a Δlen that does not vary)"))
    return {**side, "difference": real.value - reference.value, "difference_lo": lo,
            "difference_hi": hi, "reason": reason}


def compare_audits(real: Audit, reference: Audit, *, n_boot: int = 1000, seed: int = 0,
                   confidence: float = 0.95) -> pd.DataFrame:
    """How the length effect on one audit's pairs (`real`, e.g. a real judge's) differs from
    another's (`reference`, e.g. the bundled, hand-written pairs), measure by measure.

    Rows, in COMPARED order: R² of the gap on Δlen per normalisation (the audit's `length`
    table), the share of pairs whose chosen answer is longer (`chosen_longer`), the starting
    model's accuracy per normalisation × length kind and over all (`accuracy`), the mean
    per-pair dose slope per normalisation (`dose_summary`).
    Returns measure, normalisation, length_kind ('' where the measure has none), unit ("pairs":
    dose-response pairs for the dose slope), n_real, real, real_lo, real_hi, n_reference,
    reference, reference_lo, reference_hi (each audit's own table: its value, unit count and
    interval as its page shows them), difference = real − reference with difference_lo,
    difference_hi (a percentile bootstrap that resamples the pairs of each audit independently,
    `n_boot` times, seeded by `seed`, recomputing the measure on each), and reason (why a
    number is undefined; '' where none is).
    """
    ours, theirs = _measures(real), _measures(reference)
    rows = [{"measure": key[0], "normalisation": key[1], "length_kind": key[2],
             "unit": "pairs", **_compare_row(ours[key], theirs[key], n_boot=n_boot, seed=seed,
                                             confidence=confidence)}
            for key in ours]
    return pd.DataFrame(rows, columns=[
        "measure", "normalisation", "length_kind", "unit", "n_real", "real", "real_lo",
        "real_hi", "n_reference", "reference", "reference_lo", "reference_hi", "difference",
        "difference_lo", "difference_hi", "reason"])
