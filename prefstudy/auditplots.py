"""The audit's figures: a preference dataset scored at the starting model (`prefstudy.audit`).

The audit's tables come from `prefstudy.auditstats` (preference_accuracy, dose_gaps,
dose_by_factor, dose_slope_summary, the gradient audit's per-pair rows) and `prefstudy.judge`
(judge_length_bins, judge_length_bias); these functions only draw them, in the calling
convention and look of `prefstudy.plots` (whose helpers they share: a panel with nothing finite
to draw gets a note, never an error).

    accuracy_plot        a share with its interval per length kind, one point per normalisation
    dose_plot            each pair's gap across its length-controlled variants
    distribution_plot    a box and every row as a point, per objective
    distribution_panels  distribution_plot of several columns side by side
    histogram_plot       how many rows fall in each bin (e.g. the normalised edit
                         (Levenshtein) distance)
    gradient_norm_plot   each pair's gradient norm against its length, one panel per objective
    judge_length_plot    how often a judge chose answer A against the length difference, with
                         the fitted logistic curve, one colour per comparison
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.special import expit

from . import diagnostics as dg
from .columns import require_columns
from .formatting import interval_label
from .plots import effect_title, nothing_to_draw, symlog_ticks
from .theme import axis_name, colours_of, order_of, themed


def accuracy_plot(data: pd.DataFrame, *, x: str = "accuracy", y: str = "length_kind",
                  hue: str = "normalisation", order: Sequence | None = None,
                  hue_order: Sequence | None = None, palette: Mapping | None = None,
                  refline: float | None = 0.5, ax: Axes | None = None) -> Axes:
    """A share with its interval per `y` value, one dodged point per `hue` value.

    data: `auditstats.preference_accuracy` output (one row per hue × y; `<x>_lo`, `<x>_hi`
    drawn as the interval, and "k of n" written beside it when the table has k and n).
    `refline` draws a vertical line (0.5: a coin's accuracy). Returns the Axes.
    """
    require_columns(data, [x, y, hue], "accuracy_plot", nonempty=True)
    order = order_of(data[y], order)
    hue_order = order_of(data[hue], hue_order)
    colours = colours_of(hue_order, palette, labels=hue == "label")
    step = 0.7 / max(len(hue_order), 1)
    with themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 0.55 * len(order) * len(hue_order) + 1.0))
        if nothing_to_draw(ax, data[x], what=x):
            return ax
        for j, name in enumerate(hue_order):
            rows = data[data[hue] == name].set_index(y).reindex(order)
            pos = np.arange(len(order)) + (j - (len(hue_order) - 1) / 2) * step
            ax.plot(rows[x].astype(float), pos, marker="o", linestyle="", color=colours[name],
                    label=str(name))
            for p, (_, row) in zip(pos, rows.iterrows()):
                lo, hi = row.get(f"{x}_lo", np.nan), row.get(f"{x}_hi", np.nan)
                if np.isfinite(lo) and np.isfinite(hi):
                    ax.plot([lo, hi], [p, p], color=colours[name], linewidth=1.8)
                if "k" in row and "n" in row and np.isfinite(row["n"]):
                    ax.annotate(f"{int(row['k'])} of {int(row['n'])}", (1.01, p),
                                xycoords=("axes fraction", "data"), va="center", fontsize=7,
                                color=colours[name])
        if refline is not None:
            ax.axvline(refline, color="0.4", linewidth=0.8, linestyle=":", zorder=0)
        ax.set_yticks(np.arange(len(order)), [str(v) for v in order])
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel(axis_name(x))
        ax.set_ylabel(axis_name(y))
        ax.legend(title=hue, loc="upper left", bbox_to_anchor=(1.12, 1.0))
    return ax


def dose_plot(data: pd.DataFrame, *, x: str = "token_ratio", y: str = "gap_value",
              units: str = "variant_of", col: str = "normalisation",
              summary: pd.DataFrame | None = None, slopes: pd.DataFrame | None = None,
              col_order: Sequence | None = None, max_units: int | None = 150, seed: int = 0,
              height: float = 2.8, aspect: float = 1.5) -> sns.FacetGrid:
    """Each pair's gap across its length-controlled variants, on a log2 axis of the achieved
    ratio, one panel per `col`.

    data: `auditstats.dose_gaps` output (one row per variant and normalisation). One thin line
    per `units` value (at most `max_units` of them, a sample seeded by `seed`; None = all).
    summary: `auditstats.dose_by_factor` output, drawn as each factor's mean gap (with its
    interval) at its mean achieved ratio. slopes: `auditstats.dose_slope_summary` output, whose
    mean per-pair slope and interval title each panel. The y axes are not shared.
    Returns the FacetGrid.
    """
    require_columns(data, [x, y, units, col], "dose_plot", nonempty=True)
    shown_units = pd.Series(data[units].unique())
    if max_units is not None and len(shown_units) > max_units:
        shown_units = shown_units.sample(max_units, random_state=seed)
    shown = data[data[units].isin(set(shown_units))]
    slope_of = {} if slopes is None else {r[col]: r for _, r in slopes.iterrows()}
    with themed():
        grid = sns.FacetGrid(shown, col=col, col_order=order_of(data[col], col_order),
                             sharex=True, sharey=False, height=height, aspect=aspect,
                             despine=False)
        for name, ax in grid.axes_dict.items():
            panel = shown[shown[col] == name].sort_values(x)
            if nothing_to_draw(ax, panel[x], panel[y], what=f"{x} and {y}"):
                ax.set_title(str(name))
                continue
            for _, line in panel.groupby(units, sort=False):
                ax.plot(line[x], line[y], color="0.55", linewidth=0.6, alpha=0.35)
            if summary is not None:
                means = summary[summary[col] == name]
                ax.errorbar(means[x], means["mean"],
                            yerr=[means["mean"] - means["mean_lo"], means["mean_hi"] - means["mean"]],
                            color="black", marker="o", linewidth=1.5, capsize=2)
            ax.set_xscale("log", base=2)
            ax.axvline(1, color="0.4", linewidth=0.8, linestyle=":", zorder=0)
            row = slope_of.get(name)
            title = str(name)
            if row is not None:
                title += (f"\nper doubling: "
                          f"{interval_label(row['slope'], row['slope_lo'], row['slope_hi'])}")
            ax.set_title(title)
            ax.set_xlabel(axis_name(x))
            ax.set_ylabel(axis_name(y))
        grid.tight_layout()
    return grid


def distribution_plot(data: pd.DataFrame, *, x: str, y: str = "objective",
                      order: Sequence | None = None, baseline: str | None = None,
                      refline: float | None = None, palette: Mapping | None = None,
                      seed: int = 0, ax: Axes | None = None) -> Axes:
    """The distribution of `x` per `y` value: a box and every row as a point.

    data: one row per unit (e.g. the gradient audit: one per objective × pair). baseline: a
    column drawn beside each row's point as a red tick (e.g. grad_cos_orthogonal, what
    orthogonal gradients of equal norm would give). `refline`: a vertical line. The points'
    jitter is drawn from `seed` (the same data, the same figure), leaving numpy's global random
    state as it was. Returns the Axes.
    """
    require_columns(data, [x, y, baseline], "distribution_plot", nonempty=True)
    order = [str(v) for v in order_of(data[y], order)]
    frame = data.assign(**{y: data[y].astype(str)})
    colours = colours_of(order, palette, labels=y == "label")
    with themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(5.0, 0.55 * len(order) + 1.2))
        if nothing_to_draw(ax, frame[x], what=x):  # seaborn's boxplot fails on no value
            ax.set_xlabel(axis_name(x))
            return ax
        sns.boxplot(data=frame, x=x, y=y, order=order, hue=y, hue_order=order, palette=colours,
                    fliersize=0, width=0.55, linewidth=0.8, ax=ax, legend=False,
                    boxprops={"alpha": 0.35})
        with _seeded(seed):  # seaborn draws the jitter from numpy's global random state
            sns.stripplot(data=frame, x=x, y=y, order=order, hue=y, hue_order=order,
                          palette=colours, size=2.5, alpha=0.6, jitter=0.2, ax=ax,
                          legend=False)
        if baseline is not None:
            base = frame.dropna(subset=[baseline])
            ax.plot(base[baseline], base[y].map({v: i for i, v in enumerate(order)}),
                    marker="|", markersize=14, linestyle="", color="tab:red",
                    label=axis_name(baseline))
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        if refline is not None:
            ax.axvline(refline, color="0.4", linewidth=0.8, zorder=0)
        ax.set_xlabel(axis_name(x))
        ax.set_ylabel("")
    return ax


@contextlib.contextmanager
def _seeded(seed: int):
    """numpy's global random state seeded with `seed` inside, restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def histogram_plot(data: pd.DataFrame, *, x: str = "edit_distance", hue: str | None = None,
                   hue_order: Sequence | None = None, palette: Mapping | None = None,
                   bins: int | Sequence[float] = 20, binrange: tuple[float, float] | None = None,
                   ax: Axes | None = None) -> Axes:
    """How many rows fall in each bin of `x` (stacked by `hue`): seaborn's histplot in the
    prefstudy look. Returns the Axes."""
    require_columns(data, [x, hue], "histogram_plot", nonempty=True)
    kws = {}
    if hue is not None:
        hue_order = [str(v) for v in order_of(data[hue], hue_order)]
        data = data.assign(**{hue: data[hue].astype(str)})
        kws = {"hue": hue, "hue_order": hue_order, "multiple": "stack",
               "palette": colours_of(hue_order, palette, labels=hue == "label")}
    with themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 2.8))
        if nothing_to_draw(ax, data[x], what=x):
            ax.set_xlabel(axis_name(x))
            return ax
        sns.histplot(data=data, x=x, bins=bins, binrange=binrange, ax=ax, linewidth=0.3,
                     **({"color": "0.45"} if hue is None else kws))
        ax.set_xlabel(axis_name(x))
        ax.set_ylabel("pairs")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # a count
    return ax


def distribution_panels(data: pd.DataFrame, *, columns: Sequence[str], y: str = "objective",
                        order: Sequence | None = None, palette: Mapping | None = None,
                        width: float = 4.5, symlog: Sequence[str] = ()) -> Figure:
    """`distribution_plot` of each of `columns` side by side, sharing the `y` rows (e.g. the
    gradient audit's entanglement and CHES per objective). Columns named in `symlog` get a
    symlog axis, linear within their median |value|, so a few extreme pairs do not squeeze the
    rest against 0. Returns the Figure."""
    require_columns(data, [*columns, y], "distribution_panels", nonempty=True)
    order = order_of(data[y], order)
    with themed():
        fig, axes = plt.subplots(1, len(columns), figsize=(width * len(columns),
                                                          0.55 * len(order) + 1.4),
                                 sharey=True, squeeze=False)
    for ax, column in zip(axes[0], columns):
        distribution_plot(data, x=column, y=y, order=order, palette=palette, ax=ax)
        scale = float(data[column].abs().median())
        if column in symlog and scale > 0 and np.isfinite(scale):
            # linear within the power of ten below the median |value|, ticks at 0 and whole
            # decades, so no decade's label lands on 0's
            linthresh = 10.0 ** np.floor(np.log10(scale))
            ax.set_xscale("symlog", linthresh=linthresh)
            shown = ax.get_xlim()
            ax.set_xticks(symlog_ticks(data[column], linthresh))
            ax.set_xlim(shown)  # ticks beyond the data are not drawn, not a wider axis
    return fig


def gradient_norm_plot(data: pd.DataFrame, *, x: str = "tokens", y: str = "grad_norm",
                       col: str = "label", col_order: Sequence | None = None, col_wrap: int = 4,
                       effect: pd.DataFrame | None = None, height: float = 2.4,
                       aspect: float = 1.1) -> sns.FacetGrid:
    """Each pair's gradient norm against its length, one panel per `col` (objective), wrapped
    `col_wrap` to a row, each with the OLS line and R² of `effect`
    (`diagnostics.length_effect(data, x=x, y=y, by=(col,))`; computed without an interval when
    None). The y axes are not shared: the objectives' scales differ by orders of magnitude.
    Returns the FacetGrid."""
    require_columns(data, [x, y, col], "gradient_norm_plot", nonempty=True)
    if effect is None:
        effect = dg.length_effect(data, x=x, y=y, by=(col,), n_boot=0)
    fits = {row[col]: row for _, row in effect.iterrows()}
    order = order_of(data[col], col_order)
    with themed():
        grid = sns.FacetGrid(data, col=col, col_order=order, sharex=True, sharey=False,
                             height=height, aspect=aspect, despine=False,
                             col_wrap=col_wrap if len(order) > col_wrap else None)
        for name, ax in grid.axes_dict.items():
            sub = data[data[col] == name]
            row = fits.get(name)
            if nothing_to_draw(ax, sub[x], sub[y], what=f"{x} and {y}"):
                ax.set_title(effect_title(name, row))
                continue
            ax.scatter(sub[x], sub[y], s=10, alpha=0.5, linewidth=0, color="0.35")
            if row is not None and np.isfinite(row["slope"]):
                xs = np.array([sub[x].min(), sub[x].max()], dtype=float)
                ax.plot(xs, row["intercept"] + row["slope"] * xs, color="black", linewidth=1.5)
            ax.set_title(effect_title(name, row))
            ax.set_xlabel(axis_name(x))
            ax.set_ylabel(axis_name(y))
        grid.tight_layout()
    return grid


def judge_length_plot(data: pd.DataFrame, *, x: str = "log_ratio_ab", y: str = "a_chosen",
                      hue: str | None = "comparison", hue_order: Sequence | None = None,
                      palette: Mapping | None = None, fits: pd.DataFrame | None = None,
                      slope: str = "beta", refline: float | None = 0.5,
                      ax: Axes | None = None) -> Axes:
    """How often the judge chose answer A against the length difference, one colour per `hue`.

    data: `judge.judge_length_bins` output (per `hue` value and bin: `x`, the bin's mean
    length difference, and `y`, the share of its pairs where A was chosen, with `<y>_lo`,
    `<y>_hi` drawn as the interval). fits: `judge.judge_length_bias` output; each `hue` value's
    fitted curve σ(`slope`·x) is drawn over its points' range (rows of the table with no such
    `hue` value, such as "all", are not drawn; without `hue`, the curve is the table's last row's,
    its "all" row). `refline`: a horizontal line (one half: length
    does not sway the judge). Returns the Axes.
    """
    require_columns(data, [x, y, hue], "judge_length_plot", nonempty=True)
    frame = data if hue is not None else data.assign(_hue="all pairs")
    hue = hue or "_hue"
    order = order_of(frame[hue], hue_order)
    colours = colours_of(order, palette, labels=False)
    curves = _curves(fits, hue, slope, order)
    with themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 3.2))
        if nothing_to_draw(ax, frame[x], frame[y], what=f"{x} and {y}"):
            return ax
        for name in order:
            rows = frame[frame[hue] == name].sort_values(x)
            lo, hi = rows.get(f"{y}_lo"), rows.get(f"{y}_hi")
            ax.errorbar(rows[x], rows[y], linestyle="", marker="o", markersize=4,
                        color=colours[name], capsize=2, linewidth=1.2, label=str(name),
                        yerr=None if lo is None or hi is None else [rows[y] - lo, hi - rows[y]])
            beta = curves.get(name, np.nan)
            if np.isfinite(beta) and len(rows):
                xs = np.linspace(rows[x].min(), rows[x].max(), 200)
                ax.plot(xs, expit(beta * xs), color=colours[name], linewidth=1.5)
        if refline is not None:
            ax.axhline(refline, color="0.4", linewidth=0.8, linestyle=":", zorder=0)
        ax.axvline(0, color="0.4", linewidth=0.8, linestyle=":", zorder=0)
        ax.set_ylim(0, 1)
        ax.set_xlabel(axis_name(x))
        ax.set_ylabel(axis_name(y))
        ax.legend(title=axis_name(hue) if hue != "_hue" else None, loc="upper left",
                  bbox_to_anchor=(1.0, 1.0))
    return ax


def _curves(fits: pd.DataFrame | None, hue: str, slope: str, order: Sequence) -> dict:
    """`hue` value → the fitted slope to draw: the fits' rows of that value (without a `hue`
    column in the fits, the one series `order` holds gets the last row's)."""
    if fits is None or not len(fits):
        return {}
    if hue in fits.columns:
        return dict(zip(fits[hue], fits[slope]))
    return {order[0]: fits[slope].iloc[-1]} if len(order) == 1 else {}
