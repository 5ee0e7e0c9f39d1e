"""Figures, checked on the artists and data they return (never pixels), from hand-built frames."""

import os
import subprocess
import sys

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from scipy import stats

from prefstudy import plots

STEPS = [1, 2, 3, 4, 5, 6]
N_PAIRS = 4


def make_records(labels=("dpo", "naive-sum"), seeds=(0, 1, 2), diverged=(("naive-sum", 2, 4),)):
    """Per-pair records with known step means.

    loss_p = 1 + 0.1·i·step + 0.01·seed + 0.001·pair (i = the label's index), loss_n = loss_p +
    0.2·step. `diverged`: (label, seed, step) runs that diverged at `step` (no records from then).
    """
    stop = {(label, seed): step for label, seed, step in diverged}
    rows = []
    for i, label in enumerate(labels):
        for seed in seeds:
            div = stop.get((label, seed))
            for step in STEPS:
                if div is not None and step >= div:
                    continue
                for p in range(N_PAIRS):
                    loss_p = 1 + 0.1 * i * step + 0.01 * seed + 0.001 * p
                    loss_n = loss_p + 0.2 * step
                    rows.append({
                        "run_id": f"{label}-s{seed}", "label": label, "objective": label,
                        "norm": "", "seed": seed, "status": "diverged" if div else "completed",
                        "diverged_step": float(div) if div else np.nan, "step": step,
                        "pair_id": f"p{p}", "len_p": 10 + p, "len_n": 12 + 3 * p,
                        "loss_p": loss_p, "loss_n": loss_n, "gap": loss_n - loss_p,
                        "nll_sum_p": loss_p * (10 + p), "nll_sum_n": loss_n * (12 + 3 * p),
                        "ref_logp_p": -20.0 - p, "ref_logp_n": -30.0 - 2 * p,
                        "margin": 0.0, "pair_loss": 0.0, "lr": 1e-3,
                        "grad_norm": 1.0 + p, "grad_cos": 0.5 - 0.3 * p,
                    })
    return pd.DataFrame(rows)


def expected_step_mean(records, label, quantity):
    """By hand: mean over pairs within each run, then mean over the runs present at each step."""
    per_run = records[records.label == label].groupby(["run_id", "step"])[quantity].mean()
    return per_run.groupby("step").mean()


def data_lines(ax):
    """The trajectory lines of a panel: lines with more than two points."""
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 2]


def assert_legend_outside(figure, legend, axes):
    """The legend's box overlaps no panel's box (drawn figures, in display pixels)."""
    figure.canvas.draw()
    box = legend.get_window_extent()
    for ax in axes:
        assert not box.overlaps(ax.get_window_extent()), ax.get_title()


def make_gap_frame(n=41, seed=0):
    """A gap_normalisations-shaped frame: summed gap exactly 0.5 + 2·dlen, token-mean gap pure
    noise shuffled against dlen, reference gap −0.1·dlen plus small noise."""
    rng = np.random.default_rng(seed)
    dlen = np.arange(n) - n // 2
    gaps = {"sum": 0.5 + 2.0 * dlen, "mean": rng.permutation(rng.normal(size=n)),
            "reference": -0.1 * dlen + rng.normal(scale=0.05, size=n)}
    frames = [pd.DataFrame({"run_id": "r", "label": "naive-sum", "seed": 0, "step": 1,
                            "pair_id": [f"p{i}" for i in range(n)], "normalisation": name,
                            "gap_value": gap, "dlen": dlen.astype(float),
                            "dlen_rel": dlen / (2 * n)})
              for name, gap in gaps.items()]
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------- palette


def test_label_palette_is_fixed_by_sorted_labels():
    a = plots.label_palette(["simpo", "dpo", "naive-sum", "dpo"])
    b = plots.label_palette(["naive-sum", "simpo", "dpo"])
    assert a == b
    assert list(a) == ["dpo", "naive-sum", "simpo"]
    assert len(set(a.values())) == 3
    many = plots.label_palette([f"l{i:02d}" for i in range(14)])  # beyond the base palette
    assert len(set(many.values())) == 14


def test_set_style_pins_the_study_palette_for_subsets(monkeypatch):
    monkeypatch.setattr(plots, "_study_palette", None)
    study = ["dpo", "dpop", "naive-mean", "naive-sum", "simpo"]
    with mpl.rc_context():  # set_style changes global rcParams; restore them after
        plots.set_style(labels=study)
        paper = plots.sns.plotting_context("paper")
        assert mpl.rcParams["axes.labelsize"] == paper["axes.labelsize"]
    pinned = plots.label_palette(study)
    table = pd.DataFrame({"label": ["dpop", "simpo"], "grad_cos": [0.1, 0.2]})
    ax = plots.interval_plot(table)
    colours = [to_rgb(line.get_color()) for line in ax.get_lines()]
    assert colours == [to_rgb(pinned["dpop"]), to_rgb(pinned["simpo"])]
    # without the pin, the subset is coloured by its own sorted order
    monkeypatch.setattr(plots, "_study_palette", None)
    ax = plots.interval_plot(table)
    assert to_rgb(ax.get_lines()[0].get_color()) == to_rgb(plots.label_palette(["dpop"])["dpop"])


FAMILIES = {"naive-sum": "likelihood", "negative_only": "likelihood", "sft": "likelihood",
            "naive-mean": "length-normalised", "simpo": "length-normalised",
            "dpo": "reference-based", "ipo": "reference-based", "dpop": "anchored"}


def test_family_palette_is_one_hue_per_family_in_lightness_steps():
    from colorsys import rgb_to_hls

    palette = plots.family_palette(FAMILIES)
    assert list(palette) == ["naive-sum", "negative_only", "sft", "naive-mean", "simpo", "dpo",
                             "ipo", "dpop"]  # family by family, sorted within each
    base = plots.sns.color_palette(plots.BASE_PALETTE)
    hues = {f: rgb_to_hls(*base[i])[0] for f, i in plots.FAMILY_HUES.items()}
    assert len({round(h, 2) for h in hues.values()}) == 4
    for label, colour in palette.items():
        assert rgb_to_hls(*colour)[0] == pytest.approx(hues[FAMILIES[label]], abs=1e-6)
    # within a family: darkest first in sorted order, none near white or black
    lightness = [rgb_to_hls(*palette[lab])[1] for lab in ("naive-sum", "negative_only", "sft")]
    assert lightness == sorted(lightness) and len(set(lightness)) == 3
    assert all(0.12 < v < 0.85 for v in (rgb_to_hls(*c)[1] for c in palette.values()))
    # a family's only label is the hue itself
    assert palette["dpop"] == pytest.approx(tuple(base[plots.FAMILY_HUES["anchored"]]))
    # the same labels and families, in any order, give the same colours
    assert plots.family_palette(dict(reversed(list(FAMILIES.items())))) == palette
    with pytest.raises(ValueError, match="unknown family.*allowed: likelihood"):
        plots.family_palette({"dpo": "dpo-like"})


def test_family_hues_name_exactly_the_objectives_families():
    from prefstudy.objectives import FAMILIES as DECLARED

    assert set(plots.FAMILY_HUES) == set(DECLARED)


def test_family_order_lists_family_by_family_in_the_given_order():
    given = {"dpo": "reference-based", "simpo": "length-normalised", "dpop": "anchored",
             "naive-sum": "likelihood", "orpo": "length-normalised", "sft": "likelihood"}
    assert plots.family_order(given) == ["naive-sum", "sft", "simpo", "orpo", "dpo", "dpop"]
    with pytest.raises(ValueError, match="unknown family"):
        plots.family_order({"dpo": "reference"})


def test_set_style_pins_the_family_palette(monkeypatch):
    monkeypatch.setattr(plots, "_study_palette", None)
    with mpl.rc_context():
        plots.set_style(list(FAMILIES), families=FAMILIES)
        with pytest.raises(ValueError, match="no family for"):
            plots.set_style(["dpo", "rpo"], families=FAMILIES)
    table = pd.DataFrame({"label": ["simpo", "dpo"], "grad_cos": [0.1, 0.2]})
    ax = plots.interval_plot(table)
    pinned = plots.family_palette(FAMILIES)
    assert [to_rgb(line.get_color()) for line in ax.get_lines()] == [
        to_rgb(pinned["dpo"]), to_rgb(pinned["simpo"])]


def test_figures_do_not_change_global_style():
    before = dict(mpl.rcParams)
    plots.interval_plot(pd.DataFrame({"label": ["dpo"], "grad_cos": [0.1]}))
    assert {k: v for k, v in mpl.rcParams.items() if before[k] != v} == {}


# --------------------------------------------------------------------------------- C1 gap/length


def test_gap_vs_length_panels_lines_and_r2_titles():
    from prefstudy.diagnostics import length_effect

    frame = make_gap_frame()
    effect = length_effect(frame, by=("normalisation",), n_boot=200)
    grid = plots.gap_vs_length(frame, effect=effect)
    axes = grid.axes.flat
    assert len(axes) == 3
    titles = [ax.get_title() for ax in axes]
    assert [t.splitlines()[0] for t in titles] == ["mean", "reference", "sum"]
    assert all("R² = " in t for t in titles)
    assert "R² = 1.00" in titles[2]  # the exactly linear summed gap
    assert "R² = 0.0" in titles[0]  # the shuffled noise
    assert "R² = 1.00 [1.00, 1.00]" in titles[2]  # the interval of the effect passed in
    pd.testing.assert_frame_equal(grid.effect.reset_index(drop=True),
                                  effect.reset_index(drop=True))
    # one fitted line per panel, from length_effect's slope and intercept, over the data's range
    sum_ax = axes[2]
    (line,) = sum_ax.get_lines()
    np.testing.assert_allclose(line.get_xdata(), [-20, 20])
    np.testing.assert_allclose(line.get_ydata(), [0.5 - 40, 0.5 + 40])
    # every pair is a point; y axes independent (summed and mean gaps differ in scale)
    assert len(sum_ax.collections[0].get_offsets()) == 41
    assert not axes[0].get_shared_y_axes().joined(axes[0], axes[2])


def test_gap_vs_length_subsamples_points_not_statistics():
    from prefstudy.diagnostics import length_effect

    frame = make_gap_frame(n=201)
    effect = length_effect(frame, by=("normalisation",), n_boot=50)
    full = plots.gap_vs_length(frame, effect=effect, max_points=None)
    thin = plots.gap_vs_length(frame, effect=effect, max_points=30)
    for ax_full, ax_thin in zip(full.axes.flat, thin.axes.flat):
        assert len(ax_full.collections[0].get_offsets()) == 201
        assert len(ax_thin.collections[0].get_offsets()) == 30
        assert ax_full.get_title() == ax_thin.get_title()
        np.testing.assert_allclose(ax_full.get_lines()[0].get_ydata(),
                                   ax_thin.get_lines()[0].get_ydata())


def test_gap_vs_length_on_gap_normalisations_output():
    from prefstudy.diagnostics import gap_normalisations

    frame = gap_normalisations(make_records())
    grid = plots.gap_vs_length(frame, hue="label")
    assert sorted(ax.get_title().splitlines()[0] for ax in grid.axes.flat) == sorted(
        frame.normalisation.unique())
    assert [t.get_text() for t in grid.legend.texts] == ["dpo", "naive-sum"]
    grid = plots.gap_vs_length(frame, hue="label", hue_order=["naive-sum", "dpo"])
    assert [t.get_text() for t in grid.legend.texts] == ["naive-sum", "dpo"]


def test_gap_vs_length_single_panel():
    from prefstudy.diagnostics import length_effect

    frame = make_gap_frame()
    summed = frame[frame.normalisation == "sum"]
    grid = plots.gap_vs_length(summed, col=None)
    (ax,) = grid.axes.flat
    assert ax.get_title().startswith("R² = 1.00  ")  # the point fit alone: no interval
    assert np.isnan(grid.effect.r2_lo).all() and "_panel" not in grid.effect
    with_ci = plots.gap_vs_length(summed, col=None, effect=length_effect(summed, by=(),
                                                                        n_boot=50))
    assert with_ci.axes.flat[0].get_title().startswith("R² = 1.00 [")


def test_gap_vs_length_names_missing_columns():
    from prefstudy.records import SchemaError

    with pytest.raises(SchemaError, match="gap_value"):
        plots.gap_vs_length(make_gap_frame().drop(columns="gap_value"))


# ------------------------------------------------------------------------ C3 loss trajectories


def test_loss_trajectories_lines_are_step_means_across_seeds():
    records = make_records()
    grid = plots.loss_trajectories(records)
    axes = list(grid.axes.flat)
    assert [ax.get_title() for ax in axes] == ["chosen loss (loss_p)", "rejected loss (loss_n)"]
    assert [ax.get_ylabel() for ax in axes] == ["loss (nats per token)"] * 2
    assert axes[0].get_xlabel() == "training step"
    assert grid.legend.get_title().get_text() == "objective"
    for ax, quantity in zip(axes, ("loss_p", "loss_n")):
        lines = data_lines(ax)
        assert len(lines) == 2  # one per label, sorted: dpo, naive-sum
        for line, label in zip(lines, ("dpo", "naive-sum")):
            expected = expected_step_mean(records, label, quantity)
            np.testing.assert_array_equal(line.get_xdata(), STEPS)
            np.testing.assert_allclose(line.get_ydata(), expected.to_numpy())
            assert to_rgb(line.get_color()) == to_rgb(plots.label_palette(
                ["dpo", "naive-sum"])[label])


def test_loss_trajectories_band_is_the_seed_t_interval():
    records = make_records(diverged=())
    ax = grid_ax = plots.loss_trajectories(records).axes.flat[0]
    band = grid_ax.collections[0]  # dpo's band
    per_run = (records[records.label == "dpo"].groupby(["seed", "step"]).loss_p.mean()
               .unstack("step"))
    step1 = per_run[1].to_numpy()  # three seeds: 1.0015, 1.0115, 1.0215
    half = stats.t.ppf(0.975, 2) * step1.std(ddof=1) / np.sqrt(3)
    ys = band.get_paths()[0].vertices
    at1 = ys[np.isclose(ys[:, 0], 1), 1]
    np.testing.assert_allclose(sorted(set(np.round(at1, 12))),
                               [step1.mean() - half, step1.mean() + half])
    assert ax is grid_ax


def test_loss_trajectories_marks_divergence_and_onset():
    records = make_records()
    onset = pd.DataFrame({"run_id": ["naive-sum-s0", "naive-sum-s1", "naive-sum-s2", "dpo-s0"],
                          "label": ["naive-sum"] * 3 + ["dpo"], "seed": [0, 1, 2, 0],
                          "onset_step": [3.0, 3.0, 5.0, np.nan]})
    grid = plots.loss_trajectories(records, onset=onset)
    colour = to_rgb(plots.label_palette(["dpo", "naive-sum"])["naive-sum"])
    for ax, quantity in zip(grid.axes.flat, ("loss_p", "loss_n")):
        vlines = [line for line in ax.get_lines()
                  if len(line.get_xdata()) == 2 and line.get_linestyle() == "--"]
        assert len(vlines) == 1  # dpo has no onset
        np.testing.assert_allclose(vlines[0].get_xdata(), [3, 3])  # the median onset
        assert to_rgb(vlines[0].get_color()) == colour
        spans = [p for p in ax.patches if to_rgb(p.get_facecolor()) == colour]
        assert len(spans) == 1  # the range of onsets, 3..5
        crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
        assert len(crosses) == 1  # naive-sum seed 2 diverged at step 4: last record at 3
        assert list(crosses[0].get_xdata()) == [3]
        run = records[(records.run_id == "naive-sum-s2") & (records.step == 3)]
        assert crosses[0].get_ydata()[0] == pytest.approx(run[quantity].mean())
    assert "diverged" in [t.get_text() for t in grid.legend.texts]


def test_loss_trajectories_onset_from_collapse():
    from prefstudy.diagnostics import collapse

    records = make_records()
    # window 2: naive-sum's loss_p and gap rise from step 3 on (all three seeds); dpo's loss_p is
    # flat, so it never collapses
    onset = collapse(records, window=2)
    assert onset.set_index("run_id").onset_step.to_dict() == pytest.approx(
        {"dpo-s0": np.nan, "dpo-s1": np.nan, "dpo-s2": np.nan, "naive-sum-s0": 3.0,
         "naive-sum-s1": 3.0, "naive-sum-s2": 3.0}, nan_ok=True)
    grid = plots.loss_trajectories(records, onset=onset)
    for ax in grid.axes.flat:
        (vline,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        np.testing.assert_allclose(vline.get_xdata(), [3, 3])
        assert not ax.patches  # every seed's onset is 3: no range to shade
    # the onset table alone is enough to mark divergence when the records lack status columns
    bare = records.drop(columns=["status", "diverged_step"])
    grid = plots.loss_trajectories(bare, onset=onset)
    assert [line.get_marker() for line in grid.axes.flat[0].get_lines()].count("x") == 1
    assert not [line for line in plots.loss_trajectories(bare).axes.flat[0].get_lines()
                if line.get_marker() == "x"]


def test_loss_trajectories_rows_per_label_and_plain_errorbar():
    records = make_records()
    grid = plots.loss_trajectories(records, row="label", errorbar=None)
    assert grid.axes.shape == (2, 2)
    assert grid.axes[1, 0].get_title() == "naive-sum · chosen loss (loss_p)"
    assert all(len(ax.collections) == 0 for ax in grid.axes.flat)  # no band
    assert len(data_lines(grid.axes[0, 1])) == 1
    flipped = plots.loss_trajectories(records, row="label", row_order=["naive-sum", "dpo"],
                                      errorbar=None)
    assert flipped.axes[0, 0].get_title() == "naive-sum · chosen loss (loss_p)"


def test_loss_trajectories_never_average_a_nonfinite_pair_away():
    records = make_records(labels=("dpo",), seeds=(0,), diverged=())
    records.loc[(records.step == 2) & (records.pair_id == "p0"), "loss_p"] = np.inf
    loss_p, loss_n = (data_lines(ax)[0] for ax in plots.loss_trajectories(records).axes.flat)
    assert list(loss_p.get_xdata()) == [1, 3, 4, 5, 6]  # step 2 left out, not a 3-pair mean
    assert list(loss_n.get_xdata()) == STEPS


def test_loss_trajectories_names_missing_columns():
    from prefstudy.records import SchemaError

    with pytest.raises(SchemaError, match=r"loss_n"):
        plots.loss_trajectories(make_records().drop(columns="loss_n"))
    with pytest.raises(ValueError, match="empty"):
        plots.loss_trajectories(make_records().iloc[:0])


# ---------------------------------------------------------------------------- normalisation grid


def test_normalisation_grid_gives_each_panel_its_own_y_scale():
    records = make_records(labels=("dpo", "naive-mean", "naive-sum"))
    # naive-sum runs away (as negative_only does in the study): 100× the others' losses
    runaway = records.label == "naive-sum"
    records.loc[runaway, ["loss_p", "loss_n"]] *= 100
    grid = plots.normalisation_grid(records, col_wrap=2)
    axes = list(grid.axes.flat)
    assert len(axes) == 3
    assert not any(axes[0].get_shared_y_axes().joined(axes[0], ax) for ax in axes[1:])
    assert all(axes[0].get_shared_x_axes().joined(axes[0], ax) for ax in axes[1:])
    palette = plots.label_palette(["dpo", "naive-mean", "naive-sum"])
    for ax, label in zip(axes, ("dpo", "naive-mean", "naive-sum")):
        assert ax.get_title().splitlines()[0] == label
        loss_p, loss_n = data_lines(ax)
        for line, quantity in ((loss_p, "loss_p"), (loss_n, "loss_n")):
            np.testing.assert_array_equal(line.get_xdata(), STEPS)
            expected = expected_step_mean(records, label, quantity).to_numpy()
            np.testing.assert_allclose(line.get_ydata(), expected)
            low, high = ax.get_ylim()
            assert low <= expected.min() and expected.max() <= high
            assert to_rgb(line.get_color()) == to_rgb(palette[label])
        assert loss_p.get_linestyle() == "-" and loss_n.get_linestyle() == "--"
    assert axes[0].get_ylim()[1] < 10 < 100 < axes[2].get_ylim()[1]  # dpo not flattened
    assert "1/3 runs diverged" in axes[2].get_title()
    assert [line.get_marker() for line in axes[2].get_lines()].count("x") == 2  # p and n
    # words, not column names; the legend outside the panels says the scales differ
    assert axes[0].get_ylabel() == "loss (nats per token)" and axes[1].get_ylabel() == ""
    assert axes[2].get_xlabel() == "training step"
    assert [t.get_text() for t in grid.legend.texts] == ["chosen loss (loss_p)",
                                                         "rejected loss (loss_n)"]
    assert "own y scale" in grid.legend.get_title().get_text()
    assert_legend_outside(grid.figure, grid.legend, axes)


def test_loss_trajectories_go_logarithmic_when_one_label_runs_away():
    records = make_records(diverged=())
    grid = plots.loss_trajectories(records)
    assert [ax.get_yscale() for ax in grid.axes.flat] == ["linear", "linear"]
    records.loc[records.label == "naive-sum", ["loss_p", "loss_n"]] *= 50
    grid = plots.loss_trajectories(records)
    for ax in grid.axes.flat:
        assert ax.get_yscale() == "log"
        lines = data_lines(ax)
        low, high = ax.get_ylim()  # the lines' range, not a band reaching towards 0
        assert low == pytest.approx(min(line.get_ydata().min() for line in lines) / 1.25)
        assert high == pytest.approx(max(line.get_ydata().max() for line in lines) * 1.25)
    assert plots.loss_trajectories(records, yscale="linear").axes.flat[0].get_yscale() == "linear"
    assert_legend_outside(grid.figure, grid.legend, list(grid.axes.flat))


# ------------------------------------------------------------------------- intervals and shares


def test_interval_plot_points_and_intervals():
    table = pd.DataFrame({"label": ["simpo", "dpo", "naive-sum"], "grad_cos": [0.3, 0.5, -0.1],
                          "grad_cos_lo": [0.2, 0.4, np.nan], "grad_cos_hi": [0.4, 0.6, np.nan]})
    ax = plots.interval_plot(table, refline=0.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dpo", "naive-sum", "simpo"]
    points = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [line.get_xdata()[0] for line in points] == [0.5, -0.1, 0.3]
    assert [line.get_ydata()[0] for line in points] == [0, 1, 2]
    intervals = [line for line in ax.get_lines()
                 if line.get_marker() in ("None", "", None) and line.get_ydata()[0] ==
                 line.get_ydata()[-1] and len(line.get_xdata()) == 2 and
                 line.get_xdata()[0] != line.get_xdata()[1]]
    assert [list(line.get_xdata()) for line in intervals] == [[0.4, 0.6], [0.2, 0.4]]  # no NaN
    assert any(list(line.get_xdata()) == [0.0, 0.0] for line in ax.get_lines())  # refline


def test_interval_plot_bars_on_a_given_axes():
    import matplotlib.pyplot as plt

    _, given = plt.subplots()
    table = pd.DataFrame({"label": ["a", "b"], "gns": [2.0, 5.0]})
    ax = plots.interval_plot(table, x="gns", kind="bar", ax=given)
    assert ax is given
    assert [p.get_width() for p in ax.patches] == [2.0, 5.0]
    with pytest.raises(ValueError, match="kind"):
        plots.interval_plot(table, x="gns", kind="violin")
    with pytest.raises(ValueError, match="several rows"):
        plots.interval_plot(pd.concat([table, table]), x="gns")
    with pytest.raises(ValueError, match="grad_cos"):
        plots.interval_plot(table)


def test_noise_comparison_is_interval_plot_under_its_former_name():
    table = pd.DataFrame({"label": ["a", "b"], "gns": [2.0, 5.0]})
    old = plots.noise_comparison(table, metric="gns", kind="bar")
    new = plots.interval_plot(table, x="gns", kind="bar")
    assert [p.get_width() for p in old.patches] == [p.get_width() for p in new.patches]
    assert old.get_xlabel() == new.get_xlabel()


def test_interval_plot_on_gradient_noise_output():
    from prefstudy.diagnostics import gradient_noise

    records = make_records(diverged=())
    records["grad_cos"] += 0.01 * records.seed  # seeds differ: a non-zero interval
    table = gradient_noise(records)
    ax = plots.interval_plot(table, x="grad_cos", refline=0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dpo", "naive-sum"]
    points = [line.get_xdata()[0] for line in ax.get_lines() if line.get_marker() == "o"]
    np.testing.assert_allclose(points, table.set_index("label").grad_cos[["dpo", "naive-sum"]])
    intervals = [list(line.get_xdata()) for line in ax.get_lines()
                 if len(line.get_xdata()) == 2 and line.get_xdata()[0] != line.get_xdata()[1]]
    np.testing.assert_allclose(intervals, table[["grad_cos_lo", "grad_cos_hi"]].to_numpy())


def test_displacement_bars_by_label_and_bin():
    table = pd.DataFrame({"label": ["dpo", "dpo", "dpop", "dpop"],
                          "edit_bin": ["(0, 0.1]", "(0.1, 0.3]"] * 2,
                          "share_below_start": [0.8, 0.6, 0.2, 0.1]})
    ax = plots.displacement_bars(table)
    assert len(ax.patches) == 4
    heights = {(p.get_label() if p.get_label() else None, round(p.get_x(), 6)): p.get_height()
               for p in ax.patches}
    assert sorted(heights.values()) == [0.1, 0.2, 0.6, 0.8]
    # dpo's bars left of dpop's in each bin, in bin order
    xs = sorted(ax.patches, key=lambda p: p.get_x())
    assert [p.get_height() for p in xs] == [0.8, 0.2, 0.6, 0.1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["(0, 0.1]", "(0.1, 0.3]"]
    assert ax.get_ylim() == (0, 1)
    # axis names in words, the legend right of the bars
    assert ax.get_ylabel() == "share of pairs whose chosen\nlog-prob fell below its start"
    assert ax.get_xlabel().startswith("edit distance, chosen ↔ rejected")
    assert ax.get_legend().get_title().get_text() == "objective"
    assert_legend_outside(ax.figure, ax.get_legend(), [ax])


def test_displacement_bars_keep_the_order_of_categorical_bins():
    bins = pd.Categorical(["[0.3, 1]", "[0, 0.1)", "[0.1, 0.3)"],
                          categories=["[0, 0.1)", "[0.1, 0.3)", "[0.3, 1]"], ordered=True)
    table = pd.DataFrame({"label": "dpo", "edit_bin": bins, "share_below_start": [0.3, 0.1, 0.2]})
    ax = plots.displacement_bars(table)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(bins.categories)
    assert [p.get_height() for p in sorted(ax.patches, key=lambda p: p.get_x())] == [0.1, 0.2, 0.3]


def test_displacement_bars_per_label_with_intervals():
    table = pd.DataFrame({"label": ["dpo", "dpop"], "share_below_start": [0.7, 0.3],
                          "share_below_start_lo": [0.6, np.nan],
                          "share_below_start_hi": [0.8, np.nan]})
    ax = plots.displacement_bars(table, x=None)
    assert [p.get_height() for p in ax.patches] == [0.7, 0.3]
    (interval,) = ax.collections
    np.testing.assert_allclose(interval.get_segments()[0][:, 1], [0.6, 0.8])


def test_displacement_bars_on_displacement_output():
    from prefstudy.diagnostics import displacement

    records = make_records(diverged=())  # every chosen loss rises (naive-sum) or stays (dpo)
    per_label = displacement(records)
    ax = plots.displacement_bars(per_label)  # no edit_bin column: one bar per label
    assert [p.get_height() for p in ax.patches] == per_label.share_below_start.tolist()

    # pairs whose chosen and rejected texts differ a little (p0, p1) or a lot (p2, p3)
    pairs = pd.DataFrame({"pair_id": ["p0", "p1", "p2", "p3"],
                          "chosen": ["abcdefghij", "abcdefghij", "abcdefghij", "abcdefghij"],
                          "rejected": ["abcdefghiX", "abcdefghij!", "zzzzzzzzzz", "qqqq"]})
    by_bin = displacement(records, pairs)
    ax = plots.displacement_bars(by_bin, y="share_below_ref")
    bins = ["[0, 0.1]", "(0.3, 1]"]  # p0, p1 close; p2, p3 far; no pair in (0.1, 0.3]
    assert set(by_bin.edit_bin.astype(str)) == set(bins)
    assert [t.get_text() for t in ax.get_xticklabels()] == bins  # by the bounds, not the text
    assert len(ax.patches) == len(by_bin)


def test_bins_written_as_text_sort_by_their_bounds():
    assert plots._order(["(0.3, 1]", "[0, 0.1]", "(0.1, 0.3]"]) == [
        "[0, 0.1]", "(0.1, 0.3]", "(0.3, 1]"]
    assert plots._order(["simpo", "dpo"]) == ["dpo", "simpo"]
    assert plots._order([4, 0.5, 2]) == [0.5, 2, 4]


# ----------------------------------------------------------------------------- matched progress


def make_paths():
    """Progress paths of five runs with known points: (d_neutral, margin_gain) per step."""
    known = {  # run: (label, lr, [(step, d_neutral, margin_gain), ...]) given out of step order
        "dpo-a": ("dpo", 1e-3, [(20, 0.2, 0.8), (10, 0.05, 0.3)]),
        "dpo-b": ("dpo", 3e-3, [(10, 0.1, 0.5), (20, 0.4, 1.2)]),
        "simpo-a": ("simpo", 1e-3, [(10, 0.02, 0.2), (20, 0.08, 0.6)]),
        "neg-a": ("negative_only", 1e-3, [(10, 5.0, 0.1), (20, 60.0, -1.0)]),
        "neg-b": ("negative_only", 3e-3, [(10, 20.0, 0.0), (20, 90.0, -1.5)]),
    }
    rows = [{"run_id": run, "label": label, "lr": lr, "seed": 0, "step": step,
             "accuracy": 0.5, "margin_gain": gain, "d_chosen": 0.1, "d_rejected": 0.3,
             "d_neutral": cost}
            for run, (label, lr, points) in known.items() for step, cost, gain in points]
    return pd.DataFrame(rows), known


def path_lines(ax):
    return [line for line in ax.get_lines() if line.get_gid() is not None]


def test_frontier_draws_each_run_from_the_origin_in_step_order():
    paths, known = make_paths()
    ax = plots.frontier(paths)
    lines = path_lines(ax)
    assert len(lines) == len(known)  # one line per run
    palette = plots.label_palette(paths.label)
    markers = {1e-3: "o", 3e-3: "s"}  # PATH_MARKERS in sorted lr order
    for line in lines:
        label, lr, points = known[line.get_gid()]
        points = sorted(points)
        np.testing.assert_allclose(line.get_xdata(), [0.0] + [c for _, c, _ in points])
        np.testing.assert_allclose(line.get_ydata(), [0.0] + [g for _, _, g in points])
        assert to_rgb(line.get_color()) == to_rgb(palette[label])
        assert line.get_marker() == markers[lr]
        assert list(line.get_markevery()) == [1, 2]  # markers at the evaluations, not at 0
    assert ax.get_xscale() == "symlog"
    assert ax.xaxis.get_transform().linthresh == pytest.approx(0.05)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [0.0, 0.1, 1.0, 10.0, 100.0]  # none crowding 0 inside ±linthresh
    assert any(list(line.get_xdata()) == [0, 0] for line in ax.get_lines())  # x = 0
    assert ax.get_xlabel() == "Δ NLL of neutral text (nats/token):\ncapability cost"
    assert ax.get_ylabel() == "held-out margin gain (nats/token):\npreference progress"
    texts = [t.get_text() for t in ax.get_legend().texts]
    assert texts == ["objective", "dpo", "negative_only", "simpo", "learning rate", "0.001",
                     "0.003", "starting model"]
    assert_legend_outside(ax.figure, ax.get_legend(), [ax])


def test_frontier_follows_the_pinned_family_palette_and_facets_by_family(monkeypatch):
    paths, known = make_paths()
    families = {"dpo": "reference-based", "simpo": "length-normalised",
                "negative_only": "likelihood"}
    monkeypatch.setattr(plots, "_study_palette", plots.family_palette(families))
    paths["family"] = paths.label.map(families)
    grid = plots.frontier(paths, col="family", col_order=["likelihood", "length-normalised",
                                                          "reference-based"])
    assert [ax.get_title() for ax in grid.axes.flat] == ["likelihood", "length-normalised",
                                                         "reference-based"]
    assert [len(path_lines(ax)) for ax in grid.axes.flat] == [2, 1, 2]
    pinned = plots.family_palette(families)
    for ax in grid.axes.flat:
        for line in path_lines(ax):
            assert to_rgb(line.get_color()) == to_rgb(pinned[known[line.get_gid()][0]])
            assert (line.get_xdata()[0], line.get_ydata()[0]) == (0.0, 0.0)
    assert_legend_outside(grid.figure, grid.legend, list(grid.axes.flat))
    linear = plots.frontier(paths, xscale="linear", style=None)
    assert linear.get_xscale() == "linear"
    assert {line.get_marker() for line in path_lines(linear)} == {"o"}
    with pytest.raises(ValueError, match="not both"):
        plots.frontier(paths, col="family", ax=linear)
    from prefstudy.records import SchemaError

    with pytest.raises(SchemaError, match="lr"):
        plots.frontier(paths.drop(columns="lr"))


def make_matched():
    """A matched_progress-shaped table: dpo reached every level, simpo the first, neg none."""
    rows = []
    for label, values in (("dpo", [0.1, 0.2, 0.4]), ("simpo", [0.05, np.nan, np.nan]),
                          ("negative_only", [np.nan] * 3)):
        for level, value in zip((0.1, 0.25, 0.5), values):
            rows.append({"label": label, "level": level, "n_runs": int(np.isfinite(value)) * 3,
                         "n_pairs": 40, "d_chosen": value, "d_chosen_lo": value - 0.05,
                         "d_chosen_hi": value + 0.05, "d_neutral": value,
                         "d_neutral_lo": value, "d_neutral_hi": value})
    return pd.DataFrame(rows)


def test_matched_plot_points_and_intervals_per_level_dodged_per_label():
    table = make_matched()
    ax = plots.matched_plot(table, hue_order=["dpo", "simpo", "negative_only"])
    lines = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(lines) == 3
    dpo, simpo, neg = lines
    step = 0.7 / 3
    np.testing.assert_allclose(dpo.get_xdata(), np.arange(3) - step)  # dodged left
    np.testing.assert_allclose(simpo.get_xdata(), np.arange(3))
    np.testing.assert_allclose(dpo.get_ydata(), [0.1, 0.2, 0.4])
    assert np.isnan(simpo.get_ydata()[1:]).all() and np.isnan(neg.get_ydata()).all()
    palette = plots.label_palette(table.label)
    assert [to_rgb(line.get_color()) for line in lines] == [
        to_rgb(palette[lab]) for lab in ("dpo", "simpo", "negative_only")]
    bars = [c for c in ax.collections if len(c.get_segments())]
    assert [len(c.get_segments()) for c in bars] == [3, 1]  # NaN intervals are left out
    np.testing.assert_allclose(bars[0].get_segments()[2][:, 1], [0.35, 0.45])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.25", "0.5"]
    assert ax.get_ylabel() == "Δ held-out chosen loss (nats/token)"
    assert ax.get_xlabel() == "held-out margin gain reached (nats/token)"
    assert [t.get_text() for t in ax.get_legend().texts] == [
        "dpo", "simpo", "negative_only (no level reached)"]
    assert any(list(line.get_ydata()) == [0, 0] for line in ax.get_lines())  # refline
    assert_legend_outside(ax.figure, ax.get_legend(), [ax])
    neutral = plots.matched_plot(table, y="d_neutral")
    assert neutral.get_ylabel().startswith("Δ NLL of neutral text")
    with pytest.raises(ValueError, match="several rows"):
        plots.matched_plot(pd.concat([table, table]))


# ---------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_save_is_byte_for_byte_repeatable(tmp_path, suffix):
    grid = plots.normalisation_grid(make_records())
    first = plots.save(grid, tmp_path / "a" / f"fig.{suffix}")
    second = plots.save(grid.figure, tmp_path / f"fig.{suffix}")
    data = first.read_bytes()
    assert data == second.read_bytes()
    assert mpl.__version__.encode() not in data  # no "Matplotlib vX.Y" creator/software
    assert b"CreationDate" not in data and b"<dc:date>" not in data


def test_save_png_dpi_and_errors(tmp_path):
    from PIL import Image

    ax = plots.interval_plot(pd.DataFrame({"label": ["dpo"], "grad_cos": [0.1]}))
    path = plots.save(ax, tmp_path / "fig.png", dpi=100)
    with Image.open(path) as image:
        assert round(image.info["dpi"][0]) == 100
        assert "Software" not in image.info
    with pytest.raises(ValueError, match="format"):
        plots.save(ax, tmp_path / "fig.jpg")
    with pytest.raises(TypeError):
        plots.save("not a figure", tmp_path / "fig.png")


def test_works_headless_without_choosing_a_backend(tmp_path):
    """A fresh interpreter with no display and no MPLBACKEND draws and saves (Agg fallback)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY",
                                                            "MPLBACKEND")}
    code = ("import pandas as pd; from prefstudy import plots; "
            "ax = plots.displacement_bars(pd.DataFrame({'label': ['dpo'], 'share_below_start': "
            f"[0.5]}}), x=None); plots.save(ax, {str(tmp_path / 'h.png')!r}); "
            "import matplotlib; print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "agg"
    assert (tmp_path / "h.png").stat().st_size > 0
