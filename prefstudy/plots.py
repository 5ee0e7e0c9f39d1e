"""Figures: a tidy DataFrame in, a seaborn Axes or FacetGrid out, one look across all of them.

Every function follows seaborn's calling convention: `data` first, column names as keywords
(`x=`, `y=`, `hue=`, `col=`, `row=`), orders as seaborn names them (`order`, `hue_order`,
`col_order`, `row_order`), `ax=None` for single-panel figures (draw on the given Axes, else on a
new one, and return it) and a FacetGrid for faceted ones. Statistics are never computed here: a
figure draws a table a diagnostic returned (`prefstudy.diagnostics`), passed in (`effect=`,
`onset=`) or asked for: a trajectory is `diagnostics.run_step_means` with its band across seeds
from `diagnostics.seed_intervals` (seeds are the units, as in every table), divergence is
`diagnostics.run_table`'s.

    gap_vs_length        C1: per-pair gap against Δlen, one panel per normalisation, OLS line
    loss_trajectories    C3: loss_p and loss_n per step, one line per label, collapse onsets
    normalisation_grid   every label in its own panel, each on its own y scale
    interval_plot        one point (or bar) with its interval per label: C2, C5 (noise_comparison
                         is its former name)
    displacement_bars    C4: shares of displaced pairs per label and edit-distance bin
    frontier             each run's path of preference progress against capability cost
    matched_plot         a quantity with its interval per label at matched progress levels

Look: `THEME` is the seaborn theme (context "paper"); every function draws inside it without
changing global state, and `set_style()` applies it globally for a notebook. Colours: a label
always gets the colour of its place in the *sorted* list of labels (`label_palette`), so "dpo" is
the same colour in every figure that shows the same labels; `set_style(labels=...)` pins the
study's full label list, so that figures showing a subset keep the study's colours. Given each
label's family (`objectives.family_of`), `family_palette` colours by family instead: one hue of
the colour-blind palette per family (FAMILY_HUES), the labels of a family told apart by
lightness, darkest first in sorted label order; `set_style(labels, families=...)` pins that.
`family_order` lists labels family by family, in `objectives.FAMILIES` order (summed likelihood
losses, then token-mean ones, then reference log-ratios, then anchored ones).

Legibility: axis labels and titles are words (AXIS_NAMES), never bare column names; legends sit
outside the panels (to the right, or below a wide grid), inside the bounding box `save` writes;
where one label can run 100× past the others, the axis is logarithmic or each panel has its
own scale, so that no panel is flattened by one extreme.

Nothing here picks a backend or calls `plt.show()`: matplotlib falls back to Agg where there is no
display, and notebooks show the returned figure themselves. `save` writes files whose bytes do not
depend on the matplotlib version or the date.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import diagnostics as dg
from .formatting import interval_label
from .records import require_columns

# ---------------------------------------------------------------------------------------------
# Look

THEME = {"context": "paper", "style": "whitegrid", "font_scale": 1.0,
         "rc": {"axes.titlesize": "medium", "legend.frameon": False, "savefig.bbox": "tight"}}
BASE_PALETTE = "colorblind"  # 10 colours; more labels than that use husl (evenly spaced hues)
DPI = 200  # `save` writes every figure at this resolution

# Axis names for the columns the diagnostics produce; other columns are shown by their own name.
AXIS_NAMES = {
    "step": "training step", "dlen": "len_n − len_p (tokens)",
    "dlen_rel": "(len_n − len_p) / (len_n + len_p)",
    "gap_value": "gap, rejected − chosen (nats)", "gap": "gap = loss_n − loss_p (nats)",
    "loss_p": "loss_p, chosen (nats/token)", "loss_n": "loss_n, rejected (nats/token)",
    "grad_cos": "cosine to the other pairs' mean gradient", "grad_norm": "per-pair gradient norm",
    "gns": "gradient noise scale tr(Σ)/|G|²", "factor": "rejected lengthened ×",
    "label": "objective", "lr": "learning rate", "family": "family",
    "share_below_start": "share of pairs whose chosen\nlog-prob fell below its start",
    "share_below_ref": "share of pairs whose chosen\nlog-prob is below the reference's",
    "edit_bin": "edit distance, chosen ↔ rejected (0 = identical, 1 = nothing shared)",
    "d_neutral": "Δ NLL of neutral text (nats/token):\ncapability cost",
    "margin_gain": "held-out margin gain (nats/token):\npreference progress",
    "d_chosen": "Δ held-out chosen loss (nats/token)",
    "d_rejected": "Δ held-out rejected loss (nats/token)",
    "level": "held-out margin gain reached (nats/token)",
    "ppl_ratio": "held-out perplexity, end ÷ before training",
    "onset_share": "share of seeds with a collapse onset",
    "diverged_share": "share of seeds that diverged",
    "displacement": "share of pairs whose chosen log-prob fell below its start",
}
QUANTITY_NAMES = {"loss_p": "chosen loss (loss_p)", "loss_n": "rejected loss (loss_n)",
                  "gap": "gap (loss_n − loss_p)"}
QUANTITY_DASHES = {"loss_p": "", "loss_n": (4, 2), "gap": (1, 1.5)}

# One hue of BASE_PALETTE per family (its index there): four that stay apart under the common
# colour-vision deficiencies. A family's labels are shades of its hue, at evenly spaced positions
# of FAMILY_SHADES along black (0) → the hue (0.5) → white (1): dark enough to read on white.
FAMILY_HUES = {"likelihood": 3, "length-normalised": 4, "reference-based": 0, "anchored": 2}
FAMILY_SHADES = (0.3, 0.68)

_study_palette: dict[str, tuple] | None = None  # pinned by set_style(labels=...)


def _theme_rc() -> dict:
    rc = {**sns.axes_style(THEME["style"]),
          **sns.plotting_context(THEME["context"], font_scale=THEME["font_scale"]), **THEME["rc"]}
    rc["axes.prop_cycle"] = mpl.cycler(color=sns.color_palette(BASE_PALETTE))
    return rc


@contextlib.contextmanager
def _themed():
    """Draw inside THEME without touching the caller's global matplotlib state.

    Only the theme's own keys are restored afterwards: `mpl.rc_context` restores every key, so
    a backend first loaded inside it (Jupyter's inline backend on a session's first figure) had
    its `interactive` setting undone and later figures stopped showing.
    """
    rc = _theme_rc()
    saved = {key: mpl.rcParams[key] for key in rc}
    try:
        mpl.rcParams.update(rc)
        yield
    finally:
        mpl.rcParams.update(saved)


def set_style(labels: Iterable[str] | None = None,
              families: Mapping[str, str] | None = None) -> None:
    """Apply THEME globally (for notebooks); with `labels`, pin the study's label → colour map.

    Pinning matters when a figure shows a subset of the study's labels: without it the subset is
    coloured by its own sorted order and "dpo" could change colour between figures.
    families: label → family (`objectives.family_of`) of every label of the study; the pinned map
    is then `family_palette(families)` (each label of `labels` must have a family).
    """
    global _study_palette
    sns.set_theme(context=THEME["context"], style=THEME["style"], palette=BASE_PALETTE,
                  font_scale=THEME["font_scale"], rc=THEME["rc"])
    if families is not None:
        missing = [str(lab) for lab in labels or () if str(lab) not in families]
        if missing:
            raise ValueError(f"set_style: no family for {missing}")
        _study_palette = family_palette(families)
    elif labels is not None:
        _study_palette = label_palette(labels)


@contextlib.contextmanager
def study_palette(labels: Iterable[str], families: Mapping[str, str] | None = None):
    """Pin the study's label → colour map (as `set_style` does) for the figures drawn inside,
    and restore whatever was pinned before: a report leaves a notebook's colours as they were."""
    global _study_palette
    before = _study_palette
    try:
        if families is not None:
            missing = [str(lab) for lab in labels if str(lab) not in families]
            if missing:
                raise ValueError(f"study_palette: no family for {missing}")
            _study_palette = family_palette(families)
        else:
            _study_palette = label_palette(labels)
        yield _study_palette
    finally:
        _study_palette = before


def label_palette(labels: Iterable[str]) -> dict[str, tuple]:
    """Label → RGB colour, assigned in sorted label order (the same labels, the same colours)."""
    names = sorted({str(label) for label in labels})
    n_base = len(sns.color_palette(BASE_PALETTE))
    colours = (sns.color_palette(BASE_PALETTE, len(names)) if len(names) <= n_base
               else sns.color_palette("husl", len(names)))
    return dict(zip(names, colours))


def _families() -> tuple[str, ...]:
    from .objectives import FAMILIES  # imported here: objectives needs torch, figures do not

    return FAMILIES


def _checked_families(labels: Mapping[str, str]) -> dict[str, str]:
    """label → family as text, every family one of `objectives.FAMILIES` (ValueError if not)."""
    families = _families()
    unknown = sorted({str(f) for f in labels.values() if f not in families})
    if unknown:
        raise ValueError(f"unknown family {unknown}; allowed: {', '.join(families)}")
    return {str(label): family for label, family in labels.items()}


def _shade(colour: Sequence[float], position: float) -> tuple:
    """`colour` moved to `position` along black (0) → `colour` (0.5) → white (1)."""
    rgb = np.asarray(colour, dtype=float)[:3]
    target, weight = ((np.zeros(3), 1 - 2 * position) if position < 0.5
                      else (np.ones(3), 2 * position - 1))
    return tuple(float(v) for v in rgb + weight * (target - rgb))


def family_palette(labels: Mapping[str, str]) -> dict[str, tuple]:
    """Label → RGB colour from label → family: the family's hue (FAMILY_HUES), one shade each.

    A family's labels, in sorted order, take evenly spaced shades of FAMILY_SHADES, darkest
    first; a family's only label takes the hue itself. The colours depend on the labels and
    their families alone, so the same study gives the same colours in every figure. Keys come
    family by family, in `objectives.FAMILIES` order.
    """
    labels = _checked_families(labels)
    base = sns.color_palette(BASE_PALETTE)
    palette = {}
    for family in _families():
        names = sorted(label for label, f in labels.items() if f == family)
        shades = [0.5] if len(names) == 1 else np.linspace(*FAMILY_SHADES, len(names))
        hue = base[FAMILY_HUES[family]]
        palette.update({name: _shade(hue, s) for name, s in zip(names, shades)})
    return palette


def family_order(labels: Mapping[str, str]) -> list[str]:
    """The labels of label → family, family by family (`objectives.FAMILIES` order), each family
    in the mapping's own order: how figures and tables list a study's labels."""
    labels = _checked_families(labels)
    rank = {family: i for i, family in enumerate(_families())}
    return sorted(labels, key=lambda label: rank[labels[label]])


def _colours(order: Sequence, palette: Mapping | None = None, *, labels: bool = True) -> dict:
    """A colour for each value of `order`, keyed by the values themselves.

    `palette` if given; else, for labels, the pinned study palette if it covers them, or
    `label_palette(order)`; for anything else (labels=False), the base palette in `order`.
    """
    if palette is None and not labels:
        return dict(zip(order, sns.color_palette(BASE_PALETTE, len(order))))
    if palette is None:
        pinned = _study_palette is not None and all(str(v) in _study_palette for v in order)
        palette = _study_palette if pinned else label_palette(order)
    colours, missing = {}, []
    for value in order:
        if value in palette or str(value) in palette:
            colours[value] = palette[value] if value in palette else palette[str(value)]
        else:
            missing.append(value)
    if missing:
        raise ValueError(f"palette has no colour for {missing}")
    return colours


_INTERVAL = re.compile(r"^[\[(]\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*[\])]$")


def _interval_key(value) -> tuple[float, float] | None:
    """(lo, hi) of an interval written as text, "[0, 0.1]" or "(0.1, 0.3]"; None otherwise."""
    match = _INTERVAL.match(str(value))
    try:
        return (float(match[1]), float(match[2])) if match else None
    except ValueError:
        return None


def _order(values: Iterable, order: Sequence | None = None) -> list:
    """`order` if given; else a categorical's own category order (e.g. `pd.cut` bins), else the
    distinct values sorted: intervals written as text ("[0, 0.1]", "(0.1, 0.3]") by their bounds,
    anything else as itself (labels alphabetically, so panels come in the palette's order)."""
    if order is not None:
        return list(order)
    values = values if isinstance(values, pd.Series) else pd.Series(list(values))
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.dropna())
        return [c for c in values.cat.categories if c in present]
    distinct = pd.unique(values.dropna()).tolist()
    keys = [_interval_key(v) for v in distinct]
    if distinct and all(k is not None for k in keys):
        return [v for _, v in sorted(zip(keys, distinct))]
    try:
        return sorted(distinct)
    except TypeError:  # mixed types
        return sorted(distinct, key=str)


def _axis_name(column: str) -> str:
    return AXIS_NAMES.get(column, column)


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
        ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())


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

    Which runs diverged is `diagnostics.run_table`'s verdict, from the records' status and
    diverged_step (`records.load_run` adds them), else from `onset` (`collapse` output).
    """
    cols = ["run_id"] + ([hue] if hue else [])
    runs = data.groupby(cols, dropna=False)[x].max().rename("last").reset_index()
    source = data if {"status", "diverged_step"} & set(data.columns) else onset
    if source is None or "run_id" not in source.columns:
        return runs.iloc[:0]
    diverged = dg.run_table(source).set_index("run_id").diverged
    return runs[runs.run_id.map(diverged).fillna(False).astype(bool)].reset_index(drop=True)


def _lineplot(ax: Axes, long: pd.DataFrame, *, x: str, errorbar, groups: Sequence[str],
              band_colour: Callable[[dict], object], **line_kwargs) -> None:
    """seaborn's lineplot of long.value against `x`, one line per group of `groups`.

    errorbar "seed": the band is `diagnostics.seed_intervals`' 95% t-interval across runs,
    computed for every group and x at once (seaborn would call a function per point: minutes
    for runs of thousands of steps); no band where a point has one run. Anything else goes to
    seaborn's lineplot as its errorbar.
    """
    if errorbar != "seed":
        sns.lineplot(data=long, x=x, y="value", errorbar=errorbar, ax=ax, legend=False,
                     **line_kwargs)
        return
    groups = list(groups)
    bands = dg.seed_intervals(long.dropna(subset=["value"]), [*groups, x], "value")
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
    if effect is None:
        effect = dg.length_effect(frame, x=x, y=y, by=(panel,), n_boot=0)
    elif col is None:
        effect = effect.assign(**{panel: ""})
    effect_by_panel = {row[panel]: row for _, row in effect.iterrows()}

    shown = frame
    if max_points is not None:
        shown = pd.concat([d.sample(min(len(d), max_points), random_state=seed)
                           for _, d in frame.groupby(panel, sort=False)])
    hue_kws = {}
    if hue is not None:
        hue_order = _order(frame[hue], hue_order)
        hue_kws = {"hue": hue, "hue_order": hue_order,
                   "palette": _colours(hue_order, palette, labels=hue == "label")}
    with _themed():
        grid = sns.FacetGrid(shown, col=panel, col_order=_order(frame[panel], col_order),
                             sharex=True, sharey=False, height=height, aspect=aspect,
                             despine=False)
        for name, ax in grid.axes_dict.items():
            sns.scatterplot(data=shown[shown[panel] == name], x=x, y=y, ax=ax, legend=False,
                            **{"s": 10, "alpha": 0.35, "linewidth": 0, "color": "0.35",
                               **hue_kws, **(scatter_kws or {})})
            row = effect_by_panel.get(name)
            if row is not None and np.isfinite(row["slope"]):
                full = frame.loc[frame[panel] == name, x].astype(float)
                xs = np.array([full.min(), full.max()])
                ax.plot(xs, row["intercept"] + row["slope"] * xs,
                        **{"color": "black", "linewidth": 1.5, **(line_kws or {})})
            ax.set_title(_effect_title(name if col is not None else "", row))
            ax.set_xlabel(_axis_name(x))
            ax.set_ylabel(_axis_name(y))
        grid.tight_layout()  # room for the two-line titles, before the legend claims its own
        if hue is not None:
            grid.add_legend(legend_data={str(k): Line2D([], [], marker="o", linestyle="",
                                                        color=hue_kws["palette"][k])
                                         for k in hue_kws["hue_order"]}, title=hue)
    grid.effect = effect.drop(columns="_panel", errors="ignore")
    return grid


def _effect_title(name, row) -> str:
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
    across runs and the band is `errorbar` across runs: "seed" = `diagnostics.seed_interval`'s
    95% t-interval (no band with one seed), or anything seaborn's lineplot takes (None for no
    band). `row` (e.g. "label") splits further into rows, in `row_order` (default: sorted).

    onset: the output of `diagnostics.collapse` (run_id, `hue`, onset_step): each label's median
    onset across its seeds is a dashed vertical line, the range of its seeds' onsets a shaded band.
    A diverged run's line ends at its last recorded step, marked "x". yscale: "auto" makes a
    panel's y axis logarithmic where one label's loss runs 10× past another's (a collapsing
    label would otherwise flatten every other line), else linear; or any matplotlib scale.
    Returns the FacetGrid (columns in the order of `quantities`).
    """
    require_columns(data, [x, hue, row, "run_id", "seed", *quantities], "loss_trajectories",
                    nonempty=True)
    keys = [k for k in (hue, row) if k is not None]
    long = _run_step_means(data, x=x, values=quantities, keys=keys)
    hue_order = _order(data[hue], hue_order)
    colours = _colours(hue_order, palette, labels=hue == "label")
    diverged = _diverged_runs(data, x=x, hue=hue, onset=onset)
    row_order = _order(data[row], row_order) if row else None

    with _themed():
        grid = sns.FacetGrid(long, col="quantity", col_order=list(quantities), row=row,
                             row_order=row_order, sharex=True, sharey=sharey, height=height,
                             aspect=aspect, despine=False)
        for key, ax in grid.axes_dict.items():
            quantity, row_value = (key[1], key[0]) if row else (key, None)
            sub = long[long.quantity == quantity]
            if row:
                sub = sub[sub[row] == row_value]
            _lineplot(ax, sub, x=x, errorbar=errorbar, groups=[hue],
                      band_colour=lambda key: colours[key[hue]], hue=hue, hue_order=hue_order,
                      palette=colours)
            _mark_onsets(ax, onset, hue=hue, colours=colours,
                         present=sub[hue].unique() if len(sub) else [])
            _mark_diverged(ax, sub, diverged, x=x, hue=hue, colours=colours)
            _scale_y(ax, sub.groupby([hue, x], observed=True).value.mean(), yscale)
            title = QUANTITY_NAMES.get(quantity, quantity)
            ax.set_title(f"{row_value} · {title}" if row else title)
            ax.set_xlabel(_axis_name(x))
            ax.set_ylabel(_quantity_axis([quantity]))
        legend = {str(k): Line2D([], [], color=colours[k]) for k in hue_order}
        if len(diverged):
            legend["diverged"] = Line2D([], [], color="0.2", marker="x", linestyle="")
        if onset is not None:
            legend["collapse onset"] = Line2D([], [], color="0.2", linestyle="--")
        grid.add_legend(legend_data=legend, title=_axis_name(hue))
    return grid


def _quantity_axis(quantities: Sequence[str]) -> str:
    """The y axis name of panels drawing `quantities` (records' token-mean losses and gaps)."""
    if all(q in ("loss_p", "loss_n") for q in quantities):
        return "loss (nats per token)"
    if all(q in QUANTITY_NAMES for q in quantities):
        return "nats per token"
    return ", ".join(_axis_name(q) for q in quantities)


def _mark_onsets(ax: Axes, onset: pd.DataFrame | None, *, hue: str, colours: Mapping,
                 present: Iterable) -> None:
    if onset is None:
        return
    require_columns(onset, ["onset_step", hue], "loss_trajectories(onset=)", nonempty=True)
    present = set(present)
    for value, runs in onset.groupby(hue, sort=True):
        steps = runs.onset_step.astype(float).dropna()
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
    order = _order(data[col], col_order)
    colours = _colours(order, palette, labels=col == "label")
    diverged = _diverged_runs(data, x=x, hue=col)
    n_seeds = data.groupby(col)["run_id"].nunique()
    wrap = col_wrap if col_wrap and len(order) > col_wrap else None

    with _themed():
        grid = sns.FacetGrid(long, col=col, col_order=order, col_wrap=wrap, sharex=True,
                             sharey=False, height=height, aspect=aspect, despine=False)
        for name, ax in grid.axes_dict.items():
            sub = long[long[col] == name]
            colour = colours[name]
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
        grid.set_axis_labels(_axis_name(x), _quantity_axis(quantities))
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

    data: one row per label, e.g. from `diagnostics.gradient_noise` or
    `diagnostics.summary_table` (any metric of either works, e.g. x="gns", "ppl_ratio"), or one
    row per factor of `diagnostics.dose_response` (y="factor"). The `y` values are on the y axis
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
    order = _order(data[y], order)
    colours = _colours(order, palette, labels=y == "label")
    rows = data.set_index(y).reindex(order)
    values = rows[x].astype(float).to_numpy()
    lo = rows.get(f"{x}_lo", pd.Series(np.nan, index=rows.index)).astype(float).to_numpy()
    hi = rows.get(f"{x}_hi", pd.Series(np.nan, index=rows.index)).astype(float).to_numpy()
    positions = np.arange(len(order))

    with _themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 0.45 * len(order) + 1.2))
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
        ax.set_xlabel(_axis_name(x))
        ax.set_ylabel("")
    return ax


def noise_comparison(data: pd.DataFrame, *, metric: str = "grad_cos", **kwargs) -> Axes:
    """The former name of `interval_plot` (its `metric` is interval_plot's `x`)."""
    return interval_plot(data, x=metric, **kwargs)


def displacement_bars(data: pd.DataFrame, *, y: str = "share_below_start",
                      x: str | None = "edit_bin", hue: str = "label",
                      order: Sequence | None = None, hue_order: Sequence | None = None,
                      palette: Mapping | None = None, ax: Axes | None = None, **kwargs) -> Axes:
    """Grouped bars of a share (0–1) per `hue` (label) within each `x` group (edit-distance bin).

    data: `diagnostics.displacement` output: one row per (label, edit_bin) when it was given
    `pairs`, else one per label (x="edit_bin" then falls back to one bar per label, as x=None
    does). y: "share_below_start" (chosen log-prob fell) or "share_below_ref" (below the
    reference). Bars are the table's values; `<y>_lo` / `<y>_hi`, where present, are drawn as
    intervals. Bins keep the table's categorical order. A dotted line at 0.5 marks half the pairs.
    Returns the Axes.
    """
    if x == "edit_bin" and isinstance(data, pd.DataFrame) and x not in data.columns:
        x = None
    require_columns(data, [y, x, hue], "displacement_bars", nonempty=True)
    keys = [k for k in (x, hue) if k is not None]
    if data.duplicated(keys).any():
        raise ValueError(f"displacement_bars: several rows per {keys}; pass one row each")
    hue_order = _order(data[hue], hue_order)
    colours = _colours(hue_order, palette, labels=hue == "label")
    groups = _order(data[x], order) if x is not None else [None]
    width = 0.8 / len(hue_order)

    with _themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(1.0 + 0.35 * len(groups) * len(hue_order), 3.0))
        for j, name in enumerate(hue_order):
            sel = data[data[hue] == name]
            if x is not None:
                sel = sel.set_index(x).reindex(groups)
            heights = sel[y].astype(float).to_numpy()
            if x is None and not len(heights):
                heights = np.array([np.nan])
            pos = np.arange(len(groups)) + (j - (len(hue_order) - 1) / 2) * width
            ax.bar(pos, heights, width=width, color=colours[name], label=str(name),
                   **kwargs)
            if f"{y}_lo" in sel.columns and f"{y}_hi" in sel.columns:
                lo = sel[f"{y}_lo"].astype(float).to_numpy()
                hi = sel[f"{y}_hi"].astype(float).to_numpy()
                ok = np.isfinite(lo) & np.isfinite(hi)
                if ok.any():
                    ax.vlines(pos[ok], lo[ok], hi[ok], color="0.15", linewidth=1.2)
        ax.axhline(0.5, color="0.4", linewidth=0.8, linestyle=":", zorder=0)
        ax.set_ylim(0, 1)
        if x is not None:
            ax.set_xticks(np.arange(len(groups)), [str(g) for g in groups])
            ax.set_xlabel(_axis_name(x))
        else:
            ax.set_xticks([])
        ax.set_ylabel(_axis_name(y))
        ax.legend(title=_axis_name(hue), loc="upper left", bbox_to_anchor=(1.0, 1.0))
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
             ax: Axes | None = None) -> Axes | sns.FacetGrid:
    """Each run's path of preference progress (`y`) against capability cost (`x`), as the DPO
    paper draws reward against KL.

    data: `progress.progress_paths` output with a `style` column added (e.g. lr, from the runs'
    configs): one row per (`units` = run, evaluation step). Each run is a line from the origin,
    the starting model (prepended; step 0 rows, if any, are left out), through its evaluations
    in step order, in its `hue` colour (the pinned study palette when it covers the labels), with
    a marker per `style` value (PATH_MARKERS) at each evaluation. Thin lines mark x = 0 and y = 0.
    xscale: "symlog" (linear within ±`linthresh`, logarithmic beyond) keeps a run-away cost
    (negative_only reaches 100× the others) from squeezing every other path against x = 0; or
    "linear". yscale: "linear", or "symlog" (linear within ±`ylinthresh`) where one objective's
    progress runs far past the rest. col (e.g. "family"): one panel per value, sharing both
    axes. The legend sits right
    of the data. Each path's Line2D has its run as gid. Returns the Axes, or the FacetGrid with col.
    """
    require_columns(data, [x, y, hue, style, units, col, "step"], "frontier", nonempty=True)
    if col is not None and ax is not None:
        raise ValueError("frontier: pass ax= or col=, not both (col makes its own grid)")
    hue_order = _order(data[hue], hue_order)
    kws = {"x": x, "y": y, "hue": hue, "style": style, "units": units,
           "colours": _colours(hue_order, palette, labels=hue == "label"),
           "markers": _markers(data, style, style_order), "xscale": xscale,
           "linthresh": linthresh, "xticks": _symlog_ticks(data[x], linthresh)}
    legend = _path_legend(hue, hue_order, kws["colours"], style, kws["markers"])
    with _themed():
        if col is None:
            if ax is None:
                _, ax = plt.subplots(figsize=(height * aspect, height))
            _draw_paths(ax, data, **kws)
            _path_scale_y(ax, data[y], yscale, ylinthresh)
            ax.set_xlabel(_axis_name(x))
            ax.set_ylabel(_axis_name(y))
            ax.legend(legend.values(), legend.keys(), loc="upper left",
                      bbox_to_anchor=(1.02, 1.0))
            return ax
        order = _order(data[col], col_order)
        wrap = col_wrap if col_wrap and len(order) > col_wrap else None
        grid = sns.FacetGrid(data, col=col, col_order=order, col_wrap=wrap, sharex=True,
                             sharey=True, height=height, aspect=aspect, despine=False)
        for name, panel in grid.axes_dict.items():
            _draw_paths(panel, data[data[col] == name], **kws)
            _path_scale_y(panel, data[y], yscale, ylinthresh)
            panel.set_title(str(name))
        grid.set_axis_labels(_axis_name(x), _axis_name(y))
        grid.add_legend(legend_data=legend)
    return grid


def _markers(data: pd.DataFrame, style: str | None, order: Sequence | None) -> dict:
    if style is None:
        return {}
    order = _order(data[style], order)
    if len(order) > len(PATH_MARKERS):
        raise ValueError(f"frontier: {len(order)} values of {style!r}; at most "
                         f"{len(PATH_MARKERS)} can have a marker each")
    return dict(zip(order, PATH_MARKERS))


def _path_scale_y(ax: Axes, values: pd.Series, yscale: str, linthresh: float) -> None:
    if yscale == "symlog":
        ax.set_yscale("symlog", linthresh=linthresh)
        ticks = sorted({*_symlog_ticks(values, linthresh), linthresh, -linthresh})
        ax.yaxis.set_major_locator(mpl.ticker.FixedLocator(ticks))
        ax.yaxis.set_minor_locator(mpl.ticker.NullLocator())
        ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_yscale(yscale)


def _symlog_ticks(values: pd.Series, linthresh: float) -> list[float]:
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
                linthresh: float, xticks: Sequence[float]) -> None:
    """One line per run: the origin, then its evaluations (step > 0) in step order."""
    ax.axvline(0, color="0.45", linewidth=0.7, zorder=0)
    ax.axhline(0, color="0.45", linewidth=0.7, zorder=0)
    for run_id, run in data[data.step > 0].groupby(units, sort=True):
        run = run.sort_values("step")
        xs = np.r_[0.0, run[x].to_numpy(float)]
        ys = np.r_[0.0, run[y].to_numpy(float)]
        marker = markers.get(run[style].iloc[0], "o") if style else "o"
        ax.plot(xs, ys, color=colours[run[hue].iloc[0]], marker=marker, markersize=4.5,
                markevery=list(range(1, len(xs))), linewidth=1.1, alpha=0.85,
                gid=str(run_id))
    ax.plot([0], [0], marker="o", color="black", markersize=4, linestyle="", zorder=5)
    if xscale == "symlog":
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.xaxis.set_major_locator(mpl.ticker.FixedLocator(xticks))
        ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
        ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_xscale(xscale)


def _path_legend(hue: str, hue_order: Sequence, colours: Mapping, style: str | None,
                 markers: Mapping) -> dict:
    """Legend entries of `frontier`: a heading, then one entry per hue value and style value."""
    blank = Line2D([], [], linestyle="", marker="")
    legend = {_axis_name(hue): blank}
    legend.update({str(k): Line2D([], [], color=colours[k]) for k in hue_order})
    if style is not None:
        legend[_axis_name(style)] = blank
        legend.update({f"{k:g}" if isinstance(k, float) else str(k):
                       Line2D([], [], color="0.3", marker=m, linestyle="")
                       for k, m in markers.items()})
    legend["starting model"] = Line2D([], [], color="black", marker="o", linestyle="")
    return legend


def matched_plot(data: pd.DataFrame, *, x: str = "level", y: str = "d_chosen",
                 hue: str = "label", order: Sequence | None = None,
                 hue_order: Sequence | None = None, palette: Mapping | None = None,
                 refline: float | None = 0.0, ax: Axes | None = None) -> Axes:
    """`y` with its interval per `hue` value at each matched progress level `x`.

    data: `progress.matched_progress` output (label, level, n_runs, n_pairs, `<y>`, `<y>_lo`,
    `<y>_hi`). At each level (in `order`, else sorted, evenly spaced), one point per label,
    dodged, with its interval as a vertical bar, and a thin line joining a label's levels. A
    level a label never reached (NaN) has no point; a label that reached none keeps its place
    and says so in the legend. `refline`: a dotted horizontal line (0: no change since the
    starting model). The legend sits right of the data. Returns the Axes.
    """
    require_columns(data, [x, y, hue], "matched_plot", nonempty=True)
    if data.duplicated([x, hue]).any():
        raise ValueError(f"matched_plot: several rows per ({x}, {hue}); pass one row each")
    order = _order(data[x], order)
    hue_order = _order(data[hue], hue_order)
    colours = _colours(hue_order, palette, labels=hue == "label")
    step = 0.7 / len(hue_order)
    with _themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(min(1.6 + 0.2 * len(order) * len(hue_order), 11), 3.2))
        for j, name in enumerate(hue_order):
            rows = data[data[hue] == name].set_index(x).reindex(order)
            pos = np.arange(len(order)) + (j - (len(hue_order) - 1) / 2) * step
            values = rows[y].to_numpy(float)
            reached = np.isfinite(values).any()
            ax.plot(pos, values, marker="o", markersize=5, linewidth=0.7, color=colours[name],
                    label=str(name) if reached else f"{name} (no level reached)")
            if f"{y}_lo" in rows.columns and f"{y}_hi" in rows.columns:
                lo, hi = rows[f"{y}_lo"].to_numpy(float), rows[f"{y}_hi"].to_numpy(float)
                ok = np.isfinite(lo) & np.isfinite(hi)
                ax.vlines(pos[ok], lo[ok], hi[ok], color=colours[name], linewidth=1.8)
        if refline is not None:
            ax.axhline(refline, color="0.4", linewidth=0.8, linestyle=":", zorder=0)
        ax.set_xticks(np.arange(len(order)),
                      [f"{v:g}" if isinstance(v, float) else str(v) for v in order])
        ax.set_xlabel(_axis_name(x))
        ax.set_ylabel(_axis_name(y))
        ax.legend(title=_axis_name(hue), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


# ---------------------------------------------------------------------------------------------
# Files


def _figure(obj) -> Figure:
    if isinstance(obj, Figure):
        return obj
    figure = getattr(obj, "figure", None)  # FacetGrid, Axes
    if isinstance(figure, Figure):
        return figure
    raise TypeError(f"save: expected a Figure, Axes or seaborn grid, got {type(obj).__name__}")


# Metadata keys that carry the matplotlib version or the date, per format; None drops them.
_NO_PROVENANCE = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


def save(fig_or_grid, path: str | os.PathLike, *, dpi: int = DPI) -> Path:
    """Write a Figure / Axes / FacetGrid to `path` (PNG, PDF or SVG by suffix) at `dpi`.

    The bytes do not depend on the matplotlib version or the time: version and date metadata are
    dropped (PNG "Software"; PDF Creator/Producer/CreationDate; SVG Creator/Date, with a fixed
    hash salt for SVG ids). The folder is created. Returns the path.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in _NO_PROVENANCE:
        raise ValueError(f"save: {path.name!r}: format {fmt!r}; allowed: {sorted(_NO_PROVENANCE)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with mpl.rc_context({"svg.hashsalt": "prefstudy"}):
        _figure(fig_or_grid).savefig(path, format=fmt, dpi=dpi, bbox_inches="tight",
                                     metadata=_NO_PROVENANCE[fmt])
    return path


# === Audit: a dataset scored at the starting model (prefstudy.audit) ==========================
# The audit's tables come from `diagnostics` (preference_accuracy, dose_gaps, dose_by_factor,
# dose_slope_summary, the gradient audit's per-pair rows); these functions only draw them.

AXIS_NAMES.update({
    "accuracy": "share of pairs whose gap favours chosen", "length_kind": "",
    "token_ratio": "rejected tokens ÷ original (achieved)", "edit_distance": "edit distance, chosen ↔ rejected",
    "tokens": "len_p + len_n (response tokens)", "grad_cos_loo": "leave-one-out cosine",
    "entanglement": "chosen ↔ rejected gradient entanglement", "ches": "CHES score",
    "grad_cos_orthogonal": "orthogonal baseline",
})


def accuracy_plot(data: pd.DataFrame, *, x: str = "accuracy", y: str = "length_kind",
                  hue: str = "normalisation", order: Sequence | None = None,
                  hue_order: Sequence | None = None, palette: Mapping | None = None,
                  refline: float | None = 0.5, ax: Axes | None = None) -> Axes:
    """A share with its interval per `y` value, one dodged point per `hue` value.

    data: `diagnostics.preference_accuracy` output (one row per hue × y; `<x>_lo`, `<x>_hi`
    drawn as the interval, and "k of n" written beside it when the table has k and n).
    `refline` draws a vertical line (0.5: a coin's accuracy). Returns the Axes.
    """
    require_columns(data, [x, y, hue], "accuracy_plot", nonempty=True)
    order = _order(data[y], order)
    hue_order = _order(data[hue], hue_order)
    colours = _colours(hue_order, palette, labels=hue == "label")
    step = 0.7 / max(len(hue_order), 1)
    with _themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 0.55 * len(order) * len(hue_order) + 1.0))
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
        ax.set_xlabel(_axis_name(x))
        ax.set_ylabel(_axis_name(y))
        ax.legend(title=hue, loc="upper left", bbox_to_anchor=(1.12, 1.0))
    return ax


def dose_plot(data: pd.DataFrame, *, x: str = "token_ratio", y: str = "gap_value",
              units: str = "variant_of", col: str = "normalisation",
              summary: pd.DataFrame | None = None, slopes: pd.DataFrame | None = None,
              col_order: Sequence | None = None, max_units: int | None = 150, seed: int = 0,
              height: float = 2.8, aspect: float = 1.5) -> sns.FacetGrid:
    """Each pair's gap across its length-controlled variants, on a log2 axis of the achieved
    ratio, one panel per `col`.

    data: `diagnostics.dose_gaps` output (one row per variant and normalisation). One thin line
    per `units` value (at most `max_units` of them, a sample seeded by `seed`; None = all).
    summary: `diagnostics.dose_by_factor` output, drawn as each factor's mean gap (with its
    interval) at its mean achieved ratio. slopes: `diagnostics.dose_slope_summary` output, whose
    mean per-pair slope and interval title each panel. The y axes are not shared.
    Returns the FacetGrid.
    """
    require_columns(data, [x, y, units, col], "dose_plot", nonempty=True)
    shown_units = pd.Series(data[units].unique())
    if max_units is not None and len(shown_units) > max_units:
        shown_units = shown_units.sample(max_units, random_state=seed)
    shown = data[data[units].isin(set(shown_units))]
    slope_of = {} if slopes is None else {r[col]: r for _, r in slopes.iterrows()}
    with _themed():
        grid = sns.FacetGrid(shown, col=col, col_order=_order(data[col], col_order),
                             sharex=True, sharey=False, height=height, aspect=aspect,
                             despine=False)
        for name, ax in grid.axes_dict.items():
            panel = shown[shown[col] == name].sort_values(x)
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
            ax.set_xlabel(_axis_name(x))
            ax.set_ylabel(_axis_name(y))
        grid.tight_layout()
    return grid


def distribution_plot(data: pd.DataFrame, *, x: str, y: str = "objective",
                      order: Sequence | None = None, baseline: str | None = None,
                      refline: float | None = None, palette: Mapping | None = None,
                      ax: Axes | None = None) -> Axes:
    """The distribution of `x` per `y` value: a box and every row as a point.

    data: one row per unit (e.g. the gradient audit: one per objective × pair). baseline: a
    column drawn beside each row's point as a red tick (e.g. grad_cos_orthogonal, what
    orthogonal gradients of equal norm would give). `refline`: a vertical line. Returns the Axes.
    """
    require_columns(data, [x, y, baseline], "distribution_plot", nonempty=True)
    order = [str(v) for v in _order(data[y], order)]
    frame = data.assign(**{y: data[y].astype(str)})
    colours = _colours(order, palette, labels=y == "label")
    with _themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(5.0, 0.55 * len(order) + 1.2))
        sns.boxplot(data=frame, x=x, y=y, order=order, hue=y, hue_order=order, palette=colours,
                    fliersize=0, width=0.55, linewidth=0.8, ax=ax, legend=False,
                    boxprops={"alpha": 0.35})
        sns.stripplot(data=frame, x=x, y=y, order=order, hue=y, hue_order=order,
                      palette=colours, size=2.5, alpha=0.6, jitter=0.2, ax=ax, legend=False)
        if baseline is not None:
            base = frame.dropna(subset=[baseline])
            ax.plot(base[baseline], base[y].map({v: i for i, v in enumerate(order)}),
                    marker="|", markersize=14, linestyle="", color="tab:red",
                    label=_axis_name(baseline))
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        if refline is not None:
            ax.axvline(refline, color="0.4", linewidth=0.8, zorder=0)
        ax.set_xlabel(_axis_name(x))
        ax.set_ylabel("")
    return ax


def histogram_plot(data: pd.DataFrame, *, x: str = "edit_distance", hue: str | None = None,
                   hue_order: Sequence | None = None, palette: Mapping | None = None,
                   bins: int | Sequence[float] = 20, binrange: tuple[float, float] | None = None,
                   ax: Axes | None = None) -> Axes:
    """How many rows fall in each bin of `x` (stacked by `hue`): seaborn's histplot in the
    prefstudy look. Returns the Axes."""
    require_columns(data, [x, hue], "histogram_plot", nonempty=True)
    kws = {}
    if hue is not None:
        hue_order = [str(v) for v in _order(data[hue], hue_order)]
        data = data.assign(**{hue: data[hue].astype(str)})
        kws = {"hue": hue, "hue_order": hue_order, "multiple": "stack",
               "palette": _colours(hue_order, palette, labels=hue == "label")}
    with _themed():
        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 2.8))
        sns.histplot(data=data, x=x, bins=bins, binrange=binrange, ax=ax, linewidth=0.3,
                     **({"color": "0.45"} if hue is None else kws))
        ax.set_xlabel(_axis_name(x))
        ax.set_ylabel("pairs")
    return ax


def distribution_panels(data: pd.DataFrame, *, columns: Sequence[str], y: str = "objective",
                        order: Sequence | None = None, palette: Mapping | None = None,
                        width: float = 4.5, symlog: Sequence[str] = ()) -> Figure:
    """`distribution_plot` of each of `columns` side by side, sharing the `y` rows (e.g. the
    gradient audit's entanglement and CHES per objective). Columns named in `symlog` get a
    symlog axis, linear within their median |value|, so a few extreme pairs do not squeeze the
    rest against 0. Returns the Figure."""
    require_columns(data, [*columns, y], "distribution_panels", nonempty=True)
    order = _order(data[y], order)
    with _themed():
        fig, axes = plt.subplots(1, len(columns), figsize=(width * len(columns),
                                                          0.55 * len(order) + 1.4),
                                 sharey=True, squeeze=False)
    for ax, column in zip(axes[0], columns):
        distribution_plot(data, x=column, y=y, order=order, palette=palette, ax=ax)
        scale = float(data[column].abs().median())
        if column in symlog and scale > 0:
            ax.set_xscale("symlog", linthresh=scale)
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
    order = _order(data[col], col_order)
    with _themed():
        grid = sns.FacetGrid(data, col=col, col_order=order, sharex=True, sharey=False,
                             height=height, aspect=aspect, despine=False,
                             col_wrap=col_wrap if len(order) > col_wrap else None)
        for name, ax in grid.axes_dict.items():
            sub = data[data[col] == name]
            ax.scatter(sub[x], sub[y], s=10, alpha=0.5, linewidth=0, color="0.35")
            row = fits.get(name)
            if row is not None and np.isfinite(row["slope"]):
                xs = np.array([sub[x].min(), sub[x].max()], dtype=float)
                ax.plot(xs, row["intercept"] + row["slope"] * xs, color="black", linewidth=1.5)
            ax.set_title(_effect_title(name, row))
            ax.set_xlabel(_axis_name(x))
            ax.set_ylabel(_axis_name(y))
        grid.tight_layout()
    return grid
