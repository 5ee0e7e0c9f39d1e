"""Interactive views over runs for notebooks: an explorer and a what-if view, in plain ipywidgets.

- `explore(runs)` → `Explorer`: choose objectives (the study's labels), seeds and a pair or a
  length bin; see the pair's text, its loss_p / loss_n trajectories under each objective
  (`plots.loss_trajectories`) and where it sits in the gap-versus-length cloud
  (`plots.gap_vs_length`). Its numbers come from `explorer_data`.
- `what_if(records)` → `WhatIf`: β, SimPO's margin γ and the normalisation recompute every
  objective's per-pair loss and margin from the logged log-probs, without retraining
  (`recompute`). The formulas are the registry's own: each row becomes a `PairLogps` and goes
  through `objectives.compute`.

Each view is a thin `ipywidgets.VBox` over pure functions; its controls are attributes a test (or
a reader) can set, and what it shows is readable from Python (`HTML.value`, `Output.outputs`).
Figures are rendered to PNG and put into `Output` widgets as display data, so the views need no
front-end build and work wherever ipywidgets do (JupyterLab, VS Code, Notebook 7).

`notebook_runs` is the notebooks' one switch: the committed study runs, or a fresh re-run.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from . import diagnostics as dg
from . import plots
from .config import resolve_path
from .data import load_pairs
from .logprobs import TokenLogps
from .objectives import OBJECTIVES, PairLogps, compute, resolve_params
from .records import SchemaError, default_runs_dir, load_runs, read_config, run_folders

# ---------------------------------------------------------------------------------------------
# The notebooks' switch: committed runs, or a re-run


# The default study (configs/study.toml) on the random `tiny` model: every objective, a few steps,
# a few minutes on two cores. It shows the mechanics end to end, not the study's findings.
TINY_PROFILE = {
    "model": "tiny", "steps": 6, "batch_size": 4, "lr": 1e-3, "max_pairs": 16,
    "max_length": 64, "max_prompt_length": 32, "trainable_blocks": None,
    "n_heldout": 4, "n_neutral": 4, "n_probes": 2, "gen_max_new_tokens": 8,
    "eval_every": 2,  # held-out pairs at steps 0, 2, 4 and 6: a trajectory per pair
    "checkpoint_every": 100, "device": "cpu", "dtype": "float32",
}


def notebook_runs(rerun: bool = False, *, profile: str = "tiny",
                  output: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """The folder of runs a notebook reads.

    rerun=False: the committed study runs (`records.default_runs_dir()`, i.e. reports/runs or
    `$PREFSTUDY_RUNS`). rerun=True: train the default study (configs/study.toml) afresh into
    `output` (default: a new temporary folder) and return that folder. profile "tiny" trains it
    on the random tiny model with `TINY_PROFILE` (one seed, a few minutes on two cores); "cpu"
    or "gpu" is the study's own profile (the CPU one takes tens of minutes on two cores).
    """
    if not rerun:
        root = default_runs_dir()
        if not run_folders(root):
            raise FileNotFoundError(f"{root}: no committed runs. Set RERUN = True to train a "
                                    "tiny study, or run `prefstudy study`.")
        return root
    from .study import load_study, run_study

    config = resolve_path("configs/study.toml")
    output = Path(output) if output else Path(tempfile.mkdtemp(prefix="prefstudy-runs-"))
    if profile == "tiny":
        study = load_study(config, profile="cpu", seeds=[0], output=output)
        study = dataclasses.replace(study, profile="tiny",
                                    shared={**study.shared, **TINY_PROFILE})
    else:
        study = load_study(config, profile=profile, output=output)
    run_study(study, progress=progress)
    return output


def study_labels(records: pd.DataFrame, runs: str | os.PathLike | None = None) -> list[str]:
    """The labels present in `records`, in the order the study lists them (its study.json beside
    the runs), else in the order they first appear."""
    from .study import STUDY_FILE

    present = list(dict.fromkeys(records["label"]))
    study = Path(runs or default_runs_dir()) / STUDY_FILE
    if study.exists():
        listed = [lab for lab in json.loads(study.read_text()).get("labels", []) if lab in present]
        return listed + [lab for lab in present if lab not in listed]
    return present


def run_pairs(runs: str | os.PathLike | Iterable | None = None) -> pd.DataFrame:
    """The texts of the pairs the runs trained and were evaluated on, from their configs' `data`
    and `heldout` paths: pair_id, prompt, chosen, rejected, the meta columns (lang, category…)
    and split ("train" / "heldout"). One row per pair id."""
    folders = (run_folders(runs) if runs is None or isinstance(runs, (str, os.PathLike))
               else [Path(r) for r in runs])
    sources = {}
    for folder in folders:
        cfg = read_config(folder)
        for split, key in (("train", "data"), ("heldout", "heldout")):
            if cfg.get(key):
                sources.setdefault(str(resolve_path(cfg[key])), split)
    frames = []
    for path, split in sources.items():
        if Path(path).exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # skipped records are the loader's business
                frames.append(load_pairs(path).to_frame().assign(split=split))
    if not frames:
        return pd.DataFrame(columns=["pair_id", "prompt", "chosen", "rejected", "split"])
    return pd.concat(frames, ignore_index=True).drop_duplicates("pair_id").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The explorer: data


def _require(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing}; columns present: "
                          f"{list(df.columns)}")


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


def length_bins(records: pd.DataFrame, bins: int = 5) -> pd.Series:
    """Each pair's length-difference bin: pair_id → bin of dlen = len_n − len_p.

    Quantile bins over the distinct pairs (as `diagnostics.variance_by_length_bin` cuts; tied
    edges merge bins), named "[lo, hi]" for the first and "(lo, hi]" after it, as an ordered
    categorical.
    """
    _require(records, ["pair_id", "len_p", "len_n"], "length_bins")
    per_pair = records.drop_duplicates("pair_id").set_index("pair_id")
    dlen = (per_pair.len_n - per_pair.len_p).astype(float)
    edges = np.unique(np.quantile(dlen, np.linspace(0, 1, bins + 1))) if len(dlen) else []
    if len(edges) < 2:  # one length difference (or none): one bin
        value = float(dlen.iloc[0]) if len(dlen) else 0.0
        label = f"[{value:g}, {value:g}]"
        return pd.Series(pd.Categorical([label] * len(dlen), categories=[label], ordered=True),
                         index=dlen.index, name="length_bin")
    labels = [f"{'[' if i == 0 else '('}{lo:g}, {hi:g}]"
              for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
    return pd.cut(dlen, edges, labels=labels, include_lowest=True).rename("length_bin")


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

    records: per-pair records or evals of one or more runs (with label, as `load_runs` gives).
    objectives: labels to show (None: all); seeds: seeds to show (None: all).
    pair_id or length_bin (a label of `length_bins(records, bins)`): exactly one of them.
    pairs: pair texts (`run_pairs`), for the chosen pair's text.
    normalisation: the gap in the cloud, one of `diagnostics.NORMALISATIONS` ("sum": summed
    cross-entropy, "mean": token-mean, "reference": DPO's log-ratio gap, where refs exist).
    """
    if (pair_id is None) == (length_bin is None):
        raise ValueError("choose a pair (pair_id) or a length bin (length_bin), not both")
    if normalisation not in dg.NORMALISATIONS:
        raise ValueError(f"normalisation={normalisation!r}; allowed: {dg.NORMALISATIONS}")
    _require(records, ["label", "seed", "pair_id", "len_p", "len_n", "loss_p", "loss_n"],
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
        info.update({k: v for k, v in text.items() if k != "pair_id" and not _missing(v)})
    return info


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


# ---------------------------------------------------------------------------------------------
# Rendering: figures become PNG display data of an Output widget


def _display_png(fig_or_grid, name: str, dpi: int = 80) -> dict:
    """The figure as one display_data output (image/png), and the figure closed."""
    figure = getattr(fig_or_grid, "figure", fig_or_grid)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                     "text/plain": f"<{name}>"}}


def _css_classes(view: widgets.DOMWidget, name: str, **parts: widgets.DOMWidget) -> None:
    """CSS classes `prefstudy-<name>` on the view and `prefstudy-<part>` on its parts, so a page
    (or a browser test) can find them."""
    view.add_class(f"prefstudy-{name}")
    for part, widget in parts.items():
        widget.add_class(f"prefstudy-{part}")


def _show(output: widgets.Output, *items: dict) -> None:
    output.outputs = tuple(items)


def _message(text: str) -> dict:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": text, "text/html": f"<p><i>{html.escape(text)}</i></p>"}}


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
    palette = palette or plots.label_palette(data.cloud.label.unique())
    colours = [palette[lab] for lab in focus.label]
    ax.scatter(focus.dlen, focus.gap_value, s=70, facecolors="none", edgecolors=colours,
               linewidths=1.6, zorder=5)
    ax.set_title(f"gap ({data.normalisation}) vs length difference\n{ax.get_title().strip()}",
                 fontsize="medium")
    return grid


# ---------------------------------------------------------------------------------------------
# The explorer: widget


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
        self.palette = plots.label_palette(self.labels)
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
        _css_classes(self, "explorer", objectives=self.objectives, seeds=self.seeds,
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
            _show(self.trajectories)
            _show(self.cloud)
            return
        data = self.data
        self.status.value = (
            f"<b>{html.escape(data.title)}</b> · objectives: "
            f"{html.escape(', '.join(self.objectives.value))} · seeds: "
            f"{', '.join(map(str, self.seeds.value))} · {data.focus.step.nunique()} step(s)")
        self.text.value = _pair_html(data)
        _show(self.trajectories,
              _display_png(draw_trajectories(data, order=self.labels, palette=self.palette),
                           "loss_p / loss_n trajectories"))
        try:
            cloud = _display_png(draw_cloud(data, palette=self.palette), "gap vs length")
        except ValueError as e:
            cloud = _message(str(e))
        _show(self.cloud, cloud)


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


def explore(runs: str | os.PathLike | Iterable | None = None, *,
            objectives: Sequence[str] | None = None, bins: int = 5) -> Explorer:
    """The explorer over `runs` (a folder of runs, a list of run folders, or None for the
    committed study). Held-out pairs (evals: every pair at every evaluation) and training pairs
    (records: each pair at the steps it was drawn) are both offered. `objectives`: the labels
    selected at first (default: the study's first three)."""
    tables = {}
    for name, table in (("held-out pairs", "evals"), ("training pairs", "records")):
        try:
            tables[name] = load_runs(runs, table)
        except FileNotFoundError:
            continue
    tables = {name: df for name, df in tables.items() if len(df)}
    if not tables:
        raise FileNotFoundError(f"no records in {runs or default_runs_dir()}")
    root = runs if runs is None or isinstance(runs, (str, os.PathLike)) else None
    labels = study_labels(pd.concat([df[["label"]] for df in tables.values()]), root)
    return Explorer(tables, run_pairs(runs), labels=labels, objectives=objectives, bins=bins)


# ---------------------------------------------------------------------------------------------
# What if: objectives recomputed from the logged log-probs


WHAT_IF_PARAMS = ("beta", "gamma", "norm")  # the parameters the what-if view lets a reader set


def _uniform_tokens(sums: np.ndarray, lengths: np.ndarray, dtype) -> TokenLogps:
    """Row b: lengths[b] tokens, each of log-prob sums[b] / lengths[b]; .sum, .mean and .count
    are then exactly the logged ones."""
    lengths = np.maximum(lengths.astype(np.int64), 0)
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    mask = torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]
    per_token = torch.as_tensor(sums / np.maximum(lengths, 1), dtype=dtype)
    return TokenLogps(torch.where(mask, per_token[:, None], 0.0).to(dtype), mask)


def sequence_logps(records: pd.DataFrame, *, dtype: torch.dtype = torch.float64) -> PairLogps:
    """The records' logged log-probs as a `PairLogps`, one row per record.

    The records keep per response only the summed log-prob (−nll_sum_p / −nll_sum_n, and
    ref_logp_p / ref_logp_n) and the token count (len_p / len_n). Each response becomes len
    tokens of equal log-prob sum/len, so every objective that reads only sums, means and counts
    gets exactly the values it had in training (`sums_suffice` says which do). The reference
    sides are there when every row has both reference log-probs, else None.
    """
    _require(records, ["nll_sum_p", "nll_sum_n", "len_p", "len_n"], "sequence_logps")
    len_p, len_n = records.len_p.to_numpy(), records.len_n.to_numpy()
    chosen = _uniform_tokens(-records.nll_sum_p.to_numpy(float), len_p, dtype)
    rejected = _uniform_tokens(-records.nll_sum_n.to_numpy(float), len_n, dtype)
    ref_c = ref_r = None
    if _has_reference(records).all() and len(records):
        ref_c = _uniform_tokens(records.ref_logp_p.to_numpy(float), len_p, dtype)
        ref_r = _uniform_tokens(records.ref_logp_n.to_numpy(float), len_n, dtype)
    return PairLogps(chosen, rejected, ref_c, ref_r)


def _has_reference(records: pd.DataFrame) -> pd.Series:
    if not {"ref_logp_p", "ref_logp_n"} <= set(records.columns):
        return pd.Series(False, index=records.index)
    return (np.isfinite(records.ref_logp_p.astype(float))
            & np.isfinite(records.ref_logp_n.astype(float)))


def _probe_side(lengths: torch.Tensor, spread: bool) -> TokenLogps:
    """A fixed batch of responses: the same sums and counts, tokens equal or spread around them."""
    width = int(lengths.max())
    mask = torch.arange(width)[None, :] < lengths[:, None]
    mean = -1.5 - 0.25 * torch.arange(len(lengths), dtype=torch.float64)[:, None]
    position = torch.arange(width, dtype=torch.float64)[None, :]
    centred = (position - (lengths[:, None] - 1) / 2) / lengths[:, None].clamp(min=1)
    logps = mean + (0.9 * centred if spread else 0.0)  # spread: zero-sum deviations, still < 0
    return TokenLogps(logps * mask, mask)


@functools.cache
def sums_suffice(name: str) -> bool:
    """Whether objective `name` is a function of each response's summed log-prob and token count
    alone, so that `sequence_logps` reproduces it exactly.

    Checked, not listed: the objective is computed on a fixed batch twice, once with equal token
    log-probs and once with the same sums spread unevenly over the tokens, at its default
    parameters and at every choice of a parameter that has choices (e.g. norm); it suffices when
    the losses and margins agree. (Unlikelihood, log(1 − p_t) per token, and LD-DPO, which weighs
    tokens by position, do not.)
    """
    objective = OBJECTIVES[name]
    lengths_c, lengths_r = torch.tensor([3, 8, 5, 1, 6]), torch.tensor([7, 2, 5, 6, 1])
    variants = [{}]
    for pname, spec in objective.params.items():
        if spec.choices:
            variants = [{**v, pname: c} for v in variants for c in spec.choices]
    for params in variants:
        outputs = []
        for spread in (False, True):
            sides = [_probe_side(n, spread) for n in (lengths_c, lengths_r)]
            refs = [TokenLogps(s.logps * 1.1, s.mask) for s in sides]  # a reference unlike π
            logps = PairLogps(*sides, *refs) if objective.needs_reference else PairLogps(*sides)
            outputs.append(compute(name, logps, **params))
        same = (torch.allclose(outputs[0].loss, outputs[1].loss, rtol=1e-9, atol=1e-9)
                and torch.allclose(outputs[0].margin, outputs[1].margin, rtol=1e-9, atol=1e-9))
        if not same:
            return False
    return True


def what_if_objectives(records: pd.DataFrame) -> pd.DataFrame:
    """Which objectives `recompute` can give for `records`, and why not where it cannot.

    One row per registered objective: objective, available (bool), reason ('' where available),
    needs_reference, params (the `WHAT_IF_PARAMS` it takes, e.g. ("beta",)), n_rows (the rows it
    is computed on: all, or for reference objectives those with reference log-probs).
    """
    has_ref = int(_has_reference(records).sum())
    rows = []
    for name, objective in OBJECTIVES.items():
        n_rows = has_ref if objective.needs_reference else len(records)
        reason = ""
        if not sums_suffice(name):
            reason = ("needs each token's log-probability; the records keep only each "
                      "response's sum")
        elif objective.needs_reference and not has_ref:
            reason = ("needs the reference log-probs, which these records lack (runs of "
                      "reference-free objectives do not log them)")
        rows.append({"objective": name, "available": not reason, "reason": reason,
                     "needs_reference": objective.needs_reference,
                     "params": tuple(p for p in WHAT_IF_PARAMS if p in objective.params),
                     "n_rows": n_rows if not reason else 0})
    return pd.DataFrame(rows)


def objective_params(name: str, beta: float | None = None, gamma: float | None = None,
                     norm: str | None = None) -> dict:
    """All parameters of objective `name`: the given β / γ / norm where it takes them (None:
    its default), defaults for the rest; checked by `objectives.resolve_params`."""
    given = {"beta": beta, "gamma": gamma, "norm": norm}
    takes = OBJECTIVES[name].params
    return resolve_params(name, {k: v for k, v in given.items() if v is not None and k in takes})


def recompute(records: pd.DataFrame, objectives: Sequence[str] | None = None, *,
              beta: float | None = None, gamma: float | None = None, norm: str | None = None,
              chunk: int = 4096) -> pd.DataFrame:
    """Each objective's per-pair loss and margin on the records' logged log-probs.

    objectives: names in `OBJECTIVES` (None: every one `what_if_objectives` marks available);
    asking for one that is not available raises ValueError with the reason. beta, gamma, norm:
    applied to the objectives that take them (None: each objective's default). Reference
    objectives are computed on the rows that have reference log-probs. Rows go through
    `objectives.compute` `chunk` at a time.
    Returns, long: run_id, label, seed, step, pair_id (those present), dlen (len_n − len_p),
    objective, loss, margin; one row per record row and objective.
    """
    table = what_if_objectives(records).set_index("objective")
    names = list(table.index[table.available]) if objectives is None else list(objectives)
    for name in names:
        if name not in table.index:
            raise ValueError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
        if not table.available[name]:
            raise ValueError(f"{name}: cannot be recomputed from these records: "
                             f"{table.reason[name]}")
    keep = [c for c in ("run_id", "label", "seed", "step", "pair_id") if c in records.columns]
    has_ref = _has_reference(records)
    frames = []
    for name in names:
        params = objective_params(name, beta, gamma, norm)
        rows = records[has_ref] if OBJECTIVES[name].needs_reference else records
        losses, margins = [], []
        for start in range(0, len(rows), chunk):
            out = compute(name, sequence_logps(rows.iloc[start:start + chunk]), **params)
            losses.append(out.loss.numpy())
            margins.append(out.margin.numpy())
        frame = rows[keep].assign(dlen=(rows.len_n - rows.len_p).to_numpy(), objective=name)
        frame["loss"] = np.concatenate(losses) if losses else np.array([])
        frame["margin"] = np.concatenate(margins) if margins else np.array([])
        frames.append(frame)
    columns = [*keep, "dlen", "objective", "loss", "margin"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def what_if_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per objective of a `recompute` frame: n, loss (mean), margin_mean, margin_std,
    share_positive (margin > 0), and r2, spearman, slope of the margin on dlen
    (`diagnostics.length_effect`, no bootstrap): how much of the margin's spread length explains.
    """
    _require(frame, ["objective", "dlen", "loss", "margin"], "what_if_summary")
    fits = dg.length_effect(frame, x="dlen", y="margin", by=("objective",), n_boot=0,
                            unit="pair_id" if "pair_id" in frame else None)
    stats = frame.groupby("objective", sort=False).agg(
        n=("margin", "size"), loss=("loss", "mean"), margin_mean=("margin", "mean"),
        margin_std=("margin", "std"), share_positive=("margin", lambda m: float((m > 0).mean())))
    out = stats.reset_index().merge(fits[["objective", "r2", "spearman", "slope"]],
                                    on="objective", how="left")
    return out


def draw_what_if(frame: pd.DataFrame, *, order: Sequence[str] | None = None, max_points=3000):
    """The recomputed margin against the length difference, one panel per objective
    (`plots.gap_vs_length`: its OLS line and R² in each title)."""
    order = [o for o in (order or dict.fromkeys(frame.objective)) if o in set(frame.objective)]
    return plots.gap_vs_length(frame, x="dlen", y="margin", col="objective", col_order=order,
                               max_points=max_points, height=2.5, aspect=1.0)


class WhatIf(widgets.VBox):
    """β, γ and the normalisation in; every chosen objective's recomputed per-pair margin
    against Δlen (one panel each) and a summary table out. Build it with `what_if`.

    Controls: `objectives`, `default_beta` (True: each objective's own β), `beta`, `gamma`
    (SimPO's target margin), `norm` ("default" or "sum" / "mean"). Shown: `figure` (an Output
    holding one PNG), `summary` (HTML table), `note` (what cannot be recomputed, and why),
    `status`. `frame` and `table` are the last `recompute` and `what_if_summary` results.
    """

    def __init__(self, records: pd.DataFrame, *, objectives: Sequence[str] | None = None):
        self.records = records
        self.availability = what_if_objectives(records)
        available = list(self.availability.objective[self.availability.available])
        if not available:
            raise ValueError("what_if: no objective can be recomputed from these records")
        first = [o for o in (objectives or available[:4]) if o in available] or available[:4]
        self.objectives = widgets.SelectMultiple(options=available, value=first,
                                                 rows=min(len(available), 8),
                                                 description="objectives")
        self.default_beta = widgets.Checkbox(value=True, description="each objective's own β",
                                             indent=False)
        self.beta = widgets.FloatLogSlider(value=0.1, base=10, min=-2, max=1, step=0.05,
                                           description="β", continuous_update=False,
                                           readout_format=".3g", disabled=True)
        self.gamma = widgets.FloatSlider(value=OBJECTIVES["simpo"].params["gamma"].default
                                         if "simpo" in OBJECTIVES else 1.0, min=0.0, max=5.0,
                                         step=0.1, description="γ (margin)",
                                         continuous_update=False)
        self.norm = widgets.ToggleButtons(options=["default", "sum", "mean"],
                                          description="normalise")
        self.status = widgets.HTML()
        self.note = widgets.HTML(_unavailable_html(self.availability))
        self.summary = widgets.HTML()
        self.figure = widgets.Output()
        self.frame: pd.DataFrame | None = None
        self.table: pd.DataFrame | None = None
        controls = widgets.HBox([self.objectives,
                                 widgets.VBox([self.default_beta, self.beta, self.gamma,
                                               self.norm])])
        super().__init__([controls, self.status, self.figure, self.summary, self.note])
        _css_classes(self, "what-if", objectives=self.objectives, beta=self.beta,
                     norm=self.norm, status=self.status, figure=self.figure,
                     summary=self.summary)
        for control in (self.objectives, self.default_beta, self.beta, self.gamma, self.norm):
            control.observe(self._on_change, names="value")
        self.update()

    def params(self) -> dict:
        """The β / γ / norm the controls set (None: each objective's default)."""
        return {"beta": None if self.default_beta.value else float(self.beta.value),
                "gamma": float(self.gamma.value),
                "norm": None if self.norm.value == "default" else self.norm.value}

    def _on_change(self, _change) -> None:
        self.update()

    def update(self) -> None:
        """Recompute from the controls and redraw."""
        self.beta.disabled = self.default_beta.value
        names = list(self.objectives.value)
        if not names:
            self.frame = self.table = None
            self.status.value = "<b>Choose at least one objective.</b>"
            self.summary.value = ""
            _show(self.figure)
            return
        params = self.params()
        self.frame = recompute(self.records, names, **params)
        self.table = what_if_summary(self.frame)
        self.status.value = _params_html(names, params)
        self.summary.value = _summary_html(self.table)
        _show(self.figure, _display_png(draw_what_if(self.frame, order=names), "what if"))


def _params_html(names: Sequence[str], params: Mapping) -> str:
    parts = []
    for name in names:
        resolved = objective_params(name, **params)
        shown = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
                          for k, v in resolved.items())
        parts.append(f"<b>{html.escape(name)}</b>({html.escape(shown)})")
    return "Recomputed from the logged log-probs: " + "; ".join(parts)


def _summary_html(table: pd.DataFrame) -> str:
    view = pd.DataFrame({
        "objective": table.objective, "pairs": table.n,
        "mean loss": table.loss.map("{:.3f}".format),
        "margin mean": table.margin_mean.map("{:.3f}".format),
        "margin std": table.margin_std.map("{:.3f}".format),
        "margin > 0": table.share_positive.map("{:.0%}".format),
        "R² of margin on Δlen": table.r2.map("{:.2f}".format),
        "Spearman ρ": table.spearman.map("{:.2f}".format),
    })
    return view.to_html(index=False, classes="prefstudy-what-if", border=0)


def _unavailable_html(availability: pd.DataFrame) -> str:
    missing = availability[~availability.available]
    if missing.empty:
        return ""
    items = "".join(f"<li><b>{html.escape(r.objective)}</b>: {html.escape(r.reason)}</li>"
                    for r in missing.itertuples())
    return f"<p>Not recomputed here:</p><ul>{items}</ul>"


def what_if(records: pd.DataFrame | None = None, *,
            objectives: Sequence[str] | None = None) -> WhatIf:
    """The what-if view over `records` (per-pair records; None: the committed study's training
    records). Every row is recomputed: pass, e.g., one run's records to compare objectives on the
    same model states. `objectives`: those selected at first (default: the first four that can
    be recomputed)."""
    if records is None:
        records = load_runs()
    return WhatIf(records, objectives=objectives)


__all__ = ["Explorer", "ExplorerData", "WhatIf", "draw_cloud", "draw_trajectories",
           "draw_what_if", "explore", "explorer_data", "length_bins", "notebook_runs",
           "objective_params", "recompute", "run_pairs", "sequence_logps", "study_labels",
           "sums_suffice", "what_if", "what_if_objectives", "what_if_summary"]
