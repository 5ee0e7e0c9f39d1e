"""The explorer: choose objectives (the study's labels), seeds and a pair or a length bin; see the
pair's text, its loss_p / loss_n trajectories under each objective (`plots.loss_trajectories`)
and where it sits in the gap-versus-length cloud (`plots.gap_vs_length`).

`explore(runs)` builds the `Explorer` view over a study's tables (`prefstudy.tables`); its numbers
come from `explorer_data`, a pure function, and its figures from `draw_trajectories` and
`draw_cloud`. The view is a thin `ipywidgets.VBox`: its controls are attributes a test (or a
reader) can set, and what it shows is readable from Python (`HTML.value`, `Output.outputs`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import pandas as pd

from . import diagnostics as dg
from . import plots
from .columns import require_columns
from .diagnostics import length_bins
from .formatting import is_missing
from .records import default_runs_dir
from .tables import Runs, load_tables
from .theme import label_palette
from .views import add_classes, display_png, message, show

# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class ExplorerData:
    """What the explorer shows for one choice of objectives, seeds and pair (or length bin).

    records: the rows of the chosen objectives and seeds (one table: records or evals).
    focus:   the rows of the chosen pair, or of every pair in the chosen length bin.
    cloud:   `diagnostics.gap_normalisations(records)` at the chosen normalisation: run_id,
             label, seed, step, pair_id, normalisation, gap_value, dlen, dlen_rel, and `focus`
             (True on the rows of the chosen pair / bin).
    pair:    the chosen pair's pair_id, prompt, chosen, rejected, len_p, len_n, dlen and meta
             (lang, category, split where known); None for a length bin.
    title:   one line naming the focus, in words.
    normalisation: the gap the cloud shows.
    """

    records: pd.DataFrame
    focus: pd.DataFrame
    cloud: pd.DataFrame
    pair: dict | None
    title: str
    normalisation: str


def _choose(values: Sequence | None, present: Sequence, what: str) -> list:
    """`values` checked against `present` (all of `present` when None)."""
    if values is None:
        return list(present)
    values = [values] if isinstance(values, (str, int, np.integer)) else list(values)
    unknown = [v for v in values if v not in set(present)]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; these runs have: {list(present)}")
    if not values:
        raise ValueError(f"choose at least one of the {what}")
    return values


def explorer_data(records: pd.DataFrame, objectives: Sequence[str] | None = None,
                  seeds: Sequence[int] | None = None, pair_id: str | None = None,
                  length_bin: str | None = None, *, pairs: pd.DataFrame | None = None,
                  normalisation: str = "sum", bins: int = 5) -> ExplorerData:
    """The explorer's numbers for one choice; see `ExplorerData`.

    records: per-pair records or evals of one or more runs (with label, as `prefstudy.tables.load_tables` gives).
    objectives: labels to show (None: all); seeds: seeds to show (None: all).
    pair_id or length_bin (a label of `length_bins(records, bins)`): exactly one of them.
    pairs: the runs' per-pair facts (`prefstudy.tables.Tables.pairs`), for the chosen pair's text.
    normalisation: the gap in the cloud, one of `diagnostics.NORMALISATIONS` ("sum": summed
    cross-entropy, "mean": token-mean, "reference": DPO's log-ratio gap, where refs exist).
    """
    if (pair_id is None) == (length_bin is None):
        raise ValueError("choose a pair (pair_id) or a length bin (length_bin), not both")
    if normalisation not in dg.NORMALISATIONS:
        raise ValueError(f"normalisation={normalisation!r}; allowed: {dg.NORMALISATIONS}")
    require_columns(records, ["label", "seed", "pair_id", "len_p", "len_n", "loss_p", "loss_n"],
                    "explorer_data")
    labels = _choose(objectives, list(dict.fromkeys(records.label)), "objectives")
    seed_list = _choose(seeds, sorted(records.seed.unique()), "seeds")
    chosen = records[records.label.isin(labels) & records.seed.isin(seed_list)]
    if pair_id is not None:
        if pair_id not in set(records.pair_id):
            raise ValueError(f"pair {pair_id!r} is not in these records")
        in_focus = chosen.pair_id == pair_id
    else:
        bin_of = length_bins(records, bins)
        if length_bin not in set(bin_of.astype(str)):
            raise ValueError(f"length bin {length_bin!r}; bins: {list(bin_of.cat.categories)}")
        in_focus = chosen.pair_id.map(bin_of.astype(str)).eq(length_bin)
    focus = chosen[in_focus]
    if focus.empty:
        raise ValueError("the chosen pair does not occur under these objectives and seeds")
    gaps = dg.gap_normalisations(chosen)
    cloud = gaps[gaps.normalisation == normalisation].reset_index(drop=True)
    if pair_id is not None:
        cloud["focus"] = cloud.pair_id.eq(pair_id)
    else:
        cloud["focus"] = cloud.pair_id.isin(set(focus.pair_id))
    pair = _pair_info(records, pair_id, pairs) if pair_id is not None else None
    if pair is not None:
        title = f"pair {pair_id[:8]} · Δlen = {pair['dlen']:+d} tokens"
    else:
        title = (f"Δlen bin {length_bin} tokens · {focus.pair_id.nunique()} pairs")
    return ExplorerData(chosen.reset_index(drop=True), focus.reset_index(drop=True), cloud,
                        pair, title, normalisation)


def _pair_info(records: pd.DataFrame, pair_id: str, pairs: pd.DataFrame | None) -> dict:
    row = records[records.pair_id == pair_id].iloc[0]
    info = {"pair_id": pair_id, "len_p": int(row.len_p), "len_n": int(row.len_n),
            "dlen": int(row.len_n - row.len_p)}
    if pairs is not None and len(pairs) and (pairs.pair_id == pair_id).any():
        text = pairs[pairs.pair_id == pair_id].iloc[0]
        info.update({k: v for k, v in text.items() if k != "pair_id" and not is_missing(v)})
    return info


# ---------------------------------------------------------------------------------------------
# Figures


def _mark_points(grid) -> None:
    """Give line plots markers, so a trajectory of one or two steps is still visible."""
    for ax in grid.axes.flat:
        for line in ax.get_lines():
            if line.get_marker() in (None, "None", "", " "):
                line.set_marker("o")
                line.set_markersize(3.5)


def draw_trajectories(data: ExplorerData, *, order: Sequence[str] | None = None,
                      palette: Mapping | None = None):
    """loss_p and loss_n of the focus under each objective (`plots.loss_trajectories`): each
    run's mean over the focus pairs per step, then the mean across the chosen seeds. No band: a
    pair or a bin is a handful of points per step, and a t-interval over two seeds is all noise;
    choose one seed to see one run."""
    present = set(data.focus.label)
    hue_order = [lab for lab in (order or sorted(present)) if lab in present]
    grid = plots.loss_trajectories(data.focus, hue="label", hue_order=hue_order, palette=palette,
                                   errorbar=None, height=2.6, aspect=1.25)
    _mark_points(grid)
    grid.figure.suptitle(data.title, y=1.04, fontsize="medium")
    return grid


def draw_cloud(data: ExplorerData, *, palette: Mapping | None = None):
    """The gap-versus-length cloud of the chosen records, the focus circled
    (`plots.gap_vs_length`, one panel, its OLS line and R²)."""
    if data.cloud.empty:
        raise ValueError(f"no {data.normalisation} gap for these records (the reference gap "
                         "needs runs with a reference model, e.g. dpo)")
    grid = plots.gap_vs_length(data.cloud, col=None, hue="label", palette=palette,
                               height=3.0, aspect=1.15, scatter_kws={"s": 12, "alpha": 0.4})
    ax = grid.ax
    focus = data.cloud[data.cloud.focus]
    palette = palette or label_palette(data.cloud.label.unique())
    colours = [palette[lab] for lab in focus.label]
    ax.scatter(focus.dlen, focus.gap_value, s=70, facecolors="none", edgecolors=colours,
               linewidths=1.6, zorder=5)
    ax.set_title(f"gap ({data.normalisation}) vs length difference\n{ax.get_title().strip()}",
                 fontsize="medium")
    return grid


# ---------------------------------------------------------------------------------------------
# The view


FOCUS_KINDS = ("pair", "length bin")


class Explorer(widgets.VBox):
    """Objectives, seeds and a pair (or a length bin) in; the pair's text, its trajectories and
    its place in the gap-versus-length cloud out. Build it with `explore`.

    Controls (set them from Python as a reader would by hand): `source` (which table), `objectives`,
    `seeds`, `focus_by` ("pair" / "length bin"), `pair`, `length_bin`, `normalisation`.
    Shown: `text` (HTML: the pair's prompt and responses), `status` (HTML), `trajectories` and
    `cloud` (Outputs holding one PNG each). `data` is the last `ExplorerData` drawn.
    """

    def __init__(self, tables: Mapping[str, pd.DataFrame], pairs: pd.DataFrame | None = None, *,
                 labels: Sequence[str] | None = None, objectives: Sequence[str] | None = None,
                 bins: int = 5):
        tables = {name: df for name, df in tables.items() if df is not None and len(df)}
        if not tables:
            raise ValueError("explorer: no records to explore")
        self.tables, self.pairs, self.bins = tables, pairs, bins
        every = pd.concat([df[["label", "seed"]] for df in tables.values()])
        self.labels = list(labels) if labels else list(dict.fromkeys(every.label))
        self.palette = label_palette(self.labels)
        seeds = sorted(int(s) for s in every.seed.unique())
        first = [lab for lab in (objectives or self.labels[:3]) if lab in self.labels]

        self.source = widgets.ToggleButtons(options=list(tables), description="pairs")
        self.objectives = widgets.SelectMultiple(options=self.labels, value=first,
                                                 rows=min(len(self.labels), 7),
                                                 description="objectives")
        self.seeds = widgets.SelectMultiple(options=seeds, value=seeds, rows=min(len(seeds), 4),
                                            description="seeds")
        self.focus_by = widgets.ToggleButtons(options=FOCUS_KINDS, description="show")
        self.pair = widgets.Dropdown(description="pair", layout=widgets.Layout(width="32em"))
        self.length_bin = widgets.Dropdown(description="Δlen bin")
        self.normalisation = widgets.ToggleButtons(options=dg.NORMALISATIONS,
                                                   description="cloud gap")
        self.text = widgets.HTML(layout=widgets.Layout(width="34em"))
        self.status = widgets.HTML()
        self.trajectories = widgets.Output()
        self.cloud = widgets.Output()
        self.data: ExplorerData | None = None
        self._quiet = False
        self._fill_focus_options()

        controls = widgets.HBox([
            widgets.VBox([self.source, self.focus_by, self.pair, self.length_bin,
                          self.normalisation]),
            widgets.VBox([self.objectives, self.seeds])])
        super().__init__([controls, self.status, widgets.HBox([self.text, self.cloud]),
                          self.trajectories])
        add_classes(self, "explorer", objectives=self.objectives, seeds=self.seeds,
                     pair=self.pair, status=self.status, text=self.text,
                     trajectories=self.trajectories, cloud=self.cloud)
        self.source.observe(self._on_source, names="value")
        for control in (self.objectives, self.seeds, self.focus_by, self.pair, self.length_bin,
                        self.normalisation):
            control.observe(self._on_change, names="value")
        self.update()

    @property
    def records(self) -> pd.DataFrame:
        """The table the explorer shows now (records or evals)."""
        return self.tables[self.source.value]

    def _fill_focus_options(self) -> None:
        records = self.records
        per_pair = records.drop_duplicates("pair_id").assign(dlen=lambda d: d.len_n - d.len_p)
        per_pair = per_pair.sort_values(["dlen", "pair_id"])
        prompts = (self.pairs.set_index("pair_id").prompt
                   if self.pairs is not None and len(self.pairs) else pd.Series(dtype=str))
        options = []
        for pid, dlen in zip(per_pair.pair_id, per_pair.dlen):
            prompt = " ".join(str(prompts.get(pid, "")).split())
            options.append((f"Δlen {int(dlen):+d} · {prompt[:48] or pid}", pid))
        bins = [str(b) for b in length_bins(records, self.bins).cat.categories]
        self._quiet = True
        try:
            self.pair.options = options
            self.pair.value = options[len(options) // 2][1] if options else None
            self.length_bin.options = bins
            self.length_bin.value = bins[0] if bins else None
        finally:
            self._quiet = False

    def _on_source(self, _change) -> None:
        self._fill_focus_options()
        self.update()

    def _on_change(self, _change) -> None:
        if not self._quiet:
            self.update()

    def update(self) -> None:
        """Recompute `data` from the controls and redraw."""
        by_pair = self.focus_by.value == "pair"
        self.pair.disabled, self.length_bin.disabled = not by_pair, by_pair
        try:
            self.data = explorer_data(
                self.records, self.objectives.value, self.seeds.value,
                pair_id=self.pair.value if by_pair else None,
                length_bin=None if by_pair else self.length_bin.value, pairs=self.pairs,
                normalisation=self.normalisation.value, bins=self.bins)
        except ValueError as e:
            self.data = None
            self.status.value = f"<b>Nothing to show:</b> {html.escape(str(e))}"
            self.text.value = ""
            show(self.trajectories)
            show(self.cloud)
            return
        data = self.data
        self.status.value = (
            f"<b>{html.escape(data.title)}</b> · objectives: "
            f"{html.escape(', '.join(self.objectives.value))} · seeds: "
            f"{', '.join(map(str, self.seeds.value))} · {data.focus.step.nunique()} step(s)")
        self.text.value = _pair_html(data)
        show(self.trajectories,
              display_png(draw_trajectories(data, order=self.labels, palette=self.palette),
                           "loss_p / loss_n trajectories"))
        try:
            cloud = display_png(draw_cloud(data, palette=self.palette), "gap vs length")
        except ValueError as e:
            cloud = message(str(e))
        show(self.cloud, cloud)


def _pair_html(data: ExplorerData) -> str:
    """The pair's text (or the bin's pairs) as HTML."""
    if data.pair is None:
        per_pair = data.focus.drop_duplicates("pair_id")
        return (f"<p><b>{len(per_pair)} pairs</b> with len_n − len_p in this bin; their "
                f"loss_p / loss_n are averaged per run and step below.</p>")
    pair = data.pair
    meta = ", ".join(f"{k}: {html.escape(str(pair[k]))}" for k in ("lang", "category", "split")
                     if k in pair)

    def block(title: str, key: str, note: str = "") -> str:
        text = html.escape(str(pair.get(key, "(text not found in the runs' data)")))
        return (f"<p style='margin:4px 0'><b>{title}</b>{note}</p><div style='white-space:"
                f"pre-wrap;max-height:9em;overflow:auto;border-left:3px solid #ccc;"
                f"padding-left:6px'>{text}</div>")

    return (f"<div class='prefstudy-pair'><p style='margin:0'><code>{pair['pair_id']}</code>"
            f"{' · ' + meta if meta else ''}</p>"
            + block("prompt", "prompt")
            + block("chosen", "chosen", f" · len_p = {pair['len_p']} tokens")
            + block("rejected", "rejected", f" · len_n = {pair['len_n']} tokens") + "</div>")


def explore(runs: Runs = None, *, objectives: Sequence[str] | None = None,
            bins: int = 5) -> Explorer:
    """The explorer over `runs` (a folder of runs, a list of run folders, or None for the
    committed study; see `prefstudy.tables`). Held-out pairs (evals: every pair at every
    evaluation) and training pairs (records: each pair at the steps it was drawn) are both
    offered. `objectives`: the labels selected at first (default: the study's first three)."""
    tables = load_tables(runs)
    shown = {name: table for name, table in (("held-out pairs", tables.evals),
                                             ("training pairs", tables.records)) if len(table)}
    if not shown:
        raise FileNotFoundError(f"no records in {runs or default_runs_dir()}")
    return Explorer(shown, tables.pairs, labels=tables.labels, objectives=objectives, bins=bins)


__all__ = ["FOCUS_KINDS", "Explorer", "ExplorerData", "draw_cloud", "draw_trajectories", "explore",
           "explorer_data", "length_bins"]
