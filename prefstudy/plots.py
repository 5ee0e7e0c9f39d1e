"""Figures: a tidy DataFrame in, a seaborn Axes or FacetGrid out, one look across all of them.

Every function follows seaborn's calling convention: `data` first, column names as keywords
(`x=`, `y=`, `hue=`, `col=`, `row=`), orders as seaborn names them (`order`, `hue_order`,
`col_order`, `row_order`), `ax=None` for single-panel figures (draw on the given Axes, else on a
new one, and return it) and a FacetGrid for faceted ones. Statistics are never computed here: a
figure draws a table a diagnostic returned (`prefstudy.diagnostics`), passed in (`effect=`,
`onset=`) or asked for: a trajectory is `diagnostics.run_step_means` with its band across seeds
from `stats.seed_intervals` (seeds are the units, as in every table), divergence is
`diagnostics.run_status`'s.

    gap_vs_length        C1: per-pair gap against Δlen, one panel per normalisation, OLS line
    loss_trajectories    C3: loss_p and loss_n per step, one line per label, collapse onsets
    normalisation_grid   every label in its own panel, each on its own y scale
    interval_plot        one point (or bar) with its interval per label
    gradient_agreement   C2: each objective's leave-one-out gradient cosine, on a symlog axis
    displacement_shares  C4: the share of pairs whose chosen log-prob fell where neutral text held
    frontier             each run's path of preference progress against capability cost
    family_frontier      the same, one panel per family of objectives
    matched_plot         a quantity with its interval per label at matched progress levels
    matched_chosen       the same on a symlog axis (the report's chosen loss at matched progress)

The audit's figures (accuracy_plot, dose_plot, distribution_plot, distribution_panels,
histogram_plot, gradient_norm_plot, judge_length_plot) are `prefstudy.auditplots`', drawn with
the helpers here.

The look (theme, colours, orders, axis names) and writing a figure to a file are
`prefstudy.theme`'s. Legends sit outside the panels, inside the bounding box `theme.save` writes;
where one label can run 100× past the others, the axis is logarithmic or each panel has its own
scale. A function named for a report figure (gradient_agreement, displacement_shares,
family_frontier, matched_chosen) returns it finished, its axes scaled and named after the draw:
the report and the notebooks call the same function.

Nothing here picks a backend or calls `plt.show()`: matplotlib falls back to Agg where there is no
display, and notebooks show the returned figure themselves.

Degenerate data (one row, every value NaN or inf) never fails inside matplotlib or seaborn: a
panel with no finite value to draw is left empty with a note saying so (`nothing_to_draw`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from . import diagnostics as dg
from .columns import require_columns
from .formatting import interval_label
from .stats import seed_intervals
from .theme import axis_name, colours_of, lr_palette, order_of, themed

# ---------------------------------------------------------------------------------------------
# Names and scales

QUANTITY_NAMES = {"loss_p": "chosen loss (loss_p)", "loss_n": "rejected loss (loss_n)",
                  "gap": "gap (loss_n − loss_p)"}
QUANTITY_DASHES = {"loss_p": "", "loss_n": (4, 2), "gap": (1, 1.5)}
def _plain(value: float, _position=None) -> str:
    """A tick label written as a plain number (0.05, 1, 1e+06), not as 10^n."""
    return f"{value:g}"


def _scale_y(ax: Axes, values: Iterable[float], yscale: str = "auto") -> None:
    """Set `yscale` on `ax`; "auto" is log where every value is positive and the largest is at
    least 10× the smallest (one run-away line would flatten the others on a linear axis), else
    linear. On a log axis the limits follow `values` (the lines), not a band reaching towards 0;
    ticks at 1, 2, 5 × 10ⁿ, written as plain numbers."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if yscale == "auto":
        yscale = "log" if len(v) and v.min() > 0 and v.max() >= 10 * v.min() else "linear"
    ax.set_yscale(yscale)
    if yscale == "log" and len(v) and v.min() > 0:
        ax.set_ylim(v.min() / 1.25, v.max() * 1.25)
    if yscale == "log":
        ax.yaxis.set_major_locator(mpl.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(_plain))
        ax.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())


def _finite(*columns) -> np.ndarray:
    """Rows where every one of `columns` (Series or arrays of one length) is a finite number."""
    values = [pd.to_numeric(pd.Series(np.asarray(c).ravel()), errors="coerce").to_numpy(float)
              for c in columns]
    return np.logical_and.reduce([np.isfinite(v) for v in values]) if values else np.array([])


def nothing_to_draw(ax: Axes, *columns, what: str) -> bool:
    """True, with a note in the middle of `ax`, where no row of `columns` is finite (no row,
    or every value NaN or inf): the caller then draws nothing more on that panel."""
    if _finite(*columns).any():
        return False
    ax.text(0.5, 0.5, f"nothing to draw:\nno finite {what}", transform=ax.transAxes,
            ha="center", va="center", fontsize=8, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])
    return True


# ---------------------------------------------------------------------------------------------
# Checks and reshaping


def _run_step_means(data: pd.DataFrame, *, x: str, values: Sequence[str],
                    keys: Sequence[str]) -> pd.DataFrame:
    """`diagnostics.run_step_means` long: keys, run_id, seed, x, quantity, value.

    A step whose pairs include a NaN/inf value gets NaN, never a mean of the finite pairs only;
    seaborn's lineplot then leaves that run's step out (records end before a divergence, so this
    only happens in hand-edited or foreign records).
    """
    means = dg.run_step_means(data, values, by=keys, x=x)
    ids = [c for c in means.columns if c not in values]
    means[list(values)] = means[list(values)].where(np.isfinite(means[list(values)]))
    return means.melt(id_vars=ids, value_vars=list(values), var_name="quantity",
                      value_name="value")


def _diverged_runs(data: pd.DataFrame, *, x: str, hue: str | None,
                   onset: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per diverged run: run_id, `hue`, `last` = the last step it has records at.

    Which runs diverged is `diagnostics.run_status`'s verdict, from the records' status and
    diverged_step (`records.load_run` adds them), else from `onset` (`collapse` output).
    """
    cols = ["run_id"] + ([hue] if hue else [])
    runs = data.groupby(cols, dropna=False)[x].max().rename("last").reset_index()
    source = data if {"status", "diverged_step"} & set(data.columns) else onset
    if source is None or "run_id" not in source.columns:
        return runs.iloc[:0]
    diverged = dg.run_status(source).set_index("run_id").diverged
    return runs[runs.run_id.map(diverged).fillna(False).astype(bool)].reset_index(drop=True)


def _lineplot(ax: Axes, long: pd.DataFrame, *, x: str, errorbar, groups: Sequence[str],
              band_colour: Callable[[dict], object], **line_kwargs) -> None:
    """seaborn's lineplot of long.value against `x`, one line per group of `groups`.

    errorbar "seed": the band is `stats.seed_intervals`' 95% t-interval across runs,
    computed for every group and x at once (seaborn would call a function per point: minutes
    for runs of thousands of steps); no band where a point has one run. Anything else goes to
    seaborn's lineplot as its errorbar.
    """
    if errorbar != "seed":
        sns.lineplot(data=long, x=x, y="value", errorbar=errorbar, ax=ax, legend=False,
                     **line_kwargs)
        return
    groups = list(groups)
    bands = seed_intervals(long.dropna(subset=["value"]), [*groups, x], "value")
    sns.lineplot(data=bands, x=x, y="value", errorbar=None, ax=ax, legend=False, **line_kwargs)
    for key, band in bands.groupby(groups, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        ax.fill_between(band[x], band.value_lo, band.value_hi, linewidth=0, alpha=0.2,
                        color=band_colour(dict(zip(groups, key))))


# ---------------------------------------------------------------------------------------------
# C1: the gap against the length difference, under every normalisation


def gap_vs_length(data: pd.DataFrame, *, x: str = "dlen", y: str = "gap_value",
                  col: str | None = "normalisation", hue: str | None = None,
                  col_order: Sequence | None = None, hue_order: Sequence | None = None,
                  palette: Mapping | None = None, effect: pd.DataFrame | None = None,
                  max_points: int | None = 4000, seed: int = 0, height: float = 2.8,
                  aspect: float = 1.1, scatter_kws: Mapping | None = None,
                  line_kws: Mapping | None = None) -> sns.FacetGrid:
    """Per-pair gap against the length difference, one panel per `col`, each with its OLS line.

    data: the output of `diagnostics.gap_normalisations` (or any frame with `x`, `y`, `col`).
    effect: the fit to draw, `diagnostics.length_effect(data, x=x, y=y, by=(col,))` (by=() when
    col is None): each panel's line (slope, intercept) and its title's R², with the interval
    where the table has one (pass one computed with n_boot > 0), and Spearman ρ. None: the point
    fit alone (length_effect with n_boot=0, no interval). The scatter shows at most `max_points`
    rows per panel (a sample seeded by `seed`; None = all). The y axes are not shared: summed
    gaps are tens of nats, token-mean ones a fraction of one. With `hue`, points are coloured by
    it (label colours when hue="label"); the line and R² stay the panel's pooled fit.
    Returns the FacetGrid; `grid.effect` holds the length_effect table it drew.
    """
    require_columns(data, [x, y, col, hue], "gap_vs_length", nonempty=True)
    frame = data.copy()
    panel = col if col is not None else "_panel"
    if col is None:
        frame[panel] = ""
    effect = _panel_effect(frame, effect, x=x, y=y, panel=panel, pooled=col is None)
    effect_by_panel = {row[panel]: row for _, row in effect.iterrows()}
    shown = _sample_panels(frame, panel, max_points, seed)
    hue_kws = {}
    if hue is not None:
        hue_order = order_of(frame[hue], hue_order)
        hue_kws = {"hue": hue, "hue_order": hue_order,
                   "palette": colours_of(hue_order, palette, labels=hue == "label")}
    points = {"s": 10, "alpha": 0.35, "linewidth": 0, "color": "0.35", **hue_kws,
              **(scatter_kws or {})}
    with themed():
        grid = sns.FacetGrid(shown, col=panel, col_order=order_of(frame[panel], col_order),
                             sharex=True, sharey=False, height=height, aspect=aspect,
                             despine=False)
        for name, ax in grid.axes_dict.items():
            _gap_panel(ax, shown[shown[panel] == name], frame.loc[frame[panel] == name, x],
                       effect_by_panel.get(name), x=x, y=y,
                       title=name if col is not None else "", scatter_kws=points,
                       line_kws=line_kws)
        grid.tight_layout()  # room for the two-line titles, before the legend claims its own
        if hue is not None:
            grid.add_legend(legend_data={str(k): Line2D([], [], marker="o", linestyle="",
                                                        color=hue_kws["palette"][k])
                                         for k in hue_kws["hue_order"]}, title=hue)
    grid.effect = effect.drop(columns="_panel", errors="ignore")
    return grid


def _panel_effect(frame: pd.DataFrame, effect: pd.DataFrame | None, *, x: str, y: str,
                  panel: str, pooled: bool) -> pd.DataFrame:
    """The fit gap_vs_length draws, one row per `panel`: `effect` as given (pooled: the one
    panel's, named ""), else `diagnostics.length_effect`'s point fit (n_boot=0)."""
    if effect is None:
        return dg.length_effect(frame, x=x, y=y, by=(panel,), n_boot=0)
    return effect.assign(**{panel: ""}) if pooled else effect


def _sample_panels(frame: pd.DataFrame, panel: str, max_points: int | None,
                   seed: int) -> pd.DataFrame:
    """At most `max_points` rows of each panel, a sample seeded by `seed` (None: every row)."""
    if max_points is None:
        return frame
    return pd.concat([d.sample(min(len(d), max_points), random_state=seed)
                      for _, d in frame.groupby(panel, sort=False)])


def _gap_panel(ax: Axes, here: pd.DataFrame, full_x: pd.Series, row, *, x: str, y: str,
               title: str, scatter_kws: Mapping, line_kws: Mapping | None) -> None:
    """One panel of gap_vs_length: the points shown (`here`), the fit's line (`row`: slope,
    intercept) across the x range of all the panel's rows (`full_x`), and its title."""
    if nothing_to_draw(ax, here[x], here[y], what=f"{x} and {y}"):
        ax.set_title(effect_title(title, row))
        return
    sns.scatterplot(data=here, x=x, y=y, ax=ax, legend=False, **scatter_kws)
    if row is not None and np.isfinite(row["slope"]):
        full = full_x.astype(float)
        xs = np.array([full.min(), full.max()])
        ax.plot(xs, row["intercept"] + row["slope"] * xs,
                **{"color": "black", "linewidth": 1.5, **(line_kws or {})})
    ax.set_title(effect_title(title, row))
    ax.set_xlabel(axis_name(x))
    ax.set_ylabel(axis_name(y))


def effect_title(name, row) -> str:
    if row is None:
        return f"{name}\n(no fit)"
    r2 = f"R² = {interval_label(row['r2'], row.get('r2_lo'), row.get('r2_hi'))}"
    rho = f"ρ = {row['spearman']:.2f}" if "spearman" in row else ""
    return f"{name}\n{r2}  {rho}".strip()


# ---------------------------------------------------------------------------------------------
# C3: loss trajectories and collapse


def loss_trajectories(data: pd.DataFrame, *, x: str = "step", hue: str = "label",
                      quantities: Sequence[str] = ("loss_p", "loss_n"), row: str | None = None,
                      onset: pd.DataFrame | None = None, hue_order: Sequence | None = None,
                      row_order: Sequence | None = None, palette: Mapping | None = None,
                      errorbar="seed", height: float = 2.8, aspect: float = 1.3,
                      sharey: bool = False, yscale: str = "auto") -> sns.FacetGrid:
    """loss_p and loss_n per step: one column per quantity, one line per `hue` (mean across seeds).

    data: per-pair records (or evals) with `x`, `hue`, run_id, seed and the quantities; status
    and diverged_step (added by `records.load_run`) mark diverged runs. Each run is first averaged
    over its pairs at each step (`diagnostics.run_step_means`); the line is the mean of those
    across runs and the band is `errorbar` across runs: "seed" = `stats.seed_interval`'s
    95% t-interval (no band with one seed), or anything seaborn's lineplot takes (None for no
    band). `row` (e.g. "label") splits further into rows, in `row_order` (default: sorted).

    onset: collapse onsets, e.g. `progress.collapse_onsets` (run_id, `hue`, collapse_step): each
    label's median onset across its seeds is a dashed vertical line, the range of its seeds'
    onsets a shaded band.
    A diverged run's line ends at its last recorded step, marked "x". yscale: "auto" makes a
    panel's y axis logarithmic where one label's loss runs 10× past another's (a collapsing
    label would otherwise flatten every other line), else linear; or any matplotlib scale.
    Returns the FacetGrid (columns in the order of `quantities`).
    """
    require_columns(data, [x, hue, row, "run_id", "seed", *quantities], "loss_trajectories",
                    nonempty=True)
    keys = [k for k in (hue, row) if k is not None]
    long = _run_step_means(data, x=x, values=quantities, keys=keys)
    hue_order = order_of(data[hue], hue_order)
    colours = colours_of(hue_order, palette, labels=hue == "label")
    diverged = _diverged_runs(data, x=x, hue=hue, onset=onset)
    row_order = order_of(data[row], row_order) if row else None

    with themed():
        grid = sns.FacetGrid(long, col="quantity", col_order=list(quantities), row=row,
                             row_order=row_order, sharex=True, sharey=sharey, height=height,
                             aspect=aspect, despine=False)
        for key, ax in grid.axes_dict.items():
            quantity, row_value = (key[1], key[0]) if row else (key, None)
            sub = long[long.quantity == quantity]
            if row:
                sub = sub[sub[row] == row_value]
            if nothing_to_draw(ax, sub.value, what=quantity):
                ax.set_title(QUANTITY_NAMES.get(quantity, quantity))
                continue
            _lineplot(ax, sub, x=x, errorbar=errorbar, groups=[hue],
                      band_colour=lambda key: colours[key[hue]], hue=hue, hue_order=hue_order,
                      palette=colours)
            _mark_onsets(ax, onset, hue=hue, colours=colours,
                         present=sub[hue].unique() if len(sub) else [])
            _mark_diverged(ax, sub, diverged, x=x, hue=hue, colours=colours)
            _scale_y(ax, sub.groupby([hue, x], observed=True).value.mean(), yscale)
            title = QUANTITY_NAMES.get(quantity, quantity)
            ax.set_title(f"{row_value} · {title}" if row else title)
            ax.set_xlabel(axis_name(x))
            ax.set_ylabel(_quantity_axis([quantity]))
        legend = {str(k): Line2D([], [], color=colours[k]) for k in hue_order}
        if len(diverged):
            legend["diverged"] = Line2D([], [], color="0.2", marker="x", linestyle="")
        if onset is not None:
            legend["collapse onset"] = Line2D([], [], color="0.2", linestyle="--")
        grid.add_legend(legend_data=legend, title=axis_name(hue))
    return grid


def _quantity_axis(quantities: Sequence[str]) -> str:
    """The y axis name of panels drawing `quantities` (records' token-mean losses and gaps)."""
    if all(q in ("loss_p", "loss_n") for q in quantities):
        return "loss (nats per token)"
    if all(q in QUANTITY_NAMES for q in quantities):
        return "nats per token"
    return ", ".join(axis_name(q) for q in quantities)


def _mark_onsets(ax: Axes, onset: pd.DataFrame | None, *, hue: str, colours: Mapping,
                 present: Iterable) -> None:
    if onset is None:
        return
    require_columns(onset, ["collapse_step", hue], "loss_trajectories(onset=)", nonempty=True)
    present = set(present)
    for value, runs in onset.groupby(hue, sort=True):
        steps = runs.collapse_step.astype(float).dropna()
        if value not in present or steps.empty:
            continue
        colour = colours.get(value, "0.2")
        if steps.max() > steps.min():
            ax.axvspan(steps.min(), steps.max(), color=colour, alpha=0.12, linewidth=0)
        ax.axvline(steps.median(), color=colour, linestyle="--", linewidth=1.2)


def _mark_diverged(ax: Axes, long: pd.DataFrame, diverged: pd.DataFrame, *, x: str,
                   hue: str | None, colours: Mapping | None = None,
                   colour: object = None) -> None:
    """An "x" at the last recorded point of each diverged run's own (seed) trajectory."""
    for _, run in diverged.iterrows():
        points = long[(long.run_id == run.run_id) & (long[x] == run["last"])]
        for value in points.value.dropna():
            c = colour if colour is not None else colours.get(run[hue], "0.2")
            ax.plot([run["last"]], [value], marker="x", color=c, markersize=7,
                    markeredgewidth=1.8, linestyle="", zorder=5)


def normalisation_grid(data: pd.DataFrame, *, x: str = "step", col: str = "label",
                       quantities: Sequence[str] = ("loss_p", "loss_n"),
                       col_order: Sequence | None = None, col_wrap: int | None = 4,
                       palette: Mapping | None = None, errorbar="seed", height: float = 2.4,
                       aspect: float = 1.2) -> sns.FacetGrid:
    """Every label side by side: mean loss_p (solid) and loss_n (dashed) per step (the gap
    dotted, when `quantities` has it).

    One panel per `col` value (default: label), each in its label's colour; x is shared, but
    every panel has its own y scale, so that a label whose loss runs to 90 nats (negative_only)
    is shown whole on its own scale without flattening the others (read the tick values before
    comparing panels). Lines and bands as in `loss_trajectories` (mean over pairs per run, then
    across seeds with `errorbar`). A panel's title says how many of its seeds diverged; each
    diverged run's last point is marked "x". The legend sits right of the panels.
    Returns the FacetGrid.
    """
    require_columns(data, [x, col, "run_id", "seed", *quantities], "normalisation_grid",
                    nonempty=True)
    long = _run_step_means(data, x=x, values=quantities, keys=[col])
    order = order_of(data[col], col_order)
    colours = colours_of(order, palette, labels=col == "label")
    diverged = _diverged_runs(data, x=x, hue=col)
    n_seeds = data.groupby(col)["run_id"].nunique()
    wrap = col_wrap if col_wrap and len(order) > col_wrap else None

    with themed():
        grid = sns.FacetGrid(long, col=col, col_order=order, col_wrap=wrap, sharex=True,
                             sharey=False, height=height, aspect=aspect, despine=False)
        for name, ax in grid.axes_dict.items():
            sub = long[long[col] == name]
            colour = colours[name]
            if nothing_to_draw(ax, sub.value, what=", ".join(quantities)):
                ax.set_title(str(name))
                continue
            _lineplot(ax, sub, x=x, errorbar=errorbar, groups=["quantity"],
                      band_colour=lambda key, colour=colour: colour, style="quantity",
                      style_order=list(quantities),
                      dashes=[QUANTITY_DASHES.get(q, "") for q in quantities], color=colour)
            _mark_diverged(ax, sub, diverged[diverged[col] == name], x=x, hue=col, colour=colour)
            n_div = int((diverged[col] == name).sum())
            title = str(name)
            if n_div:
                title += f"\n{n_div}/{n_seeds[name]} runs diverged"
            ax.set_title(title)
        grid.set_axis_labels(axis_name(x), _quantity_axis(quantities))
        legend = {QUANTITY_NAMES.get(q, q): Line2D([], [], color="0.3",
                                                    dashes=QUANTITY_DASHES.get(q, ""))
                  for q in quantities}
        grid.add_legend(legend_data=legend, title="each panel on\nits own y scale")
    return grid


# ---------------------------------------------------------------------------------------------
# C2, C4, C5: intervals and shares per label


def interval_plot(data: pd.DataFrame, *, x: str = "grad_cos", y: str = "label",
                  order: Sequence | None = None, palette: Mapping | None = None,
                  kind: str = "point", refline: float | None = None, ax: Axes | None = None,
                  **kwargs) -> Axes:
    """One point (or bar) per `y` value with its interval: `x` between `<x>_lo` and `<x>_hi`.

    data: one row per label, e.g. from `diagnostics.gradient_noise` (any of its metrics, e.g.
    x="gns"), `findings.displacement` (x="share") or `findings.predictors_of_displacement` of
    one predictor (x="rho"). The `y` values are on the y axis
    (long names stay readable), in `order` or sorted. A NaN interval (one seed) draws the point
    alone. `refline` draws a vertical reference line (e.g. 0 for grad_cos).
    Returns the Axes.
    """
    if kind not in ("point", "bar"):
        raise ValueError(f"kind={kind!r}; allowed: 'point', 'bar'")
    require_columns(data, [y, x], "interval_plot", nonempty=True)
    if data[y].duplicated().any():
        raise ValueError(f"interval_plot: several rows per {y!r}; pass one row per {y} "
                         "(the diagnostics tables have one)")
    order = order_of(data[y], order)
    colours = colours_of(order, palette, labels=y == "label")
    rows = data.set_index(y).reindex(order)
    values = rows[x].astype(float).to_numpy()
    lo = rows.get(f"{x}_lo", pd.Series(np.nan, index=rows.index)).astype(float).to_numpy()
    hi = rows.get(f"{x}_hi", pd.Series(np.nan, index=rows.index)).astype(float).to_numpy()
    positions = np.arange(len(order))

    with themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 0.45 * len(order) + 1.2))
        if nothing_to_draw(ax, values, what=x):
            return ax
        for i, name in enumerate(order):
            colour = colours[name]
            if kind == "bar":
                ax.barh(i, values[i], color=colour, height=0.6, **kwargs)
            else:
                ax.plot(values[i], i, marker="o", color=colour, linestyle="", markersize=6,
                        **kwargs)
            if np.isfinite(lo[i]) and np.isfinite(hi[i]):
                ax.plot([lo[i], hi[i]], [i, i], color=colour if kind == "point" else "0.15",
                        linewidth=1.8, solid_capstyle="butt")
        if refline is not None:
            ax.axvline(refline, color="0.4", linewidth=0.8, zorder=0)
        ax.set_yticks(positions, [str(name) for name in order])
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.set_xlabel(axis_name(x))
        ax.set_ylabel("")
    return ax


def gradient_agreement(data: pd.DataFrame, *, x: str = "grad_cos", y: str = "label",
                       order: Sequence | None = None, palette: Mapping | None = None,
                       ax: Axes | None = None) -> Axes:
    """C2: each objective's mean leave-one-out cosine of a pair's gradient to the other pairs'
    mean gradient, one point per `y` value, with a line at 0 (orthogonal gradients).

    data: `diagnostics.gradient_noise` output (one row per label, or per label and learning
    rate with a `y` column naming both). The points have no interval (`<x>_lo`/`<x>_hi` are
    left out): rows of one pair at many steps are not independent pairs. The x axis is symlog, linear within
    ±0.05 (negative_only's cosine is 10× the others'), from -0.05 to a cosine's bound 1.
    Returns the Axes.
    """
    shown = data.drop(columns=[f"{x}_lo", f"{x}_hi"], errors="ignore")
    ax = interval_plot(shown, x=x, y=y, order=order, palette=palette, refline=0, ax=ax)
    ax.set_xscale("symlog", linthresh=0.05)
    ax.set_xlim(-0.05, 1.0)
    ax.xaxis.set_major_locator(mpl.ticker.FixedLocator([-0.05, 0, 0.05, 0.1, 0.2, 0.5, 1]))
    ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(_plain))
    ax.set_xlabel("mean cosine of a pair's gradient to the other pairs' mean gradient\n"
                  "(orthogonal gradients: 0; over every step of the runs of each row)")
    return ax


def displacement_shares(data: pd.DataFrame, *, max_neutral: float, x: str = "share",
                        y: str = "label", order: Sequence | None = None,
                        palette: Mapping | None = None, ax: Axes | None = None) -> Axes:
    """C4: per `y` value, the share of held-out pairs whose chosen log-prob fell where neutral
    text held, with its exact interval, on 0–1 with a dotted line at one half.

    data: `findings.displacement` output; rows without such an evaluation (n = 0) are left
    out, and so are their labels from `order`. max_neutral: the bound on |Δ neutral NLL| the
    rows were found under (`findings.NEUTRAL_HOLD`), written on the axis. Returns the Axes.
    """
    require_columns(data, [x, y, "n"], "displacement_shares", nonempty=True)
    shown = data[data["n"] > 0]
    present = set(shown[y])
    order = [v for v in order_of(shown[y], order) if v in present]
    ax = interval_plot(shown, x=x, y=y, order=order, palette=palette, refline=0.5, ax=ax)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of held-out pairs whose chosen log-prob fell,\nwhere neutral text "
                  f"held (|Δ NLL| ≤ {max_neutral:g}); exact 95% interval")
    return ax


# ---------------------------------------------------------------------------------------------
# Matched progress: what each run's progress cost (prefstudy.progress)

PATH_MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # one per `style` value of `frontier`


def frontier(data: pd.DataFrame, *, x: str = "d_neutral", y: str = "margin_gain",
             hue: str = "label", style: str | None = "lr", units: str = "run_id",
             hue_order: Sequence | None = None, style_order: Sequence | None = None,
             palette: Mapping | None = None, col: str | None = None,
             col_order: Sequence | None = None, col_wrap: int | None = None,
             xscale: str = "symlog", linthresh: float = 0.05, yscale: str = "linear",
             ylinthresh: float = 0.2, height: float = 3.2, aspect: float = 1.3,
             origin: tuple[float, float] = (0.0, 0.0), arrows: bool = True,
             titles: Mapping | None = None,
             ax: Axes | None = None) -> Axes | sns.FacetGrid:
    """Each run's path of preference progress (`y`) against capability cost (`x`), as the DPO
    paper draws reward against KL.

    data: `progress.progress_paths` output with a `style` column added (e.g. lr, from the runs'
    configs): one row per (`units` = run, evaluation step). Each run is a line from `origin`,
    the starting model (prepended; step 0 rows, if any, are left out; (0, ½) where `y` is an
    accuracy, which starts at one half), through its evaluations
    in step order, in its `hue` colour (the pinned study palette when it covers the labels), with
    a marker per `style` value (PATH_MARKERS) at each evaluation. Thin lines cross at `origin`.
    xscale: "symlog" (linear within ±`linthresh`, logarithmic beyond) keeps a run-away cost
    (negative_only reaches 100× the others) from squeezing every other path against x = 0, and
    becomes "linear" where every cost lies within ±`linthresh`; or "linear". yscale: "linear", or "symlog" (linear within ±`ylinthresh`) where one objective's
    progress runs far past the rest. col (e.g. "family"): one panel per value, sharing both
    axes; `titles` maps a panel's value to its title. arrows: an arrowhead on each segment, so
    the direction of training is visible. The legend sits right of the data. Each path's Line2D
    has its run as gid. Returns the Axes, or the FacetGrid with col.
    """
    require_columns(data, [x, y, hue, style, units, col, "step"], "frontier", nonempty=True)
    if col is not None and ax is not None:
        raise ValueError("frontier: pass ax= or col=, not both (col makes its own grid)")
    hue_order = order_of(data[hue], hue_order)
    costs = pd.to_numeric(data[x], errors="coerce").to_numpy(float)
    if xscale == "symlog" and np.abs(costs[np.isfinite(costs)]).max(initial=0.0) < linthresh:
        xscale = "linear"  # every cost inside the linear part: a symlog axis would tick 0 alone
    kws = {"x": x, "y": y, "hue": hue, "style": style, "units": units,
           "colours": colours_of(hue_order, palette, labels=hue == "label"),
           "markers": _markers(data, style, style_order), "xscale": xscale,
           "linthresh": linthresh, "xticks": symlog_ticks(data[x], linthresh),
           "origin": origin, "arrows": arrows}
    legend = _path_legend(hue, hue_order, kws["colours"], style, kws["markers"])
    with themed():
        if col is None:
            if ax is None:
                _, ax = plt.subplots(figsize=(height * aspect, height))
            if nothing_to_draw(ax, data[x], data[y], what=f"{x} and {y}"):
                return ax
            _draw_paths(ax, data, **kws)
            _path_scale_y(ax, data[y], yscale, ylinthresh)
            ax.set_xlabel(axis_name(x))
            ax.set_ylabel(axis_name(y))
            ax.legend(legend.values(), legend.keys(), loc="upper left",
                      bbox_to_anchor=(1.02, 1.0))
            return ax
        order = order_of(data[col], col_order)
        wrap = col_wrap if col_wrap and len(order) > col_wrap else None
        grid = sns.FacetGrid(data, col=col, col_order=order, col_wrap=wrap, sharex=True,
                             sharey=True, height=height, aspect=aspect, despine=False)
        for name, panel in grid.axes_dict.items():
            here = data[data[col] == name]
            title = str((titles or {}).get(name, name))
            if nothing_to_draw(panel, here[x], here[y], what=f"{x} and {y}"):
                panel.set_title(title)
                continue
            _draw_paths(panel, here, **kws)
            _path_scale_y(panel, data[y], yscale, ylinthresh)
            panel.set_title(title)
        grid.set_axis_labels(axis_name(x), axis_name(y))
        grid.add_legend(legend_data=legend)
    return grid


def family_frontier(data: pd.DataFrame, *, col: str = "family",
                    hue_order: Sequence | None = None, col_wrap: int = 2,
                    yscale: str = "symlog", **kwargs) -> sns.FacetGrid | Axes:
    """`frontier` with one panel per family of objectives that `data[col]` holds, in
    `objectives.FAMILIES` order, `col_wrap` panels to a row, progress on a symlog axis; a single
    panel (the Axes) where no row has a known family. Other keywords go to `frontier`.
    Returns the FacetGrid, or the Axes."""
    from .objectives import FAMILIES  # imported here: objectives needs torch, figures do not

    require_columns(data, [col], "family_frontier", nonempty=True)
    families = [f for f in FAMILIES if f in set(data[col])]
    if not families:
        return frontier(data, hue_order=hue_order, yscale=yscale, **kwargs)
    return frontier(data, hue_order=hue_order, col=col, col_order=families, col_wrap=col_wrap,
                    yscale=yscale, **kwargs)


def objective_frontier(data: pd.DataFrame, *, col: str = "label", col_order: Sequence | None = None,
                       hue: str = "lr", families: Mapping[str, str] | None = None,
                       col_wrap: int = 4, height: float = 2.6, aspect: float = 1.15,
                       **kwargs) -> sns.FacetGrid:
    """`frontier` with one panel per objective (`col`, in `col_order`: the study's family
    order), its runs coloured by learning rate (`theme.lr_palette`, light to dark), one line
    per run (seeds of a learning rate share its colour), an arrowhead on every segment; where
    `families` (label → family) is given, each title names the objective's family. Learning
    rates are never averaged. Other keywords go to `frontier`. Returns the FacetGrid."""
    require_columns(data, [col, hue], "objective_frontier", nonempty=True)
    order = order_of(data[col], col_order)
    titles = {name: f"{name} ({families[name]})" if families and name in families else str(name)
              for name in order}
    kwargs.setdefault("style", None)
    return frontier(data, col=col, col_order=order, col_wrap=col_wrap, hue=hue,
                    hue_order=sorted(set(data[hue].dropna())), palette=lr_palette(data[hue]),
                    titles=titles, height=height, aspect=aspect, **kwargs)


def _markers(data: pd.DataFrame, style: str | None, order: Sequence | None) -> dict:
    if style is None:
        return {}
    order = order_of(data[style], order)
    if len(order) > len(PATH_MARKERS):
        raise ValueError(f"frontier: {len(order)} values of {style!r}; at most "
                         f"{len(PATH_MARKERS)} can have a marker each")
    return dict(zip(order, PATH_MARKERS))


def _path_scale_y(ax: Axes, values: pd.Series, yscale: str, linthresh: float) -> None:
    if yscale == "symlog":
        ax.set_yscale("symlog", linthresh=linthresh)
        ticks = sorted({*symlog_ticks(values, linthresh), linthresh, -linthresh})
        ax.yaxis.set_major_locator(mpl.ticker.FixedLocator(ticks))
        ax.yaxis.set_minor_locator(mpl.ticker.NullLocator())
        ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(_plain))
    else:
        ax.set_yscale(yscale)


def symlog_ticks(values: pd.Series, linthresh: float) -> list[float]:
    """0 and ± the powers of ten from the first above `linthresh` to the largest |value|: a
    symlog axis's ticks without one crowding 0 (those outside the view are not drawn); where
    every value lies below the first such power, ±linthresh/2 and ±linthresh instead."""
    v = np.abs(values.to_numpy(float))
    top = max(v[np.isfinite(v)].max(initial=0.0), linthresh)
    decades = 10.0 ** np.arange(np.ceil(np.log10(linthresh)), np.ceil(np.log10(top)) + 1)
    if top < decades[0]:  # every value in the linear part: ticks inside it, not 0 alone
        decades = np.array([linthresh / 2, linthresh])
    return sorted([0.0, *decades, *(-decades)])


def _draw_paths(ax: Axes, data: pd.DataFrame, *, x: str, y: str, hue: str, style: str | None,
                units: str, colours: Mapping, markers: Mapping, xscale: str,
                linthresh: float, xticks: Sequence[float],
                origin: tuple[float, float] = (0.0, 0.0), arrows: bool = False) -> None:
    """One line per run: `origin` (the starting model), then its evaluations (step > 0) in step
    order; with `arrows`, an arrowhead on each segment's end (the direction of training)."""
    ax.axvline(origin[0], color="0.45", linewidth=0.7, zorder=0)
    ax.axhline(origin[1], color="0.45", linewidth=0.7, zorder=0)
    for run_id, run in data[data.step > 0].groupby(units, sort=True):
        run = run.sort_values("step")
        xs = np.r_[origin[0], run[x].to_numpy(float)]
        ys = np.r_[origin[1], run[y].to_numpy(float)]
        marker = markers.get(run[style].iloc[0], "o") if style else "o"
        colour = colours[run[hue].iloc[0]]
        ax.plot(xs, ys, color=colour, marker=marker, markersize=4.5,
                markevery=list(range(1, len(xs))), linewidth=1.1, alpha=0.85,
                gid=str(run_id))
        if arrows:
            _arrowheads(ax, xs, ys, colour)
    ax.plot([origin[0]], [origin[1]], marker="o", color="black", markersize=4, linestyle="",
            zorder=5)
    if xscale == "symlog":
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.xaxis.set_major_locator(mpl.ticker.FixedLocator(xticks))
        ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
        ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(_plain))
    else:
        ax.set_xscale(xscale)


def _arrowheads(ax: Axes, xs: np.ndarray, ys: np.ndarray, colour) -> None:
    """An arrowhead pointing along each segment of a path, at its end (finite points only)."""
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        if np.isfinite([x0, y0, x1, y1]).all() and (x0, y0) != (x1, y1):
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=3,
                        arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 0,
                                    "mutation_scale": 9, "shrinkA": 0, "shrinkB": 3})


def _path_legend(hue: str, hue_order: Sequence, colours: Mapping, style: str | None,
                 markers: Mapping) -> dict:
    """Legend entries of `frontier`: a heading, then one entry per hue value and style value."""
    blank = Line2D([], [], linestyle="", marker="")
    legend = {axis_name(hue): blank}
    legend.update({str(k): Line2D([], [], color=colours[k]) for k in hue_order})
    if style is not None:
        legend[axis_name(style)] = blank
        legend.update({f"{k:g}" if isinstance(k, float) else str(k):
                       Line2D([], [], color="0.3", marker=m, linestyle="")
                       for k, m in markers.items()})
    legend["starting model"] = Line2D([], [], color="black", marker="o", linestyle="")
    return legend


def matched_plot(data: pd.DataFrame, *, x: str = "level", y: str = "d_chosen",
                 hue: str = "label", order: Sequence | None = None,
                 hue_order: Sequence | None = None, palette: Mapping | None = None,
                 refline: float | None = 0.0, join: bool = True,
                 ax: Axes | None = None) -> Axes:
    """`y` with its interval per `hue` value at each matched progress level `x`.

    data: `progress.matched_progress` output (label, level, n_runs, n_pairs, `<y>`, `<y>_lo`,
    `<y>_hi`). At each level (in `order`, else sorted, evenly spaced), one point per label,
    dodged, with its interval as a vertical bar, and (`join`) a thin line joining a label's
    levels — pass join=False where a label's levels come from different runs (an envelope). A
    level a label never reached (NaN) has no point; a label that reached none keeps its place
    and says so in the legend. `refline`: a dotted horizontal line (0: no change since the
    starting model). The legend sits right of the data. Returns the Axes.
    """
    require_columns(data, [x, y, hue], "matched_plot", nonempty=True)
    if data.duplicated([x, hue]).any():
        raise ValueError(f"matched_plot: several rows per ({x}, {hue}); pass one row each")
    order = order_of(data[x], order)
    hue_order = order_of(data[hue], hue_order)
    colours = colours_of(hue_order, palette, labels=hue == "label")
    step = 0.7 / len(hue_order)
    with themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(min(1.6 + 0.2 * len(order) * len(hue_order), 11), 3.2))
        if nothing_to_draw(ax, data[y], what=f"{y} at any level"):
            return ax
        for j, name in enumerate(hue_order):
            rows = data[data[hue] == name].set_index(x).reindex(order)
            pos = np.arange(len(order)) + (j - (len(hue_order) - 1) / 2) * step
            values = rows[y].to_numpy(float)
            reached = np.isfinite(values).any()
            ax.plot(pos, values, marker="o", markersize=5, linewidth=0.7 if join else 0,
                    color=colours[name],
                    label=str(name) if reached else f"{name} (no level reached)")
            if f"{y}_lo" in rows.columns and f"{y}_hi" in rows.columns:
                lo, hi = rows[f"{y}_lo"].to_numpy(float), rows[f"{y}_hi"].to_numpy(float)
                ok = np.isfinite(lo) & np.isfinite(hi)
                ax.vlines(pos[ok], lo[ok], hi[ok], color=colours[name], linewidth=1.8)
        if refline is not None:
            ax.axhline(refline, color="0.4", linewidth=0.8, linestyle=":", zorder=0)
        ax.set_xticks(np.arange(len(order)),
                      [f"{v:g}" if isinstance(v, float) else str(v) for v in order])
        ax.set_xlabel(axis_name(x))
        ax.set_ylabel(axis_name(y))
        ax.legend(title=axis_name(hue), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def matched_chosen(data: pd.DataFrame, *, x: str = "level", y: str = "d_chosen",
                   hue: str = "label", order: Sequence | None = None,
                   hue_order: Sequence | None = None, palette: Mapping | None = None,
                   linthresh: float = 0.1, join: bool = True, ax: Axes | None = None) -> Axes:
    """`matched_plot` of the held-out chosen loss's change (`y`) on a symlog y axis, linear
    within ±`linthresh`: the intervals of a collapsing run reach 10× the others'.
    Returns the Axes."""
    ax = matched_plot(data, x=x, y=y, hue=hue, order=order, hue_order=hue_order,
                      palette=palette, join=join, ax=ax)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(_plain))
    return ax


# The audit's figures moved to `prefstudy.auditplots`; `plots.<name>` still finds them (imported
# on first use: auditplots imports this module, so it cannot be imported at the top).
