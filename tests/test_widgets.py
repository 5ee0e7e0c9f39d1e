"""The explorer and the what-if view, driven from Python: set a control, check what it shows."""

import base64
import math

import numpy as np
import pandas as pd
import pytest

from prefstudy import widgets as W
from prefstudy.columns import SchemaError
from prefstudy.paths import in_repo
from prefstudy.records import load_runs

COMMITTED = in_repo("reports", "runs")


def _png(output) -> bytes:
    """The PNG an Output widget shows (exactly one display_data with an image)."""
    (item,) = output.outputs
    return base64.b64decode(item["data"]["image/png"])


# ---------------------------------------------------------------------------------------------
# Hand-made records


def hand_records() -> pd.DataFrame:
    """Three pairs whose every objective value is easy to compute by hand."""
    return pd.DataFrame({
        "run_id": "r", "label": "dpo", "seed": 0, "step": 1, "pair_id": ["a", "b", "c"],
        "nll_sum_p": [10.0, 40.0, 6.0], "nll_sum_n": [12.0, 20.0, 9.0],
        "len_p": [5, 20, 3], "len_n": [4, 10, 3],
        "ref_logp_p": [-11.0, -38.0, -6.0], "ref_logp_n": [-11.0, -22.0, -10.0],
    })


def study_records(n_pairs: int = 8, labels=("naive-sum", "dpo"), seeds=(0, 1),
                  steps=(0, 5, 10)) -> pd.DataFrame:
    """Records of a small fake study: about 2 nats per token, so summed losses grow with length
    while the token-mean gap (0.05 or 0.15) does not; the reference is the start; each label
    drifts differently."""
    rng = np.random.default_rng(0)
    len_p = rng.integers(3, 30, n_pairs)
    len_n = rng.integers(3, 30, n_pairs)
    len_n[0] = len_p[0]  # one pair with equal lengths
    rows = []
    for label in labels:
        for seed in seeds:
            for step in steps:
                drift = 0.01 * step * (1 if label == "dpo" else 3) * (1 + seed)
                for i in range(n_pairs):
                    loss_p, loss_n = 2.0 + drift, 2.1 + 0.05 * (-1) ** i + 2 * drift
                    rows.append({
                        "run_id": f"{label}-s{seed}", "label": label, "objective": label,
                        "seed": seed, "step": step, "pair_id": f"p{i}",
                        "len_p": int(len_p[i]), "len_n": int(len_n[i]),
                        "loss_p": loss_p, "loss_n": loss_n, "gap": loss_n - loss_p,
                        "nll_sum_p": loss_p * len_p[i], "nll_sum_n": loss_n * len_n[i],
                        "ref_logp_p": -2.0 * len_p[i] if label == "dpo" else math.nan,
                        "ref_logp_n": -(2.1 + 0.05 * (-1) ** i) * len_n[i] if label == "dpo" else math.nan,
                    })
    return pd.DataFrame(rows)


def pair_texts(n_pairs: int = 8) -> pd.DataFrame:
    return pd.DataFrame({"pair_id": [f"p{i}" for i in range(n_pairs)],
                         "prompt": [f"Question {i} <about> tags?" for i in range(n_pairs)],
                         "chosen": [f"good answer {i}" for i in range(n_pairs)],
                         "rejected": [f"bad answer {i}" for i in range(n_pairs)],
                         "lang": "en"})


# ---------------------------------------------------------------------------------------------
# What if: recomputing objectives from the logged sums


def test_recompute_matches_values_computed_by_hand():
    records = hand_records()
    frame = W.recompute(records, ["naive", "dpo", "simpo"], beta=0.5)
    naive = frame[frame.objective == "naive"]
    # naive, summed (its default): margin = nll_sum_n − nll_sum_p, loss = −margin
    assert naive.margin.tolist() == pytest.approx([2.0, -20.0, 3.0])
    assert naive.loss.tolist() == pytest.approx([-2.0, 20.0, -3.0])
    # dpo, β = 0.5: h = (πc − rc) − (πr − rr); pair a: (−10 + 11) − (−12 + 11) = 2 → margin 1
    dpo = frame[frame.objective == "dpo"]
    assert dpo.margin.iloc[0] == pytest.approx(1.0)
    assert dpo.loss.iloc[0] == pytest.approx(math.log1p(math.exp(-1.0)))
    # simpo, β = 0.5, γ = 1 (default): 0.5·(−10/5) − 0.5·(−12/4) − 1 = −0.5
    simpo = frame[frame.objective == "simpo"]
    assert simpo.margin.iloc[0] == pytest.approx(-0.5)
    assert frame.dlen.tolist()[:3] == [-1, -10, 0]
    mean = W.recompute(records, ["naive"], norm="mean")
    # token-mean: 12/4 − 10/5 = 1, 20/10 − 40/20 = 0, 9/3 − 6/3 = 1
    assert mean.margin.tolist() == pytest.approx([1.0, 0.0, 1.0])


def test_recompute_refuses_what_the_sums_cannot_give():
    records = hand_records()
    with pytest.raises(ValueError, match="unlikelihood.*each token's log-probability"):
        W.recompute(records, ["unlikelihood"])
    no_ref = records.assign(ref_logp_p=math.nan, ref_logp_n=math.nan)
    with pytest.raises(ValueError, match="dpo.*reference log-probs"):
        W.recompute(no_ref, ["dpo"])
    with pytest.raises(ValueError, match="unknown objective 'dpoo'"):
        W.recompute(records, ["dpoo"])
    with pytest.raises(SchemaError, match="nll_sum_p"):
        W.sequence_logps(records.drop(columns="nll_sum_p"))
    table = W.what_if_objectives(no_ref).set_index("objective")
    assert not table.available["dpo"] and "reference" in table.reason["dpo"]
    assert table.available["naive"] and table.reason["naive"] == ""
    assert table.params["simpo"] == ("beta", "gamma")


def test_reference_objectives_use_the_rows_that_have_a_reference():
    records = pd.concat([hand_records(), hand_records().assign(
        pair_id=["d", "e", "f"], ref_logp_p=math.nan, ref_logp_n=math.nan)], ignore_index=True)
    frame = W.recompute(records, ["naive", "dpo"])
    assert (frame.objective == "naive").sum() == 6
    assert set(frame[frame.objective == "dpo"].pair_id) == {"a", "b", "c"}


def test_token_mean_removes_the_length_effect_from_the_margin():
    records = study_records()
    records = records[(records.label == "dpo") & (records.step == 0)]
    summary = W.what_if_summary(W.recompute(records, ["naive"], norm="sum")).iloc[0]
    mean = W.what_if_summary(W.recompute(records, ["naive"], norm="mean")).iloc[0]
    assert summary.r2 > 0.5  # summed: the margin follows Δlen
    assert mean.r2 < 0.2
    assert summary.n == len(records)


def test_what_if_view_recomputes_on_every_change():
    view = W.what_if(study_records().assign(lr=1e-3), objectives=["naive", "dpo", "simpo"],
                     setting="dpo · lr 0.001")
    assert list(view.table.objective) == ["naive", "dpo", "simpo"]
    assert set(view.frame.label) == {"dpo"}  # the records of one setting: its two seeds
    assert "naive" in view.summary.value and "R² of margin on Δlen" in view.summary.value
    assert "unlikelihood" in view.note.value and "ld_dpo" in view.note.value
    first_png, first = _png(view.figure), view.frame.copy()
    assert first_png.startswith(b"\x89PNG")
    assert view.beta.disabled  # each objective's own β until the box is unticked

    view.default_beta.value = False
    view.beta.value = 1.0
    dpo_now = view.frame[view.frame.objective == "dpo"].margin.to_numpy()
    dpo_then = first[first.objective == "dpo"].margin.to_numpy()
    assert dpo_now == pytest.approx(10 * dpo_then)  # β 0.1 → 1 scales DPO's margin tenfold
    assert "beta = 1" in view.status.value

    view.norm.value = "mean"
    naive = view.table.set_index("objective").loc["naive"]
    assert naive.r2 < first.pipe(W.what_if_summary).set_index("objective").loc["naive"].r2
    assert _png(view.figure) != first_png

    view.objectives.value = ()
    assert view.frame is None and view.figure.outputs == ()
    assert "Choose at least one objective" in view.status.value


def test_what_if_lists_only_objectives_it_can_compute():
    view = W.what_if(study_records(labels=("naive-sum",)))
    assert "dpo" not in view.objectives.options  # no reference log-probs in these records
    assert "naive" in view.objectives.options and "unlikelihood" not in view.objectives.options
    assert "reference log-probs" in view.note.value


# ---------------------------------------------------------------------------------------------
# The explorer


def test_length_bins_cut_the_pairs_by_length_difference():
    records = study_records()
    bins = W.length_bins(records, bins=4)
    assert set(bins.index) == set(records.pair_id)
    dlen = records.drop_duplicates("pair_id").set_index("pair_id").eval("len_n - len_p")
    first = bins.cat.categories[0]
    assert first.startswith("[") and dlen[bins == first].max() <= dlen[bins != first].min()


def test_explorer_data_for_a_pair():
    records = study_records()
    data = W.explorer_data(records, ["dpo"], [1], pair_id="p3", pairs=pair_texts())
    assert set(data.records.label) == {"dpo"} and set(data.records.seed) == {1}
    assert set(data.focus.pair_id) == {"p3"} and len(data.focus) == 3  # three steps
    assert data.cloud.focus.sum() == 3 and set(data.cloud.normalisation) == {"sum"}
    assert data.pair["prompt"] == "Question 3 <about> tags?"
    expected_dlen = int(records[records.pair_id == "p3"].eval("len_n - len_p").iloc[0])
    assert data.pair["dlen"] == expected_dlen and f"{expected_dlen:+d}" in data.title
    reference = W.explorer_data(records, ["dpo"], pair_id="p3", normalisation="reference")
    assert set(reference.cloud.normalisation) == {"reference"}


def test_explorer_data_for_a_length_bin_and_its_errors():
    records = study_records()
    bins = W.length_bins(records)
    chosen = str(bins.cat.categories[-1])
    data = W.explorer_data(records, length_bin=chosen)
    assert set(data.focus.pair_id) == set(bins.index[bins == chosen])
    assert data.pair is None and chosen in data.title
    with pytest.raises(ValueError, match="not both"):
        W.explorer_data(records)
    with pytest.raises(ValueError, match="unknown objectives \\['simpo'\\]"):
        W.explorer_data(records, ["simpo"], pair_id="p1")
    with pytest.raises(ValueError, match="at least one"):
        W.explorer_data(records, [], pair_id="p1")
    with pytest.raises(ValueError, match="pair 'zz'"):
        W.explorer_data(records, pair_id="zz")


def test_explorer_widget_follows_its_controls():
    records = study_records()
    evals = records[records.pair_id.isin(["p0", "p1", "p2", "p3"])]
    view = W.Explorer({"held-out pairs": evals, "training pairs": records}, pair_texts(),
                      labels=["naive-sum", "dpo"])
    assert view.objectives.value == ("naive-sum", "dpo")
    assert len(view.pair.options) == 4  # the held-out pairs
    assert "&lt;about&gt;" in view.text.value  # the pair's text, escaped
    trajectories, cloud = _png(view.trajectories), _png(view.cloud)

    view.objectives.value = ("dpo",)
    assert set(view.data.records.label) == {"dpo"}
    assert "objectives: dpo" in view.status.value
    assert _png(view.trajectories) != trajectories

    view.pair.value = "p1"
    assert set(view.data.focus.pair_id) == {"p1"} and "Question 1" in view.text.value

    view.normalisation.value = "mean"
    assert set(view.data.cloud.normalisation) == {"mean"} and _png(view.cloud) != cloud

    view.source.value = "training pairs"
    assert len(view.pair.options) == 8 and view.data.records.pair_id.nunique() == 8

    view.focus_by.value = "length bin"
    assert view.pair.disabled and not view.length_bin.disabled
    assert view.data.pair is None and "pairs" in view.text.value
    view.length_bin.value = view.length_bin.options[-1]
    assert view.length_bin.value in view.data.title

    view.objectives.value = ()
    assert view.data is None and "Nothing to show" in view.status.value
    assert view.trajectories.outputs == ()


def test_explorer_says_when_the_reference_gap_is_missing():
    records = study_records(labels=("naive-sum",))
    view = W.Explorer({"training pairs": records})
    view.normalisation.value = "reference"
    (item,) = view.cloud.outputs
    assert "reference" in item["data"]["text/plain"] and "image/png" not in item["data"]


# ---------------------------------------------------------------------------------------------
# Learning rates, seeds and settings: never pooled silently


def sweep_records(lrs=(1e-4, 1e-3), seeds=(0,), label="naive-sum", steps=(0, 6),
                  pair_ids=("a", "b")) -> pd.DataFrame:
    """One label swept over learning rates: loss_p = 2 + step·lr·1000·(1 + seed) nats/token,
    the same for every pair (at step 6: 2.6 at lr 1e-4, 8 at lr 1e-3 seed 0, 14 seed 1);
    loss_n = loss_p + 0.5."""
    rows = []
    for lr in lrs:
        for seed in seeds:
            for step in steps:
                loss_p = 2 + step * lr * 1000 * (1 + seed)
                for pid in pair_ids:
                    rows.append({"run_id": f"{label}-lr{lr:g}-s{seed}", "label": label, "lr": lr,
                                 "seed": seed, "step": step, "pair_id": pid, "len_p": 4,
                                 "len_n": 6, "loss_p": loss_p, "loss_n": loss_p + 0.5,
                                 "nll_sum_p": 4 * loss_p, "nll_sum_n": 6 * (loss_p + 0.5)})
    return pd.DataFrame(rows)


def _at_step(data, step, column="loss_p"):
    return data.focus[data.focus.step == step].groupby("lr_name")[column].mean().to_dict()


def _bands(grid) -> list:
    """The (lowest, highest) y of each band (fill_between) of a grid's panels."""
    return [(path.vertices[:, 1].min(), path.vertices[:, 1].max())
            for ax in grid.axes.flat for collection in ax.collections
            for path in collection.get_paths()]


def test_explorer_data_keeps_learning_rates_apart():
    records = sweep_records()
    with pytest.raises(ValueError, match="trained at lr 0.0001, lr 0.001: choose one"):
        W.explorer_data(records, pair_id="a")  # never a silent mean over learning rates
    one = W.explorer_data(records, pair_id="a", lr=1e-3)
    assert set(one.focus.run_id) == {"naive-sum-lr0.001-s0"}
    assert _at_step(one, 6) == {"lr 0.001": pytest.approx(8.0)}  # not (2.6 + 8) / 2 = 5.3
    assert "lr 0.001" in one.title and one.lines.runs.tolist() == [1]
    each = W.explorer_data(records, pair_id="a", lr=W.EACH_LR)
    assert _at_step(each, 6) == {"lr 0.0001": pytest.approx(2.6), "lr 0.001": pytest.approx(8.0)}
    assert each.lr_order == ["lr 0.0001", "lr 0.001"] and len(each.lines) == 2
    with pytest.raises(ValueError, match="no runs at lr 0.003"):
        W.explorer_data(records, pair_id="a", lr=3e-3)
    # records of one learning rate (or none recorded) need no choice
    assert len(W.explorer_data(records[records.lr == 1e-4], pair_id="a").focus) == 2
    assert W.explorer_data(records.drop(columns="lr").query("run_id.str.contains('0.001')"),
                           pair_id="a").title.endswith("lr not recorded")


def test_explorer_pools_seeds_of_one_setting_and_its_band_is_their_range():
    records = sweep_records(lrs=(1e-3,), seeds=(0, 1))
    data = W.explorer_data(records, pair_id="a", lr=1e-3)
    assert _at_step(data, 6) == {"lr 0.001": pytest.approx(11.0)}  # (8 + 14) / 2, seeds
    assert data.pooled and data.lines.runs.tolist() == [2] and data.lines.seeds[0] == "0, 1"
    assert W.pooling_note(data) == ("each line is the mean of 2 runs, seeds 0, 1 of one setting; "
                                    "the band is their range")
    grid = W.draw_trajectories(data)
    lows_highs = _bands(grid)
    # loss_p's band at step 6 spans the two seeds, 8 to 14; a t-interval over two seeds
    # (t = 12.7) would reach 11 − 38 = −27 nats/token, below what a loss can be
    assert lows_highs and min(lo for lo, _ in lows_highs) >= 2.0
    assert (2.0, 14.0) in [(pytest.approx(lo), pytest.approx(hi)) for lo, hi in lows_highs]
    single = W.explorer_data(records, ["naive-sum"], [0], pair_id="a", lr=1e-3)
    assert not single.pooled and "one run" in W.pooling_note(single)
    assert _bands(W.draw_trajectories(single)) == []  # one run per line: no band


def test_runs_that_differ_in_more_than_the_seed_are_separate_lines():
    records = pd.concat([sweep_records(lrs=(1e-3,), seeds=(0, 1)),
                         sweep_records(lrs=(1e-3,), seeds=(0,)).assign(run_id="beta-run")])
    configs = {rid: {"objective": "dpo", "params": {"beta": 0.5 if rid == "beta-run" else 0.1},
                     "lr": 1e-3, "seed": int(rid[-1]) if rid[-1].isdigit() else 0, "steps": 6,
                     "output": f"/somewhere/{rid}"}
               for rid in records.run_id.unique()}
    settings = W.run_settings(records, configs).set_index("run_id")
    assert settings.setting["beta-run"] == "naive-sum · lr 0.001 · beta=0.5"
    assert settings.setting["naive-sum-lr0.001-s1"] == "naive-sum · lr 0.001 · beta=0.1"
    assert settings.n_runs.tolist() == [2, 2, 1]  # seeds 0 and 1 share a setting; output is no setting
    data = W.explorer_data(records, pair_id="a", lr=1e-3, settings=settings.reset_index())
    lines = data.lines.set_index("line").runs.to_dict()
    assert lines == {"naive-sum · beta=0.1": 2, "naive-sum · beta=0.5": 1}
    assert "naive-sum · beta=0.5: 1 run (seed 0)" in W.pooling_note(data)
    grid = W.draw_trajectories(data, order=["naive-sum"])
    assert [t.get_text() for t in grid.legend.get_texts()] == list(lines)
    # without configurations, label and lr alone say which runs are seeds of one setting
    assert W.run_settings(records).n_runs.tolist() == [3, 3, 3]
    # and without a recorded lr, no run is pooled with another
    unknown = W.run_settings(records.drop(columns="lr"))
    assert unknown.n_runs.tolist() == [1, 1, 1]
    assert unknown.setting.tolist()[0] == "naive-sum · run naive-sum-lr0.001-s0"


def test_the_views_use_the_reports_colours():
    from matplotlib.colors import to_rgb

    from prefstudy import theme

    records = study_records().assign(lr=1e-3)  # two seeds of each label at one lr
    families = {"naive-sum": "likelihood", "dpo": "reference-based"}
    view = W.Explorer({"training pairs": records}, labels=["naive-sum", "dpo"],
                      families=families)
    assert view.palette == theme.family_palette(families)
    grid = W.draw_trajectories(view.data, order=view.labels, palette=view.palette)
    drawn = {tuple(np.round(to_rgb(line.get_color()), 6))
             for line in grid.axes.flat[0].get_lines()}
    assert drawn == {tuple(np.round(view.palette[label], 6)) for label in families}
    plain = W.Explorer({"training pairs": records}, labels=["naive-sum", "dpo"])
    assert plain.palette == theme.label_palette(["naive-sum", "dpo"])  # no families: by label
    assert W.study_colours(["naive-sum", "x"], families) == theme.label_palette(["naive-sum", "x"])


def test_explorer_widget_has_a_learning_rate_control():
    records = pd.concat([sweep_records(), sweep_records(label="dpo")])
    view = W.Explorer({"held-out pairs": records}, labels=["naive-sum", "dpo"])
    assert [v for _, v in view.lr.options] == [1e-3, 1e-4, W.EACH_LR]
    assert view.lr.value == 1e-3  # the largest first
    assert set(view.data.focus.lr) == {1e-3} and "lr 0.001" in view.status.value
    assert "each line is one run" in view.status.value
    view.lr.value = 1e-4
    assert set(view.data.focus.lr) == {1e-4} and "lr 0.0001" in view.status.value
    view.lr.value = W.EACH_LR
    assert set(view.data.focus.lr) == {1e-4, 1e-3} and "every lr" in view.status.value
    assert _png(view.trajectories).startswith(b"\x89PNG") and _png(view.cloud)


def test_what_if_recomputes_one_setting_at_a_time():
    records = pd.concat([hand_records().assign(run_id="r1", lr=1e-3),
                         hand_records().assign(run_id="r2", lr=1e-4,
                                               nll_sum_p=[20.0, 40.0, 6.0])])
    view = W.what_if(records, objectives=["naive"])
    assert [v for _, v in view.setting.options] == ["dpo · lr 0.001", "dpo · lr 0.0001"]
    assert set(view.frame.run_id) == {"r1"}
    assert view.frame.margin.tolist() == pytest.approx([2.0, -20.0, 3.0])
    assert "dpo · lr 0.001: one run (seed 0)" in view.status.value
    view.setting.value = "dpo · lr 0.0001"
    assert set(view.frame.run_id) == {"r2"}
    assert view.frame.margin.tolist() == pytest.approx([-8.0, -20.0, 3.0])
    assert view.table.n.tolist() == [3]  # not the six rows of both runs
    # the summary of a frame that holds both keeps them apart
    both = W.what_if_summary(W.recompute(records, ["naive"]))
    assert both.lr.tolist() == [1e-3, 1e-4] and both.n.tolist() == [3, 3]
    with pytest.raises(ValueError, match="no setting 'dpo · lr 0.3'"):
        W.what_if(records, setting="dpo · lr 0.3")


def test_what_if_offers_what_each_settings_records_can_give():
    records = study_records().assign(lr=1e-3)
    view = W.what_if(records, objectives=["naive", "dpo"])
    assert view.setting.value == "naive-sum · lr 0.001"
    assert "dpo" not in view.objectives.options  # the naive-sum runs have no reference
    assert view.objectives.value == ("naive",)
    view.setting.value = "dpo · lr 0.001"
    assert "dpo" in view.objectives.options and view.objectives.value == ("naive", "dpo")
    assert "2 runs pooled, seeds 0, 1" in view.status.value


# ---------------------------------------------------------------------------------------------
# Runs on disk


def test_notebook_runs_reads_the_committed_runs_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFSTUDY_RUNS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="RERUN = True"):
        W.notebook_runs()
    (tmp_path / "some-run").mkdir()
    (tmp_path / "some-run" / "meta.json").write_text("{}")
    assert W.notebook_runs() == tmp_path


HELD_OUT_PAIR = "969010b8"  # issue 21: its naive-sum loss_p at step 24 showed as 6.38


@pytest.fixture(scope="module")
def committed():
    if not COMMITTED.exists():
        pytest.skip("no committed runs in reports/runs yet")
    from prefstudy.tables import load_tables

    return load_tables(COMMITTED)


def test_the_explorers_data_is_each_runs_own_value_on_the_committed_runs(committed):
    evals = committed.evals
    (pair,) = {p for p in evals.pair_id if p.startswith(HELD_OUT_PAIR)}
    own = evals[(evals.pair_id == pair) & (evals.label == "naive-sum") & (evals.step == 24)]
    own = own.set_index("lr").loss_p
    assert own.round(2).to_dict() == {1e-4: 2.05, 3e-4: 3.25, 1e-3: 13.85}  # each run's own
    settings = W.run_settings(committed.runs, committed.configs)
    assert settings.n_runs.eq(1).all()  # one seed: every run is a setting of its own
    for lr in (1e-4, 3e-4, 1e-3):
        data = W.explorer_data(evals, ["naive-sum"], pair_id=pair, lr=lr, settings=settings)
        assert _at_step(data, 24) == {W.lr_name(lr): pytest.approx(own[lr])}  # not 6.38
    each = W.explorer_data(evals, ["naive-sum"], pair_id=pair, lr=W.EACH_LR, settings=settings)
    shown = _at_step(each, 24)
    assert shown == {W.lr_name(lr): pytest.approx(value) for lr, value in own.items()}
    assert all(abs(value - 6.38) > 0.1 for value in shown.values())  # the mean of the three
    assert each.lines.runs.eq(1).all() and not each.pooled


def test_explorer_and_what_if_on_the_committed_runs(committed):
    from prefstudy import theme

    view = W.explore(COMMITTED, objectives=["naive-sum", "dpo"])
    assert view.objectives.value == ("naive-sum", "dpo")
    assert view.labels == committed.order and view.labels[0] == "naive-sum"  # the report's order
    assert view.palette == theme.family_palette(committed.families)  # the report's colours
    assert "prompt" in view.text.value and _png(view.cloud)
    assert view.lr.value == 1e-3 and set(view.data.focus.lr) == {1e-3}  # the largest lr only
    assert "each line is one run" in view.status.value
    records = committed.records
    what = W.what_if(records[records.label == "dpo"], objectives=["naive", "dpo"])
    assert set(what.table.objective) == {"naive", "dpo"}
    assert what.frame.run_id.nunique() == 1 and "dpo · lr 0.001: one run" in what.status.value
    records = load_runs(COMMITTED)  # no lr column: each run is a setting of its own
    what = W.what_if(records[records.label == "dpo"], objectives=["naive"])
    assert what.frame.run_id.nunique() == 1 and len(what.setting.options) == 3


@pytest.mark.slow
def test_notebook_runs_rerun_trains_the_study_into_a_fresh_folder(tmp_path, monkeypatch):
    import dataclasses

    from prefstudy import study as study_module

    load_study = study_module.load_study

    def first_two(*args, **kwargs):  # the tiny profile's first two configurations, shorter
        study = load_study(*args, **kwargs)
        assert study.profile == "tiny" and study.shared["model"] == "tiny"
        shorter = {"steps": 2, "eval_every": 1, "max_pairs": 8, "n_probes": 1, "n_neutral": 2}
        return dataclasses.replace(study, runs=study.runs[:2], shared={**study.shared, **shorter})

    monkeypatch.setattr(study_module, "load_study", first_two)
    runs = W.notebook_runs(rerun=True, output=tmp_path / "runs")
    assert runs == tmp_path / "runs"
    records = load_runs(runs)
    assert W.study_labels(records, runs) == ["naive-sum", "naive-mean"]
    assert records.groupby("run_id").step.max().eq(2).all()
    assert (runs / "audit" / "audit.json").exists()  # the audit of the pairs it trains on
