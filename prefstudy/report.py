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

import pandas as pd

from . import diagnostics as dg
from . import plots
from .formatting import interval_column, markdown_table, number, percent
from .records import read_config, read_meta
from .tables import Tables, load_tables

EARLY_STEPS = 5  # C1 is measured on the steps before any objective has moved the model far


def _ordered(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    key = {label: i for i, label in enumerate(order)}
    return df.sort_values("label", key=lambda s: s.map(key)).reset_index(drop=True)


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
    return "\n".join([
        f"- Runs: {len(tables.folders)} ({', '.join(f'{v} {k}' for k, v in statuses.items())}), "
        f"{len(tables.labels)} configurations × seeds {seeds}.",
        f"- Model: `{cfg['model']}`, {trainable} trainable, {cfg['steps']} steps of "
        f"{cfg['batch_size']} pairs, AdamW lr {cfg.number('lr')}, gradient clipping "
        f"{cfg.get('max_grad_norm')}, sequences up to {cfg['max_length']} tokens, dtype "
        f"{cfg['dtype']}.",
        f"- Data: {cfg['pairs_train']} training pairs from `{cfg['data']}`, "
        f"{cfg['n_heldout']} held-out pairs, {cfg['n_neutral']} held-out passages, "
        f"{cfg['n_probes']} probe prompts.",
        *_left_out(configs), *_past_uniform(tables.folders, metas),
        f"- Hardware: {'; '.join(devices)} ({env.get('cpu_count')} cores); torch "
        f"{env.get('torch')}, transformers {env.get('transformers')}; prefstudy commit "
        f"`{env.get('git_commit')}`; started {min(m.get('started', '') for m in metas)}.",
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


def length_section(tables: Tables, out: Path, order: list[str]) -> str:
    gaps = dg.gap_normalisations(tables.records)
    gaps = gaps[gaps.step <= EARLY_STEPS]  # every run still close to the starting model
    effect = dg.length_effect(gaps, by=("normalisation",), n_boot=500)
    bins = dg.variance_by_length_bin(gaps, by=("normalisation",))
    table = effect.merge(bins[["normalisation", "eta2"]], on="normalisation")
    view = pd.DataFrame({
        "gap normalised by": table.normalisation,
        "pairs×steps": table.n,
        "R² of gap on Δlen": interval_column(table, "r2", 3),
        "Spearman ρ": interval_column(table, "spearman", 3),
        "slope (nats / token)": interval_column(table, "slope", 4),
        "variance between Δlen bins": table.eta2.map(percent),
    })
    figure = plots.gap_vs_length(gaps, effect=dg.length_effect(gaps, by=("normalisation",),
                                                               n_boot=200))
    plots.save(figure, out / "figures" / "gap_vs_length.png")
    text = [
        f"The training records of the first {EARLY_STEPS} steps of every run, while every model "
        "is still close to where it started (each loss is recorded from the forward pass that "
        "produced the gradient). Δlen = len_n − len_p in tokens; the gap is loss_n − loss_p "
        "under each normalisation (`reference`: the gap in log-ratios against the frozen "
        "starting model, as DPO sees it; only runs with a reference). Intervals: bootstrap over "
        "pairs. The summary table gives the same R² within each run over all its steps.",
        "", markdown_table(view), "",
        "![gap against length difference](figures/gap_vs_length.png)", "",
    ]
    if len(tables.dose):
        dr = dg.dose_gap_response(tables.dose)
        view = pd.DataFrame({"gap normalised by": dr.normalisation, "rejected × factor": dr.factor,
                             "pairs": dr.n, "mean gap": interval_column(dr, "mean", 2),
                             "slope per doubling": interval_column(dr, "slope", 2)})
        text += ["Dose-response: the same pairs with only the rejected response lengthened "
                 "(neutral filler) or shortened (trailing sentences dropped), scored by the "
                 "starting model (`prefstudy.data.length_variants`).", "",
                 markdown_table(view), ""]
    return "\n".join(text)


def noise_section(tables: Tables, out: Path, order: list[str]) -> str:
    if tables.records.grad_cos.isna().all():
        return "Gradient statistics were off in these runs.\n"
    noise = _ordered(dg.gradient_noise(tables.records, tables.steps), order)
    ax = plots.interval_plot(noise, x="grad_cos", order=order, refline=0)
    ax.set_xlabel("cosine to the mean gradient of the other pairs")
    plots.save(ax, out / "figures" / "gradient_agreement.png")
    view = pd.DataFrame({
        "objective": noise.label, "seeds": noise.n_seeds,
        "cos(pair grad, other pairs' mean grad)": interval_column(noise, "grad_cos", 3),
        "cos(pair grad, batch grad incl. itself)": interval_column(noise, "grad_cos_with_self", 3),
        "the same, orthogonal grads": interval_column(noise, "grad_cos_with_self_orthogonal", 3),
        "pairs pulling against the rest": interval_column(noise, "share_opposed", 1, share=True),
        "gradient noise scale B_simple": interval_column(noise, "gns", 1),
    })
    return "\n".join([
        "Each pair's own gradient (linear weights of the trainable blocks) against the mean "
        "gradient of the other pairs of its batch: the leave-one-out cosine, 0 for orthogonal "
        "gradients (the line in the figure). Beside it the cosine with the batch mean including "
        "the pair itself, which orthogonal gradients of the same norms would already raise to "
        "|g_i|/√Σ_j|g_j|² (1/√B at equal norms, 0.5 at B = 4): read it against that column, never "
        "alone. Then the share of pairs whose leave-one-out cosine is negative, and the gradient "
        "noise scale tr(Σ)/|G|² per step (McCandlish et al. 2018). Lower cosine and a larger noise "
        "scale mean a noisier direction. Intervals: across seeds.", "", markdown_table(view), "",
        "![gradient agreement](figures/gradient_agreement.png)", ""])


def collapse_section(tables: Tables, out: Path, order: list[str]) -> str:
    col = dg.collapse(tables.records, tables.perplexity)
    grid = plots.loss_trajectories(tables.evals if _has_trajectory(tables.evals)
                                   else tables.records, onset=col, hue_order=order)
    plots.save(grid, out / "figures" / "loss_trajectories.png")
    plots.save(plots.normalisation_grid(tables.records, col_order=order),
               out / "figures" / "normalisation_grid.png")
    per_label = col.groupby("label", sort=False).agg(
        seeds=("run_id", "size"), onset=("onset_step", lambda s: int(s.notna().sum())),
        diverged=("diverged", "sum"), loss_p_start=("loss_p_start", "mean"),
        loss_p_end=("loss_p_end", "mean"), loss_n_end=("loss_n_end", "mean"),
        ppl_ratio=("ppl_ratio", "mean")).reset_index()
    per_label = _ordered(per_label, order)
    view = pd.DataFrame({
        "objective": per_label.label,
        "seeds with a collapse onset": per_label.onset.astype(str) + "/" +
        per_label.seeds.astype(str),
        "diverged": per_label.diverged.astype(int),
        "loss_p start → end": [f"{a:.2f} → {b:.2f}" for a, b in
                               zip(per_label.loss_p_start, per_label.loss_p_end)],
        "loss_n end": per_label.loss_n_end.map(partial(number, digits=2)),
        "held-out perplexity end / start": per_label.ppl_ratio.map(partial(number, digits=2)),
    })
    return "\n".join([
        "A collapse onset is the first step from which the rolling mean of loss_p stays above "
        "its starting value while the gap keeps widening (`diagnostics.collapse`). Perplexity is "
        "on held-out neutral text the model never trains on.", "", markdown_table(view), "",
        "![loss trajectories](figures/loss_trajectories.png)", "",
        "Every configuration on the same axes:", "",
        "![all normalisations](figures/normalisation_grid.png)", ""])


def _has_trajectory(evals: pd.DataFrame) -> bool:
    return len(evals) > 0 and evals.step.nunique() > 2


def displacement_section(tables: Tables, out: Path, order: list[str]) -> str:
    source = tables.heldout_or_records
    table = _ordered(dg.displacement(source, tables.pairs), order)
    overall = _ordered(dg.displacement(source), order)
    plots.save(plots.displacement_bars(table, hue_order=order),
               out / "figures" / "displacement.png")
    view = pd.DataFrame({
        "objective": overall.label, "pairs × seeds": overall.n_pairs,
        "chosen log-prob fell": interval_column(overall, "share_below_start", 1, share=True),
        "chosen below the reference": interval_column(overall, "share_below_ref", 1, share=True),
    })
    return "\n".join([
        "Held-out pairs: the share whose chosen log-probability at the end is below its value "
        "before training (likelihood displacement), overall and by edit distance between chosen "
        "and rejected. Intervals: across seeds.", "", markdown_table(view), "",
        "![displacement](figures/displacement.png)", ""])


def summary_section(tables: Tables, order: list[str]) -> str:
    summary = _ordered(dg.summary_table(tables.records, tables.evals, tables.perplexity,
                                        tables.steps, tables.pairs), order)
    view = pd.DataFrame({
        "objective": summary.label, "seeds": summary.n_seeds, "diverged": summary.n_diverged,
        "held-out loss_p": interval_column(summary, "loss_p"),
        "held-out loss_n": interval_column(summary, "loss_n"),
        "held-out gap": interval_column(summary, "gap"),
        "R² (sum)": interval_column(summary, "r2_sum"), "R² (mean)": interval_column(summary, "r2_mean"),
        "grad cos (leave-one-out)": interval_column(summary, "grad_cos"),
        "collapse onsets": interval_column(summary, "onset_share", 0, share=True),
        "displaced": interval_column(summary, "displacement", 0, share=True),
        "ppl end/start": interval_column(summary, "ppl_ratio"),
    })
    return markdown_table(view) + "\n"


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


# --------------------------------------------------------------------------- the page


def build_report(runs: str | os.PathLike | None = None,
                 out: str | os.PathLike = "reports") -> Path:
    """Regenerate `out/README.md` and `out/figures/` from the runs (a folder of runs, or None for
    the committed study: see `prefstudy.tables`). Returns the page's path."""
    tables = load_tables(runs)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    order = tables.labels
    plots.set_style(order)
    sections = [
        "# prefstudy report: how stable are preference objectives?", "",
        "Regenerated by `prefstudy report` from the runs it names; every number and figure "
        "below comes from the per-pair records. Where a number has an interval it is a 95% "
        "interval; with one seed no interval across seeds exists and none is shown.", "",
        "## Provenance", "", provenance(tables), "",
        "## Summary", "", summary_section(tables, order),
        "## C1 — the gap follows length, not preference", "",
        length_section(tables, out, order),
        "## C2 — a noisy optimisation direction", "", noise_section(tables, out, order),
        "## C3 — collapse: both losses grow", "", collapse_section(tables, out, order),
        "## C4 — displacement of the chosen response", "",
        displacement_section(tables, out, order),
        "## Generations", "", generations_section(tables, order),
    ]
    page = out / "README.md"
    page.write_text("\n".join(sections).rstrip() + "\n")
    return page
