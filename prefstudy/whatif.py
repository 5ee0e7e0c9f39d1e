"""What if: every objective's per-pair loss and margin recomputed from the logged log-probs, on
parameters a reader chooses, without retraining.

`what_if(records)` builds the `WhatIf` view: the runs of one setting (one label at one learning
rate, its seeds pooled: `views.run_settings`; runs of different settings are never pooled), β,
SimPO's margin γ and the normalisation in; each chosen objective's recomputed margin against the
length difference and a summary table out.
The numbers are `recompute` and `what_if_summary`, pure functions; the formulas are the
registry's own: each record row becomes a `PairLogps` (`recompute.sequence_logps`) and goes
through `objectives.compute`. Which objectives the logged sums can give, and why not the others,
is `recompute.sums_suffice` / `recompute.cannot_recompute`, tabulated by `what_if_objectives`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd

from . import diagnostics as dg
from . import plots
from .columns import require_columns
from .formatting import number, percent
from .objectives import OBJECTIVES, compute, resolve_params
from .recompute import cannot_recompute, has_reference_logps, sequence_logps
from .tables import load_tables
from .views import add_classes, display_png, message, run_settings, show

WHAT_IF_PARAMS = ("beta", "gamma", "norm")  # the parameters the what-if view lets a reader set

# ---------------------------------------------------------------------------------------------
# Numbers


def what_if_objectives(records: pd.DataFrame) -> pd.DataFrame:
    """Which objectives `recompute` can give for `records`, and why not where it cannot.

    One row per registered objective: objective, available (bool), reason ('' where available:
    `recompute.cannot_recompute`), needs_reference, params (the `WHAT_IF_PARAMS` it takes, e.g.
    ("beta",)), n_rows (the rows it is computed on: all, or for reference objectives those with
    reference log-probs).
    """
    has_ref = int(has_reference_logps(records).sum())
    rows = []
    for name, objective in OBJECTIVES.items():
        n_rows = has_ref if objective.needs_reference else len(records)
        reason = cannot_recompute(name, has_reference=bool(has_ref))
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
    Returns, long: run_id, label, lr, seed, step, pair_id (those present), dlen (len_n − len_p),
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
    keep = [c for c in ("run_id", "label", "lr", "seed", "step", "pair_id")
            if c in records.columns]
    has_ref = has_reference_logps(records)
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
    """Per objective of a `recompute` frame, and per label and learning rate where the frame
    has them (runs of different settings are summarised apart, never pooled): n, loss (mean),
    margin_mean, margin_std, share_positive (margin > 0), and r2, spearman, slope of the margin
    on dlen (`diagnostics.length_effect`, no bootstrap): how much of the margin's spread length
    explains. Returns those of label, lr present, objective, then the statistics.
    """
    require_columns(frame, ["objective", "dlen", "loss", "margin"], "what_if_summary")
    keys = [c for c in ("label", "lr") if c in frame.columns] + ["objective"]
    fits = dg.length_effect(frame, x="dlen", y="margin", by=keys, n_boot=0,
                            unit="pair_id" if "pair_id" in frame else None)
    stats = frame.groupby(keys, sort=False, dropna=False).agg(
        n=("margin", "size"), loss=("loss", "mean"), margin_mean=("margin", "mean"),
        margin_std=("margin", "std"), share_positive=("margin", lambda m: float((m > 0).mean())))
    out = stats.reset_index().merge(fits[[*keys, "r2", "spearman", "slope"]], on=keys,
                                    how="left")
    return out


# ---------------------------------------------------------------------------------------------
# The view


def draw_what_if(frame: pd.DataFrame, *, order: Sequence[str] | None = None, max_points=3000,
                 title: str | None = None):
    """The recomputed margin against the length difference, one panel per objective
    (`plots.gap_vs_length`: its OLS line and R² in each title); `title` above them (say whose
    records they are)."""
    order = [o for o in (order or dict.fromkeys(frame.objective)) if o in set(frame.objective)]
    grid = plots.gap_vs_length(frame, x="dlen", y="margin", col="objective", col_order=order,
                               max_points=max_points, height=2.5, aspect=1.0)
    if title:
        grid.figure.suptitle(title, y=1.08, fontsize="medium")
    return grid


class WhatIf(widgets.VBox):
    """The runs of one setting, β, γ and the normalisation in; every chosen objective's
    recomputed per-pair margin against Δlen (one panel each) and a summary table out. Build it
    with `what_if`.

    Controls: `setting` (whose records: one label at one learning rate, its seeds pooled, as
    `views.run_settings` groups them), `objectives` (those its records can give),
    `default_beta` (True: each objective's own β), `beta`, `gamma` (SimPO's target margin),
    `norm` ("default" or "sum" / "mean"). Shown: `figure` (an Output holding one PNG),
    `summary` (HTML table), `note` (what cannot be recomputed, and why), `status` (whose
    records, how many runs, the parameters). `frame` and `table` are the last `recompute` and
    `what_if_summary` results.

    settings: `views.run_settings` of the records' runs (None: by label and lr); setting: the
    one shown first (None: the first label's largest learning rate); order: the labels' order.
    """

    def __init__(self, records: pd.DataFrame, *, objectives: Sequence[str] | None = None,
                 settings: pd.DataFrame | None = None, setting: str | None = None,
                 order: Sequence[str] | None = None):
        self.records = records
        settings = run_settings(records) if settings is None else settings
        self.settings = settings[settings.run_id.isin(set(records.run_id))]
        self.setting = self._setting_control(setting, order)
        self.availability = what_if_objectives(self.rows)
        available = list(self.availability.objective[self.availability.available])
        if not available:
            raise ValueError("what_if: no objective can be recomputed from these records")
        first = [o for o in (objectives or available[:4]) if o in available] or available[:4]
        self._chosen = list(objectives or first)
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
        self._quiet = False
        controls = widgets.HBox([widgets.VBox([self.setting, self.objectives]),
                                 widgets.VBox([self.default_beta, self.beta, self.gamma,
                                               self.norm])])
        super().__init__([controls, self.status, self.figure, self.summary, self.note])
        add_classes(self, "what-if", setting=self.setting, objectives=self.objectives,
                     beta=self.beta, norm=self.norm, status=self.status, figure=self.figure,
                     summary=self.summary)
        self._observe_controls()
        self.update()

    def _setting_control(self, setting: str | None, order: Sequence[str] | None
                         ) -> widgets.Dropdown:
        """The setting control (`_setting_options`, labels in `order`), showing `setting` (None:
        the first option); ValueError naming the settings where `setting` is not one of them."""
        options = _setting_options(self.settings, order)
        if setting is not None and setting not in dict(options).values():
            raise ValueError(f"what_if: no setting {setting!r}; these records have: "
                             f"{', '.join(dict(options).values())}")
        return widgets.Dropdown(options=options, value=setting or options[0][1],
                                description="records of", layout=widgets.Layout(width="28em"))

    def _observe_controls(self) -> None:
        """Redraw on every control's change; another setting first offers the objectives its
        records can give (`_on_setting`)."""
        self.setting.observe(self._on_setting, names="value")
        for control in (self.objectives, self.default_beta, self.beta, self.gamma, self.norm):
            control.observe(self._on_change, names="value")

    @property
    def runs(self) -> pd.DataFrame:
        """The runs of the chosen setting (`views.run_settings` rows)."""
        return self.settings[self.settings.setting == self.setting.value]

    @property
    def rows(self) -> pd.DataFrame:
        """The records of the chosen setting's runs: what is recomputed."""
        return self.records[self.records.run_id.isin(set(self.runs.run_id))]

    def _on_setting(self, _change) -> None:
        """Another setting: the objectives its records can give (the chosen ones kept where
        they can), then redraw."""
        self.availability = what_if_objectives(self.rows)
        self.note.value = _unavailable_html(self.availability)
        available = list(self.availability.objective[self.availability.available])
        keep = [o for o in self._chosen if o in available]
        self._quiet = True
        try:
            self.objectives.options = available
            self.objectives.value = keep or available[:4]
        finally:
            self._quiet = False
        self.update()

    def params(self) -> dict:
        """The β / γ / norm the controls set (None: each objective's default)."""
        return {"beta": None if self.default_beta.value else float(self.beta.value),
                "gamma": float(self.gamma.value),
                "norm": None if self.norm.value == "default" else self.norm.value}

    def _on_change(self, change) -> None:
        if change.owner is self.objectives and not self._quiet:
            self._chosen = list(self.objectives.value)
        if not self._quiet:
            self.update()

    def update(self) -> None:
        """Recompute from the controls and redraw."""
        self.beta.disabled = self.default_beta.value
        names = list(self.objectives.value)
        if not names:
            self.frame = self.table = None
            self.status.value = "<b>Choose at least one objective.</b>"
            self.summary.value = ""
            show(self.figure)
            return
        params = self.params()
        self.frame = recompute(self.rows, names, **params)
        self.table = what_if_summary(self.frame)
        whose = _runs_text(self.runs)
        self.status.value = f"<b>{html.escape(whose)}</b> · " + _params_html(names, params)
        self.summary.value = _summary_html(self.table)
        if self.frame.empty:
            show(self.figure, message(f"{whose}: no records to recompute"))
            return
        show(self.figure, display_png(draw_what_if(self.frame, order=names, title=whose),
                                      "what if"))


def _setting_options(settings: pd.DataFrame, order: Sequence[str] | None) -> list[tuple]:
    """(shown, setting) for each setting: labels in `order` (then as they come), each label's
    largest learning rate first."""
    per = settings.drop_duplicates("setting")
    labels = list(dict.fromkeys([*(order or []), *per.label]))
    per = per.assign(rank=per.label.map({lab: i for i, lab in enumerate(labels)}))
    per = per.sort_values(["rank", "lr", "setting"], ascending=[True, False, True],
                          na_position="last")
    return [(f"{r.setting} ({r.n_runs} run{'s' if r.n_runs > 1 else ''})", r.setting)
            for r in per.itertuples()]


def _runs_text(runs: pd.DataFrame) -> str:
    """Whose records, in words: the setting, and its one run or its seeds' runs pooled."""
    setting = runs.setting.iloc[0]
    seeds = ", ".join(map(str, sorted(runs.seed.unique())))
    if len(runs) == 1:
        return f"{setting}: one run (seed {seeds})"
    return f"{setting}: {len(runs)} runs pooled, seeds {seeds} of one setting"


def _params_html(names: Sequence[str], params: Mapping) -> str:
    """The parameters each objective is recomputed with, as HTML."""
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
        "mean loss": table.loss.map(lambda v: number(v, 3)),
        "margin mean": table.margin_mean.map(lambda v: number(v, 3)),
        "margin std": table.margin_std.map(lambda v: number(v, 3)),
        "margin > 0": table.share_positive.map(lambda v: percent(v, 0)),
        "R² of margin on Δlen": table.r2.map(number),
        "Spearman ρ": table.spearman.map(number),
    })
    return view.to_html(index=False, classes="prefstudy-what-if", border=0)


def _unavailable_html(availability: pd.DataFrame) -> str:
    missing = availability[~availability.available]
    if missing.empty:
        return ""
    items = "".join(f"<li><b>{html.escape(r.objective)}</b>: {html.escape(r.reason)}</li>"
                    for r in missing.itertuples())
    return f"<p>Not recomputed here:</p><ul>{items}</ul>"


def what_if(records: pd.DataFrame | None = None, *, objectives: Sequence[str] | None = None,
            setting: str | None = None) -> WhatIf:
    """The what-if view over `records` (per-pair records with label and lr; None: the
    committed study's training records, its runs' settings read from their configurations).
    The rows of one setting at a time are recomputed (`WhatIf.setting`: one label at one
    learning rate, seeds pooled), so objectives are compared on the same model states.
    `objectives`: those selected at first (default: the first four that can be recomputed);
    `setting`: the one shown first, e.g. "dpo · lr 0.001" (default: the first label's largest
    learning rate)."""
    if records is not None:
        return WhatIf(records, objectives=objectives, setting=setting)
    tables = load_tables()
    return WhatIf(tables.records, objectives=objectives, setting=setting, order=tables.order,
                  settings=run_settings(tables.runs, tables.configs))


__all__ = ["WHAT_IF_PARAMS", "WhatIf", "draw_what_if", "objective_params", "recompute", "what_if",
           "what_if_objectives", "what_if_summary"]
