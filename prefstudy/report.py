"""The report: every figure and the report page, regenerated from runs in seconds.

`build_report(runs, out)` reads the runs' tables, computes every number with
`prefstudy.diagnostics` (seeded bootstraps: the same runs give the same numbers, byte for byte),
draws every figure with `prefstudy.plots`, and writes `out/README.md` and `out/figures/*.png`.
Nothing here trains or loads a model; numbers come from records, never typed by hand.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd

from . import diagnostics as dg
from . import findings, plots
from .audit import sections as audit_sections
from .formatting import interval_label, markdown_table, number, percent
from .objectives import FAMILIES
from .records import read_config, read_meta
from .tables import Tables, load_tables

EARLY_STEPS = 5  # C1 is measured on the steps before any objective has moved the model far


def _ordered(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    key = {label: i for i, label in enumerate(order)}
    return df.sort_values("label", key=lambda s: s.map(key), kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- sections


class _Given(dict):
    """A run's config where a missing field reads as "?" instead of failing the report."""

    def __missing__(self, key):
        return "?"

    def number(self, key) -> str:
        value = self.get(key)
        return f"{value:g}" if isinstance(value, (int, float)) else "?"


def provenance(tables: Tables) -> str:
    metas = [read_meta(f) for f in tables.folders]
    configs = [read_config(f) for f in tables.folders]
    env = metas[0].get("environment", {})
    cfg = _Given(configs[0])  # a run made elsewhere (an integration) may lack some fields
    seeds = sorted({c.get("seed") for c in configs}, key=str)
    statuses = pd.Series([m.get("status", "?") for m in metas]).value_counts().to_dict()
    devices = sorted({m.get("environment", {}).get("device", "?") for m in metas})
    trainable = ("all blocks" if cfg.get("trainable_blocks") is None
                 else f"the top {cfg['trainable_blocks']} blocks")
    lrs = len({c.get("lr") for c in configs})
    evals = sorted(set(tables.evals.step)) if len(tables.evals) else []
    seconds = tables.runs.seconds.sum() if len(tables.runs) else float("nan")
    return "\n".join([
        f"- Runs: {len(tables.folders)} ({', '.join(f'{v} {k}' for k, v in statuses.items())}), "
        f"{len(tables.labels)} configurations × {lrs} learning rate(s) ({_lrs(tables)}) × "
        f"seeds {seeds}. The seeds change only the order of the training pairs: every run "
        "starts from the same weights, so seeds are data-order replicates, not independent "
        "models.",
        f"- Model: `{cfg['model']}`, {trainable} trainable, {cfg['steps']} steps of "
        f"{cfg['batch_size']} pairs, AdamW, gradient clipping {cfg.get('max_grad_norm')}, "
        f"sequences up to {cfg['max_length']} tokens (prompt up to "
        f"{cfg['max_prompt_length']}), dtype {cfg['dtype']}; held-out evaluations at steps "
        f"{', '.join(str(int(s)) for s in evals) or '–'} (step 0: the starting model itself).",
        f"- Data: {cfg['pairs_train']} training pairs from `{cfg['data']}` (a stratified sample "
        f"over language × category, the same in every run), {cfg['n_heldout']} held-out pairs "
        f"from `{cfg['heldout']}` (balanced over language × category), {cfg['n_neutral']} "
        f"neutral held-out passages, {cfg['n_probes']} probe prompts (harmful and benign); "
        "greedy generations, one sample per probe.",
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
    """What loading and truncation left out or cut, as the runs' configs counted it (runs
    trained before prefstudy counted it have no such line)."""
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


def _save(figure, path: Path) -> None:
    """Write a figure (`plots.save`) and close it: a report draws many."""
    import matplotlib.pyplot as plt

    plots.save(figure, path)
    plt.close(getattr(figure, "figure", figure))  # an Axes or grid: its figure


def _families(tables: Tables) -> dict[str, str]:
    """label → family of every label of the study (labels whose objective is unknown: none)."""
    runs = tables.runs.dropna(subset=["family"]).drop_duplicates("label")
    return dict(zip(runs.label, runs.family))


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


def noise_section(tables: Tables, out: Path, order: list[str], audit_parts: dict | None) -> str:
    text = []
    if audit_parts is not None:
        text += ["### At the starting model", "", audit_parts["gradients"]]
    if "grad_cos" not in tables.records.columns or tables.records.grad_cos.isna().all():
        return "\n".join(text + ["Gradient statistics were off in the training runs.", ""])
    noise = _ordered(dg.gradient_noise(tables.records, tables.steps), order)
    # one point per objective, no interval: its runs are different learning rates, and rows of
    # one pair at many steps are not independent pairs
    ax = plots.interval_plot(noise.drop(columns=["grad_cos_lo", "grad_cos_hi"]), x="grad_cos",
                             order=order, refline=0)
    ax.set_xscale("symlog", linthresh=0.05)  # negative_only's cosine is 10× the others'
    ax.set_xlim(-0.05, 1.0)  # a cosine's own bounds on this side
    ax.xaxis.set_major_locator(mpl.ticker.FixedLocator([-0.05, 0, 0.05, 0.1, 0.2, 0.5, 1]))
    ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("mean cosine of a pair's gradient to the other pairs' mean gradient\n"
                  "(orthogonal gradients: 0; over every run and step)")
    _save(ax, out / "figures" / "gradient_agreement.png")
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


def collapse_section(tables: Tables, out: Path, order: list[str], paths: pd.DataFrame,
                     levels: list[float]) -> str:
    families = [f for f in FAMILIES if f in set(paths.family)]
    _save(plots.frontier(paths, hue_order=order, col="family", col_order=families,
                         col_wrap=2, yscale="symlog") if families
          else plots.frontier(paths, hue_order=order, yscale="symlog"),
          out / "figures" / "frontier.png")
    text = [
        "Each run is a path: one point per evaluation, held-out margin gain (the per-token gap "
        "loss_n − loss_p on held-out pairs, minus its value at step 0: preference progress) "
        "against Δ NLL of neutral held-out text (nats per token: capability cost), from the "
        "starting model at (0, 0); one panel per family of objectives, on shared axes that are "
        "linear near 0 and logarithmic beyond. Markers tell the learning rates apart. An "
        "objective that learns without breaking runs up the left edge.", "",
        "![progress against cost](figures/frontier.png)", ""]
    table = findings.matched(tables, levels)
    if len(table):
        table = _ordered(table.sort_values("level", kind="stable"), order)
        ax = plots.matched_plot(table, y="d_chosen", hue_order=order)
        ax.set_yscale("symlog", linthresh=0.1)  # intervals of a collapsing run reach 10×
        ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        _save(ax, out / "figures" / "matched_chosen.png")
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
        text += [
            "**At matched progress.** Where each objective's runs first reached the same "
            "held-out margin gain (nats per token), interpolated along their paths and averaged "
            "over the runs (learning rates) that reached it: the change of the held-out chosen "
            "and rejected losses and of neutral NLL since step 0, nats per token. Intervals: "
            f"95% bootstrap over the {int(table.n_pairs.max())} held-out pairs (neutral text is "
            "one fixed set, not resampled). Levels: those at least half the objectives reached.",
            "", markdown_table(view), "",
            *([f"No run of {', '.join(never)} reached a margin gain of +{min(levels):g}.", ""]
              if never else []),
            "![chosen loss at matched progress](figures/matched_chosen.png)", ""]
    col = findings.collapse(tables)
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
    text += [
        "**Collapse, run by run.** An evaluation collapses when the held-out chosen loss is "
        "above its step-0 value by more than its 95% pair-bootstrap bound while the margin has "
        "grown; the onset is the first of two such evaluations in a row. Degeneration is "
        "judged apart, at the last evaluation: distinct bigrams and repeated 4-grams of the "
        "greedy probe answers, the change of neutral-text NLL (the log of the perplexity "
        "ratio, which for a destroyed model runs to many orders of magnitude), and whether any "
        "per-token "
        "loss passed ln|V| (a uniform guess) by a nat.", "", markdown_table(view), ""]
    refusal = findings.refusals(tables)
    if len(refusal):
        text += [_refusal_table(refusal, order), ""]
    top = tables.runs.lr.max()
    records = findings.with_lr(tables.records, tables.runs)
    records = records[records.lr == top] if pd.notna(top) else records
    _save(plots.normalisation_grid(records, col_order=[lab for lab in order
                                                       if lab in set(records.label)]),
          out / "figures" / "normalisation_grid.png")
    text += [f"Training losses of every configuration at the largest learning rate (lr "
             f"{top:g}; each panel on its own scale, bands across seeds where there are "
             "several):", "", "![all normalisations](figures/normalisation_grid.png)", ""]
    return "\n".join(text)


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


PREDICTORS = {"edit_distance": "edit distance", "entanglement": "entanglement", "ches": "CHES",
              "ln_ches": "ln-CHES"}


def displacement_section(tables: Tables, out: Path, order: list[str],
                         paths: pd.DataFrame) -> str:
    calm = _ordered(findings.displacement(tables, paths), order)
    view = pd.DataFrame({
        "objective": calm.label,
        "where": [f"lr {r.lr:g}, step {r.step:g}" if r.n else "–" for r in calm.itertuples()],
        "margin gain": calm.margin_gain.map(partial(number, digits=2)),
        "Δ neutral NLL": calm.d_neutral.map(partial(number, digits=3)),
        "chosen log-prob fell": [_share_cell(r) for r in calm.itertuples()],
        "Δ chosen − Δ neutral (nats/token)": calm.d_chosen_minus_neutral.map(
            partial(number, digits=3))})
    text = [
        f"Likelihood displacement is the chosen answer's log-probability falling *while neutral "
        f"text holds*. For each objective: of its runs' evaluations where neutral NLL moved by "
        f"at most {findings.NEUTRAL_HOLD:g} nats per token, the one with the largest margin "
        "gain; there, the held-out pairs whose chosen log-prob fell below its step-0 value "
        "(exact Clopper–Pearson interval over pairs), and the chosen loss change minus the "
        "neutral one.", "", markdown_table(view), ""]
    share = calm[calm.n > 0]
    if len(share):
        ax = plots.interval_plot(share, x="share", order=list(share.label), refline=0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of held-out pairs whose chosen log-prob fell,\nwhere neutral text "
                      f"held (|Δ NLL| ≤ {findings.NEUTRAL_HOLD:g}); exact 95% interval")
        _save(ax, out / "figures" / "displacement.png")
        text += ["![displacement where neutral text held](figures/displacement.png)", ""]
    predictors = findings.predictors_of_displacement(tables, calm)
    if len(predictors):
        predictors = _ordered(predictors, order)
        wide = predictors.assign(cell=[_cell(r, "rho") for _, r in predictors.iterrows()]) \
            .pivot(index="label", columns="predictor", values="cell")
        wide = wide.reindex(index=[lab for lab in order if lab in wide.index],
                            columns=[c for c in PREDICTORS if c in wide.columns])
        wide = wide.rename(columns=PREDICTORS)
        text += [
            "**What predicts it.** Spearman ρ across held-out pairs between each predictor and "
            "the change of the pair's chosen log-prob at the point above (negative: the larger "
            "the predictor, the more the chosen answer fell); 95% pair-bootstrap intervals. "
            "Edit distance is between chosen and rejected texts; entanglement (the cosine of a "
            "pair's chosen and rejected log-prob gradients), CHES and its length-normalised ln-CHES "
            "(Razin et al. 2024) are "
            "the audit's, at the starting model.", "",
            markdown_table(wide.reset_index().rename(columns={"label": "objective"})), ""]
    lang = findings.per_language(tables, calm)
    if len(lang) and lang.lang.nunique() > 1:
        lang = _ordered(lang, order)
        wide = lang.assign(cell=[f"{r.k} of {r.n}" for r in lang.itertuples()]).pivot(
            index="label", columns="lang", values="cell")
        wide = wide.reindex([lab for lab in order if lab in wide.index])
        text += ["By language of the held-out pair (chosen log-prob fell, at the same point):",
                 "", markdown_table(wide.reset_index().rename(columns={"label": "objective"})),
                 ""]
    return "\n".join(text)

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


def _verdict(held: bool | None, condition: str = "") -> str:
    if held is None:
        return "could not be judged here"
    return ("held" + (f" ({condition})" if condition else "")) if held else "did not hold"


def held_section(tables: Tables, paths: pd.DataFrame, levels: list[float],
                 order: list[str]) -> str:
    """One plain sentence per claim of the seed, each with the number it rests on."""
    lines = []
    audit = tables.audit
    if audit is not None and len(audit.length):
        rows = audit.length.set_index("normalisation")
        if {"sum", "mean"} <= set(rows.index):
            s, m = rows.loc["sum"], rows.loc["mean"]
            lines.append(
                f"- **C1, the gap follows length:** {_verdict(bool(s.r2_lo > m.r2_hi), 'for summed losses')}. "
                f"On the {int(s.n)} training pairs at the starting model, Δlen explains R² = "
                f"{interval_label(s.r2, s.r2_lo, s.r2_hi, digits=3)} of the summed gap and "
                f"{interval_label(m.r2, m.r2_lo, m.r2_hi, digits=3)} of the token-mean gap "
                "(pair bootstrap).")
    if audit is not None and len(audit.gradient_summary):
        g = audit.gradient_summary
        key = dg.gradient_key(audit.gradients)
        sums = g[g[key] == "naive-sum"]
        means = g[g[key] == "naive-mean"]
        if len(sums) and len(means):
            s, m = sums.iloc[0], means.iloc[0]
            lines.append(
                f"- **C2, a noisy direction:** {_verdict(bool(s.norm_r2 > m.norm_r2), 'the norm follows length under summed loss')}. "
                f"A pair's gradient norm against its length: R² = {number(s.norm_r2, 3)} "
                f"summed, {number(m.norm_r2, 3)} token-mean; the leave-one-out cosine to the "
                f"other pairs' mean gradient is {interval_label(s.cos_loo, s.cos_loo_lo, s.cos_loo_hi, digits=3)} "
                f"(summed) and {interval_label(m.cos_loo, m.cos_loo_lo, m.cos_loo_hi, digits=3)} "
                f"(token-mean) against 0 for orthogonal gradients, over {int(s.n_pairs)} pairs "
                "at the starting model.")
    col = findings.collapse(tables) if len(tables.evals) else pd.DataFrame()
    if len(col):
        onsets = col[col.onset_step.notna()]
        naive = col[col.label.str.startswith("naive")]
        per_label = onsets.groupby("label").size()
        named = ", ".join(f"{lab} ({per_label[lab]} of {int((col.label == lab).sum())} runs)"
                          for lab in order if lab in per_label.index) or "none"
        collapsed = naive[naive.onset_step.notna()]
        where = ", ".join(f"{r.label} at lr {r.lr:g}" for r in collapsed.itertuples())
        lines.append(f"- **C3, both losses grow:** {_verdict(bool(len(collapsed)), where)}"
                     if len(naive) else "- **C3, both losses grow:** could not be judged (no "
                     "naive run)")
        lines[-1] += (f". Runs with a collapse onset (held-out chosen loss above its step-0 bound "
                      f"while the margin grows, two evaluations in a row): {named}; "
                      f"{int(col.above_uniform.sum())} of {len(col)} runs passed a uniform "
                      "guess.")
        matched = findings.matched(tables, levels[-1:]) if levels else pd.DataFrame()
        if len(matched):
            at = _ordered(matched, order)
            cells = "; ".join(f"{r.label} {_cell(r._asdict(), 'd_chosen')}"
                              for r in at.itertuples() if r.n_runs)
            lines.append(f"  At matched progress (held-out margin gain +{levels[-1]:g} nats per "
                         f"token), Δ held-out chosen loss: {cells}.")
    calm = findings.displacement(tables, paths) if len(paths) else pd.DataFrame()
    if len(calm) and (calm.n > 0).any():
        shown = _ordered(calm[calm.n > 0], order)
        cells = "; ".join(f"{r.label} {r.k} of {r.n}" for r in shown.itertuples())
        majority = shown[shown.share_lo > 0.5].label.tolist()
        most = shown[shown.share > 0.5]
        verdict = (_verdict(True, "for " + ", ".join(majority)) if majority else
                   "not established: no objective's exact interval lies above one half (the "
                   "largest shares: " + ", ".join(
                       f"{r.label} {percent(r.share, 0)} [{percent(r.share_lo, 0)}, "
                       f"{percent(r.share_hi, 0)}]" for r in most.nlargest(3, "share")
                       .itertuples()) + ")" if len(most) else _verdict(False))
        lines.append(
            f"- **C4, displacement:** {verdict} — held counts an objective whose held-out pairs' "
            "chosen log-probs mostly fell (the exact interval of the share above one half) "
            f"where neutral NLL moved by at most {findings.NEUTRAL_HOLD:g} nats per token, at "
            f"the objective's furthest such point: {cells}.")
        lines += _predictor_line(tables, calm)
    seeds = sorted({int(s) for s in tables.runs.seed.dropna()})
    lines.append(f"- **C5, seeds and intervals:** seeds {seeds} are data-order replicates on one "
                 "starting model; every interval above resamples held-out or training pairs, "
                 "the unit of replication, or is exact over pairs.")
    return "\n".join(lines) + "\n"


def _predictor_line(tables: Tables, calm: pd.DataFrame) -> list[str]:
    """Razin et al.'s question: does entanglement (or CHES) predict displacement better than
    edit distance? Per predictor, the objectives whose ρ interval excludes 0, and how often it
    has the largest |ρ|."""
    rho = findings.predictors_of_displacement(tables, calm)
    if not len(rho) or rho.predictor.nunique() < 2:
        return []
    rho = rho.assign(excludes=(rho.rho_lo > 0) | (rho.rho_hi < 0), size=rho.rho.abs())
    best = rho.dropna(subset=["size"]).sort_values("size").groupby("label").tail(1)
    n = rho.label.nunique()
    parts = [f"{PREDICTORS.get(name, name)} ρ excludes 0 for {int(group.excludes.sum())} of {n} "
             f"objectives (median ρ {group.rho.median():+.2f}) and is the strongest for "
             f"{int((best.predictor == name).sum())}"
             for name, group in rho.groupby("predictor", sort=False)]
    return ["  What predicts which held-out pairs' chosen log-prob falls (Spearman ρ with its "
            "change, pair bootstrap; a negative ρ: the larger the predictor, the more the "
            "chosen answer fell — the sign Razin et al. 2024 report for CHES): "
            + "; ".join(parts) + "."]


# --------------------------------------------------------------------------- the page




def build_report(runs: str | os.PathLike | None = None,
                 out: str | os.PathLike = "reports") -> Path:
    """Regenerate `out/README.md` and `out/figures/` from the runs (a folder of runs, or None for
    the committed study: see `prefstudy.tables`). Returns the page's path."""
    tables = load_tables(runs)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    families = _families(tables)
    order = (plots.family_order({lab: families[lab] for lab in tables.labels})
             if set(tables.labels) <= set(families) else tables.labels)
    with plots.study_palette(order, families if set(order) <= set(families) else None):
        page = _page(tables, out, order)
    path = out / "README.md"
    path.write_text(page)
    return path


def _page(tables: Tables, out: Path, order: list[str]) -> str:
    """The report page's Markdown, drawing every figure into `out/figures/`."""
    audit_parts = (audit_sections(tables.audit, out) if tables.audit is not None else None)
    path_table = findings.paths(tables)
    levels = findings.comparison_levels(path_table)
    sections = [
        "# prefstudy report: how stable are preference objectives?", "",
        "Regenerated by `prefstudy report` from the runs it names; every number and figure "
        "below comes from the per-pair records and the study's audit. Objectives are compared "
        "along a learning-rate sweep, at matched preference progress, never at one setting. "
        "Every interval is 95%; its kind and unit of replication are said where it is given.",
        "", "## Provenance", "", provenance(tables), "",
        "## What held", "", held_section(tables, path_table, levels, order),
        "## C1 — the gap follows length, not preference", "",
        length_section(tables, out, audit_parts),
        "## C2 — a noisy optimisation direction", "",
        noise_section(tables, out, order, audit_parts),
        "## C3 — collapse: both losses grow", "",
        collapse_section(tables, out, order, path_table, levels),
        "## C4 — displacement of the chosen response", "",
        displacement_section(tables, out, order, path_table),
        "## Generations", "", generations_section(tables, order),
    ]
    return "\n".join(sections).rstrip() + "\n"


FINDINGS = ("<!-- findings:start -->", "<!-- findings:end -->")  # the README's block


def held_block(page: str) -> str:
    """The report page's "What held" section (without its heading): the README's findings."""
    return page.split("## What held\n\n", 1)[1].split("\n## ", 1)[0].strip() + "\n"


def update_readme(readme: str | os.PathLike, page: str | os.PathLike) -> bool:
    """Replace the block between FINDINGS markers in `readme` with the report page's "What
    held" section; ValueError naming the file where it has no such block. Returns whether the
    file changed."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = FINDINGS
    if start not in text or end not in text:
        raise ValueError(f"{readme}: no {start} … {end} block to regenerate")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    new = f"{before}{start}\n{held_block(Path(page).read_text())}{end}{after}"
    readme.write_text(new)
    return new != text

