"""Statistical primitives: intervals, bootstraps and fits, on numpy arrays and tidy DataFrames.

Nothing here knows what a run, a pair or a gap is; `prefstudy.diagnostics` (the study's records)
and `prefstudy.auditstats` (the audit's tables) compute with these. Conventions:

- Intervals. `seed_interval` is the mean of one number per unit with its Student-t interval
  (NaN with fewer than two units: unknown, not zero width); `share_interval` is a share with
  its exact Clopper–Pearson interval; `cluster_mean_interval` and `bootstrap_fit` are percentile
  bootstraps that resample whole clusters (the units), seeded, so the same data give the same
  interval byte for byte.
- Non-finite values are never averaged away: a NaN or inf makes a mean NaN/inf and its interval
  NaN. `finite_rows` is how a caller leaves such rows out explicitly (and counts them).
- An undefined number says why. `fit_reason` and `interval_reason` name the cause (no finite
  row, too few rows or units, a predictor that does not vary, no bootstrap resamples) for a
  table's `reason` column: '' where every number is defined.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .columns import require_columns

FIT_STATISTICS = ("r2", "spearman", "slope")  # what fit_line gives and bootstrap_fit resamples
MIN_FIT_ROWS = 3  # fit_line's numbers need this many rows
MIN_CLUSTERS = 3  # a cluster bootstrap's interval needs this many clusters (units)


# ---------------------------------------------------------------------------------------------
# Rows and groups


def finite_rows(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The rows of `frame` whose `columns` are all finite numbers."""
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return frame[np.isfinite(values).all(axis=1)]


def groups_of(frame: pd.DataFrame, by: Sequence[str]) -> Iterator[tuple[dict, pd.DataFrame]]:
    """(group key as {column: value}, rows) for each group of `by`; one group if `by` is empty."""
    if not by:
        yield {}, frame
        return
    for key, rows in frame.groupby(list(by), sort=True, observed=True, dropna=False):
        yield dict(zip(by, key)), rows


# ---------------------------------------------------------------------------------------------
# Why a number is undefined


def unit_word(unit: str | None, n: int = 2) -> str:
    """What one unit of a bootstrap is called in a reason: "pair" for pair ids and variants of
    a pair, "batch", the column's own name otherwise, "row" for none; plural unless n == 1."""
    word = {"pair_id": "pair", "variant_of": "pair", "batch": "batch", None: "row"}.get(
        unit, str(unit))
    return word if n == 1 else word + ("es" if word.endswith("ch") else "s")


def fit_reason(xs, ys, *, x: str = "x", y: str = "y", n_dropped: int = 0,
               spearman: bool = True) -> str:
    """Why `fit_line(xs, ys)` leaves numbers undefined (NaN), '' where it leaves none: no row
    with a finite x and y, fewer than MIN_FIT_ROWS, an x that does not vary (no slope, R² or
    ρ), or with `spearman` a y that does not vary (no ρ). n_dropped: the rows the caller left
    out as non-finite, named in the reason."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    left = f" ({n_dropped} left out: not finite)" if n_dropped else ""
    if len(xs) == 0:
        return f"no row with a finite {x} and {y}{left}"
    if len(xs) < MIN_FIT_ROWS:
        return (f"{len(xs)} {unit_word(None, len(xs))} with a finite {x} and {y}; a fit needs "
                f"at least {MIN_FIT_ROWS}{left}")
    if np.ptp(xs) == 0:
        return f"{x} does not vary (every row {xs[0]:g}): no slope, R² or ρ"
    if spearman and np.ptp(ys) == 0:
        return f"{y} does not vary (every row {ys[0]:g}): no Spearman ρ"
    return ""


def interval_reason(n_units: int, n_boot: int, unit: str | None = "pair_id") -> str:
    """Why a cluster bootstrap gives no interval, '' where it can: no resamples (n_boot ≤ 0),
    or fewer than MIN_CLUSTERS units to resample."""
    if n_boot <= 0:
        return f"no bootstrap resamples (n_boot = {n_boot}): no interval"
    if n_units < MIN_CLUSTERS:
        return (f"{n_units} {unit_word(unit, n_units)}: a bootstrap interval resamples at "
                f"least {MIN_CLUSTERS}")
    return ""


def join_reasons(*parts: str) -> str:
    """The non-empty reasons, in order, joined by "; "."""
    return "; ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# Intervals


def seed_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` and its Student-t interval (scipy.stats.t).

    values: one number per unit (per seed in the study's tables). lo/hi are NaN with fewer than two
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


def cluster_mean_interval(values: np.ndarray, clusters: np.ndarray, *, n_boot: int, ci: float,
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


# ---------------------------------------------------------------------------------------------
# Fits: OLS and Spearman's ρ, with a bootstrap over clusters


def fit_line(x: np.ndarray, y: np.ndarray, *, spearman: bool = True,
             ranks: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """OLS of y on x (scipy.stats.linregress) and Spearman's ρ: r2, spearman, slope, intercept;
    NaN with fewer than 3 rows or a constant x (ρ also when spearman=False, and for a constant y).

    ρ is Pearson's r of the average ranks (scipy.stats.spearmanr's definition); `ranks` passes
    the ranks of x and y when they are already known (`rank_codes`).
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


def rank_codes(v: np.ndarray, levels: int | None = RANK_LEVELS) -> tuple[np.ndarray, np.ndarray]:
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
    cells (cluster × level of x × level of y, see `rank_codes`) weighted by their cluster's count:
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
                codes = rank_codes(x, levels)[1], rank_codes(y, levels)[1]
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


def bootstrap_fit(x: np.ndarray, y: np.ndarray, cluster: np.ndarray, *, n_boot: int,
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



def partial_spearman(x: np.ndarray, y: np.ndarray, covariates: np.ndarray,
                     draws: np.ndarray | None = None) -> np.ndarray | float:
    """Spearman's ρ of x and y with `covariates` partialled out: the Pearson correlation of the
    ranks of x and of y, each after a least-squares fit on the covariates' ranks (and a constant)
    is taken away. x, y: Shape (n,); covariates: Shape (n, k), k ≥ 0 (k = 0: plain Spearman).
    Rows with a non-finite value are left out first. `draws` (Shape (resamples, m), indices into
    the rows left) gives ρ of each resample at once, Shape (resamples,). NaN (undefined) with
    fewer than k + 3 rows, or where x or y is constant once the covariates are taken away."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    z = np.asarray(covariates, float).reshape(len(x), -1)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z).all(axis=1)
    x, y, z = x[ok], y[ok], z[ok]
    index = np.arange(len(x))[None, :] if draws is None else np.asarray(draws)
    if len(x) < z.shape[1] + 3 or index.shape[-1] < z.shape[1] + 3:
        out = np.full(len(index), np.nan)
        return float(out[0]) if draws is None else out
    ranks = [stats.rankdata(v[index], axis=1) for v in (x, y)]  # (resamples, m)
    design = np.concatenate([np.ones(index.shape + (1,)), *(
        stats.rankdata(c[index], axis=1)[..., None] for c in z.T)], axis=-1)
    gram = np.linalg.pinv(design.transpose(0, 2, 1) @ design)
    residuals = [r - (design @ (gram @ (design.transpose(0, 2, 1) @ r[..., None])))[..., 0]
                 for r in ranks]
    scale = [np.sqrt((e ** 2).sum(axis=1)) for e in residuals]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (residuals[0] * residuals[1]).sum(axis=1) / (scale[0] * scale[1])
    rho = np.where(np.minimum(*scale) < 1e-6 * np.sqrt(index.shape[-1]), np.nan, rho)
    return float(rho[0]) if draws is None else rho
