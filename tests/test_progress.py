"""Matched progress on hand-built evaluations whose paths are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prefstudy import progress as pg

PAIRS = ["p0", "p1", "p2", "p3"]


def evals_run(run_id, label, gains, chosen, *, lengths=(2, 2, 2, 2), spread=0.0):
    """A run's held-out evals: at step s every pair's gap grew by gains[s] and its chosen loss
    changed by chosen[s] (token-mean); step 0 is gain 0. `spread` adds ±spread to pair gains."""
    rows = []
    for step, (gain, d_chosen) in enumerate(zip([0.0, *gains], [0.0, *chosen])):
        for j, (pair, n) in enumerate(zip(PAIRS, lengths)):
            wiggle = spread * (j - 1.5) if step else 0.0
            loss_p = 2.0 + d_chosen
            loss_n = 3.0 + d_chosen + gain + wiggle  # gap = 1 + gain + wiggle
            rows.append({"run_id": run_id, "label": label, "seed": 0, "step": step,
                         "pair_id": pair, "len_p": n, "len_n": n, "loss_p": loss_p,
                         "loss_n": loss_n, "nll_sum_p": loss_p * n, "nll_sum_n": loss_n * n})
    return pd.DataFrame(rows)


def neutral_run(run_id, per_token):
    return pd.DataFrame([{"run_id": run_id, "step": s, "text_id": t, "nll_sum": v * 10,
                          "n_tokens": 10} for s, v in enumerate(per_token) for t in range(2)])


@pytest.fixture
def study():
    evals = pd.concat([evals_run("a", "A", [1.0, 2.0], [-0.5, -1.0]),
                       evals_run("b", "B", [0.5, 1.0], [0.2, 0.4])])
    ppl = pd.concat([neutral_run("a", [2.0, 2.1, 2.3]), neutral_run("b", [2.0, 2.0, 2.02])])
    return evals, ppl


def test_paths_relative_to_step_0(study):
    evals, ppl = study
    paths = pg.progress_paths(evals, ppl).set_index(["run_id", "step"])
    assert list(paths.reset_index().columns) == ["run_id", "step", *(
        c for c in pg.PATH_COLUMNS if c not in ("run_id", "step"))]
    assert paths.loc[("a", 1), "margin_gain"] == pytest.approx(1.0)
    assert paths.loc[("a", 2), "d_chosen"] == pytest.approx(-1.0)
    assert paths.loc[("a", 2), "d_neutral"] == pytest.approx(0.3)
    assert paths.loc[("b", 1), "accuracy"] == 1.0  # every pair's margin grew
    assert (paths.n_pairs == 4).all()


def test_first_crossing_interpolates_and_says_never():
    x = np.array([[1.0, 0.5], [2.0, 1.0]])
    y = np.array([[-0.5, 0.2], [-1.0, 0.4]])
    out = pg.first_crossing(x, y, 1.5)
    assert out[0] == pytest.approx(-0.75) and math.isnan(out[1])
    assert pg.first_crossing(x, y, 0.25)[1] == pytest.approx(0.1)  # from the start at (0, 0)


def test_matched_progress_compares_at_the_same_margin_gain(study):
    evals, ppl = study
    out = pg.matched_progress(evals, ppl, [0.5, 1.5], n_boot=50).set_index(["label", "level"])
    assert out.loc[("A", 1.5), "d_chosen"] == pytest.approx(-0.75)
    assert out.loc[("A", 1.5), "d_neutral"] == pytest.approx(0.2)
    assert out.loc[("A", 0.5), "d_chosen"] == pytest.approx(-0.25)
    assert out.loc[("B", 0.5), "d_chosen"] == pytest.approx(0.2)
    assert out.loc[("B", 1.5), "n_runs"] == 0 and math.isnan(out.loc[("B", 1.5), "d_chosen"])
    assert (out.n_pairs == 4).all()
    # identical pairs: every resample gives the same path, the interval is the point
    assert out.loc[("A", 1.5), "d_chosen_lo"] == pytest.approx(-0.75)


def test_pair_bootstrap_interval_contains_the_point_and_has_width():
    evals = evals_run("a", "A", [1.0, 2.0], [-0.5, -1.0], spread=0.4)
    out = pg.matched_progress(evals, None, [1.0], y=("d_chosen",), n_boot=200)
    row = out.iloc[0]
    assert row.d_chosen_lo < row.d_chosen < row.d_chosen_hi
    assert set(out.columns) == {"label", "level", "n_runs", "n_pairs", "d_chosen", "d_chosen_lo",
                                "d_chosen_hi"}


def test_a_nan_pair_makes_its_step_nan_not_dropped():
    evals = evals_run("a", "A", [1.0, 2.0], [-0.5, -1.0])
    evals.loc[(evals.step == 2) & (evals.pair_id == "p1"), "loss_p"] = float("nan")
    paths = pg.progress_paths(evals).set_index("step")
    assert math.isnan(paths.loc[2, "d_chosen"])


def test_collapse_needs_consecutive_evaluations_above_the_noise():
    # chosen loss rises 0.3 at steps 2 and 3 (gap widening throughout): onset at step 2
    rising = evals_run("r", "R", [0.5, 1.0, 1.5], [0.0, 0.3, 0.3], spread=0.1)
    # rises only at the last evaluation: no onset
    late = evals_run("l", "L", [0.5, 1.0, 1.5], [0.0, 0.0, 0.3])
    # chosen loss rises but the gap shrinks: degraded, not this collapse
    shrinking = evals_run("s", "S", [-0.5, -1.0, -1.5], [0.3, 0.3, 0.3])
    out = pg.collapse_onsets(pd.concat([rising, late, shrinking]), n_boot=100)
    out = out.set_index("label")
    assert out.loc["R", "onset_step"] == 2
    assert math.isnan(out.loc["L", "onset_step"]) and math.isnan(out.loc["S", "onset_step"])
    assert out.loc["R", "n_evals"] == 3 and out.loc["R", "d_chosen"] == pytest.approx(0.3)
    # every pair's chosen loss rose alike: the pair bootstrap has nothing to vary
    assert out.loc["R", "d_chosen_lo"] == pytest.approx(0.3) == out.loc["R", "d_chosen_hi"]
    one = pg.collapse_onsets(late, consecutive=1, n_boot=20)
    assert one.onset_step[0] == 3


def test_a_rise_within_the_pair_noise_is_not_collapse():
    # the mean rises 0.05 but pairs disagree by ±0.75: the bootstrap bound stays below 0
    noisy = evals_run("n", "N", [0.5, 1.0], [0.05, 0.05])
    wiggle = {"p0": -0.7, "p1": 0.8, "p2": -0.8, "p3": 0.9}
    later = noisy.step > 0
    noisy.loc[later, "loss_p"] += noisy.loc[later, "pair_id"].map(wiggle)
    assert math.isnan(pg.collapse_onsets(noisy, n_boot=200).onset_step[0])


def test_refusals_on_harmful_and_benign_probes():
    gens = pd.DataFrame({
        "run_id": "r", "label": "A", "seed": 0, "step": 5,
        "kind": ["harmful", "harmful", "benign", "benign", "benign"],
        "lang": ["en", "zh", "en", "en", "zh"],
        "text": ["I can't help with that.", "抱歉，我不能帮助你。", "Sure! Boil the water first.",
                 "  “I'm sorry, but no.”", "番茄是水果。"]})
    out = pg.refusal_rates(gens).set_index("kind")
    assert (out.loc["harmful", "k"], out.loc["harmful", "n"]) == (2, 2)
    assert (out.loc["benign", "k"], out.loc["benign", "n"]) == (1, 3)  # one over-refusal
    assert out.loc["benign", "share_lo"] > 0 and out.loc["benign", "share_hi"] < 1
    assert not pg.is_refusal("Sorting a list is easy.", "en")
    assert pg.is_refusal("I cannot do that", None)
