"""The explorer: choose objectives (the study's labels), a learning rate, seeds and a pair or a
length bin; see the pair's text, its loss_p / loss_n trajectories under each objective
(`plots.loss_trajectories`) and where it sits in the gap-versus-length cloud
(`plots.gap_vs_length`).

Runs of different settings are never pooled: the view shows one learning rate at a time (or every
one, a row of panels each), and a line pools only runs that are seeds of one setting
(`views.run_settings`); the view says how many runs each line pools. Colours are the report's
(`views.study_colours`).

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
from .paths import TEXT_COLUMNS
from .records import default_runs_dir
from .tables import Runs, load_tables
from .views import (
    add_classes,
    display_png,
    line_colours,
    lr_name,
    message,
    run_settings,
    show,
    study_colours,
)

EACH_LR = "each"  # `explorer_data(lr=EACH_LR)`: every learning rate, one row of panels each
# shown for a pair whose runs kept ids and numbers only (`paths.text_rule`)
TEXT_NOT_KEPT = "(text not kept: third-party data)"

# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class ExplorerData:
    """What the explorer shows for one choice of objectives, learning rate, seeds and pair (or
    length bin).

    records: the rows of the chosen objectives, learning rate and seeds (one table: records or
             evals), each with `line` (what a line of the figures is: its label, and what sets
             the run apart where runs of one label and lr differ in more than their seed, as
             `views.run_settings` says) and `lr_name` ("lr 0.001").
    focus:   the rows of the chosen pair, or of every pair in the chosen length bin.
    cloud:   `diagnostics.gap_normalisations(records)` at the chosen normalisation: run_id,
             label, seed, step, pair_id, line, lr_name, normalisation, gap_value, dlen,
             dlen_rel, and `focus` (True on the rows of the chosen pair / bin).
    lines:   one row per line of the focus and learning rate: lr_name, line, label, runs (how
             many runs it pools: seeds of one setting), seeds (their seeds, as text).
    pair:    the chosen pair's pair_id, prompt, chosen, rejected, len_p, len_n, dlen and meta
             (lang, category, split where known), and text_kept where the runs' facts hold
             it (False: ids and numbers only, TEXT_NOT_KEPT shown); None for a length bin.
    title:   one line naming the focus and the learning rate, in words.
    normalisation: the gap the cloud shows.
    lr:      the learning rate shown (NaN where the runs do not record one), or EACH_LR.
    lr_order: the lr_names shown, smallest first.
    """

    records: pd.DataFrame
    focus: pd.DataFrame
    cloud: pd.DataFrame
    lines: pd.DataFrame
    pair: dict | None
    title: str
    normalisation: str
    lr: float | str
    lr_order: list[str]

    @property
    def pooled(self) -> bool:
        """Whether some line is the mean of more than one run (seeds of one setting)."""
        return bool(len(self.lines)) and int(self.lines.runs.max()) > 1


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


def _with_settings(records: pd.DataFrame, settings: pd.DataFrame | None) -> pd.DataFrame:
    """`records` with each run's lr, lr_name and line, from `settings` (`views.run_settings`;
    None: from the records themselves, by label and lr)."""
    if settings is None:
        settings = run_settings(records)
    missing = sorted(set(records.run_id) - set(settings.run_id))
    if missing:
        raise ValueError(f"no setting for runs {missing[:3]}: pass run_settings of these runs")
    by_run = settings.drop_duplicates("run_id").set_index("run_id")
    lines = [f"{label} · {variant}" if variant else label
             for label, variant in zip(by_run.label, by_run.variant)]
    return records.assign(lr=records.run_id.map(by_run.lr).astype(float),
                          lr_name=records.run_id.map(by_run.lr.map(lr_name)),
                          line=records.run_id.map(pd.Series(lines, index=by_run.index)))


def _lr_order(records: pd.DataFrame) -> list[str]:
    """The lr_names of `records`, smallest learning rate first (not recorded last)."""
    per_lr = records.drop_duplicates("lr_name").sort_values("lr", na_position="last")
    return list(per_lr.lr_name)


def _at_lr(records: pd.DataFrame, lr) -> tuple[pd.DataFrame, float | str]:
    """The rows at learning rate `lr` (EACH_LR: all; None: the records' only one)."""
    present = _lr_order(records)
    if lr is None:
        if len(present) > 1:
            raise ValueError(f"these runs were trained at {', '.join(present)}: choose one "
                             f"(lr=...) or every one, a row each (lr={EACH_LR!r})")
        return records, float(records.lr.iloc[0]) if len(records) else float("nan")
    if isinstance(lr, str):
        if lr != EACH_LR:
            raise ValueError(f"lr={lr!r}: a learning rate, or {EACH_LR!r}")
        return records, EACH_LR
    at = records[np.isclose(records.lr, float(lr), rtol=1e-9, atol=0)]
    if at.empty:
        raise ValueError(f"no runs at {lr_name(lr)}; these runs have: {', '.join(present)}")
    return at, float(lr)


def _lines(focus: pd.DataFrame) -> pd.DataFrame:
    """One row per line and learning rate of `focus`: lr_name, line, label, runs, seeds."""
    columns = ["lr_name", "line", "label", "runs", "seeds"]
    if focus.empty:
        return pd.DataFrame(columns=columns)
    grouped = focus.groupby(["lr_name", "line"], sort=False)
    out = grouped.agg(label=("label", "first"), runs=("run_id", "nunique"),
                      seeds=("seed", lambda s: ", ".join(map(str, sorted(set(s))))))
    return out.reset_index()[columns]


def explorer_data(records: pd.DataFrame, objectives: Sequence[str] | None = None,
                  seeds: Sequence[int] | None = None, pair_id: str | None = None,
                  length_bin: str | None = None, *, lr: float | str | None = None,
                  settings: pd.DataFrame | None = None, pairs: pd.DataFrame | None = None,
                  normalisation: str = "sum", bins: int = 5) -> ExplorerData:
    """The explorer's numbers for one choice; see `ExplorerData`.

    records: per-pair records or evals of one or more runs (with label, and lr, as
    `prefstudy.tables.load_tables` gives).
    objectives: labels to show (None: all); seeds: seeds to show (None: all).
    pair_id or length_bin (a label of `length_bins(records, bins)`): exactly one of them.
    lr: the learning rate to show, or EACH_LR (every one, kept apart: `lr_name` splits them);
    None where the records hold one only (ValueError naming them where they hold several: runs
    at different learning rates are never averaged).
    settings: `views.run_settings` of the runs (with their configs), which runs are seeds of
    one setting; None: by label and lr alone.
    pairs: the runs' per-pair facts (`prefstudy.tables.Tables.pairs`), for the chosen pair's text.
    normalisation: the gap in the cloud, one of `diagnostics.NORMALISATIONS` ("sum": summed
    cross-entropy, "mean": token-mean, "reference": DPO's log-ratio gap, where refs exist).
    """
    if (pair_id is None) == (length_bin is None):
        raise ValueError("choose a pair (pair_id) or a length bin (length_bin), not both")
    if normalisation not in dg.NORMALISATIONS:
        raise ValueError(f"normalisation={normalisation!r}; allowed: {dg.NORMALISATIONS}")
    require_columns(records, ["run_id", "label", "seed", "pair_id", "len_p", "len_n", "loss_p",
                              "loss_n"], "explorer_data")
    labels = _choose(objectives, list(dict.fromkeys(records.label)), "objectives")
    seed_list = _choose(seeds, sorted(records.seed.unique()), "seeds")
    at_lr, lr = _at_lr(_with_settings(records, settings), lr)
    chosen = at_lr[at_lr.label.isin(labels) & at_lr.seed.isin(seed_list)]
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
        raise ValueError("the chosen pair does not occur under these objectives, seeds and "
                         "learning rate")
    gaps = dg.gap_normalisations(chosen, keep=[*dg.ID_COLUMNS, "line", "lr_name"])
    cloud = gaps[gaps.normalisation == normalisation].reset_index(drop=True)
    if pair_id is not None:
        cloud["focus"] = cloud.pair_id.eq(pair_id)
    else:
        cloud["focus"] = cloud.pair_id.isin(set(focus.pair_id))
    pair = _pair_info(records, pair_id, pairs) if pair_id is not None else None
    shown_lr = "every lr, a row each" if lr == EACH_LR else lr_name(lr)
    if pair is not None:
        title = f"pair {pair_id[:8]} · Δlen = {pair['dlen']:+d} tokens · {shown_lr}"
    else:
        title = f"Δlen bin {length_bin} tokens · {focus.pair_id.nunique()} pairs · {shown_lr}"
    return ExplorerData(chosen.reset_index(drop=True), focus.reset_index(drop=True), cloud,
                        _lines(focus), pair, title, normalisation, lr, _lr_order(focus))


def pooling_note(data: ExplorerData) -> str:
    """In words, what each line of `data` is: one run, or the mean of how many runs (the seeds
    of one setting), and what the band is."""
    if not data.pooled:
        return "each line is one run (no band)"
    kinds = data.lines.drop_duplicates(["runs", "seeds"])
    if len(kinds) == 1:
        pooled = f"each line is the mean of {kinds.runs.iloc[0]} runs, seeds {kinds.seeds.iloc[0]}"
    else:
        where = (lambda r: f" at {r.lr_name}") if data.lr == EACH_LR else (lambda r: "")
        pooled = "a line is the mean of its runs: " + "; ".join(
            f"{r.line}{where(r)}: {r.runs} run{'s' if r.runs > 1 else ''} "
            f"(seed{'s' if r.runs > 1 else ''} {r.seeds})"
            for r in data.lines.itertuples())
    return f"{pooled} of one setting; the band is their range"


def _pair_info(records: pd.DataFrame, pair_id: str, pairs: pd.DataFrame | None) -> dict:
    row = records[records.pair_id == pair_id].iloc[0]
    info = {"pair_id": pair_id, "len_p": int(row.len_p), "len_n": int(row.len_n),
            "dlen": int(row.len_n - row.len_p)}
    if pairs is not None and len(pairs) and (pairs.pair_id == pair_id).any():
        text = pairs[pairs.pair_id == pair_id].iloc[0]
        info.update({k: v for k, v in text.items() if k != "pair_id" and not is_missing(v)})
        info["text_kept"] = all(k in info for k in TEXT_COLUMNS)  # False: ids and numbers only
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


def _hue_order(lines: pd.Series, order: Sequence[str] | None) -> list[str]:
    """The lines present, their labels in `order` (then any other), each label's lines sorted."""
    present = list(dict.fromkeys(lines))
    labels = {line: line.split(" · ")[0] for line in present}
    rank = {lab: i for i, lab in enumerate(order or sorted(set(labels.values())))}
    return sorted(present, key=lambda line: (rank.get(labels[line], len(rank)), line))


def draw_trajectories(data: ExplorerData, *, order: Sequence[str] | None = None,
                      palette: Mapping | None = None):
    """loss_p and loss_n of the focus, one line per objective (`plots.loss_trajectories`):
    each run's mean over the focus pairs per step; where a line pools the runs of one setting
    (seeds), their mean, and the band is their range (it stays within what the runs show:
    never below 0 for a loss). One learning rate, or (lr=EACH_LR) one row of panels per
    learning rate. order: the labels' order; palette: label → colour (the report's)."""
    hue_order = _hue_order(data.focus.line, order)
    each = data.lr == EACH_LR
    grid = plots.loss_trajectories(data.focus, hue="line", hue_order=hue_order,
                                   palette=line_colours(hue_order, palette),
                                   row="lr_name" if each else None,
                                   row_order=data.lr_order if each else None,
                                   errorbar=("pi", 100) if data.pooled else None,
                                   height=2.6, aspect=1.25)
    _mark_points(grid)
    if grid.legend is not None:
        grid.legend.set_title("objective")
    grid.figure.suptitle(f"{data.title}\n{pooling_note(data)}", y=1.06, fontsize="medium")
    return grid


def draw_cloud(data: ExplorerData, *, order: Sequence[str] | None = None,
               palette: Mapping | None = None):
    """The gap-versus-length cloud of the chosen records, the focus circled
    (`plots.gap_vs_length`: its OLS line and R²), one panel per learning rate shown."""
    if data.cloud.empty:
        raise ValueError(f"no {data.normalisation} gap for these records (the reference gap "
                         "needs runs with a reference model, e.g. dpo)")
    hue_order = _hue_order(data.cloud.line, order)
    colours = line_colours(hue_order, palette)
    each = data.lr == EACH_LR
    grid = plots.gap_vs_length(data.cloud, col="lr_name" if each else None,
                               col_order=data.lr_order if each else None, hue="line",
                               hue_order=hue_order, palette=colours, height=3.0, aspect=1.15,
                               scatter_kws={"s": 12, "alpha": 0.4})
    for name, ax in grid.axes_dict.items():
        focus = data.cloud[data.cloud.focus]
        if each:
            focus = focus[focus.lr_name == name]
        ax.scatter(focus.dlen, focus.gap_value, s=70, facecolors="none",
                   edgecolors=[colours[line] for line in focus.line], linewidths=1.6, zorder=5)
        ax.set_title(f"gap ({data.normalisation}) vs length difference · "
                     f"{name if each else lr_name(data.lr)}\n"
                     f"{ax.get_title().split(chr(10), 1)[-1].strip()}", fontsize="medium")
    if grid.legend is not None:
        grid.legend.set_title("objective")
    return grid


# ---------------------------------------------------------------------------------------------
# The view


FOCUS_KINDS = ("pair", "length bin")


class Explorer(widgets.VBox):
    """Objectives, a learning rate, seeds and a pair (or a length bin) in; the pair's text, its
    trajectories and its place in the gap-versus-length cloud out. Build it with `explore`.

    Controls (set them from Python as a reader would by hand): `source` (which table), `lr` (a
    learning rate, or EACH_LR: one row of panels per learning rate), `objectives`, `seeds`,
    `focus_by` ("pair" / "length bin"), `pair`, `length_bin`, `normalisation`.
    Shown: `text` (HTML: the pair's prompt and responses), `status` (HTML: the choice, and how
    many runs each line pools), `trajectories` and `cloud` (Outputs holding one PNG each).
    `data` is the last `ExplorerData` drawn.

    labels: the study's labels in the report's order; families: label → family (the report's
    colours where every label has one, else a colour per label); settings: `views.run_settings`
    of the runs (None: by label and lr); lr: the learning rate shown first (None: the largest).
    """

    def __init__(self, tables: Mapping[str, pd.DataFrame], pairs: pd.DataFrame | None = None, *,
                 labels: Sequence[str] | None = None, families: Mapping[str, str] | None = None,
                 settings: pd.DataFrame | None = None, objectives: Sequence[str] | None = None,
                 lr: float | str | None = None, bins: int = 5):
        tables = {name: df for name, df in tables.items() if df is not None and len(df)}
        if not tables:
            raise ValueError("explorer: no records to explore")
        self.tables, self.pairs, self.bins = tables, pairs, bins
        every = pd.concat([df[[c for c in ("run_id", "label", "seed", "lr") if c in df]]
                           for df in tables.values()])
        self.settings = settings if settings is not None else run_settings(every)
        self.labels = list(labels) if labels else list(dict.fromkeys(every.label))
        self.palette = study_colours(self.labels, families)
        seeds = sorted(int(s) for s in every.seed.unique())
        first = [lab for lab in (objectives or self.labels[:3]) if lab in self.labels]

        self.source = widgets.ToggleButtons(options=list(tables), description="pairs")
        self.lr = self._lr_control(lr)
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
            widgets.VBox([self.source, self.lr, self.focus_by, self.pair, self.length_bin,
                          self.normalisation]),
            widgets.VBox([self.objectives, self.seeds])])
        super().__init__([controls, self.status, widgets.HBox([self.text, self.cloud]),
                          self.trajectories])
        add_classes(self, "explorer", objectives=self.objectives, seeds=self.seeds,
                     lr=self.lr, pair=self.pair, status=self.status, text=self.text,
                     trajectories=self.trajectories, cloud=self.cloud)
        self._observe_controls()
        self.update()

    def _lr_control(self, lr: float | str | None) -> widgets.Dropdown:
        """The learning-rate control (`_lr_options` of the runs), showing `lr` (None: the first
        option); ValueError naming the options where `lr` is not one of them."""
        control = widgets.Dropdown(options=_lr_options(self.settings), description="learning rate",
                                   style={"description_width": "initial"})
        if lr is not None:
            offered = [value for _, value in control.options]
            if lr not in offered:
                raise ValueError(f"explorer: lr={lr!r}; these runs have: {offered}")
            control.value = lr
        return control

    def _observe_controls(self) -> None:
        """Redraw on every control's change; another source refills the pair and bin choices."""
        self.source.observe(self._on_source, names="value")
        for control in (self.lr, self.objectives, self.seeds, self.focus_by, self.pair,
                        self.length_bin, self.normalisation):
            control.observe(self._on_change, names="value")

    @property
    def records(self) -> pd.DataFrame:
        """The table the explorer shows now (records or evals)."""
        return self.tables[self.source.value]

    def _fill_focus_options(self) -> None:
        records = self.records
        per_pair = records.drop_duplicates("pair_id").assign(dlen=lambda d: d.len_n - d.len_p)
        per_pair = per_pair.sort_values(["dlen", "pair_id"])
        prompts = (self.pairs.set_index("pair_id").prompt  # ids alone where texts were not kept
                   if self.pairs is not None and "prompt" in self.pairs.columns
                   else pd.Series(dtype=str))
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
                length_bin=None if by_pair else self.length_bin.value, lr=self.lr.value,
                settings=self.settings, pairs=self.pairs,
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
            f"{', '.join(map(str, self.seeds.value))} · {data.focus.step.nunique()} step(s) · "
            f"{html.escape(pooling_note(data))}")
        self.text.value = _pair_html(data)
        show(self.trajectories,
              display_png(draw_trajectories(data, order=self.labels, palette=self.palette),
                           "loss_p / loss_n trajectories"))
        try:
            cloud = display_png(draw_cloud(data, order=self.labels, palette=self.palette),
                                "gap vs length")
        except ValueError as e:
            cloud = message(str(e))
        show(self.cloud, cloud)


def _lr_options(settings: pd.DataFrame) -> list[tuple[str, float | str | None]]:
    """The learning-rate control's options: each learning rate, largest first (the first is
    shown first), then EACH_LR where the runs have several (runs that record none are shown
    there, as a row of their own); one "not recorded" (None) where no run records one."""
    lrs = sorted(settings.lr.dropna().unique(), reverse=True)
    options: list = [(lr_name(lr), float(lr)) for lr in lrs] or [(lr_name(None), None)]
    if settings.lr.map(lr_name).nunique() > 1:
        options.append(("every lr, a row each", EACH_LR))
    return options


def _pair_html(data: ExplorerData) -> str:
    """The pair's text (or the bin's pairs) as HTML."""
    if data.pair is None:
        per_pair = data.focus.drop_duplicates("pair_id")
        return (f"<p><b>{len(per_pair)} pairs</b> with len_n − len_p in this bin; their "
                f"loss_p / loss_n are averaged per run and step below.</p>")
    pair = data.pair
    meta = ", ".join(f"{k}: {html.escape(str(pair[k]))}" for k in ("lang", "category", "split")
                     if k in pair)

    absent = (TEXT_NOT_KEPT if pair.get("text_kept") is False
              else "(text not found in the runs' data)")

    def block(title: str, key: str, note: str = "") -> str:
        text = html.escape(str(pair.get(key, absent)))
        return (f"<p style='margin:4px 0'><b>{title}</b>{note}</p><div style='white-space:"
                f"pre-wrap;max-height:9em;overflow:auto;border-left:3px solid #ccc;"
                f"padding-left:6px'>{text}</div>")

    return (f"<div class='prefstudy-pair'><p style='margin:0'><code>{pair['pair_id']}</code>"
            f"{' · ' + meta if meta else ''}</p>"
            + block("prompt", "prompt")
            + block("chosen", "chosen", f" · len_p = {pair['len_p']} tokens")
            + block("rejected", "rejected", f" · len_n = {pair['len_n']} tokens") + "</div>")


def explore(runs: Runs = None, *, objectives: Sequence[str] | None = None,
            lr: float | str | None = None, bins: int = 5) -> Explorer:
    """The explorer over `runs` (a folder of runs, a list of run folders, or None for the
    committed study; see `prefstudy.tables`). Held-out pairs (evals: every pair at every
    evaluation) and training pairs (records: each pair at the steps it was drawn) are both
    offered. `objectives`: the labels selected at first (default: the report's first three);
    `lr`: the learning rate shown first (default: the largest; EACH_LR: every one, a row each).
    Runs are pooled only where their configurations differ in nothing but the seed."""
    tables = load_tables(runs)
    shown = {name: table for name, table in (("held-out pairs", tables.evals),
                                             ("training pairs", tables.records)) if len(table)}
    if not shown:
        raise FileNotFoundError(f"no records in {runs or default_runs_dir()}")
    return Explorer(shown, tables.pairs, labels=tables.order, families=tables.families,
                    settings=run_settings(tables.runs, tables.configs), objectives=objectives,
                    lr=lr, bins=bins)


__all__ = ["EACH_LR", "FOCUS_KINDS", "Explorer", "ExplorerData", "draw_cloud", "draw_trajectories",
           "explore", "explorer_data", "length_bins", "pooling_note"]
