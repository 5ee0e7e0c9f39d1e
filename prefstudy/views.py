"""What the interactive views (`prefstudy.explorer`, `prefstudy.whatif`) and the notebooks share:
figures rendered to PNG display data of an `ipywidgets.Output`, messages in its place, CSS class
names, the report's colours (`study_colours`; a study's label order and families are
`tables.Tables.order` and `.families`), and which runs are seeds of one setting (`run_settings`):
a view pools runs only where they differ in nothing but their seed, and says how many it pools.

Figures go into Output widgets as display data, so the views need no front-end build and work
wherever ipywidgets do (JupyterLab, VS Code, Notebook 7); what a view shows stays readable from
Python (`Output.outputs`).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from collections.abc import Iterable, Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd

from . import theme


def display_png(fig_or_grid, name: str, dpi: int = 80) -> dict:
    """The figure (a Figure, Axes or seaborn grid) as one display_data output (image/png), and
    the figure closed."""
    figure = getattr(fig_or_grid, "figure", fig_or_grid)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                     "text/plain": f"<{name}>"}}


def message(text: str) -> dict:
    """A line of text as one display_data output (plain and HTML, escaped), shown where a
    figure cannot be drawn."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": text, "text/html": f"<p><i>{html.escape(text)}</i></p>"}}


def show(output: widgets.Output, *items: dict) -> None:
    """Replace what `output` shows with `items` (display_png / message outputs; none: empty)."""
    output.outputs = tuple(items)


def study_colours(labels: Iterable[str], families: Mapping[str, str] | None = None) -> dict:
    """The report's colours of a study's labels: `theme.family_palette(families)` where every
    label has a family (`tables.Tables.families`), else `theme.label_palette(labels)`."""
    labels = list(labels)
    if families is not None and labels and all(lab in families for lab in labels):
        return theme.family_palette({lab: families[lab] for lab in labels})
    return theme.label_palette(labels)


def line_colours(lines: Iterable[str], palette: Mapping | None) -> dict:
    """A colour per line: `palette`'s where it has every line (lines named by their label),
    else each line's own (`theme.label_palette`)."""
    lines = list(dict.fromkeys(lines))
    if palette is not None and all(line in palette for line in lines):
        return {line: palette[line] for line in lines}
    return theme.label_palette(lines)


def lr_name(lr) -> str:
    """A learning rate as the views write it: "lr 0.001"; "lr not recorded" where it is NaN."""
    if lr is None or pd.isna(lr):
        return "lr not recorded"
    return f"lr {float(lr):g}"


# What names, places or replicates a run rather than sets it: runs that differ only in these are
# seeds of one setting (label and lr are compared as columns).
NOT_SETTINGS = frozenset({"seed", "run_id", "output", "device", "cache_frozen",
                          "checkpoint_every", "objective_given", "label", "lr"})


def _setting_items(config: Mapping | None) -> dict[str, str]:
    """What a run's configuration sets: `config.TrainConfig`'s fields less NOT_SETTINGS, an
    objective's parameters by their own name, each value as text; {} without a configuration."""
    from .config import TrainConfig  # imported here: it imports the objectives (torch)

    if not config:
        return {}
    items = {}
    for name in sorted(f.name for f in dataclasses.fields(TrainConfig)):
        value = config.get(name)
        if name in NOT_SETTINGS:
            continue
        if isinstance(value, Mapping):
            items.update({str(k): repr(v) for k, v in value.items()})
        else:
            items[name] = repr(value)
    return items


def run_settings(frame: pd.DataFrame, configs: Mapping[str, Mapping] | None = None
                 ) -> pd.DataFrame:
    """One row per run of `frame` (run_id, label, seed; lr where it has one): which runs are
    seeds of one setting.

    Two runs share a setting when they have the same label and learning rate and, where
    `configs` (run id → config.json, `tables.Tables.configs`) are given, the same configuration
    in everything but NOT_SETTINGS (a run without one is compared by label and lr alone). A run
    whose learning rate is not recorded (records read without `tables.load_tables`) shares its
    setting with no other run. Returns run_id, label, lr (NaN where not recorded), seed,
    variant ("" or what sets the run apart from others of its label and lr: "beta=0.5", or
    "run <run_id>" where no lr is recorded),
    setting (its name: "dpo · lr 0.001[ · beta=0.5]"; "dpo" where no lr is recorded), n_runs
    (runs of `frame` in it).
    """
    missing = [c for c in ("run_id", "label", "seed") if c not in frame.columns]
    if missing:
        raise ValueError(f"run_settings: no column {missing}")
    first = frame.drop_duplicates("run_id").reset_index(drop=True)
    runs = first[["run_id", "label", "seed"]].assign(
        lr=first["lr"].astype(float) if "lr" in first.columns else math.nan)
    lr_names = runs.lr.map(lr_name)
    items = {rid: _setting_items((configs or {}).get(rid)) for rid in runs.run_id}
    variants = []
    for rid, label, lr, value in zip(runs.run_id, runs.label, lr_names, runs.lr):
        alike = runs.run_id[(runs.label == label) & (lr_names == lr)]
        if pd.isna(value) and len(alike) > 1:  # no lr recorded: a setting of its own
            variants.append(f"run {rid}")
            continue
        same = [other for other in alike if items[other]]
        keys = sorted({k for other in same for k in items[other]})
        differ = [k for k in keys if len({items[other].get(k) for other in same}) > 1]
        variants.append(", ".join(f"{k}={items[rid].get(k)}" for k in differ if items[rid]))
    runs["variant"] = variants
    runs["setting"] = [" · ".join([label, *([lr] if pd.notna(value) else []),
                                       *([variant] if variant else [])])
                       for label, lr, value, variant in zip(runs.label, lr_names, runs.lr,
                                                            runs.variant)]
    runs["n_runs"] = runs.groupby("setting").run_id.transform("size")
    return runs[["run_id", "label", "lr", "seed", "variant", "setting", "n_runs"]]


def add_classes(view: widgets.DOMWidget, name: str, **parts: widgets.DOMWidget) -> None:
    """CSS classes `prefstudy-<name>` on the view and `prefstudy-<part>` on its parts, so a page
    (or a browser test) can find them."""
    view.add_class(f"prefstudy-{name}")
    for part, widget in parts.items():
        widget.add_class(f"prefstudy-{part}")


__all__ = ["NOT_SETTINGS", "add_classes", "display_png", "line_colours", "lr_name", "message",
           "run_settings", "show", "study_colours"]
