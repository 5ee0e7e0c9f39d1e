"""Diagnostics on hand-built frames whose answers are known.

Every frame is written out here (no model, no training): an exactly linear gap must give R² = 1
and its slope, known strings give known distinct-n, and the across-seed intervals are checked
against t quantiles typed in from tables. The intervals and fits themselves: test_stats.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prefstudy import diagnostics as dg
from prefstudy.columns import SchemaError
from prefstudy.stats import FIT_STATISTICS

T_975_1 = 12.706204736174694  # Student t, 97.5% quantile, 1 degree of freedom


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


def test_length_effect_intervals_cover_the_estimate_on_many_rows():
    rng = np.random.default_rng(6)
    n_pairs, steps = 200, 50
    frame = linear_frame(n_pairs=n_pairs, steps=steps)
    frame["dlen"] = np.tile(rng.integers(-40, 40, n_pairs), steps).astype(float)
    frame["gap_value"] = 2.0 * frame.dlen + np.tile(rng.normal(0, 30, n_pairs), steps) \
        + rng.normal(0, 5, len(frame))
    row = dg.length_effect(frame, n_boot=300).iloc[0]
    for stat in FIT_STATISTICS:
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
    assert dpo.gns_reason == "" and simpo.gns_reason == ""  # no steps: nothing to say
    # a pooled |G|² estimate below 0 (the unbiased estimator can go there): undefined, said so
    negative = dg.gradient_noise(rec, steps.assign(grad_sq=[1.0, 1.0, -0.5, -0.7]))
    dpo = negative.set_index("label").loc["dpo"]
    assert math.isnan(dpo.gns)
    assert dpo.gns_reason == "undefined: the pooled |G|² estimate is ≤ 0 in 1 of 2 run(s)"


def test_gradient_noise_never_pools_learning_rates():
    """Two runs of one objective at two learning rates are two rows, never two seeds of one."""
    rec = pd.concat([
        records_frame([{"pair_id": f"p{i}", "loss_p": 1, "loss_n": 2, "grad_cos": c,
                        "grad_norm": 2.0} for i, c in enumerate([0.5, 0.3])],
                      run_id="lo", label="dpo", seed=0).assign(lr=1e-4),
        records_frame([{"pair_id": f"p{i}", "loss_p": 1, "loss_n": 2, "grad_cos": c,
                        "grad_norm": 2.0} for i, c in enumerate([-0.1, 0.1])],
                      run_id="hi", label="dpo", seed=0).assign(lr=1e-3)])
    out = dg.gradient_noise(rec).set_index(["label", "lr"])
    assert list(out.index) == [("dpo", 1e-4), ("dpo", 1e-3)] or sorted(out.index) == [
        ("dpo", 1e-4), ("dpo", 1e-3)]
    assert out.loc[("dpo", 1e-4)].grad_cos == pytest.approx(0.4)
    assert out.loc[("dpo", 1e-3)].grad_cos == pytest.approx(0.0)
    assert (out.n_seeds == 1).all()


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
# C3: perplexity and degeneration


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
# Optional tables


def test_an_empty_optional_table_means_the_same_as_none():
    rec = records_frame([{"pair_id": f"p{i}", "loss_p": 1, "loss_n": 2} for i in range(3)])
    gen = pd.DataFrame({"run_id": "r0", "step": [0, 5], "text": ["a b", "a a"]})
    empty = pd.DataFrame()
    pd.testing.assert_frame_equal(dg.gradient_noise(rec, empty), dg.gradient_noise(rec))
    pd.testing.assert_frame_equal(dg.degeneration(gen, empty), dg.degeneration(gen))
    assert dg.degeneration(gen, empty).ppl_ratio.isna().all()


# ---------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize("call", [
    lambda df: dg.gap_normalisations(df),
    lambda df: dg.length_effect(df),
    lambda df: dg.variance_by_length_bin(df),
    lambda df: dg.gradient_noise(df),
    lambda df: dg.perplexity_by_step(df),
    lambda df: dg.degeneration(df),
    lambda df: dg.run_step_means(df, ["loss_p"]),
    lambda df: dg.length_bins(df),
], ids=["gap_normalisations", "length_effect", "variance_by_length_bin", "gradient_noise",
        "perplexity_by_step", "degeneration", "run_step_means", "length_bins"])
def test_missing_columns_are_named(call):
    with pytest.raises(SchemaError, match=r"missing column\(s\) \[.+\]"):
        call(pd.DataFrame({"run_id": ["r0"], "unrelated": [1]}))


def test_missing_column_message_names_the_column():
    rec = records_frame([{"loss_p": 1.0, "loss_n": 2.0}]).drop(columns="nll_sum_n")
    with pytest.raises(SchemaError, match="nll_sum_n"):
        dg.gap_normalisations(rec)


def test_the_audit_tables_say_why_a_number_is_undefined():
    from prefstudy import auditstats

    scores = pd.DataFrame({"pair_id": ["a", "b"], "len_p": [10, 10], "len_n": [30, 11],
                           "gap_sum": [1.0, np.nan], "gap": [0.1, np.nan]})
    acc = auditstats.preference_accuracy(scores).set_index(["normalisation", "length_kind"])
    assert acc.reason["sum", "rejected longer"] == ""
    assert acc.reason["sum", "chosen longer"] == "no pair is chosen longer"
    assert acc.reason["mean", "similar"] == \
        "none of its 1 pairs has a finite gap (cut away or not finite)"
    # one pair per batch: no leave-one-out cosine, and no interval over one batch
    grads = pd.DataFrame({"objective": "naive", "label": "naive-sum", "pair_id": ["a", "b"],
                          "batch": ["a0", "a1"], "len_p": [3, 4], "len_n": [5, 9],
                          "grad_norm": [1.0, 2.0], "grad_cos_loo": [np.nan, np.nan],
                          "grad_cos_orthogonal": 0.0, "entanglement": 0.2, "ches": 1.0})
    summary = auditstats.gradient_summary(grads, n_boot=20)
    assert summary.reason.iloc[0] == (
        "gradient norm on length: 2 rows with a finite tokens and grad_norm; a fit needs at "
        "least 3; leave-one-out cosine: none of its 2 pairs has one (a pair alone in its batch "
        "has no others; or its gradient is not finite)")
    two = grads.assign(batch="a0", grad_cos_loo=[0.1, -0.2])
    assert auditstats.gradient_summary(two, n_boot=20).reason.iloc[0].endswith(
        "leave-one-out cosine: 1 batch: a bootstrap interval resamples at least 3")
