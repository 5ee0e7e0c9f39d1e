"""The findings the report states, each on constructed tables whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from prefstudy import findings
from prefstudy.tables import RUN_COLUMNS, Tables

N_PAIRS = 10
# Run "a-r" (label a): at step 2 neutral text held and pairs 3-9 lost chosen log-prob; at step 4
# every pair did, but neutral text rose by 0.5 nats/token. Run "b-r" (label b): neutral text
# never held.
FELL = {("a-r", 2): range(3, 10), ("a-r", 4): range(10), ("b-r", 2): range(3), ("b-r", 4): range(5)}
NEUTRAL = {("a-r", 2): 0.01, ("a-r", 4): 0.5, ("b-r", 2): 0.2, ("b-r", 4): 0.3}


def _evals() -> pd.DataFrame:
    rows = []
    for run, label in (("a-r", "a"), ("b-r", "b")):
        for step in (0, 2, 4):
            fell = FELL.get((run, step), ())
            for i in range(N_PAIRS):
                # pair i's chosen answer loses (i + 1) nats where it fell: the more, the larger i
                nll_p = 20.0 + (i + 1 if i in fell else 0.0)
                rows.append({"run_id": run, "label": label, "seed": 0, "step": step,
                             "pair_id": f"p{i}", "loss_p": nll_p / 10, "loss_n": 3.0 + step,
                             "nll_sum_p": nll_p, "nll_sum_n": 30.0 + 10 * step})
    return pd.DataFrame(rows)


def _perplexity() -> pd.DataFrame:
    rows = [{"run_id": run, "step": 0, "text_id": "t", "nll_sum": 100.0, "n_tokens": 50}
            for run in ("a-r", "b-r")]
    rows += [{"run_id": run, "step": step, "text_id": "t", "nll_sum": 100.0 + 50 * d,
              "n_tokens": 50} for (run, step), d in NEUTRAL.items()]
    return pd.DataFrame(rows)


def _tables(generations: pd.DataFrame | None = None) -> Tables:
    runs = pd.DataFrame([["a-r", "a", "naive", "likelihood", 1e-3, 0, 4, "completed", 1.0, None],
                         ["b-r", "b", "dpo", "reference-based", 1e-3, 0, 4, "completed", 1.0,
                          None]], columns=RUN_COLUMNS)
    pairs = pd.DataFrame({"pair_id": [f"p{i}" for i in range(N_PAIRS)], "split": "heldout",
                          "lang": ["en"] * 5 + ["zh"] * 5,
                          "edit_distance": np.linspace(0.1, 0.9, N_PAIRS),
                          "len_ratio": 1.0})
    empty = pd.DataFrame()
    return Tables(records=empty, evals=_evals(), perplexity=_perplexity(),
                  generations=generations if generations is not None else empty, steps=empty,
                  pairs=pairs, runs=runs, configs={}, metas={}, labels=["a", "b"],
                  order=["a", "b"], families=None, folders=[])


def test_displacement_is_counted_where_neutral_text_held():
    tables = _tables()
    shift = findings.displacement(tables, findings.run_paths(tables)).set_index("label")
    assert (shift.loc["a", "step"], shift.loc["a", "k"], shift.loc["a", "n"]) == (2, 7, 10)
    assert shift.loc["a", "d_neutral"] == pytest.approx(0.01)
    assert shift.loc["b", "n"] == 0 and pd.isna(shift.loc["b", "run_id"])  # never held
    assert 0 < shift.loc["a", "share_lo"] < 0.7 < shift.loc["a", "share_hi"] < 1


def test_a_looser_tolerance_moves_the_point_to_the_furthest_evaluation():
    tables = _tables()
    shift = findings.displacement(tables, findings.run_paths(tables), max_neutral=1.0)
    a = shift.set_index("label").loc["a"]
    assert (a.step, a.k) == (4, 10)


def test_a_predictor_that_orders_the_fall_has_rho_minus_one():
    tables = _tables()
    shift = findings.displacement(tables, findings.run_paths(tables))
    rho = findings.predictors_of_displacement(tables, shift, n_boot=200)
    row = rho.set_index(["label", "predictor"]).loc[("a", "edit_distance")]
    # pair i lost i + 1 nats (none for i < 3): the larger its edit distance, the more it fell
    assert row.n == N_PAIRS and row.rho < -0.9 and row.rho_hi < 0
    assert set(rho.label) == {"a"}  # b has no point where neutral text held


def test_a_constant_predictor_is_undefined_not_a_number():
    tables = _tables()
    tables.pairs["edit_distance"] = 0.5
    shift = findings.displacement(tables, findings.run_paths(tables))
    rho = findings.predictors_of_displacement(tables, shift, n_boot=50)
    assert rho.rho.isna().all() and rho.rho_lo.isna().all()


def test_displacement_splits_by_language():
    tables = _tables()
    shift = findings.displacement(tables, findings.run_paths(tables))
    lang = findings.per_language(tables, shift).set_index("lang")
    assert (lang.loc["en", "k"], lang.loc["en", "n"]) == (2, 5)
    assert (lang.loc["zh", "k"], lang.loc["zh", "n"]) == (5, 5)


def test_refusals_are_counted_at_the_start_and_at_the_largest_lr_runs_end():
    texts = {0: ["I'm sorry, I can't.", "Sorry, no.", "Sure: here.", "Here it is."],
             4: ["I cannot do that.", "Of course!", "Here it is.", "Here it is."]}
    rows = [{"run_id": "a-r", "label": "a", "seed": 0, "step": step, "probe_id": f"q{i}",
             "kind": "harmful" if i < 2 else "benign", "lang": "en", "text": text}
            for step, answers in texts.items() for i, text in enumerate(answers)]
    out = findings.refusals(_tables(pd.DataFrame(rows))).set_index(["label", "kind"])
    assert (out.loc[("(start)", "harmful"), "k"], out.loc[("(start)", "harmful"), "n"]) == (2, 2)
    assert out.loc[("(start)", "benign"), "k"] == 0
    assert (out.loc[("a", "harmful"), "k"], out.loc[("a", "benign"), "k"]) == (1, 0)


def test_summarise_computes_each_finding_once_from_the_tables():
    found = findings.summarise(_tables())
    assert list(found.displacement.label) == ["a", "b"]
    assert set(found.predictors.label) == {"a"} and len(found.by_language) == 2
    assert found.noise.empty and found.refusals.empty
