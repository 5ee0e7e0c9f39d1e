"""The external checks (prefstudy.external) on constructed tables whose answer is known."""

import numpy as np
import pandas as pd
import pytest
from test_findings import LEN_P, N_PAIRS, _neutral, _run

from prefstudy import external, findings
from prefstudy.tables import RUN_COLUMNS, Tables

RUNS = {  # run: (label, lr, accuracies at steps 6, 12, 18, chosen loss rises, neutral rises)
    "dpo-lo": ("dpo", 1e-4, [0.6, 0.75, 0.85], [0.0, 0.05, 0.1], [0.02, 0.04, 0.06]),
    "dpo-hi": ("dpo", 1e-3, [0.8, 0.9, 0.6], [0.2, 0.3, 0.4], [0.1, 0.2, 0.3]),
    "rpo-lo": ("rpo", 1e-4, [0.6, 0.7, 0.75], [-0.1, -0.2, -0.3], [0.0, 0.01, 0.02]),
}


def _tables(kl: bool = True) -> Tables:
    frames = []
    for run_id, (label, _, acc, chosen, _) in RUNS.items():
        run = _run(run_id, label, acc, chosen)
        if kl:  # the KL grows with the step: 0.01 nats per token per evaluation
            per_token = run.step / 6 * 0.01
            run = run.assign(kl_sum_p=per_token * run.len_p, kl_sum_n=per_token * run.len_n)
        frames.append(run)
    evals = pd.concat(frames, ignore_index=True)
    ppl = pd.concat([_neutral(r, nr) for r, (*_, nr) in RUNS.items()], ignore_index=True)
    runs = pd.DataFrame([[r, lab, lab, "anchored", lr, 0, 18, 0, "completed", 1.0, None]
                         for r, (lab, lr, *_) in RUNS.items()], columns=RUN_COLUMNS)
    pairs = pd.DataFrame({"pair_id": [f"p{j}" for j in range(N_PAIRS)], "split": "heldout",
                          "edit_distance": np.linspace(0.1, 0.9, N_PAIRS), "len_ratio": 1.0})
    evals = evals.merge(runs[["run_id", "lr", "family"]], on="run_id")
    labels = ["dpo", "rpo"]
    return Tables(records=pd.DataFrame(), evals=evals, perplexity=ppl,
                  generations=pd.DataFrame(), steps=pd.DataFrame(), pairs=pairs, runs=runs,
                  configs={}, metas={}, labels=labels, order=labels, families=None, folders=[])


@pytest.fixture(scope="module")
def found():
    tables = _tables()
    return tables, findings.summarise(tables, n_boot=200)


def test_the_chosen_log_prob_change_is_per_learning_rate_and_known(found):
    _, f = found
    logp = f.chosen_logp.set_index(["label", "lr"])
    # pair j's chosen loss rose by the run's last rise, over LEN_P[j] tokens
    assert logp.loc[("dpo", 1e-4), "value"] == pytest.approx(-(0.1 * LEN_P).mean())
    assert logp.loc[("dpo", 1e-3), "value"] == pytest.approx(-(0.4 * LEN_P).mean())
    assert logp.loc[("rpo", 1e-4), "value"] == pytest.approx((0.3 * LEN_P).mean())
    row = logp.loc[("dpo", 1e-4)]
    assert row.lo < row.value < row.hi < 0 and row.split == "heldout" and row.n_pairs == N_PAIRS
    assert row.per_seed == {0: pytest.approx(-(0.1 * LEN_P).mean(), abs=1e-3)}


def test_over_optimisation_is_the_last_kl_against_the_best_before(found):
    _, f = found
    over = f.overoptimisation.set_index("run_id")
    hump = over.loc["dpo-hi"]  # 0.8, 0.9, then 0.6 at the largest KL
    assert hump.acc_best == pytest.approx(0.9) and hump.acc_last == pytest.approx(0.6)
    assert hump["diff"] == pytest.approx(-0.3) and hump.hi < 0
    assert hump.kl_last == pytest.approx(0.03) and hump.kl_best == pytest.approx(0.02)
    rising = over.loc["dpo-lo"]
    assert rising["diff"] == pytest.approx(0.1) and rising.lo > 0


def test_each_check_says_what_reproduced(found):
    tables, f = found
    table = external.checks(f, tables).set_index("claim")
    pal = table.loc["DPO lowers the chosen answer's log-probability"]
    assert pal.outcome == "reproduced" and "lr 0.0001:" in pal.ours and "lr 0.001:" in pal.ours
    assert table.loc["DPOP's penalty keeps it from falling"].outcome == "not measured"
    assert table.loc["DPO + NLL (RPO) raises the chosen answer's log-probability"].outcome \
        == "reproduced"
    over = table[table.paper == "Rafailov et al. 2024"].iloc[0]
    assert over.outcome.startswith("mixed: the paper's direction at 1 of 2 runs, the opposite "
                                   "at 1")
    assert table[table.paper == "Razin et al. 2024"].iloc[0].outcome == "not measured"
    page = external.checks_section(external.checks(f, tables))
    assert page.count("\n- **") == 5 and "Ours: lr 0.0001:" in page


def test_without_kl_over_optimisation_is_not_measured():
    tables = _tables(kl=False)
    f = findings.summarise(tables, n_boot=50)
    assert f.overoptimisation.empty
    row = external.checks(f, tables)
    assert row[row.paper == "Rafailov et al. 2024"].iloc[0].outcome == "not measured"


@pytest.mark.parametrize("values, outcome", [
    ([(1.0, 0.5, 1.5), (2.0, 1.0, 3.0)], "reproduced"),
    ([(-1.0, -1.5, -0.5), (-2.0, -3.0, -1.0)], "did not reproduce"),
    ([(0.1, -0.5, 0.7), (0.2, -0.1, 0.5)], "not established"),
    ([(1.0, 0.5, 1.5), (-2.0, -3.0, -1.0), (0.0, -1.0, 1.0)],
     "mixed: the paper's direction at 1 of 3 learning rates, the opposite at 1, neither "
     "clearly at 1")])
def test_an_outcome_needs_every_interval_on_the_papers_side(values, outcome):
    rows = pd.DataFrame(values, columns=["value", "lo", "hi"])
    assert external._outcome(rows, expect=+1) == outcome
