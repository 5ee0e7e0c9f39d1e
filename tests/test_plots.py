"""Figures, checked on the artists and data they return (never pixels), from hand-built frames."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from scipy import stats

from prefstudy import auditplots, plots, theme

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
    from prefstudy.columns import SchemaError

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
            assert to_rgb(line.get_color()) == to_rgb(theme.label_palette(
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
                          "collapse_step": [3.0, 3.0, 5.0, np.nan]})
    grid = plots.loss_trajectories(records, onset=onset)
    colour = to_rgb(theme.label_palette(["dpo", "naive-sum"])["naive-sum"])
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


def test_loss_trajectories_onset_alone_marks_divergence():
    records = make_records()
    # a collapse_onsets-shaped table: every naive-sum seed's onset at step 3, dpo none
    onset = pd.DataFrame({"run_id": [f"{lab}-s{s}" for lab in ("dpo", "naive-sum")
                                     for s in (0, 1, 2)],
                          "label": ["dpo"] * 3 + ["naive-sum"] * 3, "seed": [0, 1, 2] * 2,
                          "collapse_step": [np.nan] * 3 + [3.0] * 3,
                          "status": ["completed"] * 5 + ["diverged"]})
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
    from prefstudy.columns import SchemaError

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
    palette = theme.label_palette(["dpo", "naive-mean", "naive-sum"])
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


def test_gradient_agreement_points_without_intervals_on_a_symlog_axis():
    table = pd.DataFrame({"label": ["dpo", "negative_only"], "grad_cos": [0.02, 0.6],
                          "grad_cos_lo": [0.01, 0.5], "grad_cos_hi": [0.03, 0.7]})
    ax = plots.gradient_agreement(table, order=["negative_only", "dpo"])
    points = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in points] == [(0.6, 0), (0.02, 1)]
    assert len(ax.get_lines()) == 3  # the two points and the line at 0: no interval
    assert any(list(line.get_xdata()) == [0, 0] for line in ax.get_lines())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["negative_only", "dpo"]
    assert ax.get_xscale() == "symlog"
    assert ax.xaxis.get_transform().linthresh == pytest.approx(0.05)
    assert ax.get_xlim() == (-0.05, 1.0)
    assert list(ax.get_xticks()) == [-0.05, 0, 0.05, 0.1, 0.2, 0.5, 1]
    assert [t.get_text() for t in ax.get_xticklabels()][-2:] == ["0.5", "1"]
    assert ax.get_xlabel().startswith("mean cosine of a pair's gradient")


def make_displacement():
    """A findings.displacement-shaped table: dpo and simpo have a point where neutral text held,
    ipo has none (n = 0)."""
    return pd.DataFrame({"label": ["simpo", "ipo", "dpo"], "n": [40, 0, 40], "k": [30, 0, 10],
                         "share": [0.75, np.nan, 0.25], "share_lo": [0.59, np.nan, 0.13],
                         "share_hi": [0.87, np.nan, 0.41]})


def test_displacement_shares_leaves_out_objectives_without_a_point():
    table = make_displacement()
    ax = plots.displacement_shares(table, order=["ipo", "dpo", "simpo"], max_neutral=0.02)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dpo", "simpo"]
    points = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [line.get_xdata()[0] for line in points] == [0.25, 0.75]
    intervals = [list(line.get_xdata()) for line in ax.get_lines()
                 if len(line.get_xdata()) == 2 and line.get_xdata()[0] != line.get_xdata()[1]]
    assert intervals == [[0.13, 0.41], [0.59, 0.87]]
    assert any(list(line.get_xdata()) == [0.5, 0.5] for line in ax.get_lines())  # one half
    assert ax.get_xlim() == (0, 1)
    assert "(|Δ NLL| ≤ 0.02)" in ax.get_xlabel()
    colours = theme.label_palette(["dpo", "simpo"])
    assert [to_rgb(line.get_color()) for line in points] == [to_rgb(colours["dpo"]),
                                                             to_rgb(colours["simpo"])]
    default = plots.displacement_shares(table, max_neutral=0.02)  # sorted labels
    assert [t.get_text() for t in default.get_yticklabels()] == ["dpo", "simpo"]


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
    palette = theme.label_palette(paths.label)
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
    monkeypatch.setattr(theme, "_study_palette", theme.family_palette(families))
    paths["family"] = paths.label.map(families)
    grid = plots.frontier(paths, col="family", col_order=["likelihood", "length-normalised",
                                                          "reference-based"])
    assert [ax.get_title() for ax in grid.axes.flat] == ["likelihood", "length-normalised",
                                                         "reference-based"]
    assert [len(path_lines(ax)) for ax in grid.axes.flat] == [2, 1, 2]
    pinned = theme.family_palette(families)
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
    from prefstudy.columns import SchemaError

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
    palette = theme.label_palette(table.label)
    assert [to_rgb(line.get_color()) for line in lines] == [
        to_rgb(palette[lab]) for lab in ("dpo", "simpo", "negative_only")]
    bars = [c for c in ax.collections if len(c.get_segments())]
    assert [len(c.get_segments()) for c in bars] == [3, 1]  # NaN intervals are left out
    np.testing.assert_allclose(bars[0].get_segments()[2][:, 1], [0.35, 0.45])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.25", "0.5"]
    assert ax.get_ylabel() == "Δ held-out chosen loss (nats/token)"
    assert ax.get_xlabel() == "held-out reward accuracy reached"
    assert [t.get_text() for t in ax.get_legend().texts] == [
        "dpo", "simpo", "negative_only (no level reached)"]
    assert any(list(line.get_ydata()) == [0, 0] for line in ax.get_lines())  # refline
    assert_legend_outside(ax.figure, ax.get_legend(), [ax])
    neutral = plots.matched_plot(table, y="d_neutral")
    assert neutral.get_ylabel().startswith("Δ NLL of neutral text")
    with pytest.raises(ValueError, match="several rows"):
        plots.matched_plot(pd.concat([table, table]))


def test_family_frontier_has_one_panel_per_family_in_the_declared_order():
    from prefstudy.objectives import FAMILIES

    paths, known = make_paths()
    families = {"dpo": "reference-based", "simpo": "length-normalised",
                "negative_only": "likelihood"}
    grid = plots.family_frontier(paths.assign(family=paths.label.map(families)))
    expected = [f for f in FAMILIES if f in families.values()]
    assert [ax.get_title() for ax in grid.axes.flat] == expected
    assert [len(path_lines(ax)) for ax in grid.axes.flat] == [
        sum(families[label] == f for label, _, _ in known.values()) for f in expected]
    assert {ax.get_yscale() for ax in grid.axes.flat} == {"symlog"}
    assert grid.axes.flat[0].yaxis.get_transform().linthresh == pytest.approx(0.2)
    first, second, third = (ax.get_position() for ax in grid.axes.flat)  # 2 to a row
    assert first.y0 == second.y0 and third.y0 < first.y0 and third.x0 == first.x0
    alone = plots.family_frontier(paths.assign(family=None))  # no family known: one panel
    assert len(path_lines(alone)) == len(known) and alone.get_yscale() == "symlog"
    from prefstudy.columns import SchemaError

    with pytest.raises(SchemaError, match="family"):
        plots.family_frontier(paths)


def test_objective_frontier_has_a_panel_per_objective_coloured_by_learning_rate_with_arrows():
    paths, known = make_paths()
    families = {"dpo": "reference-based", "simpo": "length-normalised",
                "negative_only": "likelihood"}
    order = ["negative_only", "simpo", "dpo"]
    grid = plots.objective_frontier(paths, col_order=order, families=families)
    assert [ax.get_title() for ax in grid.axes.flat[:3]] == [
        "negative_only (likelihood)", "simpo (length-normalised)", "dpo (reference-based)"]
    colours = theme.lr_palette([1e-3, 3e-3])
    assert to_rgb(colours[1e-3]) != to_rgb(colours[3e-3])
    for ax, label in zip(grid.axes.flat, order):
        lines = path_lines(ax)
        assert {line.get_gid() for line in lines} == {r for r, v in known.items() if v[0] == label}
        for line in lines:  # one line per run, in its learning rate's colour, never averaged
            assert to_rgb(line.get_color()) == to_rgb(colours[known[line.get_gid()][1]])
        heads = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
        assert len(heads) == 2 * len(lines)  # an arrowhead on each of a run's two segments
        ends = sorted(tuple(np.round(h.xy, 6)) for h in heads)
        assert ends == sorted((c, g) for r in (line.get_gid() for line in lines)
                              for _, c, g in known[r][2])
    texts = [t.get_text() for t in grid.legend.texts]
    assert texts == ["learning rate", "0.001", "0.003", "starting model"]
    # lighter to darker as the learning rate grows
    assert sum(colours[1e-3]) > sum(colours[3e-3])


def test_matched_chosen_is_matched_plot_on_a_symlog_axis():
    table = make_matched()
    order = ["dpo", "simpo", "negative_only"]
    plain = plots.matched_plot(table, hue_order=order)
    ax = plots.matched_chosen(table, hue_order=order)
    assert ax.get_yscale() == "symlog"
    assert ax.yaxis.get_transform().linthresh == pytest.approx(0.1)
    for a, b in zip(plain.get_lines(), ax.get_lines()):
        np.testing.assert_array_equal(a.get_ydata(), b.get_ydata())
    assert ax.get_ylabel() == plain.get_ylabel()
    assert plots.matched_chosen(table, linthresh=1.0).yaxis.get_transform().linthresh == 1.0


# ----------------------------------------------------------------------------------- the audit


def test_distribution_plot_jitter_is_seeded_and_leaves_the_global_state_alone():
    data = pd.DataFrame({"objective": ["a"] * 20 + ["b"] * 20,
                         "grad_cos_loo": np.linspace(-0.2, 0.3, 40)})

    def offsets(**kwargs):
        ax = auditplots.distribution_plot(data, x="grad_cos_loo", **kwargs)
        return np.concatenate([c.get_offsets()[:, 1] for c in ax.collections
                               if len(c.get_offsets())])

    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    first = offsets()
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    np.testing.assert_array_equal(first, offsets())
    assert not np.array_equal(first, offsets(seed=1))
    assert np.abs(first - np.round(first)).max() <= 0.2  # jitter within ±0.2 of its row


# --------------------------------------------------------------------------- degenerate data


def _degenerate(n: int, value: float | None):
    """Frames for every figure: n rows (per label), every value `value` (None: ordinary)."""
    def v(ordinary):
        return ordinary if value is None else value

    from prefstudy import auditstats
    from prefstudy import diagnostics as dg

    ids = [f"p{i}" for i in range(n)]
    scores = pd.DataFrame({"pair_id": ids, "len_p": [5 + i for i in range(n)], "len_n": 7,
                           "loss_p": 1.0, "loss_n": v(1.5), "nll_sum_p": 5.0,
                           "nll_sum_n": v(9.0), "gap_sum": v(1.0), "gap": v(0.1)})
    grads = pd.DataFrame([{"objective": lab, "label": lab, "pair_id": pid, "batch": "a0",
                           "tokens": 12 + i, "grad_norm": v(1.0 + i), "grad_cos_loo": v(0.1 * i),
                           "grad_cos_orthogonal": 0.0, "entanglement": v(0.3), "ches": v(2.0)}
                          for lab in ("dpo", "naive-sum") for i, pid in enumerate(ids)])
    dose = auditstats.dose_token_ratios(pd.DataFrame(
        [{"pair_id": f"{pid}{f}", "variant_of": pid, "factor": f, "achieved_ratio": f,
          "len_p": 5, "len_n": int(7 * f), "gap_sum": v(f), "gap": v(0.1 * f)}
         for pid in ids for f in (1.0, 2.0)]))
    labels = pd.DataFrame({"label": ["a"], "grad_cos": [v(0.1)], "share": [v(0.5)], "n": [n]})
    runs = pd.DataFrame({"label": "a", "run_id": "a-s0", "seed": 0, "lr": 1e-3, "family": "x",
                         "pair_id": "p", "step": range(1, n + 1), "d_neutral": v(0.1),
                         "margin_gain": v(0.2), "loss_p": v(1.0), "loss_n": v(2.0)})
    matched = pd.DataFrame({"label": "a", "level": [0.5 * (i + 1) for i in range(n)],
                            "d_chosen": v(0.3), "d_chosen_lo": v(0.1), "d_chosen_hi": v(0.5)})
    gaps = dg.gap_normalisations(scores, keep=("pair_id",))
    accuracy = auditstats.preference_accuracy(scores)
    return {
        "gap_vs_length": lambda: plots.gap_vs_length(gaps),
        "gradient_norm_plot": lambda: auditplots.gradient_norm_plot(grads),
        "distribution_plot": lambda: auditplots.distribution_plot(
            grads, x="grad_cos_loo", y="label", baseline="grad_cos_orthogonal"),
        "distribution_panels": lambda: auditplots.distribution_panels(
            grads, columns=("entanglement", "ches"), y="label", symlog=("ches",)),
        "histogram_plot": lambda: auditplots.histogram_plot(grads, x="entanglement", bins=5),
        "dose_plot": lambda: auditplots.dose_plot(
            auditstats.dose_gaps(dose), summary=auditstats.dose_by_factor(dose),
            slopes=auditstats.dose_slope_summary(auditstats.dose_pair_slopes(dose), n_boot=20)),
        "accuracy_plot": lambda: auditplots.accuracy_plot(accuracy[accuracy.length_kind != "all"]),
        "judge_length_plot": lambda: auditplots.judge_length_plot(**_judged(n, v)),
        "interval_plot": lambda: plots.interval_plot(labels),
        "gradient_agreement": lambda: plots.gradient_agreement(labels),
        "displacement_shares": lambda: plots.displacement_shares(labels, max_neutral=0.05),
        "frontier": lambda: plots.frontier(runs),
        "family_frontier": lambda: plots.family_frontier(runs),
        "objective_frontier": lambda: plots.objective_frontier(runs),
        "matched_chosen": lambda: plots.matched_chosen(matched),
        "loss_trajectories": lambda: plots.loss_trajectories(runs),
        "normalisation_grid": lambda: plots.normalisation_grid(runs),
    }


def _judged(n: int, v):
    """`judge_length_plot`'s bins and fits: n bins of one comparison, every value v(ordinary)."""
    bins = pd.DataFrame({"comparison": "a vs b", "log_ratio_ab": [0.5 * i - 1 for i in range(n)],
                         "a_chosen": v(0.6), "a_chosen_lo": v(0.4), "a_chosen_hi": v(0.8)})
    return {"data": bins, "fits": pd.DataFrame({"comparison": ["a vs b", "all"], "beta": v(0.7)})}


def _texts(figure) -> list[str]:
    return [t.get_text() for ax in figure.axes for t in ax.texts]


@pytest.mark.parametrize("name", list(_degenerate(1, None)))
def test_every_figure_draws_one_row_and_no_finite_value_without_failing(name, tmp_path):
    for n, value in ((1, None), (4, np.nan), (1, np.inf)):
        drawn = _degenerate(n, value)[name]()
        figure = getattr(drawn, "figure", None) or getattr(drawn, "fig", None) or drawn
        figure.savefig(tmp_path / "figure.png")  # drawing it fails nowhere either
        notes = [t for t in _texts(figure) if t.startswith("nothing to draw")]
        assert bool(notes) == (value is not None), (name, n, value)


def test_a_frontier_whose_costs_all_lie_in_the_linear_part_has_a_linear_axis_with_ticks():
    paths, _ = make_paths()
    small = paths.assign(d_neutral=paths.d_neutral / 10_000)  # every cost below linthresh
    ax = plots.frontier(small)
    assert ax.get_xscale() == "linear"
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert len(ticks) >= 3  # a reader can read the axis, not a lone 0
    assert plots.frontier(paths).get_xscale() == "symlog"
