"""Diagnostics: pure functions from tidy DataFrames to tidy DataFrames, one per claim of the study.

Inputs are the tables `prefstudy.records.load_runs` returns (records, evals, perplexity,
generations, steps) and `PairSet.to_frame()`; every function names the columns it needs and raises
`SchemaError` naming the missing ones. Nothing here draws (`prefstudy.plots` calls these). The
intervals, fits and bootstraps come from `prefstudy.stats`; the audit's tables are in
`prefstudy.auditstats`.

Conventions, shared by every function:

- Units. A run (one `run_id`: one label, one seed) is the unit of replication. Per-run numbers are
  summarised per label as the across-seed mean with a 95% t-interval (`stats.seed_interval`);
  shares of seeds get an exact binomial interval (`stats.share_interval`). With one seed a
  t-interval is NaN (unknown), not zero width.
- Non-finite values are never averaged away. Means and sums over pairs keep NaN/inf (pandas would
  skip NaN): one non-finite pair makes its step's or run's number NaN/inf. The fits over rows
  (`length_effect`, `variance_by_length_bin`) leave out rows whose x or y is not finite and say
  how many in `n_dropped`.
- Optional tables (perplexity, steps) may be None or empty: both mean "not there", and the
  numbers that need them are NaN. Every function returns a DataFrame, never None.
- Diverged runs. Training stops at the first non-finite step, so records end before
  `diverged_step`. Trajectory numbers (length R², gradient agreement, degeneration) use a
  diverged run's records up to that point. A final-value number would compare a diverged run's
  end with other runs' ends at another step, so it leaves diverged runs out and says so with
  `n_diverged`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import pandas as pd

from .columns import require_columns
from .stats import (
    EXACT_RANK_ROWS,
    FIT_STATISTICS,
    RANK_LEVELS,
    bootstrap_fit,
    finite_rows,
    fit_line,
    fit_reason,
    groups_of,
    interval_reason,
    join_reasons,
    rank_codes,
    seed_interval,
)

NORMALISATIONS = ("sum", "mean", "reference")
ID_COLUMNS = ("run_id", "label", "seed", "step", "pair_id")
_RUN_COLUMNS = ("run_id", "label", "seed", "status", "diverged_step")
CHARACTER_LANGS = ("zh",)  # languages written without spaces: n-grams over characters


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _given(df: pd.DataFrame | None) -> pd.DataFrame | None:
    """An optional input table: None when it is absent or has no rows (callers pass either)."""
    return None if df is None or not len(df) else df


def _means(frame: pd.DataFrame, by: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Mean of `values` per group of `by` that keeps NaN/inf (pandas would skip NaN): `by` as
    the index, one column per value, in float64."""
    columns = frame[list(values)].astype(float)
    return columns.groupby([frame[c] for c in by], sort=True).mean(skipna=False)


def _first(values: pd.Series):
    """The first value, NaN or not (pandas' "first" would skip NaN)."""
    return values.iloc[0]


def _less(a: pd.Series, b: pd.Series) -> pd.Series:
    """a < b as 1.0/0.0, NaN where either side is NaN."""
    return (a < b).astype(float).where(a.notna() & b.notna())


def _runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: run_id, label, seed, status, diverged_step, diverged (bool).

    status and diverged_step are NaN where `df` lacks them; a run is diverged when its status says
    so or it has a diverged_step.
    """
    present = [c for c in _RUN_COLUMNS if c in df.columns]
    runs = df[present].drop_duplicates("run_id").reindex(columns=list(_RUN_COLUMNS))
    runs["diverged"] = runs.status.eq("diverged") | runs.diverged_step.notna()
    return runs.sort_values("run_id", kind="stable").reset_index(drop=True)


def _label_intervals(per_run: pd.DataFrame, metrics: Sequence[str],
                     keys: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Per `keys`: `<metric>`, `<metric>_lo`, `<metric>_hi` (seed_interval over the runs' rows)."""
    rows = []
    for key, runs in groups_of(per_run, keys):
        row = dict(key)
        for metric in metrics:
            row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = seed_interval(runs[metric])
        rows.append(row)
    columns = [*keys, *(f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi"))]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------
# C1: how much of the gap the length difference explains


def gap_normalisations(records: pd.DataFrame, *, keep: Sequence[str] = ID_COLUMNS) -> pd.DataFrame:
    """The per-pair gap under each normalisation, long: one row per record row and normalisation.

    records: records or evals with `keep`, len_p, len_n, loss_p, loss_n, nll_sum_p, nll_sum_n and,
    optionally, ref_logp_p, ref_logp_n.
    Returns `keep` (default run_id, label, seed, step, pair_id; add e.g. "factor" to carry it),
    normalisation, gap_value, dlen, dlen_rel, where gap_value is (rejected minus chosen, nats):

        sum        nll_sum_n − nll_sum_p                       summed cross-entropy
        mean       loss_n − loss_p                             token-mean cross-entropy
        reference  (nll_sum_n + ref_logp_n) − (nll_sum_p + ref_logp_p)
                   = log π/π_ref(chosen) − log π/π_ref(rejected), DPO's h (Rafailov et al. 2023)

    "reference" rows exist only where both reference log-probs are present (not NaN).
    dlen = len_n − len_p (tokens), dlen_rel = dlen / (len_n + len_p).
    """
    keep = list(keep)
    require_columns(records, [*keep, "len_p", "len_n", "loss_p", "loss_n", "nll_sum_p",
                              "nll_sum_n"], "gap_normalisations")
    dlen = records.len_n - records.len_p
    base = records[keep].assign(dlen=dlen, dlen_rel=dlen / (records.len_n + records.len_p))
    frames = [base.assign(normalisation="sum", gap_value=records.nll_sum_n - records.nll_sum_p),
              base.assign(normalisation="mean", gap_value=records.loss_n - records.loss_p)]
    if {"ref_logp_p", "ref_logp_n"} <= set(records.columns):
        reference = ((records.nll_sum_n + records.ref_logp_n)
                     - (records.nll_sum_p + records.ref_logp_p))
        has_reference = records.ref_logp_p.notna() & records.ref_logp_n.notna()
        frames.append(base.assign(normalisation="reference", gap_value=reference)[has_reference])
    columns = [*keep, "normalisation", "gap_value", "dlen", "dlen_rel"]
    return pd.concat(frames, ignore_index=True)[columns]


def length_effect(frame: pd.DataFrame, *, x: str = "dlen", y: str = "gap_value",
                  by: Sequence[str] = ("normalisation",), n_boot: int = 1000, ci: float = 0.95,
                  seed: int = 0, unit: str | None = "pair_id",
                  spearman: bool = True) -> pd.DataFrame:
    """How much of `y` the length difference `x` explains, one row per group of `by`.

    frame: e.g. `gap_normalisations(records)`; needs `by`, `x`, `y` (and `unit` if resampling by
    it). Rows whose x or y is not finite are left out and counted in n_dropped.
    Returns `by`, n, n_dropped, r2 (of the OLS fit of y on x), spearman (ρ), slope, intercept,
    and r2_lo, r2_hi, spearman_lo, spearman_hi, slope_lo, slope_hi: a `ci` percentile bootstrap
    (scipy.stats.bootstrap, `n_boot` resamples, seeded). The bootstrap resamples whole `unit`s
    (default: pairs, since one pair recurs at many steps and its rows are not independent); rows
    are resampled when `unit` is None or the frame has no such column. n_boot=0 skips it (NaN CIs).
    Fewer than 3 rows, or a constant x, gives NaN statistics; `reason` says why a number of the
    row is undefined (`stats.fit_reason`, `stats.interval_reason`), '' where none is.
    spearman=False leaves ρ and its interval out (NaN): ranking is the costly part of a fit on
    millions of rows.
    Cost: each resample is scored from per-cluster sums (`stats.bootstrap_fit`), so it grows with
    the number of units, not rows: 10 million rows of 460 pairs take seconds.
    """
    by = list(by)
    require_columns(frame, [*by, x, y], "length_effect")
    use = [*by, x, y, *([unit] if unit is not None and unit in frame.columns else [])]
    rows = []
    for key, group in groups_of(frame[list(dict.fromkeys(use))], by):
        kept = finite_rows(group, [x, y])
        xs, ys = kept[x].to_numpy(dtype=float), kept[y].to_numpy(dtype=float)
        if n_boot <= 0:
            cluster = np.zeros(0, dtype=np.int64)
        elif unit is not None and unit in kept.columns:
            cluster = pd.factorize(kept[unit], sort=True)[0]
        else:
            cluster = np.arange(len(kept))
        ranks = codes = None
        if spearman and len(kept):  # one ranking of each variable serves the fit and resamples
            levels = None if len(kept) <= EXACT_RANK_ROWS else RANK_LEVELS
            (rank_x, code_x), (rank_y, code_y) = rank_codes(xs, levels), rank_codes(ys, levels)
            ranks, codes = (rank_x, rank_y), (code_x, code_y)
        fit = fit_line(xs, ys, spearman=spearman, ranks=ranks)
        interval = bootstrap_fit(xs, ys, cluster, n_boot=n_boot if np.isfinite(fit["slope"])
                                 else 0, ci=ci, seed=seed, spearman=spearman, codes=codes)
        rows.append({**key, "n": len(kept), "n_dropped": len(group) - len(kept), **fit,
                     **interval, "reason": _fit_row_reason(
                         xs, ys, fit, interval, x=x, y=y, n_dropped=len(group) - len(kept),
                         spearman=spearman, n_boot=n_boot,
                         n_units=int(cluster.max()) + 1 if len(cluster) else len(kept),
                         unit=unit if unit is not None and unit in kept.columns else None)})
    columns = [*by, "n", "n_dropped", "r2", "spearman", "slope", "intercept",
               *(f"{s}{end}" for s in FIT_STATISTICS for end in ("_lo", "_hi")), "reason"]
    return pd.DataFrame(rows, columns=columns)


def _fit_row_reason(xs, ys, fit: dict, interval: dict, *, x: str, y: str, n_dropped: int,
                    spearman: bool, n_boot: int, n_units: int, unit: str | None) -> str:
    """Why a `length_effect` row has an undefined number: its fit's reason, else its interval's
    (no resamples, too few units, or a predictor that does not vary within some resamples)."""
    reason = fit_reason(xs, ys, x=x, y=y, n_dropped=n_dropped, spearman=spearman)
    if not np.isfinite(fit["slope"]):
        return reason
    if not np.isfinite(interval["slope_lo"]):
        reason = join_reasons(reason, interval_reason(n_units, n_boot, unit) or (
            f"no interval: {x} does not vary within some bootstrap resamples (too few distinct "
            "values)"))
    return reason


def variance_by_length_bin(frame: pd.DataFrame, *, x: str = "dlen", y: str = "gap_value",
                           bins: int = 5, by: Sequence[str] = ("normalisation",)) -> pd.DataFrame:
    """The share of the variance of `y` lying between quantile bins of `x`, per group of `by`.

    frame: needs `by`, `x`, `y`; rows with non-finite x or y are left out (n_dropped).
    Rows are put into `bins` quantile bins of x (pandas.qcut; tied edges merge bins, so n_bins
    can be smaller). Returns `by`, n, n_dropped, n_bins,
    eta2 = SS_between / SS_total (the correlation ratio η²) and share_within = SS_within / SS_total
    (= 1 − eta2). NaN when y is constant.
    """
    by = list(by)
    require_columns(frame, [*by, x, y], "variance_by_length_bin")
    rows = []
    for key, group in groups_of(frame, by):
        kept = finite_rows(group, [x, y])
        values = kept[y].astype(float)
        if kept[x].nunique() > 1:
            bin_of = pd.qcut(kept[x].astype(float), bins, labels=False, duplicates="drop")
        else:  # qcut cannot cut a constant: one bin
            bin_of = pd.Series(0, index=kept.index)
        bin_mean = values.groupby(bin_of).transform("mean")
        ss_total = float(((values - values.mean()) ** 2).sum())
        ss_between = float(((bin_mean - values.mean()) ** 2).sum())
        ss_within = float(((values - bin_mean) ** 2).sum())
        eta2, within = ((ss_between / ss_total, ss_within / ss_total) if ss_total > 0
                        else (float("nan"), float("nan")))
        rows.append({**key, "n": len(kept), "n_dropped": len(group) - len(kept),
                     "n_bins": int(bin_of.nunique()), "eta2": eta2, "share_within": within})
    return pd.DataFrame(rows, columns=[*by, "n", "n_dropped", "n_bins", "eta2", "share_within"])


# ---------------------------------------------------------------------------------------------
# C2: how noisy the update direction is


# What gradient_noise summarises per label (gns last: it comes from the steps table).
NOISE_METRICS = ("grad_cos", "grad_cos_with_self", "grad_cos_with_self_orthogonal", "grad_norm",
                 "share_opposed", "gns")


def _noise_per_run(records: pd.DataFrame, steps: pd.DataFrame | None) -> pd.DataFrame:
    """Per run: run_id, label, seed, grad_cos, grad_cos_with_self, grad_cos_with_self_orthogonal,
    grad_norm, share_opposed, gns (see gradient_noise)."""
    require_columns(records, ["run_id", "label", "seed", "step", "grad_cos", "grad_norm"],
                    "gradient_noise")
    frame = records if "grad_cos_with_self" in records.columns else \
        records.assign(grad_cos_with_self=float("nan"))
    norm = frame.grad_norm.astype(float)
    batch_sq = (norm ** 2).groupby([frame.run_id, frame.step]).transform("sum")
    frame = frame.assign(share_opposed=_less(frame.grad_cos.astype(float),
                                             pd.Series(0.0, index=frame.index)),
                         grad_cos_with_self_orthogonal=norm / np.sqrt(batch_sq))
    per_run = _means(frame, ["run_id"], NOISE_METRICS[:-1]).reset_index()
    per_run["gns"] = float("nan")
    per_run["gns_negative"] = False
    steps = _given(steps)
    if steps is not None:
        require_columns(steps, ["run_id", "trace_sigma", "grad_sq"], "gradient_noise(steps=)")
        sums = _means(steps, ["run_id"], ["trace_sigma", "grad_sq"])
        gns = (sums["trace_sigma"] / sums["grad_sq"]).where(sums["grad_sq"] > 0)
        per_run["gns"] = per_run.run_id.map(gns)
        per_run["gns_negative"] = per_run.run_id.map(sums["grad_sq"] <= 0).fillna(False)
    runs = _runs(records)[["run_id", "label", "seed"]]
    if "lr" in records.columns:
        runs = runs.assign(lr=runs.run_id.map(records.drop_duplicates("run_id")
                                              .set_index("run_id").lr))
    return runs.merge(per_run, on="run_id")


def gradient_noise(records: pd.DataFrame, steps: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-pair gradient agreement and the gradient noise scale, one row per label and learning
    rate (where the records carry `lr`; learning rates are never pooled), else per label.

    records: run_id, label, seed, step, grad_cos, grad_norm and, where recorded,
    grad_cos_with_self (NaN when gradient statistics were off; see prefstudy.gradstats).
    steps: run_id, trace_sigma, grad_sq (the per-step statistics of prefstudy.gradstats), or None.
    Per run, means over its pair rows of:
      grad_cos            the leave-one-out cosine, a pair's gradient against the mean of the
                          other pairs of its batch; orthogonal gradients give 0, so 0 is its
                          baseline;
      grad_cos_with_self  the cosine with the batch mean including the pair itself (NaN where
                          not recorded), biased upwards by the pair's own share;
      grad_cos_with_self_orthogonal  what that cosine would be for orthogonal gradients of the
                          same norms, |g_i| / √(Σ_batch |g_j|²) over the pairs of its step
                          (1/√B at equal norms): the baseline to read grad_cos_with_self against;
      grad_norm;  share_opposed, the share of pair rows with grad_cos < 0 (a pair pulling
                          against the rest of its batch).
    gns is mean(trace_sigma) / mean(grad_sq) over its steps: B_simple = tr(Σ)/|G|² with numerator
    and denominator averaged separately (McCandlish et al. 2018, App. A: a per-step ratio is
    noisy and undefined where the unbiased |G|² estimate is ≤ 0); NaN when the mean grad_sq is
    ≤ 0, and `gns_reason` then says so (never a number from a negative denominator). Returns
    label (and lr), n_seeds and, for each of NOISE_METRICS, `<metric>`, `<metric>_lo`,
    `<metric>_hi`: the across-seed mean and 95% t-interval (NaN with one seed), and gns_reason.
    Diverged runs count with the records they have.
    """
    per_run = _noise_per_run(records, steps)
    keys = ["label", "lr"] if "lr" in per_run.columns else ["label"]
    table = _label_intervals(per_run, NOISE_METRICS, keys)
    index = pd.MultiIndex.from_frame(table[keys]) if len(keys) > 1 else table.label
    by = per_run.groupby(keys)
    table.insert(len(keys), "n_seeds", by.size().reindex(index).to_numpy())
    negative = by.gns_negative.sum().reindex(index).to_numpy()
    table["gns_reason"] = [
        f"undefined: the pooled |G|² estimate is ≤ 0 in {int(k)} of {n} run(s)" if k else ""
        for k, n in zip(negative, table.n_seeds)]
    return table


# ---------------------------------------------------------------------------------------------
# C3: collapse (held-out perplexity, degenerate output)


def perplexity_by_step(perplexity: pd.DataFrame) -> pd.DataFrame:
    """Held-out perplexity per run and step: run_id, step, ppl, ppl_ratio.

    perplexity: run_id, step, nll_sum, n_tokens (one row per text).
    ppl = exp(Σ nll_sum / Σ n_tokens) over the step's texts (a NaN text makes it NaN);
    ppl_ratio = ppl / the run's ppl at its first step (step 0, before training, in prefstudy runs).
    """
    require_columns(perplexity, ["run_id", "step", "nll_sum", "n_tokens"], "perplexity_by_step")
    sums = perplexity[["nll_sum", "n_tokens"]].astype(float).groupby(
        [perplexity.run_id, perplexity.step], sort=True).sum(skipna=False)
    totals = sums.rename(columns={"nll_sum": "nll", "n_tokens": "tokens"}).reset_index()
    with np.errstate(over="ignore"):  # a collapsed model's perplexity may overflow to inf
        totals["ppl"] = np.exp(totals.nll / totals.tokens)
    totals["ppl_ratio"] = totals.ppl / totals.groupby("run_id").ppl.transform(_first)
    return totals[["run_id", "step", "ppl", "ppl_ratio"]]


def _words(text: str, lang) -> list[str]:
    """Whitespace tokens, or the non-space characters for languages written without spaces."""
    if isinstance(lang, str) and lang.split("-")[0].lower() in CHARACTER_LANGS:
        return [c for c in text if not c.isspace()]
    return text.split()


def _ngrams(units: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(units[i:] for i in range(n))))


def _distinct(texts: list[list[str]], n: int) -> float:
    """Distinct-n over a set of texts: unique n-grams / all n-grams (Li et al. 2016), pooled."""
    grams = [g for units in texts for g in _ngrams(units, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def _repetition(texts: list[list[str]], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same text, pooled over texts."""
    per_text = [_ngrams(units, n) for units in texts]
    total = sum(len(grams) for grams in per_text)
    repeated = sum(len(grams) - len(set(grams)) for grams in per_text)
    return repeated / total if total else float("nan")


def degeneration(generations: pd.DataFrame, perplexity: pd.DataFrame | None = None, *,
                 by: Sequence[str] = ()) -> pd.DataFrame:
    """How degenerate the generated samples are, per run and step (and `by`, e.g. ("kind",)).

    generations: run_id, step, text; label, seed, status and lang where present.
    Texts are split into whitespace tokens, or into characters where lang is Chinese ("zh").
    Over the texts of a run and step: distinct_1, distinct_2 = unique / all n-grams, pooled over
    the texts (n-grams do not cross texts; a model that answers every probe alike scores low);
    repetition = share of 4-grams repeating an earlier 4-gram of the same text; empty_share =
    share of texts that are empty or whitespace. NaN where the texts have no n-grams.
    With `perplexity`: ppl and ppl_ratio at that run and step (perplexity_by_step).
    Returns run_id, label, seed, status, `by`, step, n_texts, distinct_1, distinct_2, repetition,
    empty_share, ppl, ppl_ratio.
    """
    by = list(by)
    require_columns(generations, ["run_id", "step", "text", *by], "degeneration")
    langs = generations["lang"] if "lang" in generations.columns else [None] * len(generations)
    units = pd.Series([_words(t, lang) for t, lang in zip(generations.text, langs)],
                      index=generations.index)
    rows = []
    for key, group in groups_of(generations.assign(_units=units), ["run_id", *by, "step"]):
        texts = list(group["_units"])
        rows.append({**key, "n_texts": len(texts), "distinct_1": _distinct(texts, 1),
                     "distinct_2": _distinct(texts, 2), "repetition": _repetition(texts, 4),
                     "empty_share": float(np.mean([not t for t in texts]))})
    out = _runs(generations)[["run_id", "label", "seed", "status"]].merge(pd.DataFrame(rows),
                                                                         on="run_id")
    perplexity = _given(perplexity)
    if perplexity is not None:
        out = out.merge(perplexity_by_step(perplexity), on=["run_id", "step"], how="left")
    else:
        out["ppl"] = out["ppl_ratio"] = float("nan")
    return out[["run_id", "label", "seed", "status", *by, "step", "n_texts", "distinct_1",
                "distinct_2", "repetition", "empty_share", "ppl", "ppl_ratio"]]


# ---------------------------------------------------------------------------------------------
# Per-run numbers a figure draws and the explorer's length bins (prefstudy.plots,
# prefstudy.explorer), so that neither derives a statistic of its own


def run_step_means(records: pd.DataFrame, values: Sequence[str], *, by: Sequence[str] = (),
                   x: str = "step") -> pd.DataFrame:
    """Each run's mean over its pairs at each `x` (per group of `by` too), NaN/inf kept: `by`,
    run_id, seed, `x`, *values, sorted by those keys. What a trajectory is drawn from."""
    keys = list(dict.fromkeys([*by, "run_id", "seed", x]))
    require_columns(records, [*keys, *values], "run_step_means")
    return _means(records, keys, values).reset_index()


def run_status(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run of `df`: run_id, label, seed, status, diverged_step and diverged (bool:
    its status says so or it has a diverged_step; NaN columns where `df` lacks them)."""
    require_columns(df, ["run_id"], "run_status")
    return _runs(df)


def _bin_labels(edges: Sequence[float]) -> list[str]:
    """Interval names of consecutive edges, the first closed: "[0, 0.1]", "(0.1, 0.3]", …"""
    return [f"{'[' if i == 0 else '('}{lo:g}, {hi:g}]"
            for i, (lo, hi) in enumerate(pairwise(edges))]


def length_bins(records: pd.DataFrame, bins: int = 5) -> pd.Series:
    """Each pair's length-difference bin: pair_id → bin of dlen = len_n − len_p.

    Quantile bins over the distinct pairs (tied edges merge bins; one length difference gives
    one bin), named as every bin here is ("[lo, hi]" first, "(lo, hi]" after it), as an ordered
    categorical named length_bin.
    """
    require_columns(records, ["pair_id", "len_p", "len_n"], "length_bins")
    per_pair = records.drop_duplicates("pair_id").set_index("pair_id")
    dlen = (per_pair.len_n - per_pair.len_p).astype(float)
    edges = np.unique(np.quantile(dlen, np.linspace(0, 1, bins + 1))) if len(dlen) else []
    if len(edges) < 2:  # one length difference (or none): one bin
        value = float(dlen.iloc[0]) if len(dlen) else 0.0
        labels = _bin_labels([value, value])
        return pd.Series(pd.Categorical(labels * len(dlen), categories=labels, ordered=True),
                         index=dlen.index, name="length_bin")
    return pd.cut(dlen, edges, labels=_bin_labels(edges), include_lowest=True).rename(
        "length_bin")
