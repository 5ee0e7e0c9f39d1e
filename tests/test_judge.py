"""`prefstudy.judge`: a judge's length bias and two audits compared, on tables whose answer is
known (simulated judges, synthetic scores), and the page's sections that show them."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy.special import expit

from prefstudy import auditplots, judge
from prefstudy.audit import Audit, audit_tables, read_audit
from prefstudy.auditpage import ALPACA_EVAL_NOTE, render_page

COMMITTED_AUDIT = Path(__file__).resolve().parents[1] / "reports" / "runs" / "audit"


def judged_pairs(n: int, beta: float, *, seed: int = 0, models=("alpaca-7b",)) -> pd.DataFrame:
    """A judge that picks answer A with probability σ(beta · log2(len_A / len_B)): the chosen
    and rejected columns follow its choice; each pair compares one of `models` with
    text_davinci_003 (the one written first is the other model's)."""
    rng = np.random.default_rng(seed)
    len_a, len_b = rng.integers(20, 600, n), rng.integers(20, 600, n)
    a_wins = rng.random(n) < expit(beta * np.log2(len_a / len_b))
    other = rng.choice(list(models), n)
    return pd.DataFrame({
        "pair_id": [f"{i:016x}" for i in range(n)],
        "len_p": np.where(a_wins, len_a, len_b), "len_n": np.where(a_wins, len_b, len_a),
        "chosen_model": np.where(a_wins, other, "text_davinci_003"),
        "rejected_model": np.where(a_wins, "text_davinci_003", other),
        "judge": "alpaca_eval_gpt4"})


@pytest.fixture(scope="module")
def biased():
    pairs = judged_pairs(4000, 0.8, models=("alpaca-7b", "vicuna-13b"))
    return pairs, judge.judge_length_bias(pairs, n_boot=400, seed=0)


# --------------------------------------------------------------------------- the judge's bias


def test_a_simulated_judges_beta_is_recovered_within_its_interval(biased):
    pairs, bias = biased
    every = bias[bias.comparison == "all"].iloc[0]
    assert every.n + every.n_equal == every.n_pairs == 4000
    assert every.beta_lo < 0.8 < every.beta_hi
    assert every.beta_hi - every.beta_lo < 0.25
    assert every.p_longer == pytest.approx(expit(every.beta))
    assert every.p_longer_lo == pytest.approx(expit(every.beta_lo))
    assert every.share_lo > 0.5 and every.reason == ""
    chosen_longer = pairs[pairs.len_p != pairs.len_n]
    assert every.k == int((chosen_longer.len_p > chosen_longer.len_n).sum())
    assert every.share == pytest.approx(every.k / every.n)


def test_the_fit_is_the_maximum_likelihood_beta():
    pairs = judged_pairs(300, 0.5, seed=3)
    oriented = judge.orient_pairs(pairs)
    x, y = oriented.log_ratio_ab.to_numpy(), oriented.a_chosen.to_numpy()

    def loss(b):
        return -(y * np.log(expit(b * x)) + (1 - y) * np.log(expit(-b * x))).sum()

    want = optimize.minimize_scalar(loss, bounds=(-5, 5), method="bounded",
                                    options={"xatol": 1e-10}).x
    assert judge.logistic_slope(x, y) == pytest.approx(want, abs=1e-6)
    both = judge.logistic_slope(np.vstack([x, x]), np.vstack([y, 1 - y]))  # rows at once
    np.testing.assert_allclose(both, [want, -want], atol=1e-6)


def test_a_judge_that_ignores_length_shows_no_bias():
    bias = judge.judge_length_bias(judged_pairs(2000, 0.0, seed=1), n_boot=300, seed=0)
    every = bias.iloc[-1]
    assert every.share_lo < 0.5 < every.share_hi
    assert abs(every.beta) < 0.1 and every.beta_lo < 0 < every.beta_hi
    assert every.p_longer_lo < 0.5 < every.p_longer_hi


def test_the_fit_does_not_depend_on_the_files_order_or_the_coin(monkeypatch):
    pairs = judged_pairs(500, 0.6, seed=2)
    bias = judge.judge_length_bias(pairs, n_boot=200, seed=0)
    shuffled = pairs.sample(frac=1.0, random_state=7)
    pd.testing.assert_frame_equal(judge.judge_length_bias(shuffled, n_boot=200, seed=0), bias)
    oriented = judge.orient_pairs(pairs)
    pd.testing.assert_frame_equal(judge.orient_pairs(shuffled), oriented)
    # each pair's A is the chosen answer on its coin, whatever the row: the rule is the id's
    flips = judge.coin(oriented.pair_id)
    chosen_len = np.where(flips, oriented.len_a, oriented.len_b)
    np.testing.assert_array_equal(chosen_len, pairs.set_index("pair_id").len_p[oriented.pair_id])
    assert 0.4 < flips.mean() < 0.6
    # naming every pair's answers the other way round changes no number of the fit
    real_coin = judge.coin
    monkeypatch.setattr(judge, "coin", lambda ids: ~real_coin(ids))
    flipped = judge.judge_length_bias(pairs, n_boot=200, seed=0)
    pd.testing.assert_frame_equal(flipped, bias, check_exact=False, rtol=1e-9)
    monkeypatch.undo()
    # a judge that chose the other answer of every pair: the opposite taste
    mirrored = pairs.rename(columns={"len_p": "len_n", "len_n": "len_p"})
    back = judge.judge_length_bias(mirrored, n_boot=200, seed=0).iloc[-1]
    assert back.k == bias.iloc[-1].n - bias.iloc[-1].k
    assert back.beta == pytest.approx(-bias.iloc[-1].beta, abs=1e-9)


def test_comparisons_group_unordered_model_pairs(biased):
    pairs, bias = biased
    assert list(bias.comparison) == ["alpaca-7b vs text_davinci_003",
                                     "text_davinci_003 vs vicuna-13b", "all"]
    assert bias.n_pairs.iloc[:2].sum() == bias.n_pairs.iloc[-1]
    names = judge.comparison(pairs)
    swapped = pairs.rename(columns={"chosen_model": "rejected_model",
                                    "rejected_model": "chosen_model"})
    pd.testing.assert_series_equal(judge.comparison(swapped), names)
    prefixed = pairs.rename(columns={"chosen_model": "meta_chosen_model",
                                     "rejected_model": "meta_rejected_model"})
    pd.testing.assert_series_equal(judge.comparison(prefixed), names)
    gaps = pairs.assign(chosen_model=pairs.chosen_model.where(pairs.index % 2 == 0))
    assert judge.comparison(gaps).isna().sum() == (pairs.index % 2 == 1).sum()
    some = judge.judge_length_bias(gaps, n_boot=0)
    assert some.n_pairs.iloc[:-1].sum() == 2000 and some.n_pairs.iloc[-1] == 4000


def test_pairs_without_models_are_one_group():
    pairs = judged_pairs(200, 0.5).drop(columns=["chosen_model", "rejected_model", "judge"])
    assert not judge.has_models(pairs) and judge.judges(pairs) == []
    bias = judge.judge_length_bias(pairs, n_boot=50)
    assert list(bias.comparison) == ["all"] and bias.n_pairs.iloc[0] == 200
    bins = judge.judge_length_bins(pairs, bins=4)
    assert set(bins.comparison) == {"all"} and bins.n.sum() == bias.n.iloc[0]
    assert (np.diff(bins.log_ratio_ab) > 0).all()


def test_bins_count_the_pairs_where_the_judge_chose_a():
    pairs = judged_pairs(800, 1.0, seed=4)
    bins = judge.judge_length_bins(pairs, bins=5)
    oriented = judge.orient_pairs(pairs)
    oriented = oriented[oriented.log_ratio_ab != 0]
    assert bins.n.sum() == len(oriented) and bins.k.sum() == oriented.a_chosen.sum()
    assert (bins.a_chosen_lo <= bins.a_chosen).all() and (bins.a_chosen <= bins.a_chosen_hi).all()
    assert bins.a_chosen.iloc[0] < 0.3 < 0.7 < bins.a_chosen.iloc[-1]  # a judge for length


def test_a_judge_that_always_picks_the_longer_answer_has_no_finite_beta():
    pairs = judged_pairs(50, 0.0)
    pairs = pairs.assign(len_p=pairs[["len_p", "len_n"]].max(axis=1) + 1,
                         len_n=pairs[["len_p", "len_n"]].min(axis=1))
    row = judge.judge_length_bias(pairs, n_boot=50).iloc[-1]
    assert row.k == row.n == 50 and row.share == 1.0
    assert np.isnan(row.beta) and "no finite β" in row.reason
    empty = judge.judge_length_bias(pairs.assign(len_n=pairs.len_p), n_boot=50).iloc[-1]
    assert empty.n == 0 and empty.reason == "no pair whose answers differ in length"


# --------------------------------------------------------------------------- two audits


def scored_pairs(n: int, *, length_effect: bool, seed: int) -> pd.DataFrame:
    """Scores whose summed gap follows Δlen (a summed loss over more tokens: the study's C1) or
    does not (summed losses drawn apart from the lengths)."""
    rng = np.random.default_rng(seed)
    len_p, len_n = rng.integers(10, 300, n), rng.integers(10, 300, n)
    if length_effect:
        loss_p, loss_n = rng.normal(2.0, 0.3, n), rng.normal(2.0, 0.3, n)
        nll_p, nll_n = loss_p * len_p, loss_n * len_n
    else:
        nll_p, nll_n = rng.normal(300, 40, n), rng.normal(300, 40, n)
        loss_p, loss_n = nll_p / len_p, nll_n / len_n
    return pd.DataFrame({"pair_id": [f"{seed}-{i}" for i in range(n)], "len_p": len_p,
                         "len_n": len_n, "loss_p": loss_p, "loss_n": loss_n, "nll_sum_p": nll_p,
                         "nll_sum_n": nll_n, "gap_sum": nll_n - nll_p, "gap": loss_n - loss_p})


def make_audit(pairs: pd.DataFrame) -> Audit:
    return Audit(pairs=pairs, dose=pd.DataFrame(), cuts=pd.DataFrame(),
                 settings={"n_boot": 200, "seed": 0, "source": "synthetic", "model": "none"},
                 **audit_tables(pairs, n_boot=200, seed=0))


def test_compare_audits_finds_the_stronger_length_effect():
    strong = make_audit(scored_pairs(300, length_effect=True, seed=0))
    none = make_audit(scored_pairs(250, length_effect=False, seed=1))
    table = judge.compare_audits(strong, none, n_boot=300, seed=0)
    r2 = table[(table.measure == judge.COMPARED[0]) & (table.normalisation == "sum")].iloc[0]
    assert r2.real > 0.8 and r2.reference < 0.05
    assert r2.difference == pytest.approx(r2.real - r2.reference)
    assert 0 < r2.difference_lo < r2.difference < r2.difference_hi
    assert (r2.n_real, r2.n_reference, r2.unit) == (300, 250, "pairs")
    # each side is its own audit's table, as its page shows it
    own = strong.length.set_index("normalisation").loc["sum"]
    assert (r2.real, r2.real_lo, r2.real_hi) == (own.r2, own.r2_lo, own.r2_hi)
    accuracy = table[table.measure == judge.COMPARED[2]]
    assert len(accuracy) == 8 and set(accuracy.length_kind) == {
        "chosen longer", "similar", "rejected longer", "all"}
    dose = table[table.measure == judge.COMPARED[3]]
    assert dose.difference.isna().all() and (dose.reason != "").all()  # neither has a dose


def test_an_audit_compared_with_itself_differs_by_nothing():
    one = make_audit(scored_pairs(200, length_effect=True, seed=2))
    table = judge.compare_audits(one, one, n_boot=200, seed=0)
    kept = table[table.measure != judge.COMPARED[3]]
    assert (kept.difference == 0).all()
    assert (kept.difference_lo <= 0).all() and (kept.difference_hi >= 0).all()
    pd.testing.assert_frame_equal(judge.compare_audits(one, one, n_boot=200, seed=0), table)


# --------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def committed():
    return read_audit(COMMITTED_AUDIT)


def with_models(result: Audit, judge_name: str) -> Audit:
    rng = np.random.default_rng(0)
    other = rng.choice(["alpaca-7b", "vicuna-13b"], len(result.pairs))
    first = rng.random(len(result.pairs)) < 0.5
    pairs = result.pairs.assign(
        chosen_model=np.where(first, other, "text_davinci_003"),
        rejected_model=np.where(first, "text_davinci_003", other), judge=judge_name)
    return dataclasses.replace(result, pairs=pairs)


def test_the_judge_section_appears_only_with_answer_models(committed, tmp_path):
    plain = render_page(committed, tmp_path / "plain")
    assert "## The judge" not in plain and "## Against the reference" not in plain
    assert not (tmp_path / "plain" / "figures" / "judge_length.png").exists()
    page = render_page(with_models(committed, "alpaca_eval_gpt4"), tmp_path / "alpaca")
    assert "## The judge" in page and ALPACA_EVAL_NOTE in page
    assert "| alpaca-7b vs text_davinci_003 |" in page and "| all |" in page
    assert (tmp_path / "alpaca" / "figures" / "judge_length.png").exists()
    other = render_page(with_models(committed, "my_judge"), tmp_path / "other")
    assert "## The judge" in other and "Dubois" not in other and "`my_judge`" in other
    # the rest of the page is as it was
    assert page.replace(page[page.index("## The judge"):page.index("## Dose-response")], "") \
        == plain


def test_the_reference_section_compares_two_audits(committed, tmp_path):
    heldout = read_audit(COMMITTED_AUDIT / "heldout")
    page = render_page(committed, tmp_path, reference=heldout)
    section = page[page.index("## Against the reference pairs"):page.index("## Dose-response")]
    assert "R² of the gap on Δlen" in section and "On this data Δlen explains R² = " in section
    assert "the length effect is " in section and "pp |" in section


# --------------------------------------------------------------------------- the figure


def test_judge_length_plot_draws_each_comparisons_points_and_curve(biased):
    pairs, bias = biased
    bins = judge.judge_length_bins(pairs, bins=6)
    ax = auditplots.judge_length_plot(bins, fits=bias)
    order = sorted(bins.comparison.unique())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == order
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) == 200]
    assert len(curves) == 2
    for line, name in zip(curves, order):
        beta = bias.set_index("comparison").beta[name]
        np.testing.assert_allclose(line.get_ydata(), expit(beta * line.get_xdata()))
    assert ax.get_xlabel().startswith("log2(len_A / len_B)") and ax.get_ylim() == (0, 1)
