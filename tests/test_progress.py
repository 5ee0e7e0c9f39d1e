"""The study's measures on constructed records whose answer is known: progress by held-out reward
accuracy, levels never interpolated from step 0, no mean over learning rates, paired
differences, collapse apart from degradation, displacement at points fixed in advance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prefstudy import progress as pg

TOKENS = 10  # every response's length


def run(run_id, label, changes, *, lr_seed=0, split="heldout"):
    """A run's evals: changes = {step: [(d_chosen, d_rejected) per pair]} in nats per token
    (step 0 is added, every change 0). A pair's reward margin is TOKENS × (d_rejected −
    d_chosen): it counts as correct where the rejected answer fell further."""
    rows = []
    n = len(next(iter(changes.values())))
    for step, pairs in {0: [(0.0, 0.0)] * n, **changes}.items():
        for j, (dc, dr) in enumerate(pairs):
            loss_p, loss_n = 2.0 + dc, 3.0 + dr
            rows.append({"run_id": run_id, "label": label, "seed": lr_seed, "step": step,
                         "pair_id": f"p{j}", "split": split, "len_p": TOKENS, "len_n": TOKENS,
                         "loss_p": loss_p, "loss_n": loss_n, "nll_sum_p": loss_p * TOKENS,
                         "nll_sum_n": loss_n * TOKENS})
    return pd.DataFrame(rows)


def neutral(run_id, per_step, spread=(0.0,)):
    """Neutral passages: at each step every passage's per-token NLL is 2 + per_step[step] plus
    its own offset from `spread` (one passage per offset; the offsets apply at every step)."""
    return pd.DataFrame([{"run_id": run_id, "step": step, "text_id": i,
                          "nll_sum": (2.0 + value + (off if step else 0.0)) * 50,
                          "n_tokens": 50}
                         for step, value in {0: 0.0, **per_step}.items()
                         for i, off in enumerate(spread)])


def accuracy_run(run_id, label, accuracies, n=20, chosen=0.0, seed=0):
    """A run whose held-out accuracy at steps 1, 2, … is `accuracies` (k of n pairs correct,
    the others wrong), its chosen loss changing by `chosen` per step at every pair."""
    changes = {}
    for step, acc in enumerate(accuracies, start=1):
        k = round(acc * n)
        dc = chosen * step
        changes[step] = [(dc, dc + 0.1) if j < k else (dc, dc - 0.1) for j in range(n)]
    return run(run_id, label, changes, lr_seed=seed)


# --------------------------------------------------------------------------- paths


def test_accuracy_counts_a_tie_as_one_half_and_starts_after_step_0():
    evals = run("a", "A", {1: [(0.0, 0.1), (0.1, 0.0), (0.2, 0.2), (0.0, 0.3)]})
    paths = pg.progress_paths(evals)
    assert list(paths.columns) == list(pg.PATH_COLUMNS)
    assert list(paths.step) == [1]  # step 0 is the start, not a point of the path
    row = paths.iloc[0]
    assert row.accuracy == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert row.reward_margin == pytest.approx(TOKENS * (0.1 - 0.1 + 0 + 0.3) / 4)
    assert row.d_chosen == pytest.approx(0.075)
    assert math.isnan(row.kl) and math.isnan(row.d_greedy_logp)  # not recorded


def test_kl_and_the_greedy_answer_are_read_where_recorded():
    evals = run("a", "A", {1: [(0.0, 0.1), (0.0, 0.1)]})
    evals["kl_sum_p"] = np.where(evals.step == 0, 0.0, 2.0)
    evals["kl_sum_n"] = np.where(evals.step == 0, 0.0, 4.0)
    evals["greedy_logp_sum"] = np.where(evals.step == 0, -30.0, -25.0)
    row = pg.progress_paths(evals).iloc[0]
    assert row.kl == pytest.approx(6.0 / (2 * TOKENS))
    assert row.d_greedy_logp == pytest.approx(5.0)


def test_neutral_cost_is_resampled_over_passages():
    evals = accuracy_run("a", "A", [0.6, 0.8])
    flat = neutral("a", {1: 0.1, 2: 0.2}, spread=(0.0,) * 6)
    varied = neutral("a", {1: 0.1, 2: 0.2}, spread=(-0.2, -0.1, 0.0, 0.0, 0.1, 0.2))
    same = pg.path_intervals(pg.resample_paths(evals, flat, n_boot=200), ["d_neutral"])
    spread = pg.path_intervals(pg.resample_paths(evals, varied, n_boot=200), ["d_neutral"])
    assert same.d_neutral_lo.tolist() == pytest.approx(same.d_neutral_hi.tolist())
    assert (spread.d_neutral_lo < spread.d_neutral).all()
    assert (spread.d_neutral < spread.d_neutral_hi).all()


def test_runs_evaluated_at_different_steps_keep_their_own_neutral_cost():
    """A run stopped early (diverged, or still running) has fewer evaluations than the others:
    each run's Δ neutral NLL is still its own, at its own steps."""
    evals = pd.concat([accuracy_run("a", "A", [0.6, 0.8, 0.9]), accuracy_run("b", "B", [0.6])])
    ppl = pd.concat([neutral("a", {1: 0.1, 2: 0.2, 3: 0.3}, spread=(-0.1, 0.0, 0.1)),
                     neutral("b", {1: 0.5}, spread=(-0.1, 0.0, 0.1))])
    paths = pg.progress_paths(evals, ppl)
    assert paths.set_index(["run_id", "step"]).d_neutral.to_dict() == pytest.approx(
        {("a", 1): 0.1, ("a", 2): 0.2, ("a", 3): 0.3, ("b", 1): 0.5})


# --------------------------------------------------------------------------- levels


def test_a_level_is_never_interpolated_from_step_0():
    x = np.array([[0.7, 0.5, 0.5], [0.8, 0.6, 0.55]])  # evaluations × paths
    i, t, status = pg.level_crossing(x, 0.6)
    assert list(status) == [-1, 1, 0]  # passed before the first evaluation / reached / never
    assert i[1] == 1 and t[1] == pytest.approx(1.0)
    y = np.array([[1.0, 2.0, 3.0], [5.0, 4.0, 7.0]])
    out = pg.at_crossing(y, i, t)
    assert math.isnan(out[0]) and out[1] == pytest.approx(4.0) and math.isnan(out[2])
    i, t, status = pg.level_crossing(np.array([[0.5], [0.7]]), 0.6)
    assert pg.at_crossing(np.array([[0.0], [2.0]]), i, t)[0] == pytest.approx(1.0)


def test_a_single_evaluation_reaches_no_level():
    i, t, status = pg.level_crossing(np.array([[0.5, 0.7]]), 0.6)
    assert list(status) == [0, -1] and np.isnan(t).all()


def test_a_nan_evaluation_does_not_reach_a_level():
    i, t, status = pg.level_crossing(np.array([[0.5], [np.nan], [0.7]]), 0.6)
    assert status[0] == 0


def test_each_run_at_each_level_never_a_mean_over_learning_rates():
    evals = pd.concat([accuracy_run("slow", "A", [0.5, 0.6, 0.7], chosen=0.1),
                       accuracy_run("fast", "A", [0.55, 0.75, 0.8], chosen=0.3)])
    ppl = pd.concat([neutral("slow", {1: 0.01, 2: 0.02, 3: 0.03}),
                     neutral("fast", {1: 0.1, 2: 0.2, 3: 0.3})])
    matched = pg.matched_progress(evals, ppl, [0.6, 0.7], n_boot=0)
    table = matched.table.set_index(["run_id", "level"])
    assert len(table) == 4  # one row per run and level
    assert table.loc[("slow", 0.6), "status"] == pg.REACHED
    assert table.loc[("slow", 0.6), "d_chosen"] == pytest.approx(0.2)  # at step 2 exactly
    assert table.loc[("fast", 0.6), "step"] == pytest.approx(1.25)  # 0.55 → 0.75 at 1/4
    assert table.loc[("fast", 0.6), "d_chosen"] == pytest.approx(0.375)
    env = pg.envelope(matched.table, {"slow": 1e-4, "fast": 1e-3}).set_index(["run_id", "level"])
    assert env.loc[("slow", 0.6), "envelope"] and not env.loc[("fast", 0.6), "envelope"]
    pooled = pg.objective_levels(matched, {"slow": 1e-4, "fast": 1e-3}).set_index("level")
    assert pooled.loc[0.6, "lr"] == 1e-4 and pooled.loc[0.6, "d_chosen"] == pytest.approx(0.2)


def test_a_level_passed_before_the_first_evaluation_has_no_value():
    evals = accuracy_run("a", "A", [0.7, 0.8])
    table = pg.matched_progress(evals, None, [0.6, 0.75], n_boot=50).table.set_index("level")
    assert table.loc[0.6, "status"] == pg.BEFORE and math.isnan(table.loc[0.6, "d_chosen"])
    assert table.loc[0.75, "status"] == pg.REACHED


def test_the_paired_difference_of_identical_objectives_is_zero():
    one = accuracy_run("a", "A", [0.5, 0.6, 0.7], chosen=0.2)
    for j in range(0, 20, 3):  # pairs that differ, so the resamples move
        one.loc[(one.pair_id == f"p{j}") & (one.step > 0), "loss_p"] += 0.05 * j
    other = one.assign(run_id="b", label="B")
    ppl = pd.concat([neutral(r, {1: 0.1, 2: 0.2, 3: 0.4}, spread=(-0.1, 0.0, 0.1, 0.2))
                     for r in ("a", "b")])
    matched = pg.matched_progress(pd.concat([one, other]), ppl, [0.6], n_boot=300)
    lrs = {"a": 1e-4, "b": 1e-4}
    for column in ("d_chosen", "d_neutral"):
        diff = pg.paired_difference(matched, lrs, "A", "B", 0.6, column)
        assert diff["diff"] == 0.0 and diff["diff_lo"] <= 0.0 <= diff["diff_hi"]
        assert diff["diff_lo"] == diff["diff_hi"] == 0.0  # every resample is the same on both
    shifted = other.assign(loss_p=other.loss_p + np.where(other.step > 0, 0.5, 0.0))
    matched = pg.matched_progress(pd.concat([one, shifted]), ppl, [0.6], n_boot=300)
    diff = pg.paired_difference(matched, lrs, "B", "A", 0.6, "d_chosen")
    assert diff["diff"] == pytest.approx(0.5) and diff["diff_lo"] == pytest.approx(0.5)


def test_seeds_are_shown_and_resampled_beside_pairs():
    evals = pd.concat([accuracy_run(f"s{s}", "A", [0.5, 0.6, 0.7], chosen=0.1 * (s + 1), seed=s)
                       for s in range(3)])
    matched = pg.matched_progress(evals, None, [0.6], n_boot=300)
    pooled = pg.objective_levels(matched, {f"s{s}": 1e-4 for s in range(3)},
                                 y=("d_chosen",)).iloc[0]
    assert pooled.n_seeds == 3
    assert pooled.d_chosen_seeds == pytest.approx({0: 0.2, 1: 0.4, 2: 0.6})
    assert pooled.d_chosen == pytest.approx(0.4)
    assert pooled.d_chosen_lo < 0.4 < pooled.d_chosen_hi  # the seeds' spread is in the interval


def test_a_level_above_chance_needs_enough_pairs():
    assert pg.resolution(40) == 0.025
    assert not pg.above_chance(0.6, 40) and pg.above_chance(0.7, 40)
    need = pg.min_pairs_above_chance(0.6)
    assert pg.above_chance(0.6, need) and not pg.above_chance(0.6, need - 1)


# --------------------------------------------------------------------------- collapse


def _collapse(evals, ppl, warmup=None, **kw):
    return pg.collapse_onsets(evals, ppl, warmup, n_boot=200, **kw).set_index("run_id")


def _rising(run_id, chosen, neutral_rise, n=20, wiggle=0.02):
    """Accuracy 0.75 at every evaluation; the chosen loss rises `chosen[s]` (± wiggle across
    pairs), the rejected loss 0.1 more, neutral text `neutral_rise[s]`."""
    changes = {}
    for step, (dc, dn) in enumerate(zip(chosen, neutral_rise), start=1):
        changes[step] = [(dc + wiggle * (j % 3 - 1), dc + (0.1 if j < 15 else -0.1) + 0.05)
                         for j in range(n)]
    return run(run_id, run_id.upper(), changes), neutral(
        run_id, dict(enumerate(neutral_rise, start=1)), spread=(-0.01, 0.0, 0.01) * 4)


def test_the_chosen_loss_rising_with_neutral_text_is_degradation_not_collapse():
    evals, ppl = _rising("d", [0.5, 1.0, 2.0, 3.0], [0.5, 1.0, 2.0, 3.0])
    row = _collapse(evals, ppl).loc["d"]
    assert row.verdict == pg.DEGRADATION
    assert math.isnan(row.collapse_step) and row.degradation_step == 2  # never the first


def test_a_collapse_after_warm_up_is_found_at_its_step():
    # warm-up to step 2; the chosen loss outruns neutral text from step 3 on
    evals, ppl = _rising("c", [0.0, 0.05, 0.6, 1.2, 2.0], [0.0, 0.05, 0.1, 0.1, 0.1])
    row = _collapse(evals, ppl, {"c": 2}).loc["c"]
    assert row.collapse_step == 3 and row.verdict.startswith(pg.COLLAPSE)
    assert row.n_settled == 3 and row.excess > 1.5 and row.excess_lo > 0


def test_the_first_evaluation_after_a_cold_start_decides_nothing():
    # collapsing at steps 1 and 2 only, then recovering: with no warm-up, step 1 is not settled
    evals, ppl = _rising("s", [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    assert np.isnan(_collapse(evals, ppl).loc["s", "collapse_step"])
    assert _collapse(evals, ppl, consecutive=1).loc["s", "collapse_step"] == 2
    few, ppl_few = _rising("f", [1.0, 1.0], [0.0, 0.0])
    assert _collapse(few, ppl_few).loc["f", "verdict"] == "too few evaluations"
    assert list(pg.settled_steps(np.array([6, 12, 18]), 0)) == [False, True, True]
    assert list(pg.settled_steps(np.array([2, 4, 6]), 3)) == [False, True, True]


def test_collapse_needs_preference_to_grow():
    changes = {s: [(0.5 * s, 0.5 * s - 0.1)] * 10 for s in range(1, 5)}  # every pair wrong
    evals = run("w", "W", changes)
    row = _collapse(evals, neutral("w", {s: 0.0 for s in range(1, 5)})).loc["w"]
    assert math.isnan(row.collapse_step)


# --------------------------------------------------------------------------- displacement


def _displacement_run(extra_step=None):
    """Accuracy 0.5 → 0.9 between steps 1 and 2 (level 0.7 at t = ½); pair j's chosen loss at
    step 2 is 0.02·j (at the crossing 0.01·j); neutral text 0.1 at step 2 (0.05 there)."""
    n = 20
    changes = {1: [(0.0, 0.1) if j < 10 else (0.0, -0.1) for j in range(n)],
               2: [(0.02 * j, 0.02 * j + (0.1 if j < 18 else -0.1)) for j in range(n)]}
    per_step = {1: 0.0, 2: 0.1}
    if extra_step is not None:  # a later evaluation within any tolerance, with its own share
        changes[3] = [(value, value + 0.1) for value in extra_step]
        per_step[3] = 0.1
    return run("r", "R", changes), neutral("r", per_step)


def test_displacement_is_counted_where_the_level_fixes_it():
    evals, ppl = _displacement_run()
    matched = pg.matched_progress(evals, ppl, [0.7], n_boot=0).table
    out = pg.displacement_at_levels(evals, ppl, matched).iloc[0]
    # at the crossing pair j's chosen rose 0.01·j against neutral 0.05: j = 6..19 displaced
    assert (out.k, out.n) == (14, 20) and out.d_neutral == pytest.approx(0.05)
    assert 0 < out.share_lo < out.share < out.share_hi < 1


def test_the_displacement_share_does_not_depend_on_other_points_once_the_rule_is_fixed():
    evals, ppl = _displacement_run()
    reference = pg.displacement_at_levels(
        evals, ppl, pg.matched_progress(evals, ppl, [0.7], n_boot=0).table)
    for later in ([0.0] * 20, [1.0] * 20, list(np.linspace(0, 0.3, 20))):
        evals2, ppl2 = _displacement_run(extra_step=later)
        out = pg.displacement_at_levels(
            evals2, ppl2, pg.matched_progress(evals2, ppl2, [0.7], n_boot=0).table)
        pd.testing.assert_frame_equal(out, reference)


def test_the_displacement_curve_starts_at_nothing_displaced():
    evals, ppl = _displacement_run()
    curve = pg.displacement_curve(evals, ppl).set_index("step")
    assert (curve.loc[0, "k"], curve.loc[0, "d_neutral"]) == (0, 0.0)
    assert curve.loc[2, "k"] == 14  # 0.02·j > 0.1 for j = 6..19
    assert curve.loc[1, "k"] == 0


def test_trained_pairs_are_read_apart_from_held_out_ones():
    held = run("a", "A", {1: [(0.2, 0.3)] * 4})
    trained = run("a", "A", {1: [(0.5, 0.6)] * 4}, split="train").assign(
        pair_id=lambda f: "t" + f.pair_id)
    evals = pd.concat([held, trained])
    assert set(pg.pair_changes(evals).pair_id) == {"p0", "p1", "p2", "p3"}
    assert set(pg.pair_changes(evals, "train").pair_id) == {"tp0", "tp1", "tp2", "tp3"}
    assert pg.progress_paths(evals, split="train").d_chosen.iloc[0] == pytest.approx(0.5)
    # runs recorded before trained pairs were evaluated have no split: every row is held-out
    assert len(pg.pair_changes(held.drop(columns="split"))) == 4


# --------------------------------------------------------------------------- refusals


def test_refusals_by_language():
    assert pg.is_refusal("  I'm sorry, but no.", "en") and pg.is_refusal("抱歉，我不能。", "zh")
    assert not pg.is_refusal("Sure, here it is.", "en")
