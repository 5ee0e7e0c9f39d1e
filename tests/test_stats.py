"""Statistical primitives on numbers whose answers are known: intervals against t and binomial
quantiles typed in from tables, ranks against scipy's, and a cluster resample scored from sums
against the same resample refitted on copied rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prefstudy import stats

T_975_3 = 3.1824463052837078  # Student t, 97.5% quantile, 3 degrees of freedom


# ---------------------------------------------------------------------------------------------
# Intervals


def test_seed_interval_matches_the_t_interval_by_hand():
    # [1, 2, 3, 4]: mean 2.5, sd = sqrt(5/3), sem = sd / 2, 3 degrees of freedom
    half = T_975_3 * math.sqrt(5 / 3) / 2
    assert stats.seed_interval([1, 2, 3, 4]) == pytest.approx((2.5, 2.5 - half, 2.5 + half))


def test_seed_interval_edge_cases():
    mean, lo, hi = stats.seed_interval([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)  # one seed: no interval
    assert stats.seed_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in stats.seed_interval([]))
    mean, lo, hi = stats.seed_interval([1.0, math.nan, 3.0])  # NaN is not skipped
    assert math.isnan(mean) and math.isnan(lo) and math.isnan(hi)


def test_seed_intervals_match_seed_interval_per_group():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"label": np.repeat(["a", "b", "c", "d", "e"], 4),
                          "step": np.tile([0, 0, 1, 1], 5), "v": rng.normal(size=20)})
    frame.loc[frame.label == "b", "v"] = 3.0                       # constant: zero width
    frame.loc[(frame.label == "c") & (frame.step == 1), "v"] = [1.0, math.nan]
    frame.loc[(frame.label == "d") & (frame.step == 0), "v"] = [math.inf, 1.0]
    frame = frame[~((frame.label == "e") & (frame.step == 1) & (frame.index % 2 == 1))]
    out = stats.seed_intervals(frame, ["label", "step"], "v")
    assert len(out) == 10
    for _, row in out.iterrows():
        values = frame[(frame.label == row.label) & (frame.step == row.step)].v
        want = stats.seed_interval(values)
        assert row.n == len(values)
        np.testing.assert_allclose([row.v, row.v_lo, row.v_hi], want, rtol=1e-12)


def test_share_interval_is_clopper_pearson():
    share, lo, hi = stats.share_interval(0, 3)
    assert (share, lo) == (0.0, 0.0)
    assert hi == pytest.approx(1 - 0.025 ** (1 / 3))
    share, lo, hi = stats.share_interval(3, 3)
    assert (share, hi) == (1.0, 1.0)
    assert lo == pytest.approx(0.025 ** (1 / 3))
    assert all(math.isnan(v) for v in stats.share_interval(0, 0))


# ---------------------------------------------------------------------------------------------
# Fits: ranks and cluster resamples


def _refit_on_rows(x, y, cluster, sample):
    """A resample scored the slow, obvious way: copy every row of every drawn cluster, refit."""
    rows = np.concatenate([np.flatnonzero(cluster == c) for c in sample])
    fit = stats.fit_line(x[rows], y[rows])
    return np.array([fit[s] for s in stats.FIT_STATISTICS])


@pytest.mark.parametrize("values", [
    np.array([3.0, -1.0, 3.0, 7.0, -1.0, 0.0, 3.0]),        # whole numbers: counted
    np.array([0.5, 0.25, 0.5, 2.0, -3.5]),                  # fractions: scipy's rankdata
    np.random.default_rng(8).integers(-50, 50, 1000).astype(float),
    np.random.default_rng(9).normal(size=2000),             # > RANK_LEVELS values: binned codes
])
def test_ranks_are_scipys_average_ranks_with_order_keeping_codes(values):
    from scipy.stats import rankdata

    ranks, codes = stats.rank_codes(values)
    np.testing.assert_array_equal(ranks, rankdata(values))
    exact = stats.rank_codes(values, None)[1]
    assert len(np.unique(exact)) == len(np.unique(values))  # levels=None: always exact
    assert codes.min() == 0 and codes.max() < stats.RANK_LEVELS
    order = np.argsort(values, kind="stable")
    assert (np.diff(codes[order]) >= 0).all()  # codes follow the values' order
    distinct = len(np.unique(values))
    tied = pd.Series(codes).groupby(values).nunique()
    assert (tied == 1).all()  # a tie keeps one code
    if distinct <= stats.RANK_LEVELS:
        assert len(np.unique(codes)) == distinct  # exact: one code per value


def test_cluster_resamples_score_as_a_refit_on_copied_rows():
    # pairs recur at several steps with different gaps; ties in x (dlen) and in y
    rng = np.random.default_rng(4)
    n_pairs, steps = 40, 5
    cluster = np.tile(np.arange(n_pairs), steps)
    x = np.tile(rng.integers(-20, 20, n_pairs), steps).astype(float)
    y = np.round(0.3 * x + rng.normal(size=len(x)), 1)
    fits = stats._ClusterFits(x, y, cluster)
    samples = rng.integers(0, n_pairs, (25, n_pairs))
    got = fits(samples)
    assert got.shape == (3, 25)
    for b, sample in enumerate(samples):
        np.testing.assert_allclose(got[:, b], _refit_on_rows(x, y, cluster, sample), rtol=1e-9,
                                   atol=1e-12)
    np.testing.assert_allclose(fits(np.arange(n_pairs)), _refit_on_rows(x, y, cluster,
                                                                         np.arange(n_pairs)))


def test_cluster_resamples_rank_many_distinct_values_on_bins_closely():
    # more rows than EXACT_RANK_ROWS and more distinct gaps than RANK_LEVELS: ρ is ranked on
    # equal-count bins, r2 and slope stay exact
    rng = np.random.default_rng(5)
    n_pairs, steps = 300, 40
    cluster = np.tile(np.arange(n_pairs), steps)
    x = np.tile(rng.integers(-60, 60, n_pairs), steps).astype(float)
    y = 0.05 * x + rng.standard_t(3, size=len(x))
    assert len(np.unique(y)) > stats.RANK_LEVELS
    binned = stats._ClusterFits(x, y, cluster, codes=(stats.rank_codes(x)[1], stats.rank_codes(y)[1]))
    exact = stats._ClusterFits(x, y, cluster)  # 12,000 rows ≤ EXACT_RANK_ROWS: exact ranks
    assert binned.cells < exact.cells
    for sample in rng.integers(0, n_pairs, (5, n_pairs)):
        want = _refit_on_rows(x, y, cluster, sample)
        np.testing.assert_allclose(exact(sample[None, :])[:, 0], want, rtol=1e-9)
        got = binned(sample[None, :])[:, 0]
        np.testing.assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-9)
        assert got[1] == pytest.approx(want[1], abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Why a number is undefined


def test_fit_and_interval_reasons_name_the_cause():
    assert stats.fit_reason([], [], x="dlen", y="gap", n_dropped=4) == \
        "no row with a finite dlen and gap (4 left out: not finite)"
    assert stats.fit_reason([1, 2], [3, 4], x="dlen", y="gap") == \
        "2 rows with a finite dlen and gap; a fit needs at least 3"
    assert stats.fit_reason([5, 5, 5], [1, 2, 3], x="dlen", y="gap") == \
        "dlen does not vary (every row 5): no slope, R² or ρ"
    assert stats.fit_reason([1, 2, 3], [7, 7, 7], x="dlen", y="gap") == \
        "gap does not vary (every row 7): no Spearman ρ"
    assert stats.fit_reason([1, 2, 3], [7, 7, 8]) == ""
    assert stats.interval_reason(10, 0) == "no bootstrap resamples (n_boot = 0): no interval"
    assert stats.interval_reason(1, 100) == "1 pair: a bootstrap interval resamples at least 3"
    assert stats.interval_reason(2, 100, "batch") == \
        "2 batches: a bootstrap interval resamples at least 3"
    assert stats.interval_reason(3, 100) == ""


def test_length_effect_says_why_each_undefined_number_is_undefined():
    from prefstudy.diagnostics import length_effect

    def frame(dlen, gap):
        return pd.DataFrame({"normalisation": "sum", "pair_id": [f"p{i}" for i in range(len(dlen))],
                             "dlen": dlen, "gap_value": gap})

    def reason(f, **kwargs):
        return length_effect(f, n_boot=kwargs.pop("n_boot", 50), **kwargs).reason.iloc[0]

    assert reason(frame([1, 2, 3, 4], [1.0, 2.5, 2.9, 4.2])) == ""
    assert reason(frame([3, 3, 3, 3], [1.0, 2.0, 3.0, 4.0])) == \
        "dlen does not vary (every row 3): no slope, R² or ρ"
    assert reason(frame([1, 2], [1.0, 2.0])) == \
        "2 rows with a finite dlen and gap_value; a fit needs at least 3"
    assert reason(frame([1, 2, 3], [np.nan, np.inf, np.nan])) == \
        "no row with a finite dlen and gap_value (3 left out: not finite)"
    assert reason(frame([1, 2, 3, 4], [1.0, 2.5, 2.9, 4.2]), n_boot=0) == \
        "no bootstrap resamples (n_boot = 0): no interval"
    one_pair = frame([1, 2, 3, 4], [1.0, 2.5, 2.9, 4.2]).assign(pair_id="p")  # 4 rows, 1 pair
    assert reason(one_pair) == "1 pair: a bootstrap interval resamples at least 3"
