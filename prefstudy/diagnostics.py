"""Diagnostics: pure functions from tidy DataFrames to tidy DataFrames, one per claim of the study.

Inputs are the tables `prefstudy.records.load_runs` returns (records, evals, perplexity,
generations, steps) and `PairSet.to_frame()`; every function names the columns it needs and raises
`SchemaError` naming the missing ones. Nothing here draws (`prefstudy.plots` calls these).

Conventions, shared by every function:

- Units. A run (one `run_id`: one label, one seed) is the unit of replication. Per-run numbers are
  summarised per label as the across-seed mean with a 95% t-interval (`seed_interval`); shares of
  seeds (collapse onset, divergence) get an exact binomial interval (`share_interval`). With one
  seed a t-interval is NaN (unknown), not zero width.
- Non-finite values are never averaged away. Means and sums over pairs keep NaN/inf (pandas would
  skip NaN): one non-finite pair makes its step's or run's number NaN/inf. The fits over rows
  (`length_effect`, `variance_by_length_bin`, `dose_response`) leave out rows whose x or y is not
  finite and say how many in `n_dropped`.
- Optional tables (perplexity, steps, evals, pairs) may be None or empty: both mean "not
  there", and the numbers that need them are NaN. Every function returns a DataFrame, never None.
- Diverged runs. Training stops at the first non-finite step, so records end before
  `diverged_step`. Trajectory numbers (collapse onset, length R², gradient agreement) use a
  diverged run's records up to that point. Final-value numbers (final losses, displacement,
  perplexity ratio) would compare a diverged run's end with other runs' ends at another step, so
  they leave diverged runs out; every table says so with `n_diverged`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import pairwise

import numpy as np
import pandas as pd
from scipy import stats

from .data import edit_distance, length_ratio
from .records import require_columns

NORMALISATIONS = ("sum", "mean", "reference")
ID_COLUMNS = ("run_id", "label", "seed", "step", "pair_id")
RUN_COLUMNS = ("run_id", "label", "seed", "status", "diverged_step")
CHARACTER_LANGS = ("zh",)  # languages written without spaces: n-grams over characters
FIT_STATISTICS = ("r2", "spearman", "slope")  # the statistics length_effect bootstraps


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


def _last(values: pd.Series):
    """The last value, NaN or not (pandas' "last" would skip NaN)."""
    return values.iloc[-1]


def _less(a: pd.Series, b: pd.Series) -> pd.Series:
    """a < b as 1.0/0.0, NaN where either side is NaN."""
    return (a < b).astype(float).where(a.notna() & b.notna())


def _finite(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The rows of `frame` whose `columns` are all finite numbers."""
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return frame[np.isfinite(values).all(axis=1)]


def _groups(frame: pd.DataFrame, by: Sequence[str]) -> Iterator[tuple[dict, pd.DataFrame]]:
    """(group key as {column: value}, rows) for each group of `by`; one group if `by` is empty."""
    if not by:
        yield {}, frame
        return
    for key, rows in frame.groupby(list(by), sort=True, observed=True, dropna=False):
        yield dict(zip(by, key)), rows


def _runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: run_id, label, seed, status, diverged_step, diverged (bool).

    status and diverged_step are NaN where `df` lacks them; a run is diverged when its status says
    so or it has a diverged_step.
    """
    present = [c for c in RUN_COLUMNS if c in df.columns]
    runs = df[present].drop_duplicates("run_id").reindex(columns=list(RUN_COLUMNS))
    runs["diverged"] = runs.status.eq("diverged") | runs.diverged_step.notna()
    return runs.sort_values("run_id", kind="stable").reset_index(drop=True)


def _step_means(df: pd.DataFrame, values: Sequence[str]) -> pd.DataFrame:
    """Mean over pairs per (run_id, step), NaN/inf kept: run_id, step, *values."""
    return _means(df, ["run_id", "step"], values).reset_index()


def _last_step(step_means: pd.DataFrame) -> pd.DataFrame:
    """Each run's last row of `_step_means` output, step renamed last_step."""
    last = step_means.groupby("run_id").tail(1).rename(columns={"step": "last_step"})
    return last.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Intervals (C5)


def seed_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` and its Student-t interval (scipy.stats.t).

    values: one number per unit (per seed in every table here). lo/hi are NaN with fewer than two
    values; equal to the mean when all values are equal. A NaN or inf value is not skipped: the
    mean is then NaN/inf and the interval NaN (leave units out explicitly before calling).
    """
    v = np.asarray(values, dtype=float).ravel()
    nan = float("nan")
    if v.size == 0:
        return nan, nan, nan
    mean = float(v.mean())
    if v.size < 2 or not np.isfinite(v).all():
        return mean, nan, nan
    sem = float(stats.sem(v))
    if sem == 0.0:
        return mean, mean, mean
    lo, hi = stats.t.interval(confidence, v.size - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi)


def seed_intervals(frame: pd.DataFrame, by: Sequence[str], value: str,
                   confidence: float = 0.95) -> pd.DataFrame:
    """`seed_interval` of `value` for every group of `by` at once (for many groups, e.g. one per
    label and step of a long run): `by`, n, `value` (the mean), `<value>_lo`, `<value>_hi`.

    The same numbers as calling seed_interval on each group's values, computed with grouped
    means and standard deviations: NaN bounds with fewer than two values or a non-finite value.
    """
    by = list(by)
    require_columns(frame, [*by, value], "seed_intervals")
    values = frame[value].astype(float)
    grouped = values.groupby([frame[c] for c in by], sort=True, observed=True, dropna=False)
    out = pd.DataFrame({"n": grouped.size(), value: grouped.mean(skipna=False)})
    finite = np.isfinite(values).groupby([frame[c] for c in by], sort=True, observed=True,
                                         dropna=False).all()
    ok = (out.n >= 2) & finite
    sem = grouped.std(ddof=1, skipna=False) / np.sqrt(out.n)
    half = stats.t.ppf((1 + confidence) / 2, (out.n - 1).clip(lower=1)) * sem
    out[f"{value}_lo"] = (out[value] - half).where(ok)
    out[f"{value}_hi"] = (out[value] + half).where(ok)
    return out.reset_index()


def share_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(k/n, lo, hi) with the exact Clopper–Pearson interval (scipy.stats.binomtest); NaN if n=0."""
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence, method="exact")
    return k / n, float(ci.low), float(ci.high)


def _label_intervals(per_run: pd.DataFrame, metrics: Sequence[str],
                     keys: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Per `keys`: `<metric>`, `<metric>_lo`, `<metric>_hi` (seed_interval over the runs' rows)."""
    rows = []
    for key, runs in _groups(per_run, keys):
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
    require_columns(records, [*keep, "len_p", "len_n", "loss_p", "loss_n", "nll_sum_p", "nll_sum_n"],
             "gap_normalisations")
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


def _fit(x: np.ndarray, y: np.ndarray, *, spearman: bool = True,
         ranks: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """OLS of y on x (scipy.stats.linregress) and Spearman's ρ: r2, spearman, slope, intercept;
    NaN with fewer than 3 rows or a constant x (ρ also when spearman=False, and for a constant y).

    ρ is Pearson's r of the average ranks (scipy.stats.spearmanr's definition); `ranks` passes
    the ranks of x and y when they are already known (`_ranks`).
    """
    if len(x) < 3 or np.ptp(x) == 0:
        return dict.fromkeys(("r2", "spearman", "slope", "intercept"), float("nan"))
    fit = stats.linregress(x, y)
    line = {"r2": fit.rvalue ** 2, "slope": fit.slope, "intercept": fit.intercept}
    if not spearman or np.ptp(y) == 0:
        return {**line, "spearman": float("nan")}
    rank_x, rank_y = ranks if ranks is not None else (stats.rankdata(x), stats.rankdata(y))
    return {**line, "spearman": float(stats.pearsonr(rank_x, rank_y).statistic)}


EXACT_RANK_ROWS = 100_000  # up to this many rows, resamples are ranked exactly (_ClusterFits)
RANK_LEVELS = 256  # beyond it, on at most this many levels per variable


def _ranks(v: np.ndarray, levels: int | None = RANK_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """(average ranks of v as scipy.stats.rankdata gives them, integer codes 0..L−1 in v's order
    with v's ties): one code per distinct value of v when there are at most `levels` of them or
    levels is None (exact), else `levels` equal-count bins of the ranks."""
    low = v.min() if len(v) else 0.0
    if len(v) and np.ptp(v) <= 4 * len(v) and (v == np.round(v)).all():
        # whole numbers in a short range (token counts): rankdata's average ranks by counting,
        # without sorting
        counts = np.bincount((v - low).astype(np.int64))
        below = np.cumsum(counts) - counts
        ranks = (below + (counts + 1) / 2)[(v - low).astype(np.int64)]
    else:
        ranks = stats.rankdata(v)
    doubled = (2 * ranks - 2).astype(np.int64)  # average ranks are whole or halves
    present = np.bincount(doubled) > 0
    if levels is None or present.sum() <= levels:
        return ranks, (np.cumsum(present) - 1)[doubled]
    return ranks, ((ranks - 1) * levels // len(v)).astype(np.int64)


def _midranks(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average ranks in the samples where item j occurs weights[b, j] times (one sample per row
    b of `weights`; items with equal `codes` tie): scipy.stats.rankdata's "average" of each."""
    batch, levels = len(weights), int(codes.max()) + 1
    flat = (codes[None, :] + levels * np.arange(batch)[:, None]).ravel()
    per_level = np.bincount(flat, weights=weights.ravel(), minlength=batch * levels)
    per_level = per_level.reshape(batch, levels)
    below = np.cumsum(per_level, axis=1) - per_level
    return np.take_along_axis(below + (per_level + 1) / 2, np.broadcast_to(codes, weights.shape),
                              axis=1)


def _weighted_corr(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson's r of a and b with row weights w, along the last axis (NaN for a constant)."""
    n = w.sum(axis=-1, keepdims=True)
    da = a - (w * a).sum(axis=-1, keepdims=True) / n
    db = b - (w * b).sum(axis=-1, keepdims=True) / n
    saa, sbb, sab = ((w * da * da).sum(-1), (w * db * db).sum(-1), (w * da * db).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((saa > 0) & (sbb > 0), sab / np.sqrt(saa * sbb), np.nan)


class _ClusterFits:
    """FIT_STATISTICS of resamples of whole clusters, scored without copying rows.

    A resample is a count per cluster. OLS needs only sums, so each cluster's row count and sums
    of x, y, x², y², xy are taken once, and a resample's fit is its counts times them. Spearman's
    ρ ranks each resample again (`_midranks`: the resample's average ranks, ties included) over
    cells (cluster × level of x × level of y, see `_ranks`) weighted by their cluster's count:
    exact up to EXACT_RANK_ROWS rows, and beyond when x and y each have at most RANK_LEVELS
    distinct values; otherwise ranked on RANK_LEVELS equal-count bins of each variable (moving ρ
    by about 1/RANK_LEVELS² relative, far below the bootstrap's own error). The cost of a resample
    grows with the clusters and cells, not the rows.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, cluster: np.ndarray, *,
                 spearman: bool = True, codes: tuple[np.ndarray, np.ndarray] | None = None):
        self.n_clusters = int(cluster.max()) + 1
        xc, yc = x - x.mean(), y - y.mean()  # centred: the sums stay well conditioned
        self.sums = np.stack([np.bincount(cluster, weights=v, minlength=self.n_clusters)
                              for v in (np.ones_like(xc), xc, yc, xc * xc, yc * yc, xc * yc)],
                             axis=1)  # clusters × (n, Σx, Σy, Σx², Σy², Σxy)
        self.spearman = spearman
        self.cells = 0
        if spearman:
            if codes is None:
                levels = None if len(x) <= EXACT_RANK_ROWS else RANK_LEVELS
                codes = _ranks(x, levels)[1], _ranks(y, levels)[1]
            x_level, y_level = codes
            nx, ny = int(x_level.max()) + 1, int(y_level.max()) + 1
            key = (cluster.astype(np.int64) * nx + x_level) * ny + y_level
            cell_of_row, cells = pd.factorize(key)  # hashing: no sort of the rows
            self.cells = len(cells)
            self.cell_rows = np.bincount(cell_of_row, minlength=len(cells)).astype(float)
            self.cell_cluster, self.x_level, self.y_level = (cells // (nx * ny),
                                                             cells // ny % nx, cells % ny)

    def __call__(self, sample: np.ndarray, axis: int = -1) -> np.ndarray:
        """scipy.stats.bootstrap's vectorised statistic: sample holds cluster numbers, one
        resample per row; returns FIT_STATISTICS × resamples (or FIT_STATISTICS for one)."""
        batch = np.atleast_2d(np.asarray(sample, dtype=np.int64))
        offsets = self.n_clusters * np.arange(len(batch))[:, None]
        counts = np.bincount((batch + offsets).ravel(), minlength=len(batch) * self.n_clusters
                             ).reshape(len(batch), self.n_clusters).astype(float)
        n, sx, sy, sxx, syy, sxy = (counts @ self.sums).T
        vxx, vyy, vxy = sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n
        ok = (n >= 3) & (vxx > 1e-12 * np.maximum(sxx, 1e-300))
        out = np.full((len(FIT_STATISTICS), len(batch)), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[2] = np.where(ok, vxy / vxx, np.nan)
            out[0] = np.where(ok, np.where(vyy > 0, np.minimum(vxy * vxy / (vxx * vyy), 1.0),
                                           0.0), np.nan)
        if self.spearman:
            weight = counts[:, self.cell_cluster] * self.cell_rows
            rho = _weighted_corr(_midranks(self.x_level, weight),
                                 _midranks(self.y_level, weight), weight)
            out[1] = np.where(ok, rho, np.nan)
        return out[:, 0] if np.ndim(sample) == 1 else out


def _bootstrap_fit(x: np.ndarray, y: np.ndarray, cluster: np.ndarray, *, n_boot: int,
                   ci: float, seed: int, spearman: bool = True,
                   codes: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """Percentile bootstrap CIs of FIT_STATISTICS, resampling whole clusters (`cluster[i]`: the
    cluster number of row i, 0..C−1). scipy.stats.bootstrap draws the resamples of cluster
    numbers; `_ClusterFits` scores them, a batch at a time."""
    nan = {f"{s}{end}": float("nan") for s in FIT_STATISTICS for end in ("_lo", "_hi")}
    if n_boot <= 0 or len(x) == 0 or cluster.max() + 1 < 3:
        return nan
    fits = _ClusterFits(x, y, cluster, spearman=spearman, codes=codes)
    clusters = np.arange(fits.n_clusters)
    batch = max(1, min(n_boot, 2 ** 22 // max(fits.n_clusters, fits.cells)))
    result = stats.bootstrap((clusters,), fits, n_resamples=n_boot, vectorized=True,
                             batch=batch, confidence_level=ci, method="percentile",
                             rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    out = {}
    for i, s in enumerate(FIT_STATISTICS):
        out[f"{s}_lo"], out[f"{s}_hi"] = float(low[i]), float(high[i])
    return out


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
    Fewer than 3 rows, or a constant x, gives NaN statistics.
    spearman=False leaves ρ and its interval out (NaN): ranking is the costly part of a fit on
    millions of rows.
    Cost: each resample is scored from per-cluster sums (`_ClusterFits`), so it grows with the
    number of units, not rows: 10 million rows of 460 pairs take seconds.
    """
    by = list(by)
    require_columns(frame, [*by, x, y], "length_effect")
    use = [*by, x, y, *([unit] if unit is not None and unit in frame.columns else [])]
    rows = []
    for key, group in _groups(frame[list(dict.fromkeys(use))], by):
        kept = _finite(group, [x, y])
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
            (rank_x, code_x), (rank_y, code_y) = _ranks(xs, levels), _ranks(ys, levels)
            ranks, codes = (rank_x, rank_y), (code_x, code_y)
        rows.append({**key, "n": len(kept), "n_dropped": len(group) - len(kept),
                     **_fit(xs, ys, spearman=spearman, ranks=ranks),
                     **_bootstrap_fit(xs, ys, cluster, n_boot=n_boot, ci=ci, seed=seed,
                                      spearman=spearman, codes=codes)})
    columns = [*by, "n", "n_dropped", "r2", "spearman", "slope", "intercept",
               *(f"{s}{end}" for s in FIT_STATISTICS for end in ("_lo", "_hi"))]
    return pd.DataFrame(rows, columns=columns)


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
    for key, group in _groups(frame, by):
        kept = _finite(group, [x, y])
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


def dose_response(frame: pd.DataFrame, *, factor: str = "factor", y: str = "gap_value",
                  by: Sequence[str] = ("normalisation",), ci: float = 0.95) -> pd.DataFrame:
    """Mean `y` at each length factor, and the slope of y on log2(factor), per group of `by`.

    frame: rows of length-controlled variants, each with `factor` (> 0: how many times longer the
    rejected response was made, e.g. 0.5, 1, 2, 4), `y` and `by`. Rows with non-finite factor or
    y are left out (n_dropped, per group).
    Returns one row per group and factor: `by`, factor, n, mean, mean_lo, mean_hi (t-interval
    over the rows: pass one row per pair for independent units), and the group's slope, slope_lo,
    slope_hi (OLS of y on log2(factor), scipy.stats.linregress, t-interval from its standard
    error; NaN with fewer than 3 rows or a single factor) and n_dropped.
    """
    by = list(by)
    require_columns(frame, [*by, factor, y], "dose_response")
    rows = []
    for key, group in _groups(frame, by):
        kept = _finite(group, [factor, y])
        if (kept[factor] <= 0).any():
            raise ValueError(f"dose_response: {factor!r} must be > 0 (it is put on a log2 scale)")
        slope = _log2_slope(kept[factor].to_numpy(dtype=float), kept[y].to_numpy(dtype=float), ci)
        for level, at in kept.groupby(factor, sort=True):
            mean, lo, hi = seed_interval(at[y], ci)
            rows.append({**key, "factor": level, "n": len(at), "mean": mean, "mean_lo": lo,
                         "mean_hi": hi, **slope, "n_dropped": len(group) - len(kept)})
    columns = [*by, "factor", "n", "mean", "mean_lo", "mean_hi", "slope", "slope_lo", "slope_hi",
               "n_dropped"]
    return pd.DataFrame(rows, columns=columns)


def _log2_slope(factor: np.ndarray, y: np.ndarray, ci: float) -> dict[str, float]:
    """OLS slope of y on log2(factor) with its t-interval: slope, slope_lo, slope_hi."""
    if len(y) < 3 or np.ptp(factor) == 0:
        return dict.fromkeys(("slope", "slope_lo", "slope_hi"), float("nan"))
    line = stats.linregress(np.log2(factor), y)
    half = stats.t.ppf((1 + ci) / 2, len(y) - 2) * line.stderr
    return {"slope": line.slope, "slope_lo": line.slope - half, "slope_hi": line.slope + half}


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
    steps = _given(steps)
    if steps is not None:
        require_columns(steps, ["run_id", "trace_sigma", "grad_sq"], "gradient_noise(steps=)")
        sums = _means(steps, ["run_id"], ["trace_sigma", "grad_sq"])
        gns = (sums["trace_sigma"] / sums["grad_sq"]).where(sums["grad_sq"] > 0)
        per_run["gns"] = per_run.run_id.map(gns)
    return _runs(records)[["run_id", "label", "seed"]].merge(per_run, on="run_id")


def gradient_noise(records: pd.DataFrame, steps: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-pair gradient agreement and the gradient noise scale, one row per label.

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
    ≤ 0. Returns label, n_seeds and, for each of NOISE_METRICS, `<metric>`, `<metric>_lo`,
    `<metric>_hi`: the across-seed mean and 95% t-interval (NaN with one seed).
    Diverged runs count with the records they have.
    """
    per_run = _noise_per_run(records, steps)
    table = _label_intervals(per_run, NOISE_METRICS)
    table.insert(1, "n_seeds", per_run.groupby("label").size().reindex(table.label).to_numpy())
    return table


# ---------------------------------------------------------------------------------------------
# C3: collapse


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


def _holds_to_end(flags: pd.Series) -> pd.Series:
    """True where `flags` is True from that position through the last one."""
    return flags.astype(int).iloc[::-1].cummin().iloc[::-1].astype(bool)


def _onset(trajectory: pd.DataFrame, window: int) -> dict[str, float]:
    """loss_p_start, gap_start and onset_step of one run's step means (sorted by step)."""
    if len(trajectory) < window:
        return dict.fromkeys(("loss_p_start", "gap_start", "onset_step"), float("nan"))
    rolling = trajectory[["loss_p", "gap"]].rolling(window).mean()
    start = rolling.iloc[window - 1]
    collapsing = (rolling.loss_p > start.loss_p) & (rolling.gap > start.gap)
    onset = trajectory.step[_holds_to_end(collapsing)]
    return {"loss_p_start": float(start.loss_p), "gap_start": float(start.gap),
            "onset_step": float(onset.iloc[0]) if len(onset) else float("nan")}


def collapse(records: pd.DataFrame, perplexity: pd.DataFrame | None = None, *,
             window: int = 5) -> pd.DataFrame:
    """Where each run starts to collapse: loss_p rising above its start while the gap widens.

    records: run_id, label, seed, step, loss_p, loss_n, gap (status, diverged_step if present).
    perplexity: the held-out perplexity table (see perplexity_by_step), or None.
    Per run, on the per-step means over pairs and their trailing rolling mean over `window` steps:
    loss_p_start / gap_start = the mean of the first `window` step means; onset_step = the first
    step s such that at every step from s to the run's last, the rolling loss_p is above
    loss_p_start and the rolling gap above gap_start (NaN if the last step does not satisfy it, or
    the run has fewer than `window` steps). A diverged run is judged on the steps it recorded.
    Returns one row per run: run_id, label, seed, status, diverged, diverged_step, last_step,
    loss_p_start, gap_start, onset_step, loss_p_end, loss_n_end, gap_end (step means at
    last_step), ppl_start, ppl_end (perplexity at the run's first and last perplexity steps),
    ppl_ratio = ppl_end / ppl_start (NaN without `perplexity`).
    """
    require_columns(records, ["run_id", "label", "seed", "step", "loss_p", "loss_n", "gap"], "collapse")
    if window < 1:
        raise ValueError(f"collapse: window={window} must be ≥ 1")
    means = _step_means(records, ["loss_p", "loss_n", "gap"])
    onsets = pd.DataFrame([{"run_id": run_id, **_onset(trajectory, window)}
                           for run_id, trajectory in means.groupby("run_id", sort=True)])
    ends = _last_step(means).rename(
        columns={"loss_p": "loss_p_end", "loss_n": "loss_n_end", "gap": "gap_end"})
    out = _runs(records).merge(onsets, on="run_id").merge(ends, on="run_id")
    perplexity = _given(perplexity)
    if perplexity is not None:
        ppl = (perplexity_by_step(perplexity).groupby("run_id")
               .agg(ppl_start=("ppl", _first), ppl_end=("ppl", _last)).reset_index())
        out = out.merge(ppl, on="run_id", how="left")
    else:
        out["ppl_start"] = out["ppl_end"] = float("nan")
    out["ppl_ratio"] = out.ppl_end / out.ppl_start
    return out[["run_id", "label", "seed", "status", "diverged", "diverged_step", "last_step",
                "loss_p_start", "gap_start", "onset_step", "loss_p_end", "loss_n_end", "gap_end",
                "ppl_start", "ppl_end", "ppl_ratio"]]


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
    for key, group in _groups(generations.assign(_units=units), ["run_id", *by, "step"]):
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
# C4: displacement of the chosen response


def pair_features(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per pair: pair_id, lang, category, len_ratio, edit_distance.

    pairs: `PairSet.to_frame()` (pair_id, chosen, rejected; lang and category where present,
    else NA). len_ratio = longer / shorter response in characters (`data.length_ratio`, ≥ 1);
    edit_distance: see `edit_distance`.
    """
    require_columns(pairs, ["pair_id", "chosen", "rejected"], "pair_features")
    out = pairs[["pair_id"]].copy()
    for column in ("lang", "category"):
        out[column] = pairs[column] if column in pairs.columns else pd.NA
    out["len_ratio"] = length_ratio(pairs.chosen.str.len(), pairs.rejected.str.len())
    out["edit_distance"] = [edit_distance(a, b) for a, b in zip(pairs.chosen, pairs.rejected)]
    return out.reset_index(drop=True)


def _bin_labels(edges: Sequence[float]) -> list[str]:
    """Interval names of consecutive edges, the first closed: "[0, 0.1]", "(0.1, 0.3]", …"""
    return [f"{'[' if i == 0 else '('}{lo:g}, {hi:g}]"
            for i, (lo, hi) in enumerate(pairwise(edges))]


def _edit_bins(pair_ids: pd.Series, pairs: pd.DataFrame, edges: Sequence[float]) -> pd.Series:
    """The edit-distance bin (an ordered categorical of `_bin_labels(edges)`) of each pair id."""
    labels = _bin_labels(edges)
    distance = pair_features(pairs).set_index("pair_id").edit_distance
    unknown = pd.Index(pair_ids.unique()).difference(distance.index)
    if len(unknown):
        raise ValueError(f"displacement: {len(unknown)} pair id(s) are not in `pairs`, "
                         f"e.g. {list(unknown[:3])}")
    bins = pd.cut(pair_ids.map(distance), list(edges), labels=labels, include_lowest=True)
    if bins.isna().any():
        raise ValueError(f"displacement: edit distances fall outside edit_bins={tuple(edges)}")
    return bins


def _pair_changes(df: pd.DataFrame) -> pd.DataFrame:
    """Per run and pair seen at two or more steps: run_id, pair_id, below_start, below_ref.

    below_start: −nll_sum_p at the pair's last step < at its first; below_ref: −nll_sum_p at its
    last step < ref_logp_p. 1.0/0.0, NaN where a side is NaN (no reference, non-finite loss).
    """
    columns = ["run_id", "pair_id", "step", "nll_sum_p"]
    df = df[columns + (["ref_logp_p"] if "ref_logp_p" in df.columns else [])]
    df = df.reset_index(drop=True)
    seen = df.groupby(["run_id", "pair_id"], sort=True).step
    first, last = df.loc[seen.idxmin()], df.loc[seen.idxmax()]
    keys = pd.MultiIndex.from_frame(first[["run_id", "pair_id"]])
    first, last = first.set_index(keys), last.set_index(keys)
    reference = (last["ref_logp_p"] if "ref_logp_p" in last.columns
                 else pd.Series(np.nan, index=last.index))
    out = pd.DataFrame({"below_start": _less(-last.nll_sum_p, -first.nll_sum_p),
                        "below_ref": _less(-last.nll_sum_p, reference)})
    return out[(last.step > first.step).to_numpy()].reset_index()


def _displacement_per_run(df: pd.DataFrame, pairs: pd.DataFrame | None,
                          edit_bins: Sequence[float]) -> pd.DataFrame:
    """Per non-diverged run (and edit_bin): run_id, label, [edit_bin], n_pairs, shares."""
    require_columns(df, ["run_id", "label", "seed", "step", "pair_id", "nll_sum_p"], "displacement")
    runs = _runs(df)
    changes = _pair_changes(df[df.run_id.isin(runs.run_id[~runs.diverged])])
    keys = ["run_id"]
    if pairs is not None:
        changes["edit_bin"] = _edit_bins(changes.pair_id, pairs, edit_bins)
        keys.append("edit_bin")
    grouped = changes.groupby(keys, sort=True, observed=True)
    per_run = grouped[["below_start", "below_ref"]].mean(skipna=False).rename(
        columns={"below_start": "share_below_start", "below_ref": "share_below_ref"})
    per_run.insert(0, "n_pairs", grouped.size())
    per_run = per_run.reset_index()
    return runs[["run_id", "label"]].merge(per_run, on="run_id")


def displacement(records_or_evals: pd.DataFrame, pairs: pd.DataFrame | None = None, *,
                 edit_bins: Sequence[float] = (0, .1, .3, 1.0)) -> pd.DataFrame:
    """How often training lowers the chosen response's log-probability, per label (and bin).

    records_or_evals: run_id, label, seed, step, pair_id, nll_sum_p, optionally ref_logp_p and
    status / diverged_step. Evals are the natural input: every held-out pair at every evaluation,
    step 0 before training. In training records a pair counts from the first to the last step it
    was drawn; pairs seen at one step only are left out.
    pairs: `PairSet.to_frame()`; when given, rows are per label × edit-distance bin (`edit_bins`
    edges, the first bin closed on the left; see `edit_distance`).
    Per run: share_below_start = share of its pairs whose chosen log-prob (−nll_sum_p) at their
    last step is below its value at their first; share_below_ref = share whose last chosen
    log-prob is below the reference's (ref_logp_p; NaN without a reference). Diverged runs are
    left out (their last step is not comparable).
    Returns label, [edit_bin], n_seeds (runs of the label), n_diverged (left out), n_pairs (run ×
    pair units counted), share_below_start, share_below_start_lo, share_below_start_hi,
    share_below_ref, share_below_ref_lo, share_below_ref_hi (across-seed mean, 95% t-interval).
    """
    pairs = _given(pairs)
    per_run = _displacement_per_run(records_or_evals, pairs, edit_bins)
    keys = ["label", "edit_bin"] if pairs is not None else ["label"]
    table = _label_intervals(per_run, ["share_below_start", "share_below_ref"], keys)
    runs = _runs(records_or_evals).groupby("label").agg(n_seeds=("run_id", "size"),
                                                        n_diverged=("diverged", "sum"))
    n_pairs = per_run.groupby(keys, observed=True).n_pairs.sum().rename("n_pairs")
    table = table.merge(runs, on="label", how="left").merge(n_pairs, on=keys, how="left")
    return table[[*keys, "n_seeds", "n_diverged", "n_pairs",
                  *(c for c in table.columns if c.startswith("share_"))]]


# ---------------------------------------------------------------------------------------------
# C5: one table, every headline number with its across-seed interval


def _length_r2_per_run(records: pd.DataFrame) -> pd.DataFrame:
    """Per run: run_id, r2_sum, r2_mean, r2_reference (length_effect of each gap on dlen)."""
    gaps = gap_normalisations(records, keep=("run_id", "pair_id"))
    fits = length_effect(gaps, by=("run_id", "normalisation"), n_boot=0, spearman=False)
    wide = fits.pivot(index="run_id", columns="normalisation", values="r2")
    wide = wide.reindex(columns=list(NORMALISATIONS)).add_prefix("r2_")
    return wide.rename_axis(columns=None).reset_index()


def _headline_per_run(records: pd.DataFrame, final_source: pd.DataFrame,
                      perplexity: pd.DataFrame | None, steps: pd.DataFrame | None,
                      pairs: pd.DataFrame | None) -> pd.DataFrame:
    """Per run: the run columns of `_runs` and every number summary_table summarises."""
    per_run = (_runs(records)
               .merge(_last_step(_step_means(final_source, ["loss_p", "loss_n", "gap"])),
                      on="run_id", how="left")
               .merge(_length_r2_per_run(records), on="run_id", how="left")
               .merge(_noise_per_run(records, steps)[["run_id", "grad_cos", "gns"]],
                      on="run_id", how="left")
               .merge(collapse(records, perplexity)[["run_id", "onset_step", "ppl_ratio"]],
                      on="run_id", how="left"))
    shares = _displacement_per_run(final_source, None, ()).set_index("run_id")
    per_run["displacement"] = per_run.run_id.map(shares.share_below_start)
    if pairs is not None:
        edges = (0, .1, 1.0)
        close = _displacement_per_run(final_source, pairs, edges)
        close = close[close.edit_bin == _bin_labels(edges)[0]].set_index("run_id")
        per_run["displacement_close"] = per_run.run_id.map(close.share_below_start)
    return per_run


def _seed_shares(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per label: n_seeds, n_diverged, onset_share and diverged_share with binomial intervals."""
    rows = []
    for label, runs in per_run.groupby("label", sort=True):
        row = {"label": label, "n_seeds": len(runs), "n_diverged": int(runs.diverged.sum())}
        for name, flags in (("onset_share", runs.onset_step.notna()),
                            ("diverged_share", runs.diverged)):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = share_interval(flags.sum(),
                                                                             len(flags))
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(records: pd.DataFrame, evals: pd.DataFrame | None = None,
                  perplexity: pd.DataFrame | None = None, steps: pd.DataFrame | None = None,
                  pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The study's headline numbers, one row per label, each with its across-seed interval.

    records: training records (RECORD_COLUMNS plus label, and status / diverged_step).
    evals, perplexity, steps: the runs' other tables, or None; pairs: `PairSet.to_frame()`.
    Columns: label, n_seeds (runs), n_diverged, then `<metric>`, `<metric>_lo`, `<metric>_hi` for

        loss_p, loss_n, gap    final step's mean over pairs: held-out evals if given, else the
                               last training step's batch
        r2_sum, r2_mean,       R² of the gap on dlen within each run's own training records
        r2_reference           (gap_normalisations, length_effect; NaN without a reference)
        grad_cos, gns          gradient_noise (NaN when gradient statistics were off / no steps)
        onset_share            share of seeds with a collapse onset (collapse), binomial CI
        diverged_share         share of seeds that diverged, binomial CI
        displacement           share_below_start of displacement (evals if given, else records)
        displacement_close     the same among pairs with edit distance ≤ 0.1 (only with `pairs`)
        ppl_ratio              held-out perplexity at the end / before training (collapse)

    Means and t-intervals are across seeds. loss_p, loss_n, gap, displacement(_close) and
    ppl_ratio leave diverged runs out (n_diverged says how many); the others use every run.
    """
    require_columns(records, ["run_id", "label", "seed", "step", "pair_id", "len_p", "len_n", "loss_p",
                       "loss_n", "gap", "nll_sum_p", "nll_sum_n", "grad_cos", "grad_norm"],
             "summary_table")
    evals, perplexity, steps, pairs = map(_given, (evals, perplexity, steps, pairs))
    final_source = evals if evals is not None else records
    if evals is not None:
        require_columns(evals, ["run_id", "label", "seed", "step", "pair_id", "loss_p", "loss_n", "gap",
                         "nll_sum_p"], "summary_table(evals=)")
    per_run = _headline_per_run(records, final_source, perplexity, steps, pairs)
    displaced = ["displacement", *(["displacement_close"] if pairs is not None else [])]
    final = ["loss_p", "loss_n", "gap", *displaced, "ppl_ratio"]
    trajectory = ["r2_sum", "r2_mean", "r2_reference", "grad_cos", "gns"]
    table = (_seed_shares(per_run)
             .merge(_label_intervals(per_run[~per_run.diverged], final), on="label", how="left")
             .merge(_label_intervals(per_run, trajectory), on="label", how="left"))
    order = ["loss_p", "loss_n", "gap", *trajectory, "onset_share", "diverged_share", *displaced,
             "ppl_ratio"]
    return table[["label", "n_seeds", "n_diverged",
                  *(f"{m}{end}" for m in order for end in ("", "_lo", "_hi"))]]


# === Added for the figures and views (prefstudy.plots, prefstudy.explorer) ===================
# Per-run numbers a figure draws and the explorer's length bins, so that neither derives a
# statistic of its own.


def run_step_means(records: pd.DataFrame, values: Sequence[str], *, by: Sequence[str] = (),
                   x: str = "step") -> pd.DataFrame:
    """Each run's mean over its pairs at each `x` (per group of `by` too), NaN/inf kept: `by`,
    run_id, seed, `x`, *values, sorted by those keys. What a trajectory is drawn from."""
    keys = list(dict.fromkeys([*by, "run_id", "seed", x]))
    require_columns(records, [*keys, *values], "run_step_means")
    return _means(records, keys, values).reset_index()


def run_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run of `df`: run_id, label, seed, status, diverged_step and diverged (bool:
    its status says so or it has a diverged_step; NaN columns where `df` lacks them)."""
    require_columns(df, ["run_id"], "run_table")
    return _runs(df)


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


def dose_gap_response(dose: pd.DataFrame) -> pd.DataFrame:
    """`dose_response` of the gap under summed and token-mean cross-entropy in a study's dose
    table (`study.score_dose`: one row per pair and length factor, all scored by the starting
    model, so no reference gap): normalisation, factor, n, mean, mean_lo, mean_hi, slope,
    slope_lo, slope_hi, n_dropped."""
    scored = dose.assign(label="start", run_id="start", seed=0, step=0)
    gaps = gap_normalisations(scored, keep=(*ID_COLUMNS, "factor"))
    return dose_response(gaps[gaps.normalisation != "reference"])


# === Audit: a preference dataset scored at the starting model (prefstudy.audit) ==============
# Every row is one pair (or one length-controlled variant of a pair), scored once by the
# starting model: pairs are the units, and every interval resamples pairs (or, for gradient
# cosines, the batches the pairs shared). Shares get exact Clopper–Pearson intervals
# (`share_interval`) and their counts.

CLEARLY_LONGER = 1.5  # "clearly longer": at least 1.5 × the other response's tokens
LENGTH_KINDS = ("chosen longer", "similar", "rejected longer")
AUDIT_GAPS = {"sum": "gap_sum", "mean": "gap"}  # normalisation → the scores' gap column
NEAR_DUPLICATE = 0.1  # two pairs of one prompt whose chosen and rejected each differ ≤ 0.1


def length_kinds(scores: pd.DataFrame, *, ratio: float = CLEARLY_LONGER) -> pd.Series:
    """Each pair's length kind from its response tokens (len_p, len_n): "chosen longer" when
    len_p ≥ ratio × len_n, "rejected longer" when len_n ≥ ratio × len_p, else "similar"; an
    ordered categorical of LENGTH_KINDS named length_kind (NA where a length is missing)."""
    require_columns(scores, ["len_p", "len_n"], "length_kinds")
    p, n = scores.len_p.astype(float), scores.len_n.astype(float)
    kind = np.select([p >= ratio * n, n >= ratio * p], [LENGTH_KINDS[0], LENGTH_KINDS[2]],
                     LENGTH_KINDS[1])
    kind = pd.Series(kind, index=scores.index).where(p.notna() & n.notna())
    return kind.astype(pd.CategoricalDtype(list(LENGTH_KINDS), ordered=True)).rename(
        "length_kind")


def _share_row(flags: pd.Series, confidence: float) -> dict:
    """k, n and the share with its Clopper–Pearson interval, of a 0/1 Series."""
    k, n = int(flags.sum()), int(flags.size)
    share, lo, hi = share_interval(k, n, confidence)
    return {"n": n, "k": k, "share": share, "share_lo": lo, "share_hi": hi}


def preference_accuracy(scores: pd.DataFrame, *, by: str | None = "length_kind",
                        ratio: float = CLEARLY_LONGER, confidence: float = 0.95) -> pd.DataFrame:
    """The starting model's preference accuracy: the share of pairs whose gap favours the
    chosen response, under summed (gap_sum > 0) and token-mean (gap > 0) cross-entropy.

    scores: one row per pair (`scoring.score_pairs`: gap_sum, gap, len_p, len_n). by: a column to
    split by, "length_kind" by default (`length_kinds(ratio=)` when the column is absent), or
    None; every table also has an "all" row. A tie (gap exactly 0) does not favour the chosen
    response (n_ties counts them); pairs without a finite gap are left out (n_dropped).
    Returns normalisation, `by`, n, k (pairs favouring chosen), n_ties, accuracy (k/n),
    accuracy_lo, accuracy_hi (exact Clopper–Pearson), n_dropped.
    """
    require_columns(scores, [*AUDIT_GAPS.values(), "len_p", "len_n"], "preference_accuracy")
    frame = scores.copy()
    if by == "length_kind" and by not in frame.columns:
        frame[by] = length_kinds(frame, ratio=ratio)
    key = by or "group"
    groups = (list(_order_of(frame[by])) if by else []) + ["all"]
    rows = []
    for norm, column in AUDIT_GAPS.items():
        kept = _finite(frame, [column])
        for group in groups:
            sel = kept if group == "all" else kept[kept[by] == group]
            row = _share_row(sel[column] > 0, confidence)
            n_all = len(frame) if group == "all" else int((frame[by] == group).sum())
            rows.append({"normalisation": norm, key: group, "n": row["n"], "k": row["k"],
                         "n_ties": int((sel[column] == 0).sum()), "accuracy": row["share"],
                         "accuracy_lo": row["share_lo"], "accuracy_hi": row["share_hi"],
                         "n_dropped": n_all - row["n"]})
    return pd.DataFrame(rows)


def _order_of(values: pd.Series) -> list:
    """A categorical's categories (all of them), else the distinct values sorted."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return list(values.cat.categories)
    return sorted(values.dropna().unique(), key=str)


def chosen_longer_share(scores: pd.DataFrame, *, by: Sequence[str] = (),
                        confidence: float = 0.95) -> pd.DataFrame:
    """The share of pairs whose chosen response has more tokens than the rejected one.

    scores: len_p, len_n per pair (and `by`). Pairs of equal length count as not longer
    (n_equal says how many). Returns `by`, n, k, n_equal, share, share_lo, share_hi (exact
    Clopper–Pearson over pairs).
    """
    by = list(by)
    require_columns(scores, ["len_p", "len_n", *by], "chosen_longer_share")
    rows = []
    for key, group in _groups(_finite(scores, ["len_p", "len_n"]), by):
        rows.append({**key, **_share_row(group.len_p > group.len_n, confidence),
                     "n_equal": int((group.len_p == group.len_n).sum())})
    return pd.DataFrame(rows, columns=[*by, "n", "k", "n_equal", "share", "share_lo",
                                       "share_hi"])


def dose_token_ratios(dose: pd.DataFrame, *, side: str = "rejected") -> pd.DataFrame:
    """Length-controlled variants against their control, in tokens.

    dose: one row per scored variant: variant_of (the original pair), factor (nominal; 1 = the
    unchanged pair), len_p, len_n, gap_sum, gap. side: the response the variants changed.
    Adds token_ratio = the changed side's tokens / the control's (what the model saw, which a
    nominal factor in characters only approximates), log2_ratio, and dgap_sum, dgap: the gap
    minus the control's. Variants whose pair has no scored control are left out.
    """
    require_columns(dose, ["variant_of", "factor", "len_p", "len_n", "gap_sum", "gap"],
                    "dose_token_ratios")
    length = {"rejected": "len_n", "chosen": "len_p"}[side]
    control = dose[dose.factor == 1].drop_duplicates("variant_of").set_index("variant_of")
    out = dose[dose.variant_of.isin(control.index)].copy()
    base = out.variant_of.map(control[length]).astype(float)
    out["token_ratio"] = out[length].astype(float) / base
    out["log2_ratio"] = np.log2(out.token_ratio)
    out["dgap_sum"] = out.gap_sum - out.variant_of.map(control.gap_sum)
    out["dgap"] = out.gap - out.variant_of.map(control.gap)
    return out.reset_index(drop=True)


def dose_gaps(dose: pd.DataFrame) -> pd.DataFrame:
    """`dose_token_ratios` output long: one row per variant and normalisation, with gap_value
    and, where the table has the change from the control, dgap_value."""
    frames = []
    for norm, column in AUDIT_GAPS.items():
        change = DOSE_CHANGES[norm]
        frames.append(dose.assign(normalisation=norm, gap_value=dose[column],
                                  dgap_value=dose[change] if change in dose else np.nan))
    return pd.concat(frames, ignore_index=True)


DOSE_CHANGES = {"sum": "dgap_sum", "mean": "dgap"}  # normalisation → change from the control


def dose_pair_slopes(dose: pd.DataFrame) -> pd.DataFrame:
    """Each pair's own dose slope: the OLS slope of its gap on log2(achieved token ratio) over
    its variants, in nats per doubling, under each normalisation.

    dose: `dose_token_ratios` output. Variants with a non-finite gap or ratio are left out; a
    pair with fewer than two distinct ratios left has a NaN slope. Returns variant_of,
    normalisation, n_variants, slope.
    """
    require_columns(dose, ["variant_of", "log2_ratio", *AUDIT_GAPS.values()], "dose_pair_slopes")
    long = _finite(dose_gaps(dose), ["log2_ratio", "gap_value"])
    x, y = long.log2_ratio, long.gap_value
    keys = [long.variant_of, long.normalisation]
    n = x.groupby(keys).size()
    mx, my = x.groupby(keys).transform("mean"), y.groupby(keys).transform("mean")
    sxy = ((x - mx) * (y - my)).groupby(keys).sum()
    sxx = ((x - mx) ** 2).groupby(keys).sum()
    slope = (sxy / sxx).where(sxx > 1e-12)
    out = pd.DataFrame({"n_variants": n, "slope": slope}).reset_index()
    return out[["variant_of", "normalisation", "n_variants", "slope"]]


def _mean_interval(values: np.ndarray, clusters: np.ndarray, *, n_boot: int, ci: float,
                   seed: int) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` and a percentile bootstrap interval resampling
    whole clusters (`clusters[i]`: row i's cluster); NaN bounds with fewer than 3 clusters."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else float("nan")
    codes = pd.factorize(clusters, sort=True)[0]
    n_clusters = int(codes.max()) + 1 if len(codes) else 0
    if n_boot <= 0 or n_clusters < 3:
        return mean, float("nan"), float("nan")
    sums = np.bincount(codes, weights=values, minlength=n_clusters)
    sizes = np.bincount(codes, minlength=n_clusters).astype(float)

    def statistic(sample, axis=-1):
        batch = np.atleast_2d(sample)
        return sums[batch].sum(axis=-1) / sizes[batch].sum(axis=-1)

    result = stats.bootstrap((np.arange(n_clusters),), statistic, n_resamples=n_boot,
                             vectorized=True, confidence_level=ci, method="percentile",
                             rng=np.random.default_rng(seed))
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def dose_slope_summary(slopes: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95,
                       seed: int = 0) -> pd.DataFrame:
    """The dose slope over pairs: per normalisation, the mean of the per-pair slopes
    (`dose_pair_slopes`) in nats per achieved doubling, with a percentile pair-bootstrap
    interval (`n_boot` resamples of pairs, seeded), and their median and quartiles.

    Returns normalisation, n_pairs, slope, slope_lo, slope_hi, slope_median, slope_q25,
    slope_q75, n_dropped (pairs without a slope).
    """
    require_columns(slopes, ["variant_of", "normalisation", "slope"], "dose_slope_summary")
    rows = []
    for norm, group in slopes.groupby("normalisation", sort=False):
        kept = _finite(group, ["slope"])
        mean, lo, hi = _mean_interval(kept.slope.to_numpy(), kept.variant_of.to_numpy(),
                                      n_boot=n_boot, ci=ci, seed=seed)
        q25, q50, q75 = (kept.slope.quantile([0.25, 0.5, 0.75]).tolist() if len(kept)
                         else [float("nan")] * 3)
        rows.append({"normalisation": norm, "n_pairs": len(kept), "slope": mean,
                     "slope_lo": lo, "slope_hi": hi, "slope_median": q50, "slope_q25": q25,
                     "slope_q75": q75, "n_dropped": len(group) - len(kept)})
    return pd.DataFrame(rows, columns=["normalisation", "n_pairs", "slope", "slope_lo",
                                       "slope_hi", "slope_median", "slope_q25", "slope_q75",
                                       "n_dropped"])


def dose_by_factor(dose: pd.DataFrame, *, ci: float = 0.95) -> pd.DataFrame:
    """What each nominal factor achieved, and the mean gap there, per normalisation.

    dose: `dose_token_ratios` output (and achieved_ratio, the character ratio, if present).
    Returns normalisation, factor, n (pairs), token_ratio (geometric mean of the achieved token
    ratios), token_ratio_min, token_ratio_max, char_ratio (geometric mean of achieved_ratio, NaN
    without it), mean (gap), mean_lo, mean_hi (t-interval over the pairs: each pair once per
    factor), dgap, dgap_lo, dgap_hi (the same for the change from the control).
    """
    require_columns(dose, ["variant_of", "factor", "token_ratio", *AUDIT_GAPS.values()],
                    "dose_by_factor")
    long = _finite(dose_gaps(dose), ["token_ratio", "gap_value"])
    rows = []
    for norm in AUDIT_GAPS:
        for factor, at in long[long.normalisation == norm].groupby("factor", sort=True):
            mean, lo, hi = seed_interval(at.gap_value, ci)
            dmean, dlo, dhi = seed_interval(at.dgap_value, ci)
            chars = (np.exp(np.log(at.achieved_ratio.astype(float)).mean())
                     if "achieved_ratio" in at.columns else float("nan"))
            rows.append({"normalisation": norm, "factor": factor, "n": len(at),
                         "token_ratio": float(np.exp(np.log(at.token_ratio).mean())),
                         "token_ratio_min": float(at.token_ratio.min()),
                         "token_ratio_max": float(at.token_ratio.max()),
                         "char_ratio": float(chars), "mean": mean, "mean_lo": lo,
                         "mean_hi": hi, "dgap": dmean, "dgap_lo": dlo, "dgap_hi": dhi})
    return pd.DataFrame(rows, columns=["normalisation", "factor", "n", "token_ratio",
                                       "token_ratio_min", "token_ratio_max", "char_ratio",
                                       "mean", "mean_lo", "mean_hi", "dgap", "dgap_lo",
                                       "dgap_hi"])


def _normalised_prompt(text: str) -> str:
    return " ".join(str(text).casefold().split())


def near_duplicates(pairs: pd.DataFrame, *, threshold: float = NEAR_DUPLICATE) -> pd.DataFrame:
    """Pairs that nearly repeat an earlier pair of the same prompt.

    pairs: `PairSet.to_frame()` (pair_id, prompt, chosen, rejected). Two pairs are near
    duplicates when their prompts are equal up to case and whitespace and their chosen and
    their rejected responses each have an `edit_distance` ≤ threshold. Returns one row per pair:
    pair_id, prompt_group (pairs sharing its prompt, itself included), duplicate_of (the first
    earlier pair it nearly repeats, in `pairs` order; NA if none).
    """
    require_columns(pairs, ["pair_id", "prompt", "chosen", "rejected"], "near_duplicates")
    prompt = pairs.prompt.map(_normalised_prompt)
    out = pd.DataFrame({"pair_id": pairs.pair_id.to_numpy(),
                        "prompt_group": prompt.map(prompt.value_counts()).to_numpy(),
                        "duplicate_of": pd.Series(pd.NA, index=range(len(pairs)),
                                                  dtype="object")})
    rows = pairs.reset_index(drop=True)
    for members in pd.Series(range(len(rows))).groupby(prompt.to_numpy()).groups.values():
        members = sorted(members)
        for j, b in enumerate(members):
            for a in members[:j]:
                if (edit_distance(rows.chosen[a], rows.chosen[b]) <= threshold
                        and edit_distance(rows.rejected[a], rows.rejected[b]) <= threshold):
                    out.loc[b, "duplicate_of"] = rows.pair_id[a]
                    break
    return out


def cut_table(lengths: pd.DataFrame, *, max_length: int, max_prompt_length: int) -> pd.DataFrame:
    """What cutting to `max_length` tokens per side (prompt ≤ `max_prompt_length`) does to each
    pair, by `encode.encode_pairs`' policy, from the uncut token counts alone.

    lengths: pair_id, prompt_len_full, len_p_full, len_n_full, shared_prefix (leading response
    tokens the two sides share). Per pair: room (response tokens that fit after the kept
    prompt), cut_prompt, cut_p, cut_n (tokens lost), truncated (any lost), identical (the two
    responses are equal in what fits: shared_prefix ≥ room; encode_pairs drops such a pair).
    """
    require_columns(lengths, ["pair_id", "prompt_len_full", "len_p_full", "len_n_full",
                              "shared_prefix"], "cut_table")
    prompt = lengths.prompt_len_full.clip(upper=max_prompt_length)
    room = max_length - prompt
    out = lengths[["pair_id"]].copy()
    out["room"] = room
    out["cut_prompt"] = lengths.prompt_len_full - prompt
    out["cut_p"] = (lengths.len_p_full - room).clip(lower=0)
    out["cut_n"] = (lengths.len_n_full - room).clip(lower=0)
    out["truncated"] = (out.cut_prompt > 0) | (out.cut_p > 0) | (out.cut_n > 0)
    out["identical"] = lengths.shared_prefix >= room
    return out


def cut_summary(cuts: pd.DataFrame) -> dict:
    """Counts of `cut_table`: n, truncated (pairs losing any token), cut_p / cut_n (pairs whose
    chosen / rejected response lost tokens), identical (left equal: dropped), and the tokens
    lost per cut response: mean and max, chosen and rejected together."""
    require_columns(cuts, ["cut_p", "cut_n", "truncated", "identical"], "cut_summary")
    lost = pd.concat([cuts.cut_p[cuts.cut_p > 0], cuts.cut_n[cuts.cut_n > 0]])
    return {"n": len(cuts), "truncated": int(cuts.truncated.sum()),
            "cut_p": int((cuts.cut_p > 0).sum()), "cut_n": int((cuts.cut_n > 0).sum()),
            "cut_prompt": int((cuts.cut_prompt > 0).sum()) if "cut_prompt" in cuts else 0,
            "identical": int(cuts.identical.sum()),
            "lost_mean": float(lost.mean()) if len(lost) else 0.0,
            "lost_max": int(lost.max()) if len(lost) else 0}


GRADIENT_COLUMNS = ("objective", "pair_id", "batch", "len_p", "len_n", "grad_norm",
                    "grad_cos_loo", "grad_cos_orthogonal", "entanglement", "ches")


def gradient_key(grads: pd.DataFrame) -> str:
    """The column that names what a gradient-audit row was taken under: label (objective with
    its norm, naive-sum / naive-mean, as the study labels runs) where present, else objective."""
    return "label" if "label" in grads.columns else "objective"


def gradient_summary(grads: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """Per-pair gradients at the starting model, one row per objective (label).

    grads: one row per objective × pair (`prefstudy.gradaudit.gradient_audit`: objective,
    label, pair_id, batch, len_p, len_n, grad_norm, grad_cos_loo, grad_cos_orthogonal,
    entanglement, ches). Returns `gradient_key(grads)`, n_pairs; norm_r2, norm_spearman,
    norm_slope: the OLS fit of grad_norm on the pair's response tokens (len_p + len_n;
    `length_effect`, no interval); cos_loo with cos_loo_lo, cos_loo_hi (mean leave-one-out
    cosine, percentile bootstrap over batches: a pair's cosine depends on the others in its
    batch), cos_orthogonal (the mean orthogonal baseline beside it), share_opposed (cos_loo < 0,
    Clopper–Pearson over pairs: share_opposed_lo/_hi), entanglement and ches medians.
    """
    require_columns(grads, GRADIENT_COLUMNS, "gradient_summary")
    key = gradient_key(grads)
    frame = grads.assign(tokens=grads.len_p + grads.len_n)
    fits = length_effect(frame, x="tokens", y="grad_norm", by=(key,), n_boot=0).set_index(key)
    rows = []
    for name, group in frame.groupby(key, sort=True):
        kept = _finite(group, ["grad_cos_loo"])
        cos, lo, hi = _mean_interval(kept.grad_cos_loo.to_numpy(), kept.batch.to_numpy(),
                                     n_boot=n_boot, ci=ci, seed=seed)
        opposed = _share_row(kept.grad_cos_loo < 0, ci)
        rows.append({key: name, "n_pairs": group.pair_id.nunique(),
                     "norm_r2": fits.r2[name], "norm_spearman": fits.spearman[name],
                     "norm_slope": fits.slope[name], "cos_loo": cos, "cos_loo_lo": lo,
                     "cos_loo_hi": hi, "cos_orthogonal": float(group.grad_cos_orthogonal.mean()),
                     "share_opposed": opposed["share"], "share_opposed_lo": opposed["share_lo"],
                     "share_opposed_hi": opposed["share_hi"],
                     "entanglement": float(group.entanglement.median()),
                     "ches": float(group.ches.median())})
    return pd.DataFrame(rows)


def gradient_scale(grads: pd.DataFrame, *, of: str, to: str) -> dict:
    """The per-pair ratio grad_norm(of) / grad_norm(to) over the pairs both objectives (labels,
    `gradient_key`) scored: n, median, min, max (NaN without common pairs). At the starting
    weights DPO's per-pair gradient is β/2 × naive-sum's, so of="dpo", to="naive-sum" gives β/2
    at every pair."""
    require_columns(grads, ["pair_id", "grad_norm"], "gradient_scale")
    wide = grads.pivot_table(index="pair_id", columns=gradient_key(grads), values="grad_norm",
                             aggfunc="first")
    nan = float("nan")
    if of not in wide.columns or to not in wide.columns:
        return {"n": 0, "median": nan, "min": nan, "max": nan}
    ratio = (wide[of] / wide[to]).replace([np.inf, -np.inf], np.nan).dropna()
    if not len(ratio):
        return {"n": 0, "median": nan, "min": nan, "max": nan}
    return {"n": len(ratio), "median": float(ratio.median()), "min": float(ratio.min()),
            "max": float(ratio.max())}
