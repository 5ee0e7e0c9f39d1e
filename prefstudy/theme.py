"""The figures' look: one theme, one colour per label, one way to write a figure to a file.

`THEME` is the seaborn theme (context "paper"); every figure of `prefstudy.plots` draws inside it
(`themed`) without changing global state, and `set_style()` applies it globally for a notebook.

Colours: a label always gets the colour of its place in the *sorted* list of labels
(`label_palette`), so "dpo" is the same colour in every figure that shows the same labels;
`set_style(labels=...)` pins the study's full label list, so that figures showing a subset keep
the study's colours (`study_palette` pins it only while a report draws). Given each label's
family (`objectives.family_of`), `family_palette` colours by family instead: one hue of the
colour-blind palette per family (FAMILY_HUES), the labels of a family told apart by lightness,
darkest first in sorted label order; `set_style(labels, families=...)` pins that.
`family_order` lists labels family by family, in `objectives.FAMILIES` order (summed likelihood
losses, then token-mean ones, then reference log-ratios, then anchored ones).

Axis labels and titles are words (AXIS_NAMES, through `axis_name`), never bare column names;
`order_of` is the order an axis or legend lists values in where none is given.
`save` writes files whose bytes do not depend on the matplotlib version or the date.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

THEME = {"context": "paper", "style": "whitegrid", "font_scale": 1.0,
         "rc": {"axes.titlesize": "medium", "legend.frameon": False, "savefig.bbox": "tight"}}
BASE_PALETTE = "colorblind"  # 10 colours; more labels than that use husl (evenly spaced hues)
DPI = 200  # `save` writes every figure at this resolution

# Axis names for the columns the diagnostics and the audit produce; other columns are shown by
# their own name.
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
    "level": "held-out reward accuracy reached",
    "reward_accuracy": "held-out reward accuracy\n(implicit reward against the start)",
    "kl": "KL from the starting model\n(nats/token): cost",
    "displaced": "share of pairs displaced\n(chosen NLL rose more than neutral)",
    "ppl_ratio": "held-out perplexity, end ÷ before training",
    "onset_share": "share of seeds with a collapse onset",
    "diverged_share": "share of seeds that diverged",
    "displacement": "share of pairs whose chosen log-prob fell below its start",
    "accuracy": "share of pairs whose gap favours chosen", "length_kind": "",
    "token_ratio": "rejected tokens ÷ original (achieved)",
    "edit_distance": "normalised edit (Levenshtein) distance, chosen ↔ rejected",
    "tokens": "len_p + len_n (response tokens)", "grad_cos_loo": "leave-one-out cosine",
    "entanglement": "chosen ↔ rejected gradient entanglement", "ches": "CHES score",
    "grad_cos_orthogonal": "orthogonal baseline",
    "log_ratio_ab": "log2(len_A / len_B), response tokens (A: a fixed coin per pair)",
    "a_chosen": "share of pairs where the judge chose A",
}

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
def themed():
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


@contextlib.contextmanager
def from_defaults():
    """Draw from matplotlib's defaults whatever the caller's global state (a notebook that ran
    `set_style`, a test that changed rcParams), and restore that state afterwards: what a report
    draws must not depend on what ran before it in the same process."""
    with mpl.rc_context():
        mpl.style.use("default")
        yield


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


LR_PALETTE = "flare"  # learning rates: a sequential palette, light (smallest) to dark (largest)


def lr_palette(lrs: Iterable[float]) -> dict[float, tuple]:
    """Learning rate → colour, light to dark as the rate grows (LR_PALETTE), so that a figure
    with one panel per objective tells its learning rates apart in the same way everywhere."""
    values = sorted({float(v) for v in lrs})
    return dict(zip(values, sns.color_palette(LR_PALETTE, max(len(values), 2))[-len(values):]
                    if len(values) > 1 else sns.color_palette(LR_PALETTE, 3)[1:2]))


def family_order(labels: Mapping[str, str]) -> list[str]:
    """The labels of label → family, family by family (`objectives.FAMILIES` order), each family
    in the mapping's own order: how figures and tables list a study's labels."""
    labels = _checked_families(labels)
    rank = {family: i for i, family in enumerate(_families())}
    return sorted(labels, key=lambda label: rank[labels[label]])


def colours_of(order: Sequence, palette: Mapping | None = None, *, labels: bool = True) -> dict:
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


def order_of(values: Iterable, order: Sequence | None = None) -> list:
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


def axis_name(column: str) -> str:
    return AXIS_NAMES.get(column, column)


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
