"""The findings the report states, and the verdicts that word them, on constructed tables whose
answer is known."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from prefstudy import findings, verdicts
from prefstudy import progress as pg
from prefstudy.tables import RUN_COLUMNS, Tables

N_PAIRS = 40
LEN_P = np.arange(N_PAIRS) * 3 + 10  # the chosen answers' lengths, all different


def _run(run_id, label, accuracies, chosen, *, shift=None):
    """Held-out evals: at step 6·s the first ⌈acc·n⌉ pairs are right; pair j's chosen loss rises
    chosen[s] + shift[j] (shift: Shape (N_PAIRS,), default 0)."""
    shift = np.zeros(N_PAIRS) if shift is None else shift
    rows = []
    for s, (acc, dc) in enumerate(zip([0.0, *accuracies], [0.0, *chosen])):
        k = round(acc * N_PAIRS)
        for j in range(N_PAIRS):
            d = dc + (shift[j] if s else 0.0)
            dr = 0.0 if not s else d + (0.2 if j < k else -0.2)
            rows.append({"run_id": run_id, "label": label, "seed": 0, "step": 6 * s,
                         "pair_id": f"p{j}", "split": "heldout", "len_p": int(LEN_P[j]),
                         "len_n": int(LEN_P[j]), "loss_p": 2 + d, "loss_n": 3 + dr,
                         "nll_sum_p": (2 + d) * LEN_P[j], "nll_sum_n": (3 + dr) * LEN_P[j]})
    return pd.DataFrame(rows)


def _neutral(run_id, rises, n_passages=40):
    offsets = np.linspace(-0.02, 0.02, n_passages)
    return pd.DataFrame([{"run_id": run_id, "step": 6 * s, "text_id": i,
                          "nll_sum": (2 + r + (offsets[i] if s else 0)) * 60, "n_tokens": 60}
                         for s, r in enumerate([0.0, *rises]) for i in range(n_passages)])


RUNS = {  # run: (label, lr, accuracies at steps 6, 12, 18, chosen rises, neutral rises)
    "naive-sum-lo": ("naive-sum", 1e-4, [0.6, 0.7, 0.8], [0.1, 0.2, 0.3], [0.05, 0.1, 0.15]),
    "naive-sum-hi": ("naive-sum", 1e-3, [0.6, 0.7, 0.75], [1.0, 3.0, 6.0], [2.0, 4.0, 8.0]),
    "dpo-lo": ("dpo", 1e-4, [0.6, 0.75, 0.85], [0.0, 0.05, 0.1], [0.02, 0.04, 0.06]),
    "dpo-hi": ("dpo", 1e-3, [0.65, 0.8, 0.9], [0.2, 0.3, 0.4], [0.1, 0.2, 0.3]),
    "negative_only-hi": ("negative_only", 1e-3, [0.5, 0.5, 0.5], [2.0, 5.0, 9.0],
                         [3.0, 6.0, 10.0]),
}


def _tables(n_passages=40, shift=None) -> Tables:
    evals = pd.concat([_run(r, lab, acc, ch, shift=shift)
                       for r, (lab, _, acc, ch, _) in RUNS.items()], ignore_index=True)
    ppl = pd.concat([_neutral(r, nr, n_passages) for r, (*_, nr) in RUNS.items()],
                    ignore_index=True)
    runs = pd.DataFrame([[r, lab, lab, "likelihood", lr, 0, 18, 0, "completed", 1.0, None]
                         for r, (lab, lr, *_) in RUNS.items()], columns=RUN_COLUMNS)
    runs.loc[runs.run_id == "negative_only-hi", "above_uniform_step"] = 12
    pairs = pd.DataFrame({"pair_id": [f"p{j}" for j in range(N_PAIRS)], "split": "heldout",
                          "lang": ["en", "zh"] * (N_PAIRS // 2),
                          "edit_distance": np.linspace(0.1, 0.9, N_PAIRS), "len_ratio": 1.0})
    empty = pd.DataFrame()
    labels = ["naive-sum", "negative_only", "dpo"]
    evals = evals.merge(runs[["run_id", "lr", "family"]], on="run_id")
    return Tables(records=empty, evals=evals, perplexity=ppl, generations=empty, steps=empty,
                  pairs=pairs, runs=runs, configs={}, metas={}, labels=labels, order=labels,
                  families=None, folders=[])


@pytest.fixture(scope="module")
def found():
    tables = _tables()
    return tables, findings.summarise(tables, n_boot=200)


def test_every_run_is_kept_and_the_envelope_takes_the_cheapest_learning_rate(found):
    _, f = found
    at = f.matched[(f.matched.level == 0.65) & (f.matched.status == pg.REACHED)] \
        .set_index("run_id")
    assert set(at.index) == {"naive-sum-lo", "naive-sum-hi", "dpo-lo"}  # dpo-hi: before
    assert at.loc["naive-sum-lo", "envelope"] and not at.loc["naive-sum-hi", "envelope"]
    env = f.objectives.set_index(["label", "level"])
    assert env.loc[("naive-sum", 0.65), "lr"] == 1e-4
    assert env.loc[("naive-sum", 0.65), "d_chosen"] == pytest.approx(0.15)  # never a mean


def test_the_primary_level_is_the_lowest_above_chance_that_a_run_reached(found):
    _, f = found
    assert f.primary == 0.7  # 0.6 and 0.65 are within chance with 40 pairs
    levels = f.levels.set_index("level")
    assert not levels.loc[0.65, "above_chance"] and levels.loc[0.7, "above_chance"]
    assert levels.loc[0.6, "before"] == 4  # every run but negative-only passed it by step 6


def test_objectives_are_compared_by_their_paired_difference(found):
    _, f = found
    c = f.comparisons.set_index(["a", "level", "column"])
    row = c.loc[("naive-sum", 0.7, "d_chosen")]
    assert (row.lr_a, row.lr_b) == (1e-4, 1e-4)
    assert row["diff"] == pytest.approx(0.2 - 0.05 * (0.7 - 0.6) / (0.75 - 0.6), abs=1e-9)
    assert row.diff_lo < row["diff"] < row.diff_hi  # the crossing moves with the resample


def test_collapse_and_degradation_run_by_run(found):
    _, f = found
    col = f.collapse.set_index("run_id")
    # the chosen loss rose with (and less than) neutral text: degradation, never collapse
    assert col.loc["naive-sum-hi", "verdict"] == pg.DEGRADATION
    # the chosen loss rose twice as fast as neutral text while accuracy grew: collapse, from
    # step 12 (step 6 is the first evaluation after a cold start)
    assert col.loc["naive-sum-lo", "verdict"] == "collapse and degradation"
    assert col.loc["naive-sum-lo", "collapse_step"] == 12
    assert bool(col.loc["negative_only-hi", "above_uniform"])


def test_the_negative_term_alone_costs_more_than_the_naive_objective(found):
    _, f = found
    neg = f.negative.iloc[0]
    assert (neg.lr, neg.step) == (1e-3, 18)
    assert neg["diff"] == pytest.approx(2.0) and neg.diff_lo > 0
    line = verdicts.negative_claim(f)[0]
    assert "held (at every learning rate)" in line and "difference 2.00 [" in line


def test_displacement_at_the_primary_level(found):
    tables, f = found
    at = f.displacement[(f.displacement.level == 0.7) & f.displacement.envelope]
    row = at.set_index("label").loc["naive-sum"]
    # naive-sum lr 1e-4 reaches 0.7 at step 12 exactly: chosen +0.2 against neutral +0.1
    assert (row.k, row.n) == (40, 40)
    line = verdicts.displacement_claim(f, tables.order)[0]
    assert "held (for naive-sum, dpo)" not in line  # dpo's chosen rose less than neutral
    assert "naive-sum (lr 0.0001) 40 of 40" in line and "Trained pairs: not evaluated" in line


def test_partialling_out_length_removes_a_predictor_that_is_length_alone():
    # displacement grows with the chosen answer's length; one predictor is that length (plus a
    # little), another is unrelated to length but orders what is left
    rng = np.random.default_rng(0)
    extra = rng.normal(0, 0.05, N_PAIRS)
    tables = _tables(shift=LEN_P / 100 + extra)
    tables.pairs["edit_distance"] = LEN_P + rng.normal(0, 4, N_PAIRS)
    rho = findings.predictors(tables, n_boot=200).set_index(["run_id", "predictor"])
    plain = rho.loc[("dpo-lo", "edit_distance")]
    assert plain.plain_rho > 0.9 and abs(plain.rho) < 0.4
    tables.pairs["edit_distance"] = extra
    ordered = findings.predictors(tables, n_boot=200).set_index(["run_id", "predictor"])
    assert ordered.loc[("dpo-lo", "edit_distance"), "rho"] > 0.6
    assert ordered.loc[("dpo-lo", "edit_distance"), "rho_lo"] > 0.3


def test_a_constant_predictor_is_undefined_not_a_number():
    tables = _tables()
    tables.pairs["edit_distance"] = 0.5
    rho = findings.predictors(tables, n_boot=50)
    assert rho.rho.isna().all() and rho.rho_lo.isna().all()


def test_too_few_passages_is_too_little_data():
    tables = _tables(n_passages=16)
    f = findings.summarise(tables, n_boot=50)
    held = verdicts.what_held(tables, f)
    assert "too little data to say (16 neutral passages, at least 30 needed)" in held
    assert "**C5, seeds and intervals:** seeds [0]" in held
    assert "too little data to say (1 data-order seed(s), at least 3 needed)" in held


def test_no_level_above_chance_is_too_little_data():
    f = SimpleNamespace(primary=float("nan"), n_pairs=20, n_passages=200,
                        comparisons=pd.DataFrame(), matched=pd.DataFrame({"kl": [np.nan]}),
                        paths=pd.DataFrame({"kl": [np.nan]}))
    line = verdicts._matched_line(f)[0]
    assert "too little data to compare the naive objective with DPO (no accuracy level above " \
           "chance with 20 held-out pairs" in line
    assert f"0.6 needs {pg.min_pairs_above_chance(0.6)} pairs" in line


def test_c2_says_where_the_noise_comes_from():
    def audit(sft_cos):
        rows = [("naive-sum", 0.79, 0.007, -0.001, 0.017), ("naive-mean", 0.002, 0.001, -0.02,
                                                              0.02)]
        if sft_cos is not None:
            rows.append(("sft", 0.001, sft_cos, sft_cos - 0.01, sft_cos + 0.01))
        summary = pd.DataFrame(rows, columns=["label", "norm_r2", "cos_loo", "cos_loo_lo",
                                              "cos_loo_hi"]).assign(n_pairs=64)
        return SimpleNamespace(audit=SimpleNamespace(gradient_summary=summary,
                                                     gradients=summary[["label"]]))
    line = verdicts.noise_claim(audit(0.14))[0]
    assert "held (from the difference of two losses, not from length)" in line
    assert "0.140 [0.130, 0.150] for SFT's single loss" in line
    assert "did not hold" in verdicts.noise_claim(audit(0.005))[0]
    assert "not established (no single-loss baseline" in verdicts.noise_claim(audit(None))[0]


def test_predictors_on_too_few_trained_pairs_are_too_little_data():
    rho = pd.DataFrame({"predictor": ["ches", "ches"], "split": "train", "n": [8, 8],
                        "rho": [0.5, 0.4], "rho_lo": [-0.2, -0.3], "rho_hi": [0.9, 0.8],
                        "plain_rho": [0.3, 0.2], "expected_sign": 1})
    line = verdicts.predictor_claim(SimpleNamespace(predictors=rho))[0]
    assert "too little data to say (8 train pairs with a predictor, at least 20 needed)" in line
    held_out = verdicts.predictor_claim(SimpleNamespace(predictors=rho.assign(split="heldout",
                                                                              n=40)))[0]
    assert "measured on held-out pairs, never trained on" in held_out


def test_accuracy_by_language_is_per_objective_and_learning_rate(found):
    _, f = found
    acc = f.accuracy_languages.set_index(["label", "lr", "lang"])
    # dpo-lo ends at 0.85: pairs p0..p33 right; English are the even pairs, Chinese the odd
    assert acc.loc[("dpo", 1e-4, "en"), "accuracy"] == pytest.approx(17 / 20)
    assert acc.loc[("dpo", 1e-4, "zh"), "accuracy"] == pytest.approx(17 / 20)
    # naive-sum-hi ends at 0.75: p0..p29 right, 15 of each language
    assert acc.loc[("naive-sum", 1e-3, "en"), "accuracy"] == pytest.approx(15 / 20)
    assert len(acc) == 2 * len(RUNS)  # one row per run's objective, lr and language
    row = acc.loc[("dpo", 1e-4, "en")]
    assert row.lo <= row.accuracy <= row.hi and row.n_pairs == 20
