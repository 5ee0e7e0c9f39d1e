"""Diagnostics on hand-built frames whose answers are known.

Every frame is written out here (no model, no training): an exactly linear gap must give R² = 1
and its slope, a trajectory that starts rising at step k must give onset k, and the intervals are
checked against t and binomial quantiles typed in from tables.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prefstudy import diagnostics as dg
from prefstudy.records import SchemaError

T_975_1 = 12.706204736174694  # Student t, 97.5% quantile, 1 degree of freedom
T_975_3 = 3.1824463052837078  # ... 3 degrees of freedom


def records_frame(rows: list[dict], **defaults) -> pd.DataFrame:
    """Per-pair records from a few given fields; the rest follow from them (gap, summed losses).

    Each row gives at least loss_p, loss_n; len_p/len_n default to 1, nll_sum_x = loss_x · len_x.
    """
    base = {"run_id": "r0", "label": "naive", "objective": "naive", "seed": 0,
            "status": "completed", "diverged_step": math.nan, "step": 1, "pair_id": "p0",
            "len_p": 1, "len_n": 1, "ref_logp_p": math.nan, "ref_logp_n": math.nan,
            "grad_norm": math.nan, "grad_cos": math.nan, **defaults}
    full = []
    for row in rows:
        r = {**base, **row}
        r.setdefault("nll_sum_p", r["loss_p"] * r["len_p"])
        r.setdefault("nll_sum_n", r["loss_n"] * r["len_n"])
        r["gap"] = r["loss_n"] - r["loss_p"]
        full.append(r)
    return pd.DataFrame(full)


def trajectory(loss_p: list[float], gap: list[float], **run) -> pd.DataFrame:
    """A run whose every step has two pairs with the given step-mean loss_p and gap."""
    rows = [{"step": s, "pair_id": f"p{j}", "loss_p": lp + d, "loss_n": lp + d + g}
            for s, (lp, g) in enumerate(zip(loss_p, gap), start=1) for j, d in enumerate((-.1, .1))]
    return records_frame(rows, **run)


# ---------------------------------------------------------------------------------------------
# Intervals


def test_seed_interval_matches_the_t_interval_by_hand():
    # [1, 2, 3, 4]: mean 2.5, sd = sqrt(5/3), sem = sd / 2, 3 degrees of freedom
    half = T_975_3 * math.sqrt(5 / 3) / 2
    assert dg.seed_interval([1, 2, 3, 4]) == pytest.approx((2.5, 2.5 - half, 2.5 + half))


def test_seed_interval_edge_cases():
    mean, lo, hi = dg.seed_interval([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)  # one seed: no interval
    assert dg.seed_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in dg.seed_interval([]))
    mean, lo, hi = dg.seed_interval([1.0, math.nan, 3.0])  # NaN is not skipped
    assert math.isnan(mean) and math.isnan(lo) and math.isnan(hi)


def test_seed_intervals_match_seed_interval_per_group():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"label": np.repeat(["a", "b", "c", "d", "e"], 4),
                          "step": np.tile([0, 0, 1, 1], 5), "v": rng.normal(size=20)})
    frame.loc[frame.label == "b", "v"] = 3.0                       # constant: zero width
    frame.loc[(frame.label == "c") & (frame.step == 1), "v"] = [1.0, math.nan]
    frame.loc[(frame.label == "d") & (frame.step == 0), "v"] = [math.inf, 1.0]
    frame = frame[~((frame.label == "e") & (frame.step == 1) & (frame.index % 2 == 1))]
    out = dg.seed_intervals(frame, ["label", "step"], "v")
    assert len(out) == 10
    for _, row in out.iterrows():
        values = frame[(frame.label == row.label) & (frame.step == row.step)].v
        want = dg.seed_interval(values)
        assert row.n == len(values)
        np.testing.assert_allclose([row.v, row.v_lo, row.v_hi], want, rtol=1e-12)


def test_share_interval_is_clopper_pearson():
    share, lo, hi = dg.share_interval(0, 3)
    assert (share, lo) == (0.0, 0.0)
    assert hi == pytest.approx(1 - 0.025 ** (1 / 3))
    share, lo, hi = dg.share_interval(3, 3)
    assert (share, hi) == (1.0, 1.0)
    assert lo == pytest.approx(0.025 ** (1 / 3))
    assert all(math.isnan(v) for v in dg.share_interval(0, 0))


# ---------------------------------------------------------------------------------------------
# C1: length


def test_gap_normalisations_values():
    rec = records_frame([
        {"pair_id": "a", "len_p": 2, "len_n": 6, "loss_p": 1.0, "loss_n": 1.5,
         "ref_logp_p": -3.0, "ref_logp_n": -8.0},
        {"pair_id": "b", "len_p": 4, "len_n": 4, "loss_p": 2.0, "loss_n": 1.0},  # no reference
    ])
    out = dg.gap_normalisations(rec)
    assert list(out.columns) == ["run_id", "label", "seed", "step", "pair_id", "normalisation",
                                 "gap_value", "dlen", "dlen_rel"]
    value = out.set_index(["pair_id", "normalisation"]).gap_value
    assert value["a", "sum"] == pytest.approx(9.0 - 2.0)
    assert value["a", "mean"] == pytest.approx(0.5)
    # (nll_n + ref_n) − (nll_p + ref_p) = (9 − 8) − (2 − 3)
    assert value["a", "reference"] == pytest.approx(2.0)
    assert value["b", "sum"] == pytest.approx(-4.0)
    assert ("b", "reference") not in value.index  # dropped: no reference
    first = out[out.pair_id == "a"].iloc[0]
    assert (first.dlen, first.dlen_rel) == (4, pytest.approx(0.5))


def linear_frame(a=1.5, b=0.25, n_pairs=20, steps=3) -> pd.DataFrame:
    dlen = np.arange(n_pairs) - 7.0
    return pd.DataFrame({"normalisation": "sum", "pair_id": np.tile(np.arange(n_pairs), steps),
                         "dlen": np.tile(dlen, steps), "gap_value": np.tile(a + b * dlen, steps)})


def test_length_effect_exact_line():
    out = dg.length_effect(linear_frame(), n_boot=200)
    row = out.iloc[0]
    assert (row.n, row.n_dropped) == (60, 0)
    assert row.r2 == pytest.approx(1.0)
    assert row.spearman == pytest.approx(1.0)
    assert (row.slope, row.intercept) == (pytest.approx(0.25), pytest.approx(1.5))
    for stat, value in (("r2", 1.0), ("spearman", 1.0), ("slope", 0.25)):
        assert row[f"{stat}_lo"] == pytest.approx(value)
        assert row[f"{stat}_hi"] == pytest.approx(value)


def test_length_effect_noise_gap_explains_nothing():
    rng = np.random.default_rng(0)
    frame = linear_frame(n_pairs=400, steps=1)
    frame["gap_value"] = rng.permutation(rng.normal(size=len(frame)))
    row = dg.length_effect(frame, n_boot=200).iloc[0]
    assert row.r2 < 0.01
    assert abs(row.spearman) < 0.1
    assert row.slope_lo < 0 < row.slope_hi
    assert row.r2_lo <= row.r2 <= row.r2_hi


def test_length_effect_drops_non_finite_rows_and_counts_them():
    frame = linear_frame(steps=1)
    frame.loc[0, "gap_value"] = math.inf
    frame.loc[1, "dlen"] = math.nan
    row = dg.length_effect(frame, n_boot=0).iloc[0]
    assert (row.n, row.n_dropped) == (18, 2)
    assert row.r2 == pytest.approx(1.0)
    assert math.isnan(row.r2_lo)  # n_boot=0: no bootstrap


def test_length_effect_bootstrap_is_seeded():
    frame = linear_frame(n_pairs=30, steps=2)
    frame["gap_value"] += np.random.default_rng(1).normal(size=len(frame))
    a = dg.length_effect(frame, n_boot=100, seed=3)
    b = dg.length_effect(frame, n_boot=100, seed=3)
    pd.testing.assert_frame_equal(a, b)


def _refit_on_rows(x, y, cluster, sample):
    """A resample scored the slow, obvious way: copy every row of every drawn cluster, refit."""
    rows = np.concatenate([np.flatnonzero(cluster == c) for c in sample])
    fit = dg._fit(x[rows], y[rows])
    return np.array([fit[s] for s in dg.FIT_STATISTICS])


@pytest.mark.parametrize("values", [
    np.array([3.0, -1.0, 3.0, 7.0, -1.0, 0.0, 3.0]),        # whole numbers: counted
    np.array([0.5, 0.25, 0.5, 2.0, -3.5]),                  # fractions: scipy's rankdata
    np.random.default_rng(8).integers(-50, 50, 1000).astype(float),
    np.random.default_rng(9).normal(size=2000),             # > RANK_LEVELS values: binned codes
])
def test_ranks_are_scipys_average_ranks_with_order_keeping_codes(values):
    from scipy import stats

    ranks, codes = dg._ranks(values)
    np.testing.assert_array_equal(ranks, stats.rankdata(values))
    exact = dg._ranks(values, None)[1]
    assert len(np.unique(exact)) == len(np.unique(values))  # levels=None: always exact
    assert codes.min() == 0 and codes.max() < dg.RANK_LEVELS
    order = np.argsort(values, kind="stable")
    assert (np.diff(codes[order]) >= 0).all()  # codes follow the values' order
    distinct = len(np.unique(values))
    tied = pd.Series(codes).groupby(values).nunique()
    assert (tied == 1).all()  # a tie keeps one code
    if distinct <= dg.RANK_LEVELS:
        assert len(np.unique(codes)) == distinct  # exact: one code per value


def test_cluster_resamples_score_as_a_refit_on_copied_rows():
    # pairs recur at several steps with different gaps; ties in x (dlen) and in y
    rng = np.random.default_rng(4)
    n_pairs, steps = 40, 5
    cluster = np.tile(np.arange(n_pairs), steps)
    x = np.tile(rng.integers(-20, 20, n_pairs), steps).astype(float)
    y = np.round(0.3 * x + rng.normal(size=len(x)), 1)
    fits = dg._ClusterFits(x, y, cluster)
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
    assert len(np.unique(y)) > dg.RANK_LEVELS
    binned = dg._ClusterFits(x, y, cluster, codes=(dg._ranks(x)[1], dg._ranks(y)[1]))
    exact = dg._ClusterFits(x, y, cluster)  # 12,000 rows ≤ EXACT_RANK_ROWS: exact ranks
    assert binned.cells < exact.cells
    for sample in rng.integers(0, n_pairs, (5, n_pairs)):
        want = _refit_on_rows(x, y, cluster, sample)
        np.testing.assert_allclose(exact(sample[None, :])[:, 0], want, rtol=1e-9)
        got = binned(sample[None, :])[:, 0]
        np.testing.assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-9)
        assert got[1] == pytest.approx(want[1], abs=1e-4)


def test_length_effect_intervals_cover_the_estimate_on_many_rows():
    rng = np.random.default_rng(6)
    n_pairs, steps = 200, 50
    frame = linear_frame(n_pairs=n_pairs, steps=steps)
    frame["dlen"] = np.tile(rng.integers(-40, 40, n_pairs), steps).astype(float)
    frame["gap_value"] = 2.0 * frame.dlen + np.tile(rng.normal(0, 30, n_pairs), steps) \
        + rng.normal(0, 5, len(frame))
    row = dg.length_effect(frame, n_boot=300).iloc[0]
    for stat in dg.FIT_STATISTICS:
        assert row[f"{stat}_lo"] < row[stat] < row[f"{stat}_hi"]
    assert row.slope_lo < 2.0 < row.slope_hi
    # resampling rows instead of pairs ignores that a pair recurs: a narrower slope interval
    by_row = dg.length_effect(frame, n_boot=300, unit=None).iloc[0]
    assert by_row.slope_hi - by_row.slope_lo < 0.5 * (row.slope_hi - row.slope_lo)


def test_summed_gap_tracks_length_and_mean_gap_does_not():
    # summed losses: nll_sum_n − nll_sum_p = 2·dlen exactly; token-mean gap is unrelated noise
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        len_p, len_n = 10, 10 + (i % 8) - 3
        loss_p = 1.0
        loss_n = (loss_p * len_p + 2.0 * (len_n - len_p)) / len_n
        rows.append({"pair_id": f"p{i}", "len_p": len_p, "len_n": len_n, "loss_p": loss_p,
                     "loss_n": loss_n})
    rec = records_frame(rows)
    rec["loss_n"] = rec.loss_p + rng.permutation(rng.normal(size=len(rec)))  # mean gap: noise
    out = dg.length_effect(dg.gap_normalisations(rec), n_boot=0).set_index("normalisation")
    assert list(out.index) == ["mean", "sum"]  # no reference: no "reference" group
    assert out.loc["sum", "r2"] == pytest.approx(1.0)
    assert out.loc["sum", "slope"] == pytest.approx(2.0)
    assert out.loc["mean", "r2"] < 0.2


def test_variance_by_length_bin_eta2_of_a_known_grouping():
    # four x values, five rows each; y = group mean + deviations summing to zero in every group
    x = np.repeat([0, 1, 2, 3], 5)
    y = np.repeat([0.0, 2.0, 4.0, 6.0], 5) + np.tile([-1.0, 1.0, -1.0, 1.0, 0.0], 4)
    frame = pd.DataFrame({"normalisation": "sum", "dlen": x, "gap_value": y})
    row = dg.variance_by_length_bin(frame, bins=4).iloc[0]
    # SS_between = 5·(9 + 1 + 1 + 9) = 100, SS_within = 4·4 = 16
    assert row.n_bins == 4
    assert row.eta2 == pytest.approx(100 / 116)
    assert row.share_within == pytest.approx(16 / 116)


def test_variance_by_length_bin_constant_x_is_one_bin():
    frame = pd.DataFrame({"normalisation": "sum", "dlen": [2] * 6, "gap_value": range(6)})
    row = dg.variance_by_length_bin(frame).iloc[0]
    assert (row.n_bins, row.eta2, row.share_within) == (1, 0.0, 1.0)


def test_dose_response_means_intervals_and_slope():
    factors = [0.5, 1, 2, 4]
    rows = [{"normalisation": "mean", "factor": f, "gap_value": 3 + 2 * math.log2(f) + d}
            for f in factors for d in (-1.0, 1.0)]
    out = dg.dose_response(pd.DataFrame(rows))
    assert list(out.factor) == factors
    assert list(out["mean"]) == pytest.approx([1.0, 3.0, 5.0, 7.0])
    # two rows a ± 1 per factor: sem = 1, 1 degree of freedom
    assert list(out.mean_hi - out["mean"]) == pytest.approx([T_975_1] * 4)
    assert out.slope.iloc[0] == pytest.approx(2.0)
    assert out.slope_lo.iloc[0] < 2.0 < out.slope_hi.iloc[0]
    with pytest.raises(ValueError, match="> 0"):
        dg.dose_response(pd.DataFrame({"normalisation": "mean", "factor": [0, 1, 2],
                                       "gap_value": [1.0, 2.0, 3.0]}))


# ---------------------------------------------------------------------------------------------
# C2: gradient noise


def test_gradient_noise_per_label_across_seeds():
    rec = pd.concat([
        records_frame([{"pair_id": f"p{i}", "loss_p": 1, "loss_n": 2, "grad_cos": c,
                        "grad_norm": 2.0} for i, c in enumerate([0.5, -0.5, 0.3, 0.1])],
                      run_id="a", label="dpo", seed=0),
        records_frame([{"pair_id": f"p{i}", "loss_p": 1, "loss_n": 2, "grad_cos": c,
                        "grad_norm": 4.0} for i, c in enumerate([0.2, 0.4, 0.6, 0.0])],
                      run_id="b", label="dpo", seed=1),
        records_frame([{"loss_p": 1, "loss_n": 2, "grad_cos": 0.9, "grad_norm": 1.0}],
                      run_id="c", label="simpo", seed=0),
    ])
    steps = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "trace_sigma": [2.0, 4.0, 1.0, 1.0],
                          "grad_sq": [1.0, 1.0, 0.5, 0.5]})
    out = dg.gradient_noise(rec, steps).set_index("label")
    dpo = out.loc["dpo"]
    assert dpo.n_seeds == 2
    # per-seed means 0.1 and 0.3: sem = 0.1 with 1 degree of freedom
    assert (dpo.grad_cos, dpo.grad_cos_lo, dpo.grad_cos_hi) == pytest.approx(
        (0.2, 0.2 - 0.1 * T_975_1, 0.2 + 0.1 * T_975_1))
    assert dpo.grad_norm == pytest.approx(3.0)
    assert dpo.share_opposed == pytest.approx(0.125)  # 1/4 and 0/4
    assert dpo.gns == pytest.approx(2.5)  # mean tr(Σ) / mean |G|²: 3/1 and 1/0.5
    simpo = out.loc["simpo"]
    assert simpo.n_seeds == 1 and math.isnan(simpo.grad_cos_lo)  # one seed: no interval
    assert math.isnan(simpo.gns)  # no steps for it
    # the with-self cosine was not recorded here; its orthogonal baseline |g_i|/√Σ|g_j|² is
    # 1/√4 for four equal norms, 1 for a pair alone in its step
    assert math.isnan(dpo.grad_cos_with_self)
    assert dpo.grad_cos_with_self_orthogonal == pytest.approx(0.5)
    assert simpo.grad_cos_with_self_orthogonal == pytest.approx(1.0)


def test_gradient_noise_reads_the_with_self_cosine_beside_its_baseline():
    norms, with_self = [1.0, 1.0, 2.0], [0.5, 0.4, 0.9]
    rec = records_frame([{"pair_id": f"p{i}", "loss_p": 1, "loss_n": 2, "grad_cos": 0.0,
                          "grad_cos_with_self": c, "grad_norm": n}
                         for i, (n, c) in enumerate(zip(norms, with_self))])
    row = dg.gradient_noise(rec).iloc[0]
    assert row.grad_cos_with_self == pytest.approx(0.6)
    # by hand: |g_i| / √(1 + 1 + 4), averaged over the three pairs
    assert row.grad_cos_with_self_orthogonal == pytest.approx((1 + 1 + 2) / math.sqrt(6) / 3)


def test_gradient_noise_without_statistics_is_nan_not_zero():
    rec = records_frame([{"pair_id": f"p{i}", "loss_p": 1, "loss_n": 2} for i in range(3)])
    row = dg.gradient_noise(rec).iloc[0]
    assert math.isnan(row.grad_cos) and math.isnan(row.share_opposed) and math.isnan(row.gns)


# ---------------------------------------------------------------------------------------------
# C3: collapse and degeneration


def rising_from(k: int, n_steps: int = 14) -> tuple[list[float], list[float]]:
    """loss_p = 2 and gap = 1 up to step k − 1, both rising by 0.1 a step from step k on."""
    rise = [max(0, s - k + 1) * 0.1 for s in range(1, n_steps + 1)]
    return [2.0 + r for r in rise], [1.0 + r for r in rise]


def test_collapse_onset_is_the_step_the_rise_starts():
    loss_p, gap = rising_from(k=7)
    row = dg.collapse(trajectory(loss_p, gap), window=3).iloc[0]
    assert row.loss_p_start == pytest.approx(2.0)
    assert row.gap_start == pytest.approx(1.0)
    assert row.onset_step == 7
    assert row.last_step == 14
    assert row.loss_p_end == pytest.approx(2.0 + 0.8)
    assert row.gap_end == pytest.approx(1.0 + 0.8)
    assert row.loss_n_end == pytest.approx(row.loss_p_end + row.gap_end)
    assert not row.diverged


def test_collapse_ignores_a_transient_rise():
    loss_p, gap = rising_from(k=9)
    loss_p[3] += 1.0  # step 4 spikes, then comes back
    gap[3] += 1.0
    assert dg.collapse(trajectory(loss_p, gap), window=3).onset_step.iloc[0] == 9


def test_collapse_needs_the_gap_to_widen():
    loss_p, _ = rising_from(k=5)
    gap = [1.0 - 0.05 * s for s in range(len(loss_p))]  # loss_p rises, gap narrows
    assert math.isnan(dg.collapse(trajectory(loss_p, gap), window=3).onset_step.iloc[0])


def test_collapse_reports_a_diverged_run_as_diverged():
    loss_p, gap = rising_from(k=4, n_steps=7)
    rec = pd.concat([trajectory(loss_p, gap, run_id="ok"),
                     trajectory(loss_p, gap, run_id="bad", seed=1, status="diverged",
                                diverged_step=8)])
    out = dg.collapse(rec, window=3).set_index("run_id")
    assert out.loc["bad", "diverged"] and out.loc["bad", "status"] == "diverged"
    assert out.loc["bad", "diverged_step"] == 8 and out.loc["bad", "last_step"] == 7
    assert not out.loc["ok", "diverged"]
    assert out.loc["bad", "onset_step"] == 4  # judged on the steps it recorded


def test_collapse_with_perplexity():
    loss_p, gap = rising_from(k=4, n_steps=6)
    ppl = pd.DataFrame({"run_id": "r0", "step": [0, 0, 6, 6], "text_id": [0, 1, 0, 1],
                        "nll_sum": [10.0, 20.0, 30.0, 30.0], "n_tokens": [10, 10, 10, 10]})
    row = dg.collapse(trajectory(loss_p, gap), ppl, window=3).iloc[0]
    assert row.ppl_start == pytest.approx(math.exp(1.5))
    assert row.ppl_end == pytest.approx(math.exp(3.0))
    assert row.ppl_ratio == pytest.approx(math.exp(1.5))


def test_perplexity_by_step_keeps_nan():
    ppl = pd.DataFrame({"run_id": "r0", "step": [0, 0, 5, 5], "nll_sum": [4.0, 4.0, 6.0, math.nan],
                        "n_tokens": [4, 4, 4, 4]})
    out = dg.perplexity_by_step(ppl)
    assert out.ppl.iloc[0] == pytest.approx(math.e)
    assert out.ppl_ratio.iloc[0] == pytest.approx(1.0)
    assert math.isnan(out.ppl.iloc[1])  # not exp(6/4) from the finite text alone


def test_degeneration_of_known_strings():
    gen = pd.DataFrame({
        "run_id": "r0", "label": "naive", "seed": 0, "status": "completed",
        "step": [0, 0, 5, 5, 5],
        "lang": ["en", "en", "en", "zh", "en"],
        "text": ["a b a b", "c d", "x x x x x", "你好你好", "  "],
    })
    out = dg.degeneration(gen).set_index("step")
    start, end = out.loc[0], out.loc[5]
    # step 0: unigrams a b a b c d (4 unique of 6); bigrams ab ba ab cd (3 of 4; none across texts)
    assert start.distinct_1 == pytest.approx(4 / 6)
    assert start.distinct_2 == pytest.approx(3 / 4)
    assert start.repetition == 0.0  # "a b a b" has one 4-gram, "c d" none
    assert (start.n_texts, start.empty_share) == (2, 0.0)
    # step 5: x×5 and the characters 你 好 你 好; the blank text has nothing
    assert end.distinct_1 == pytest.approx(3 / 9)
    assert end.distinct_2 == pytest.approx(3 / 7)  # xx ×4; 你好 好你 你好
    assert end.repetition == pytest.approx(1 / 3)  # 4-grams: xxxx, xxxx (1 repeat); 你好你好
    assert end.empty_share == pytest.approx(1 / 3)
    assert math.isnan(start.ppl)


def test_degeneration_with_perplexity():
    gen = pd.DataFrame({"run_id": "r0", "step": [0, 5], "text": ["a b", "a a"]})
    ppl = pd.DataFrame({"run_id": "r0", "step": [0, 5], "nll_sum": [1.0, 3.0],
                        "n_tokens": [1, 1]})
    out = dg.degeneration(gen, ppl)
    assert list(out.ppl_ratio) == pytest.approx([1.0, math.exp(2.0)])


# ---------------------------------------------------------------------------------------------
# C4: displacement


def test_pair_features():
    pairs = pd.DataFrame({"pair_id": ["a", "b", "c"], "prompt": "q",
                          "chosen": ["same", "abcd", "abc"], "rejected": ["same", "abce", "xyzxyz"],
                          "lang": ["en", "en", "zh"]})
    out = dg.pair_features(pairs)
    assert list(out.columns) == ["pair_id", "lang", "category", "len_ratio", "edit_distance"]
    assert list(out.edit_distance) == pytest.approx([0.0, 0.25, 1.0])  # 1 − 2·3/8 for b
    assert list(out.len_ratio) == pytest.approx([1.0, 1.0, 2.0])
    assert out.category.isna().all()


def evals_run(run_id: str, seed: int, end: list[float], *, label="dpo", ref=None,
              **run) -> pd.DataFrame:
    """Evals at steps 0 and 10: every pair's chosen nll_sum is 5 before and `end` after."""
    rows = [{"step": step, "pair_id": f"p{i}", "loss_p": v, "loss_n": 1.0, "len_p": 1,
             "ref_logp_p": math.nan if ref is None else ref[i]}
            for step, values in ((0, [5.0] * len(end)), (10, end)) for i, v in enumerate(values)]
    return records_frame(rows, run_id=run_id, seed=seed, label=label, **run)


def test_displacement_shares_across_seeds():
    evals = pd.concat([
        evals_run("a", 0, [6.0, 4.0, 4.0, 4.0], ref=[-5.5] * 4),  # 1 of 4 fell; 1 below ref
        evals_run("b", 1, [6.0, 6.0, 6.0, 4.0], ref=[-5.5] * 4),  # 3 of 4 fell and below ref
        evals_run("c", 2, [9.0, 9.0, 9.0, 9.0], ref=[-5.5] * 4, status="diverged",
                  diverged_step=7),
    ])
    row = dg.displacement(evals).iloc[0]
    assert (row.n_seeds, row.n_diverged, row.n_pairs) == (3, 1, 8)
    # per seed 0.25 and 0.75: sem 0.25, 1 degree of freedom; the diverged run is left out
    assert (row.share_below_start, row.share_below_start_lo, row.share_below_start_hi) == (
        pytest.approx((0.5, 0.5 - 0.25 * T_975_1, 0.5 + 0.25 * T_975_1)))
    assert row.share_below_ref == pytest.approx(0.5)


def test_displacement_without_reference_is_nan():
    row = dg.displacement(evals_run("a", 0, [6.0, 4.0])).iloc[0]
    assert row.share_below_start == pytest.approx(0.5)
    assert math.isnan(row.share_below_ref)


def test_displacement_in_training_records_skips_pairs_seen_once():
    rec = records_frame([
        {"step": 1, "pair_id": "p0", "loss_p": 2.0, "loss_n": 1.0},
        {"step": 4, "pair_id": "p0", "loss_p": 3.0, "loss_n": 1.0},  # fell
        {"step": 2, "pair_id": "p1", "loss_p": 2.0, "loss_n": 1.0},
        {"step": 5, "pair_id": "p1", "loss_p": 1.0, "loss_n": 1.0},  # rose
        {"step": 3, "pair_id": "p2", "loss_p": 9.0, "loss_n": 1.0},  # seen once: left out
    ])
    row = dg.displacement(rec).iloc[0]
    assert (row.n_pairs, row.share_below_start) == (2, 0.5)


def test_displacement_by_edit_distance_bin():
    evals = evals_run("a", 0, [6.0, 6.0, 4.0])
    pairs = pd.DataFrame({"pair_id": ["p0", "p1", "p2"], "chosen": ["abcdefghij"] * 3,
                          "rejected": ["abcdefghik", "zzzzzzzzzz", "abcdefghiz"]})
    out = dg.displacement(evals, pairs).set_index("edit_bin")
    # p0 and p2 differ in one character of ten (distance 0.1), p1 in all
    assert list(out.index) == ["[0, 0.1]", "(0.3, 1]"]
    assert out.loc["[0, 0.1]", "share_below_start"] == pytest.approx(0.5)
    assert out.loc["(0.3, 1]", "share_below_start"] == 1.0
    assert list(out.n_pairs) == [2, 1]
    with pytest.raises(ValueError, match="not in `pairs`"):
        dg.displacement(evals, pairs.iloc[:2])


# ---------------------------------------------------------------------------------------------
# C5: the summary table


def test_summary_table():
    loss_p, gap = rising_from(k=4, n_steps=6)
    rec = pd.concat([
        trajectory(loss_p, gap, run_id="n0", label="naive", seed=0),
        trajectory(loss_p, gap, run_id="n1", label="naive", seed=1),
        trajectory([2.0] * 6, [1.0] * 6, run_id="d0", label="dpo", seed=0),
        trajectory([2.0] * 3, [1.0] * 3, run_id="d1", label="dpo", seed=1, status="diverged",
                   diverged_step=4),
    ])
    evals = pd.concat([
        evals_run("n0", 0, [6.0, 6.0], label="naive"),
        evals_run("n1", 1, [7.0, 7.0], label="naive"),
        evals_run("d0", 0, [4.0, 6.0], label="dpo"),
        evals_run("d1", 1, [math.nan, math.nan], label="dpo", status="diverged", diverged_step=4),
    ])
    out = dg.summary_table(rec, evals).set_index("label")
    assert list(out.index) == ["dpo", "naive"]
    assert list(out.n_seeds) == [2, 2] and list(out.n_diverged) == [1, 0]
    for metric in ("loss_p", "gap", "r2_sum", "grad_cos", "onset_share", "diverged_share",
                   "displacement", "ppl_ratio"):
        assert {metric, f"{metric}_lo", f"{metric}_hi"} <= set(out.columns)
    # final held-out loss_p: naive seeds 6 and 7; dpo only its completed seed (the NaN one is out)
    assert out.loc["naive", "loss_p"] == pytest.approx(6.5)
    assert out.loc["dpo", "loss_p"] == pytest.approx(5.0)
    assert math.isnan(out.loc["dpo", "loss_p_lo"])  # one completed seed
    assert out.loc["naive", "onset_share"] == 1.0 and out.loc["dpo", "onset_share"] == 0.0
    assert out.loc["dpo", "diverged_share"] == 0.5
    # 1 of 2 diverged: Clopper–Pearson solves 1 − (1 − p)² = 0.025 for the lower end
    assert out.loc["dpo", "diverged_share_lo"] == pytest.approx(1 - math.sqrt(0.975))
    assert out.loc["naive", "displacement"] == 1.0 and out.loc["dpo", "displacement"] == 0.5
    assert "displacement_close" not in out.columns

    # p0's responses differ in one character of ten (close), p1's in all
    pairs = pd.DataFrame({"pair_id": ["p0", "p1"], "chosen": ["abcdefghij"] * 2,
                          "rejected": ["abcdefghik", "zzzzzzzzzz"]})
    out = dg.summary_table(rec, evals, pairs=pairs).set_index("label")
    assert out.loc["naive", "displacement_close"] == 1.0
    assert out.loc["dpo", "displacement_close"] == 0.0  # d0's p0 rose (5 → 4 nats)


def test_an_empty_optional_table_means_the_same_as_none():
    loss_p, gap = rising_from(k=4, n_steps=6)
    rec = trajectory(loss_p, gap, run_id="n0", label="naive", seed=0)
    empty = pd.DataFrame()
    pd.testing.assert_frame_equal(dg.summary_table(rec, empty, empty, empty, empty),
                                  dg.summary_table(rec))
    pd.testing.assert_frame_equal(dg.collapse(rec, empty), dg.collapse(rec))
    pd.testing.assert_frame_equal(dg.gradient_noise(rec, empty), dg.gradient_noise(rec))
    assert math.isnan(dg.collapse(rec, empty).ppl_ratio.iloc[0])


# ---------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize("call", [
    lambda df: dg.gap_normalisations(df),
    lambda df: dg.length_effect(df),
    lambda df: dg.variance_by_length_bin(df),
    lambda df: dg.dose_response(df),
    lambda df: dg.gradient_noise(df),
    lambda df: dg.collapse(df),
    lambda df: dg.perplexity_by_step(df),
    lambda df: dg.degeneration(df),
    lambda df: dg.pair_features(df),
    lambda df: dg.displacement(df),
    lambda df: dg.summary_table(df),
], ids=["gap_normalisations", "length_effect", "variance_by_length_bin", "dose_response",
        "gradient_noise", "collapse", "perplexity_by_step", "degeneration", "pair_features",
        "displacement", "summary_table"])
def test_missing_columns_are_named(call):
    with pytest.raises(SchemaError, match=r"missing column\(s\) \[.+\]"):
        call(pd.DataFrame({"run_id": ["r0"], "unrelated": [1]}))


def test_missing_column_message_names_the_column():
    rec = records_frame([{"loss_p": 1.0, "loss_n": 2.0}]).drop(columns="nll_sum_n")
    with pytest.raises(SchemaError, match="nll_sum_n"):
        dg.gap_normalisations(rec)
