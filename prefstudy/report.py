"""The report: every figure and the report page, regenerated from runs.

`build_report(runs, out)` reads the runs' tables once (`tables.load_tables`), takes every
finding from `findings.summarise` (seeded bootstraps: the same runs give the same numbers, byte
for byte), draws each figure with one call to `prefstudy.plots`, and writes `out/README.md`,
`out/figures/*.png` and `out/report.json` (REPORT_FILE: which runs the report was made from).
`out` defaults to where the runs' report belongs (`default_out`): `<runs>/report`, as
`prefstudy study` writes it, or `reports/` for the committed study in reports/runs. The report is
built in a temporary sibling folder and moved into place only when complete, and a folder that
holds the report of other runs is never replaced unless `force=True`. This module writes prose
and tables only; nothing here trains or loads a model, and numbers come from records, never
typed by hand.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from . import findings, plots
from .auditpage import save_figure as _save
from .auditpage import sections as audit_sections
from .auditstats import gradient_key
from .errors import PrefstudyError
from .findings import Findings, in_order
from .formatting import interval_label, markdown_table, number, percent
from .paths import in_repo
from .records import default_runs_dir
from .tables import Tables, load_tables
from .theme import from_defaults, study_palette

PREDICTOR_NAMES = {"edit_distance": "edit distance", "entanglement": "entanglement",
                   "ches": "CHES", "ln_ches": "ln-CHES"}


# --------------------------------------------------------------------------- provenance


def _given(config: dict, key: str) -> str:
    """A config field as the page shows it: "?" where a run made elsewhere lacks it."""
    return str(config[key]) if key in config else "?"


def provenance(tables: Tables) -> str:
    metas = [tables.metas[f.name] for f in tables.folders]
    configs = [tables.configs[f.name] for f in tables.folders]
    env = metas[0].get("environment", {})
    cfg = configs[0]  # a run made elsewhere (an integration) may lack some fields
    seeds = sorted({c.get("seed") for c in configs}, key=str)
    statuses = pd.Series([m.get("status", "?") for m in metas]).value_counts().to_dict()
    devices = sorted({m.get("environment", {}).get("device", "?") for m in metas})
    trainable = ("all blocks" if cfg.get("trainable_blocks") is None
                 else f"the top {cfg['trainable_blocks']} blocks")
    lrs = len({c.get("lr") for c in configs})
    evals = sorted(set(tables.evals.step)) if len(tables.evals) else []
    seconds = tables.runs.seconds.sum() if len(tables.runs) else float("nan")
    given = partial(_given, cfg)
    return "\n".join([
        f"- Runs: {len(tables.folders)} ({', '.join(f'{v} {k}' for k, v in statuses.items())}), "
        f"{len(tables.labels)} configurations × {lrs} learning rate(s) ({_lrs(tables)}) × "
        f"seeds {seeds}. The seeds change only the order of the training pairs: every run "
        "starts from the same weights, so seeds are data-order replicates, not independent "
        "models.",
        f"- Model: `{given('model')}`, {trainable} trainable, {given('steps')} steps of "
        f"{given('batch_size')} pairs, AdamW, gradient clipping {cfg.get('max_grad_norm')}, "
        f"sequences up to {given('max_length')} tokens (prompt up to "
        f"{given('max_prompt_length')}), dtype {given('dtype')}; held-out evaluations at steps "
        f"{', '.join(str(int(s)) for s in evals) or '–'} (step 0: the starting model itself).",
        f"- Data: {given('pairs_train')} training pairs from `{given('data')}` (a stratified "
        f"sample over language × category, the same in every run), {given('n_heldout')} held-out "
        f"pairs from `{given('heldout')}` (balanced over language × category), "
        f"{given('n_neutral')} neutral held-out passages, {given('n_probes')} probe prompts "
        "(harmful and benign); greedy generations, one sample per probe.",
        *_left_out(configs), *_past_uniform(tables.folders, metas),
        f"- Hardware: {'; '.join(devices)} ({env.get('cpu_count')} cores); torch "
        f"{env.get('torch')}, transformers {env.get('transformers')}; prefstudy commit "
        f"`{env.get('git_commit')}`; started {min(m.get('started', '') for m in metas)}; "
        f"training took {seconds / 60:.0f} min in all (the runs' own start-to-end times).",
    ])


def _counted(configs: list[dict], key: str) -> str:
    values = sorted({c[key] for c in configs if key in c})
    return " to ".join(str(v) for v in (values[:1] + values[1:][-1:])) if values else "–"


def _left_out(configs: list[dict]) -> list[str]:
    """What loading and truncation left out or cut, as the runs' configs counted it (no line
    where their configs hold no such count, as in runs made by the integrations)."""
    if not any("records_skipped" in c for c in configs):
        return []
    line = (f"- Left out or cut (per run): {_counted(configs, 'records_skipped')} records skipped "
            f"while loading, {_counted(configs, 'pairs_dropped_by_truncation')} pairs dropped by "
            f"truncation, {_counted(configs, 'pairs_truncated')} of {_counted(configs, 'pairs_train')} training "
            "pairs truncated")
    if any("heldout_records_skipped" in c for c in configs):
        line += (f"; held-out: {_counted(configs, 'heldout_records_skipped')} skipped, "
                 f"{_counted(configs, 'heldout_pairs_dropped_by_truncation')} dropped, "
                 f"{_counted(configs, 'heldout_pairs_truncated')} truncated")
    return [line + "."]


def _past_uniform(folders: list[Path], metas: list[dict]) -> list[str]:
    """Runs whose per-token loss passed ln|V| (a uniform guess) by more than a nat."""
    known = [m for m in metas if "uniform_loss" in m]
    if not known:
        return []
    flagged = [f"`{f.name}` (step {m['above_uniform_step']}, up to "
               f"{m['above_uniform_max_loss']:.3g} nats)"
               for f, m in zip(folders, metas) if "above_uniform_step" in m]
    bound = f"ln|V| = {known[0]['uniform_loss']:.2f} nats per token, a uniform guess"
    return [f"- Past {bound}, by more than a nat: "
            + (", ".join(flagged) if flagged else f"no run (of {len(known)})") + "."]


def _lrs(tables: Tables) -> str:
    values = sorted({float(v) for v in tables.runs.lr.dropna()})
    return ", ".join(f"{v:g}" for v in values) or "?"


def _cell(row, name: str, digits: int = 2) -> str:
    return interval_label(row[name], row.get(f"{name}_lo"), row.get(f"{name}_hi"), digits=digits)


def _share_cell(row) -> str:
    if not row.n:
        return "– (no evaluation where neutral text held)"
    return (f"{row.k} of {row.n} ({percent(row.share, 0)} [{percent(row.share_lo, 0)}, "
            f"{percent(row.share_hi, 0)}])")


def length_section(tables: Tables, out: Path, audit_parts: dict | None) -> str:
    """C1 from the audit of the pairs the study trains on, at the starting model."""
    if audit_parts is None:
        return ("This study has no audit of its training pairs (`prefstudy.study.audit_study`, "
                "run by `prefstudy study`), so C1 is not measured here.\n")
    return "\n".join([
        "Measured at the starting model on the pairs the study trains on, cut as training cuts "
        "them (`prefstudy.study.audit_study`, the audit's page is in the study's `audit/` "
        "folder). Each pair is one unit; intervals are 95% pair bootstraps, shares exact "
        "Clopper–Pearson.", "", audit_parts["claims"], "", audit_parts["length"],
        "### Dose-response: only the length changes", "", audit_parts["dose"]])


def noise_section(found: Findings, out: Path, order: list[str],
                  audit_parts: dict | None) -> str:
    text = []
    if audit_parts is not None:
        text += ["### At the starting model", "", audit_parts["gradients"]]
    if not len(found.noise):
        return "\n".join(text + ["Gradient statistics were off in the training runs.", ""])
    noise = in_order(found.noise, order)
    _save(plots.gradient_agreement(noise, order=order), out / "figures" / "gradient_agreement.png")
    view = pd.DataFrame({
        "objective": noise.label, "runs": noise.n_seeds,
        "leave-one-out cosine (orthogonal: 0)": noise.grad_cos.map(partial(number, digits=3)),
        "cosine incl. the pair itself": noise.grad_cos_with_self.map(partial(number, digits=3)),
        "the same, orthogonal gradients": noise.grad_cos_with_self_orthogonal.map(
            partial(number, digits=3)),
        "pair rows pulling against the rest": noise.share_opposed.map(percent),
        "noise scale tr(Σ)/|G|², pooled": noise.gns.map(partial(number, digits=1)),
    })
    return "\n".join(text + [
        "### During training", "",
        "Every training step of every run (all learning rates): each pair's own gradient "
        "(linear weights of the trainable blocks) against the mean gradient of the other pairs "
        "of its batch — the leave-one-out cosine, 0 for orthogonal gradients (the line in the "
        "figure). Beside it the cosine with the batch mean including the pair, which "
        "orthogonal gradients of the same norms already raise to |g_i|/√Σ_j|g_j|² (0.5 at "
        "B = 4), and the gradient noise scale with numerator and denominator pooled over a "
        "run's steps (McCandlish et al. 2018). Means over pair rows and runs; no interval: "
        "rows of one pair at many steps are not independent pairs.", "",
        markdown_table(view), "", "![gradient agreement](figures/gradient_agreement.png)", ""])


def collapse_section(tables: Tables, found: Findings, out: Path, order: list[str]) -> str:
    return "\n".join([*_frontier_part(found, out, order), *_matched_part(tables, found, out, order),
                      *_collapse_part(found, order), *_losses_part(tables, out, order)])


def _frontier_part(found: Findings, out: Path, order: list[str]) -> list[str]:
    _save(plots.family_frontier(found.paths, hue_order=order), out / "figures" / "frontier.png")
    return [
        "Each run is a path: one point per evaluation, held-out margin gain (the per-token gap "
        "loss_n − loss_p on held-out pairs, minus its value at step 0: preference progress) "
        "against Δ NLL of neutral held-out text (nats per token: capability cost), from the "
        "starting model at (0, 0); one panel per family of objectives, on shared axes that are "
        "linear near 0 and logarithmic beyond. Markers tell the learning rates apart. An "
        "objective that learns without breaking runs up the left edge.", "",
        "![progress against cost](figures/frontier.png)", ""]


def _matched_part(tables: Tables, found: Findings, out: Path, order: list[str]) -> list[str]:
    if not len(found.matched):
        return []
    table = in_order(found.matched.sort_values("level", kind="stable"), order)
    _save(plots.matched_chosen(table, hue_order=order), out / "figures" / "matched_chosen.png")
    never = [lab for lab in order if lab in set(table.label)
             and not table[table.label == lab].n_runs.any()]
    table = table[table.n_runs > 0]
    view = pd.DataFrame({
        "objective": table.label, "margin gain": table.level.map("+{:g}".format),
        "runs reaching it": table.n_runs.astype(str) + " of " + table.label.map(
            tables.runs.groupby("label").size()).astype(str),
        "Δ chosen loss": [_cell(r, "d_chosen") for _, r in table.iterrows()],
        "Δ rejected loss": [_cell(r, "d_rejected") for _, r in table.iterrows()],
        "Δ neutral NLL": [_cell(r, "d_neutral", 3) for _, r in table.iterrows()]})
    return [
        "**At matched progress.** Where each objective's runs first reached the same "
        "held-out margin gain (nats per token), interpolated along their paths and averaged "
        "over the runs (learning rates) that reached it: the change of the held-out chosen "
        "and rejected losses and of neutral NLL since step 0, nats per token. Intervals: "
        f"95% bootstrap over the {int(table.n_pairs.max())} held-out pairs (neutral text is "
        "one fixed set, not resampled). Levels: those at least half the objectives reached.",
        "", markdown_table(view), "",
        *([f"No run of {', '.join(never)} reached a margin gain of +{min(found.levels):g}.", ""]
          if never else []),
        "![chosen loss at matched progress](figures/matched_chosen.png)", ""]


def _collapse_part(found: Findings, order: list[str]) -> list[str]:
    col = found.collapse
    col = col.assign(_o=col.label.map({label: i for i, label in enumerate(order)})) \
        .sort_values(["_o", "lr", "seed"])
    view = pd.DataFrame({
        "objective": col.label, "lr": col.lr.map("{:g}".format), "seed": col.seed,
        "collapse onset": col.onset_step.map(lambda v: "–" if pd.isna(v) else f"step {v:g}"),
        "Δ chosen loss at the end": [_cell(r, "d_chosen") for _, r in col.iterrows()],
        "margin gain at the end": col.margin_gain.map(partial(number, digits=2)),
        **({"distinct-2": col.distinct_2.map(partial(number, digits=2)),
            "4-gram repetition": col.repetition.map(percent),
            "Δ neutral NLL (nats/token)": np.log(col.ppl_ratio).map(partial(number, digits=3))}
           if "distinct_2" in col.columns else {}),
        "past a uniform guess": col.above_uniform.map({True: "yes", False: "no"})})
    text = [
        "**Collapse, run by run.** An evaluation collapses when the held-out chosen loss is "
        "above its step-0 value by more than its 95% pair-bootstrap bound while the margin has "
        "grown; the onset is the first of two such evaluations in a row. Degeneration is "
        "judged apart, at the last evaluation: distinct bigrams and repeated 4-grams of the "
        "greedy probe answers, the change of neutral-text NLL (the log of the perplexity "
        "ratio, which for a destroyed model runs to many orders of magnitude), and whether any "
        "per-token "
        "loss passed ln|V| (a uniform guess) by a nat.", "", markdown_table(view), ""]
    if len(found.refusals):
        text += [_refusal_table(found.refusals, order), ""]
    return text


def _losses_part(tables: Tables, out: Path, order: list[str]) -> list[str]:
    top = tables.runs.lr.max()
    records = tables.records[tables.records.lr == top] if pd.notna(top) else tables.records
    _save(plots.normalisation_grid(records, col_order=[lab for lab in order
                                                       if lab in set(records.label)]),
          out / "figures" / "normalisation_grid.png")
    return [f"Training losses of every configuration at the largest learning rate (lr "
            f"{top:g}; each panel on its own scale, bands across seeds where there are "
            "several):", "", "![all normalisations](figures/normalisation_grid.png)", ""]


def _refusal_table(refusal: pd.DataFrame, order: list[str]) -> str:
    wide = {}
    for row in refusal.itertuples():
        wide.setdefault(row.label, {})[row.kind] = (
            f"{row.k} of {row.n} [{percent(row.share_lo, 0)}, {percent(row.share_hi, 0)}]")
    kinds = sorted({k for v in wide.values() for k in v}, key=lambda k: (k != "harmful", k))
    rows = [{"objective": label, **{f"refused, {k} probes": wide[label].get(k, "–")
                                    for k in kinds}}
            for label in ["(start)", *order] if label in wide]
    return ("**Refusals** (greedy answers opening with a refusal phrase), before training and at "
            "the end of each objective's largest-learning-rate run; over-refusal shows on the "
            "benign probes. Exact intervals over probes:\n\n" + markdown_table(pd.DataFrame(rows)))


def displacement_section(found: Findings, out: Path, order: list[str]) -> str:
    shift = in_order(found.displacement, order)
    view = pd.DataFrame({
        "objective": shift.label,
        "where": [f"lr {r.lr:g}, step {r.step:g}" if r.n else "–" for r in shift.itertuples()],
        "margin gain": shift.margin_gain.map(partial(number, digits=2)),
        "Δ neutral NLL": shift.d_neutral.map(partial(number, digits=3)),
        "chosen log-prob fell": [_share_cell(r) for r in shift.itertuples()],
        "Δ chosen − Δ neutral (nats/token)": shift.d_chosen_minus_neutral.map(
            partial(number, digits=3))})
    text = [
        f"Likelihood displacement is the chosen answer's log-probability falling *while neutral "
        f"text holds*. For each objective: of its runs' evaluations where neutral NLL moved by "
        f"at most {findings.NEUTRAL_HOLD:g} nats per token, the one with the largest margin "
        "gain; there, the held-out pairs whose chosen log-prob fell below its step-0 value "
        "(exact Clopper–Pearson interval over pairs), and the chosen loss change minus the "
        "neutral one.", "", markdown_table(view), ""]
    share = shift[shift.n > 0]
    if len(share):
        _save(plots.displacement_shares(share, order=order, max_neutral=findings.NEUTRAL_HOLD),
              out / "figures" / "displacement.png")
        text += ["![displacement where neutral text held](figures/displacement.png)", ""]
    return "\n".join(text + _predictor_table(found, order) + _language_table(found, order))


def _predictor_table(found: Findings, order: list[str]) -> list[str]:
    if not len(found.predictors):
        return []
    predictors = in_order(found.predictors, order)
    wide = predictors.assign(cell=[_cell(r, "rho") for _, r in predictors.iterrows()]) \
        .pivot(index="label", columns="predictor", values="cell")
    wide = wide.reindex(index=[lab for lab in order if lab in wide.index],
                        columns=[c for c in PREDICTOR_NAMES if c in wide.columns])
    wide = wide.rename(columns=PREDICTOR_NAMES)
    return [
        "**What predicts it.** Spearman ρ across held-out pairs between each predictor and "
        "the change of the pair's chosen log-prob at the point above (negative: the larger "
        "the predictor, the more the chosen answer fell); 95% pair-bootstrap intervals. "
        "Edit distance is between chosen and rejected texts; entanglement (the cosine of a "
        "pair's chosen and rejected log-prob gradients), CHES and its length-normalised ln-CHES "
        "(Razin et al. 2024) are "
        "the audit's, at the starting model.", "",
        markdown_table(wide.reset_index().rename(columns={"label": "objective"})), ""]


def _language_table(found: Findings, order: list[str]) -> list[str]:
    lang = found.by_language
    if not len(lang) or lang.lang.nunique() < 2:
        return []
    lang = in_order(lang, order)
    wide = lang.assign(cell=[f"{r.k} of {r.n}" for r in lang.itertuples()]).pivot(
        index="label", columns="lang", values="cell")
    wide = wide.reindex([lab for lab in order if lab in wide.index])
    return ["By language of the held-out pair (chosen log-prob fell, at the same point):",
            "", markdown_table(wide.reset_index().rename(columns={"label": "objective"})), ""]


def generations_section(tables: Tables, order: list[str], per_label: int = 2) -> str:
    gen = tables.generations
    if not len(gen):
        return "No generations were recorded.\n"
    seed0 = gen[gen.seed == gen.seed.min()]
    last = seed0.groupby("run_id").step.transform("max")
    lines = ["Greedy continuations, first seed, before training and at the end. Harmful probes "
             "first.", ""]
    start = seed0[seed0.step == 0].drop_duplicates("probe_id").sort_values(
        ["kind", "probe_id"], ascending=[False, True])
    probes = start.head(per_label)
    for _, probe in probes.iterrows():
        lines += [f"**Probe ({probe.lang}, {probe.kind}):** {probe.prompt}", "",
                  f"- *before training:* {_quote(probe.text)}"]
        end = seed0[(seed0.step == last) & (seed0.probe_id == probe.probe_id)]
        for label in order:
            row = end[end.label == label]
            if len(row):
                lines.append(f"- *{label}:* {_quote(row.text.iloc[0])}")
        lines.append("")
    return "\n".join(lines)


def _quote(text: str) -> str:
    text = " ".join(str(text).split())
    return f"“{text[:160]}{'…' if len(text) > 160 else ''}”" if text else "(empty)"


# --------------------------------------------------------------------------- what held

# The least data each verdict of "What held" rests on. Below it the verdict is "too little data
# to say", naming what would be enough; the numbers are still given beside it, never hidden.
#
# Held-out pairs (C3, C4 and its predictors): a share's exact 95% interval over 20 pairs is
# about ±0.23 wide at one half (10 of 20: [27%, 73%]), so 20 pairs are the least that can tell
# a share of three in four from one half (15 of 20: [51%, 91%]), i.e. resolve a difference of
# about ±0.2; a pair bootstrap of a mean over fewer pairs resolves no more. The committed study
# evaluates 40.
MIN_HELDOUT_PAIRS = 20
# Evaluations after step 0 (C3): an onset is two collapsing evaluations in a row and is never
# declared from the first evaluation after a cold start, so the earliest onset that counts is
# at the 2nd and 3rd; with fewer, a run can neither show collapse nor rule it out.
MIN_EVALUATIONS = 3
# Learning rates (C3's comparison at matched progress): runs at one setting sort objectives by
# how far that setting moved them; matched progress needs a sweep, and two values are the
# least sweep (the study asks for three across a decade, and the committed study has them).
MIN_LEARNING_RATES = 2
# Training pairs (C1, C2, at the starting model): a pair-bootstrap interval of an R² or a mean
# cosine over fewer than 20 pairs is too wide to order summed against token-mean losses. The
# committed study audits 96 (C1) and takes the gradients of 64 (C2).
MIN_TRAINING_PAIRS = 20


def _short(*counts: tuple[int, int, str]) -> str:
    """The counts below their minimum, each (have, need, what) as "4 held-out pairs, at least
    20 needed", joined by "; "; "" where every count suffices."""
    return "; ".join(f"{have} {what}, at least {need} needed" for have, need, what in counts
                     if have < need)


def _verdict(held: bool | None, condition: str = "", *, short: str = "") -> str:
    """held (with its condition), did not hold, could not be judged, or — where `short`
    (`_short`) names data below its minimum — too little data to say, and what would be
    enough."""
    if short:
        return f"too little data to say ({short})"
    if held is None:
        return "could not be judged here"
    return ("held" + (f" ({condition})" if condition else "")) if held else "did not hold"


def _heldout_pairs(tables: Tables, run_ids=None) -> int:
    """The fewest held-out pairs any of the runs (`run_ids`, default all) was evaluated on."""
    evals = tables.evals
    if run_ids is not None and len(evals):
        evals = evals[evals.run_id.isin(set(run_ids))]
    return int(evals.groupby("run_id").pair_id.nunique().min()) if len(evals) else 0


def what_held(tables: Tables, found: Findings, order: list[str]) -> str:
    """One plain sentence per claim, each with the number it rests on: the report's "What
    held" section and the README's findings block. A verdict whose data is below its minimum
    (MIN_HELDOUT_PAIRS, MIN_EVALUATIONS, MIN_LEARNING_RATES, MIN_TRAINING_PAIRS) says "too
    little data to say" and what would be enough."""
    lines = [*_length_line(tables), *_noise_line(tables), *_collapse_lines(tables, found, order),
             *_displacement_lines(found, order)]
    seeds = sorted({int(s) for s in tables.runs.seed.dropna()})
    lines.append(f"- **C5, seeds and intervals:** seeds {seeds} are data-order replicates on one "
                 "starting model; every interval above resamples held-out or training pairs, "
                 "the unit of replication, or is exact over pairs.")
    return "\n".join(lines) + "\n"


def _length_line(tables: Tables) -> list[str]:
    audit = tables.audit
    if audit is None or not len(audit.length):
        return []
    rows = audit.length.set_index("normalisation")
    if not {"sum", "mean"} <= set(rows.index):
        return []
    s, m = rows.loc["sum"], rows.loc["mean"]
    short = _short((int(s.n), MIN_TRAINING_PAIRS, "training pairs"))
    return [
        f"- **C1, the gap follows length:** "
        f"{_verdict(bool(s.r2_lo > m.r2_hi), 'for summed losses', short=short)}. "
        f"On the {int(s.n)} training pairs at the starting model, Δlen explains R² = "
        f"{interval_label(s.r2, s.r2_lo, s.r2_hi, digits=3)} of the summed gap and "
        f"{interval_label(m.r2, m.r2_lo, m.r2_hi, digits=3)} of the token-mean gap "
        "(pair bootstrap)."]


def _noise_line(tables: Tables) -> list[str]:
    audit = tables.audit
    if audit is None or not len(audit.gradient_summary):
        return []
    g = audit.gradient_summary
    key = gradient_key(audit.gradients)
    sums, means = g[g[key] == "naive-sum"], g[g[key] == "naive-mean"]
    if not len(sums) or not len(means):
        return []
    s, m = sums.iloc[0], means.iloc[0]
    short = _short((int(s.n_pairs), MIN_TRAINING_PAIRS, "training pairs"))
    held = _verdict(bool(s.norm_r2 > m.norm_r2), "the norm follows length under summed loss",
                    short=short)
    return [
        f"- **C2, a noisy direction:** {held}. "
        f"A pair's gradient norm against its length: R² = {number(s.norm_r2, 3)} "
        f"summed, {number(m.norm_r2, 3)} token-mean; the leave-one-out cosine to the "
        f"other pairs' mean gradient is {interval_label(s.cos_loo, s.cos_loo_lo, s.cos_loo_hi, digits=3)} "
        f"(summed) and {interval_label(m.cos_loo, m.cos_loo_lo, m.cos_loo_hi, digits=3)} "
        f"(token-mean) against 0 for orthogonal gradients, over {int(s.n_pairs)} pairs "
        "at the starting model."]


def _collapse_lines(tables: Tables, found: Findings, order: list[str]) -> list[str]:
    col = found.collapse
    if not len(col):
        return []
    onsets = col[col.onset_step.notna()]
    naive = col[col.label.str.startswith("naive")]
    per_label = onsets.groupby("label").size()
    named = ", ".join(f"{lab} ({per_label[lab]} of {int((col.label == lab).sum())} runs)"
                      for lab in order if lab in per_label.index) or "none"
    collapsed = naive[naive.onset_step.notna()]
    where = ", ".join(f"{r.label} at lr {r.lr:g}" for r in collapsed.itertuples())
    short = _short((_heldout_pairs(tables, naive.run_id), MIN_HELDOUT_PAIRS, "held-out pairs"),
                   (int(naive.n_evals.min()) if len(naive) else 0, MIN_EVALUATIONS,
                    "evaluations after step 0"))
    line = (f"- **C3, both losses grow:** {_verdict(bool(len(collapsed)), where, short=short)}"
            if len(naive) else "- **C3, both losses grow:** could not be judged (no naive run)")
    lines = [line + f". Runs with a collapse onset (held-out chosen loss above its step-0 bound "
                    f"while the margin grows, two evaluations in a row): {named}; "
                    f"{int(col.above_uniform.sum())} of {len(col)} runs passed a uniform guess."]
    if len(found.matched):
        at = in_order(found.matched[found.matched.level == found.levels[-1]], order)
        cells = "; ".join(f"{r.label} {_cell(r._asdict(), 'd_chosen')}"
                          for r in at.itertuples() if r.n_runs)
        short = _short((int(tables.runs.lr.nunique()), MIN_LEARNING_RATES, "learning rate(s)"),
                       (_heldout_pairs(tables), MIN_HELDOUT_PAIRS, "held-out pairs"))
        lines.append(f"  At matched progress (held-out margin gain +{found.levels[-1]:g} nats "
                     f"per token), Δ held-out chosen loss"
                     + (f" (too little data to compare objectives: {short})" if short else "")
                     + f": {cells}.")
    return lines


def _displacement_lines(found: Findings, order: list[str]) -> list[str]:
    shift = found.displacement
    if not len(shift) or not (shift.n > 0).any():
        return []
    shown = in_order(shift[shift.n > 0], order)
    cells = "; ".join(f"{r.label} {r.k} of {r.n}" for r in shown.itertuples())
    majority = shown[shown.share_lo > 0.5].label.tolist()
    most = shown[shown.share > 0.5]
    short = _short((int(shown.n.min()), MIN_HELDOUT_PAIRS, "held-out pairs"))
    verdict = (_verdict(None, short=short) if short else
               _verdict(True, "for " + ", ".join(majority)) if majority else
               "not established: no objective's exact interval lies above one half (the "
               "largest shares: " + ", ".join(
                   f"{r.label} {percent(r.share, 0)} [{percent(r.share_lo, 0)}, "
                   f"{percent(r.share_hi, 0)}]" for r in most.nlargest(3, "share")
                   .itertuples()) + ")" if len(most) else _verdict(False))
    return [
        f"- **C4, displacement:** {verdict} — held counts an objective whose held-out pairs' "
        "chosen log-probs mostly fell (the exact interval of the share above one half) "
        f"where neutral NLL moved by at most {findings.NEUTRAL_HOLD:g} nats per token, at "
        f"the objective's furthest such point: {cells}.", *_predictor_line(found, short)]


def _predictor_line(found: Findings, short: str = "") -> list[str]:
    """Razin et al.'s question: does entanglement (or CHES) predict displacement better than
    edit distance? Per predictor, the objectives whose ρ interval excludes 0, and how often it
    has the largest |ρ|; `short` (`_short`): the data is below its minimum, said first."""
    rho = found.predictors
    if not len(rho) or rho.predictor.nunique() < 2:
        return []
    rho = rho.assign(excludes=(rho.rho_lo > 0) | (rho.rho_hi < 0), size=rho.rho.abs())
    best = rho.dropna(subset=["size"]).sort_values("size").groupby("label").tail(1)
    n = rho.label.nunique()
    parts = [f"{PREDICTOR_NAMES.get(name, name)} ρ excludes 0 for {int(group.excludes.sum())} "
             f"of {n} objectives (median ρ {group.rho.median():+.2f}) and is the strongest for "
             f"{int((best.predictor == name).sum())}"
             for name, group in rho.groupby("predictor", sort=False)]
    return ["  What predicts which held-out pairs' chosen log-prob falls (Spearman ρ with its "
            "change, pair bootstrap; a negative ρ: the larger the predictor, the more the "
            "chosen answer fell — the sign Razin et al. 2024 report for CHES): "
            + (f"{_verdict(None, short=short)}; " if short else "")
            + "; ".join(parts) + "."]


# --------------------------------------------------------------------------- the page

PAGE = "README.md"
FIGURES = "figures"
REPORT_FILE = "report.json"  # in a report folder: the runs its report was made from (`_record`)


class ReportFolderError(PrefstudyError):
    """A report's folder holds what the report must not replace: the report of other runs, or
    a README.md that no report recorded."""


def default_out(runs=None) -> Path:
    """Where the report of `runs` belongs: reports/ for the committed study (its runs are
    reports/runs; the report sits beside them), else the runs folder's report/ (as `prefstudy
    study` writes it); for a list of run folders, report/ in the folder they share."""
    if runs is None or isinstance(runs, (str, os.PathLike)):
        folder = default_runs_dir() if runs is None else Path(runs)
        committed = in_repo("reports", "runs")
        return committed.parent if folder.resolve() == committed.resolve() else folder / "report"
    parents = {Path(r).parent for r in runs}
    if len(parents) != 1:
        raise ReportFolderError("the runs are in several folders: say where their report goes "
                                "(out=, or --out)")
    return parents.pop() / "report"


def _made_from(runs) -> Path | list[Path]:
    """What a report is made from, resolved: the folder of runs (the committed study's for
    None), or each run folder of a list."""
    if runs is None:
        return default_runs_dir().resolve()
    if isinstance(runs, (str, os.PathLike)):
        return Path(runs).resolve()
    return sorted(Path(r).resolve() for r in runs)


def _record(runs, folders: list[Path], out: Path) -> dict:
    """REPORT_FILE's content: the runs folder (or run folders) relative to `out`, so a study
    folder moved or copied with its report still matches, and the run ids."""
    def relative(path: Path) -> str:
        return Path(os.path.relpath(path, out.resolve())).as_posix()

    made_from = _made_from(runs)
    return {"runs": [relative(p) for p in made_from] if isinstance(made_from, list)
            else relative(made_from), "run_ids": [folder.name for folder in folders]}


def _check_out(out: Path, runs, force: bool) -> None:
    """Refuse (ReportFolderError, one line) to replace what `out` holds unless it is a report
    of the same runs (its REPORT_FILE says so), or a report that predates REPORT_FILE in the
    folder where the runs' report belongs (`default_out`); `force` replaces anything."""
    if force or not out.exists():
        return
    how = "--force replaces it, or choose another --out"
    if not out.is_dir():
        raise ReportFolderError(f"{out}: not a folder; choose another --out")
    record = out / REPORT_FILE
    if record.exists():
        try:
            made = json.loads(record.read_text(encoding="utf-8"))
            held = made["runs"]
            theirs = ([(out / p).resolve() for p in held] if isinstance(held, list)
                      else (out / held).resolve())
        except (ValueError, KeyError, TypeError) as e:
            raise ReportFolderError(f"{record}: not a report's record of its runs ({e}); "
                                    f"{how}") from None
        if theirs == _made_from(runs):
            return
        ours = _made_from(runs)
        raise ReportFolderError(
            f"{out}: holds the report of {len(made.get('run_ids') or [])} other run(s) "
            f"({_named(theirs)}), not of {_named(ours)}; {how}")
    if (out / PAGE).exists() and out.resolve() != default_out(runs).resolve():
        raise ReportFolderError(f"{out}: holds a {PAGE} that is not a report of these runs "
                                f"(no {REPORT_FILE}); {how}")


def _named(made_from: Path | list[Path]) -> str:
    """What a report was made from, in a message: its runs folder, or how many run folders."""
    return (f"{len(made_from)} run folders" if isinstance(made_from, list)
            else f"the runs in {made_from}")


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block has run (they arrive just after it)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal mask
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _install(built: Path, out: Path) -> None:
    """Move the finished report in `built` (README.md, figures/, REPORT_FILE) into `out`: the
    whole folder where `out` does not exist; else entry by entry, the old ones set aside first,
    with Ctrl-C and SIGTERM held for those few renames (and undone if one fails), so an
    interruption leaves the old report or the new one, never a mix. Anything else in `out`
    (reports/runs) is left as it is."""
    if not out.exists():
        built.rename(out)
        return
    for stale in out.glob(".replaced-*"):  # left by a kill between the renames and the cleanup
        shutil.rmtree(stale, ignore_errors=True)
    aside = out / f".replaced-{secrets.token_hex(4)}"
    names = sorted(entry.name for entry in built.iterdir())
    moved, placed = [], []
    with _signals_held():
        aside.mkdir()
        try:
            for name in names:
                if (out / name).exists() or (out / name).is_symlink():
                    (out / name).rename(aside / name)
                    moved.append(name)
            for name in names:
                (built / name).rename(out / name)
                placed.append(name)
        except OSError:
            for name in placed:
                (out / name).rename(built / name)
            for name in moved:
                (aside / name).rename(out / name)
            raise
    shutil.rmtree(aside, ignore_errors=True)


def _progress(show: bool) -> Callable[[str], None]:
    """`say(what)`: one line on stderr as each step of a report begins, with the seconds since
    the report began (nothing where `show` is false)."""
    began = time.perf_counter()

    def say(what: str) -> None:
        if show:
            print(f"report {time.perf_counter() - began:4.0f} s  {what}", file=sys.stderr,
                  flush=True)

    return say


def build_report(runs: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 *, readme: str | os.PathLike | None = None, force: bool = False,
                 progress: bool = False) -> Path:
    """Regenerate the report of `runs` (a folder of runs, one run folder, a list of run
    folders, or None for the committed study: see `prefstudy.tables`) in `out` (default:
    `default_out(runs)`, where the runs' report belongs): README.md, figures/ and REPORT_FILE,
    the runs it was made from; with `readme`, that file's findings block (`update_readme`).

    The report is built in a temporary folder beside `out` and moved into place only when
    complete (`_install`): a failure or an interruption leaves the previous report as it was.
    An `out` that holds the report of other runs, or a README.md no report recorded outside
    the runs' own report folder, is refused (ReportFolderError) unless `force`. `progress`:
    one line per step on stderr. Returns the page's path."""
    say = _progress(progress)
    out = default_out(runs) if out is None else Path(out)
    _check_out(out, runs, force)
    tables = load_tables(runs)  # before the first line: bad runs are one line, as any error
    say(f"read {len(tables.folders)} runs; computing the findings")
    found = findings.summarise(tables)
    home = out.absolute()
    home.parent.mkdir(parents=True, exist_ok=True)
    built = home.parent / f".{home.name or 'report'}.building-{secrets.token_hex(4)}"
    try:
        (built / FIGURES).mkdir(parents=True)
        with from_defaults(), study_palette(tables.order, tables.families):
            page, held = _page(tables, found, built, say)
        (built / PAGE).write_text(page, encoding="utf-8")
        (built / REPORT_FILE).write_text(
            json.dumps(_record(runs, tables.folders, out), indent=1) + "\n", encoding="utf-8")
        say(f"moving it into {out}")
        _install(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    if readme is not None:
        update_readme(readme, held)
    say("done")
    return out / PAGE


def _page(tables: Tables, found: Findings, out: Path,
          say: Callable[[str], None] = lambda what: None) -> tuple[str, str]:
    """The report page's Markdown, drawing every figure into `out/figures/`, and its "What
    held" section; `say` (`_progress`) is told each section as it begins."""
    order = tables.order
    say("the audit's sections (C1, C2 at the starting model)")
    audit_parts = (audit_sections(tables.audit, out) if tables.audit is not None else None)
    held = what_held(tables, found, order)
    say("C1 — length")
    length = length_section(tables, out, audit_parts)
    say("C2 — gradient agreement during training")
    noise = noise_section(found, out, order, audit_parts)
    say("C3 — collapse: frontier, matched progress, runs, training losses")
    collapse = collapse_section(tables, found, out, order)
    say("C4 — displacement and its predictors")
    displaced = displacement_section(found, out, order)
    say("generations")
    generations = generations_section(tables, order)
    sections = [
        "# prefstudy report: how stable are preference objectives?", "",
        "Regenerated by `prefstudy report` from the runs it names; every number and figure "
        "below comes from the per-pair records and the study's audit. Objectives are compared "
        "along a learning-rate sweep, at matched preference progress, never at one setting. "
        "Every interval is 95%; its kind and unit of replication are said where it is given.",
        "", "## Provenance", "", provenance(tables), "",
        "## What held", "", held,
        "## C1 — the gap follows length, not preference", "", length,
        "## C2 — a noisy optimisation direction", "", noise,
        "## C3 — collapse: both losses grow", "", collapse,
        "## C4 — displacement of the chosen response", "", displaced,
        "## Generations", "", generations,
    ]
    return "\n".join(sections).rstrip() + "\n", held


FINDINGS = ("<!-- findings:start -->", "<!-- findings:end -->")  # the README's block


def update_readme(readme: str | os.PathLike, held: str) -> bool:
    """Replace the block between FINDINGS markers in `readme` with `held` (the report's "What
    held" section, `what_held`); ValueError naming the file where it has no such block.
    Returns whether the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = FINDINGS
    if start not in text or end not in text:
        raise ValueError(f"{readme}: no {start} … {end} block to regenerate")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    new = f"{before}{start}\n{held.strip()}\n{end}{after}"
    readme.write_text(new)
    return new != text
