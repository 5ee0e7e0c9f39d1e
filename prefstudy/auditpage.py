"""The audit's page: an `audit.Audit` written as Markdown, with its figures.

`render_page(result, out)` is the whole page (`audit.write_audit` writes it as `out/README.md`);
`sections(result, out)` its sections by name — provenance, claims, length, dose, content,
gradients — which the study report embeds. Each section turns the audit's tables into prose and
Markdown tables and draws its figures (`prefstudy.plots`) into `out/figures/`; nothing here
computes a statistic the tables do not hold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from . import auditstats, plots, theme
from . import diagnostics as dg
from .formatting import interval_column, interval_label, markdown_table, number, percent

if TYPE_CHECKING:
    from .audit import Audit


def save_figure(figure, path: Path) -> None:
    """Write a figure (`theme.save`) and close it: a page draws many (the study report too)."""
    import matplotlib.pyplot as plt

    theme.save(figure, path)
    plt.close(getattr(figure, "figure", figure))  # an Axes or grid: its figure


def _count(k, n) -> str:
    return f"{int(k)} of {int(n)}"


def _share(row, name: str = "share", digits: int = 1) -> str:
    """"k of n (share [lo, hi])" of a row with k, n and the share's Clopper–Pearson bounds."""
    label = interval_label(row[name], row[f"{name}_lo"], row[f"{name}_hi"], digits=digits,
                           share=True)
    return f"{_count(row['k'], row['n'])} ({label})"


def _row(table: pd.DataFrame, **match) -> pd.Series | None:
    """The first row of `table` whose columns equal `match`, or None."""
    if not len(table):
        return None
    sel = table
    for column, value in match.items():
        sel = sel[sel[column] == value]
    return sel.iloc[0] if len(sel) else None


def _cut_line(row: pd.Series, scored: bool) -> str:
    what = (f"Each side was cut to {row.max_length} tokens (prompt ≤ {row.max_prompt_length})"
            if scored else f"At training's default cut ({row.max_length} tokens per side, "
            f"prompt ≤ {row.max_prompt_length}), which this audit did not apply")
    verb = "" if scored else "would "
    return (f"- {what}: {_count(row.truncated, row.n)} pairs {verb}lose tokens (chosen "
            f"response in {row.cut_p}, rejected in {row.cut_n}, prompt in {row.cut_prompt}), "
            f"{number(row.lost_mean, 1)} tokens per cut response on average (at most "
            f"{row.lost_max}); {row.identical} {verb}differ only past the cut"
            f"{' and were dropped' if scored else ''}.")


def _provenance(result: Audit) -> str:
    s, env = result.settings, result.settings.get("environment", {})
    sampled = (f"a stratified random sample of {s['n_audited']} (over "
               f"{' × '.join(s['strata']) or 'no metadata: a simple random sample'}, seed "
               f"{s['seed']})" if s["n_audited"] < s["n_loaded"] else "all of them")
    skipped = (f" ({s['n_skipped']} records skipped while loading: "
               f"{'; '.join(s['skipped'][:3])}{' …' if s['n_skipped'] > 3 else ''})"
               if s["n_skipped"] else "")
    lines = [f"- Data: `{s['source']}`, {s['n_loaded']} pairs{skipped}; audited: {sampled}.",
             f"- Model: `{s['model']}` ({s['parameters'] / 1e6:.1f} M parameters, {s['dtype']}, "
             f"{'chat template' if s['chat_template'] else 'no chat template'}), at its starting "
             "weights: nothing here trains."]
    if not s["max_length"]:
        lines.append("- Nothing was cut: every prompt and response was scored whole.")
    for _, row in result.cuts.iterrows():
        lines.append(_cut_line(row, scored=row.cut == "scored"))
    sec = s["seconds"]
    per_pair = sec["scoring"] / max(s["n_audited"], 1)
    lines.append(f"- Machine: {env.get('device')}, {s['cpu']} ({env.get('cpu_count')} cores), torch "
                 f"{env.get('torch')}, transformers {env.get('transformers')}, prefstudy "
                 f"commit `{env.get('git_commit')}`. Scoring took {sec['scoring']:.0f} s "
                 f"({per_pair:.2f} s per pair), the dose-response {sec['dose']:.0f} s"
                 + (f", gradients {sec['gradients']:.0f} s" if s["gradients"] else "")
                 + f"; {s['total_seconds']:.0f} s in all.")
    return "\n".join(lines)


def _verdict(lo: float, hi: float, rising: str, falling: str, reason: str = "") -> str:
    """"held" and which way (`rising` above 0, `falling` below) when the interval excludes 0,
    else that it did not, and why (`reason`: the table's, where its numbers are undefined)."""
    if not (pd.notna(lo) and pd.notna(hi)):
        return f"could not be judged ({reason or 'too few pairs for an interval'})"
    if lo > 0 or hi < 0:
        return f"held: {rising if lo > 0 else falling}"
    return "did not hold (the interval includes 0)"


LENGTH_WAYS = ("the gap grows with Δlen, so a pair's longer answer is the one it counts against",
               "the gap shrinks as Δlen grows, so a pair's shorter answer is the one it counts "
               "against")
DOSE_WAYS = ("a longer rejected answer widens it", "a longer rejected answer narrows it")


def _claims(result: Audit) -> str:
    """One plain sentence per measurement of the study's first claim (C1): claim, numbers,
    verdict."""
    lines = []
    for norm, words in (("sum", "summed"), ("mean", "token-mean")):
        row = _row(result.length, normalisation=norm)
        if row is not None:
            lines.append(f"- The {words} gap follows Δlen: slope "
                         f"{interval_label(row.slope, row.slope_lo, row.slope_hi, digits=4)} "
                         f"nats per token, R² = "
                         f"{interval_label(row.r2, row.r2_lo, row.r2_hi, digits=3)}, over "
                         f"{row.n} pairs — "
                         f"{_verdict(row.slope_lo, row.slope_hi, *LENGTH_WAYS, row.get('reason', ''))}.")
    for norm, words in (("sum", "summed"), ("mean", "token-mean")):
        row = _row(result.dose_summary, normalisation=norm)
        if row is not None:
            lines.append(f"- Length alone moves the {words} gap: lengthening only the rejected "
                         f"answer changes it by "
                         f"{interval_label(row.slope, row.slope_lo, row.slope_hi, digits=3)} "
                         f"nats per doubling of its tokens (mean of {row.n_pairs} per-pair "
                         f"slopes) — "
                         f"{_verdict(row.slope_lo, row.slope_hi, *DOSE_WAYS, row.get('reason', ''))}.")
    for norm, words in (("sum", "summed"), ("mean", "token-mean")):
        c, r = (_row(result.accuracy, normalisation=norm, length_kind=kind)
                for kind in ("chosen longer", "rejected longer"))
        if c is not None and r is not None and c.n and r.n:
            lines.append(f"- Under {words} loss the starting model prefers the chosen answer in "
                         f"{_count(c.k, c.n)} pairs whose chosen answer is clearly longer "
                         f"({percent(c.accuracy)}) and in {_count(r.k, r.n)} whose rejected "
                         f"answer is ({percent(r.accuracy)}).")
    return "\n".join(lines) or "- Too few pairs were scored to judge anything."


def _length_section(result: Audit, out: Path) -> str:
    effect = result.length
    view = pd.DataFrame({
        "gap normalised by": effect.normalisation, "pairs": effect.n,
        "R² of gap on Δlen": interval_column(effect, "r2", 3),
        "Spearman ρ": interval_column(effect, "spearman", 3),
        "slope (nats per token of Δlen)": interval_column(effect, "slope", 4)})
    gaps = dg.gap_normalisations(result.pairs, keep=("pair_id",))
    save_figure(plots.gap_vs_length(gaps, effect=effect, col_order=list(auditstats.AUDIT_GAPS)),
               out / "figures" / "gap_vs_length.png")
    acc = result.accuracy
    acc_view = pd.DataFrame({
        "gap normalised by": acc.normalisation, "length kind": acc.length_kind.astype(str),
        "gap favours chosen": [_share(r, "accuracy") for _, r in acc.iterrows()],
        "ties": acc.n_ties})
    shown = acc[(acc.length_kind != "all") & (acc.n > 0)]
    if len(shown):
        save_figure(plots.accuracy_plot(shown, order=list(auditstats.LENGTH_KINDS),
                                       hue_order=list(auditstats.AUDIT_GAPS)),
                   out / "figures" / "accuracy.png")
    longer = result.chosen_longer.iloc[0] if len(result.chosen_longer) else None
    return "\n".join([
        "Δlen = len_n − len_p in response tokens as scored; the gap is rejected minus chosen: "
        "`gap_sum` = nll_sum_n − nll_sum_p (summed cross-entropy) and `gap` = loss_n − loss_p "
        "(token-mean). Intervals: 95% percentile bootstrap over pairs "
        f"({result.settings['n_boot']} resamples).", "", markdown_table(view), "",
        "![gap against length difference](figures/gap_vs_length.png)", "",
        "**Preference accuracy at the start**: the share of pairs whose gap favours the chosen "
        "answer (gap > 0), by length kind. *Clearly longer* means at least "
        f"{auditstats.CLEARLY_LONGER:g} × the other answer's response tokens; *similar* is every "
        "other pair. Intervals: exact Clopper–Pearson. A tie favours neither. There is no "
        "reference gap here: at the starting weights the policy is its own reference, so DPO's "
        "implicit reward is 0 for every pair and ranks none.", "", markdown_table(acc_view), "",
        *(["![accuracy by length kind](figures/accuracy.png)", ""] if len(shown) else []),
        *([f"The chosen answer is the longer one (more response tokens) in {_share(longer)} "
           f"pairs; {int(longer.n_equal)} have equal lengths.", ""] if longer is not None else []),
    ])


def _dose_section(result: Audit, out: Path) -> str:
    if not len(result.dose_factors):
        return "No dose-response: no pair was scored, or no factor was asked for.\n"
    f = result.dose_factors
    view = pd.DataFrame({
        "gap normalised by": f.normalisation, "nominal × (characters)": f.factor.map("{:g}".format),
        "pairs": f.n, "achieved × characters": f.char_ratio.map(lambda v: number(v, 2)),
        "achieved × tokens (range)": [f"{number(r.token_ratio, 2)} ({number(r.token_ratio_min, 2)}"
                                      f"–{number(r.token_ratio_max, 2)})" for r in f.itertuples()],
        "mean gap": interval_column(f, "mean", 3),
        "change from the unchanged pair": interval_column(f, "dgap", 3).where(
            f.factor != 1, "(the control)")})
    d = result.dose_summary
    slopes = pd.DataFrame({
        "gap normalised by": d.normalisation, "pairs": d.n_pairs,
        "slope per achieved doubling (nats)": interval_column(d, "slope", 3),
        "median [quartiles]": [f"{number(r.slope_median, 3)} [{number(r.slope_q25, 3)}, "
                               f"{number(r.slope_q75, 3)}]" for r in d.itertuples()]})
    save_figure(plots.dose_plot(auditstats.dose_gaps(result.dose), summary=f, slopes=d,
                               col_order=list(auditstats.AUDIT_GAPS)),
               out / "figures" / "dose.png")
    s = result.settings
    return "\n".join([
        f"A stratified sample of the scored pairs ({d.n_pairs.max()} pairs) with only the "
        "rejected answer changed: shortened to its leading sentences or lengthened with neutral "
        "filler sentences in its language (`prefstudy.variants.length_variants`; the filler "
        "language is the pair's `lang`, or the script of the answer where there is no label or "
        "no filler for it: `filler_lang` in dose.parquet). The nominal "
        "factors are in characters; what the model sees is tokens, so every number below is "
        "against the **achieved token ratio** (rejected tokens ÷ the unchanged pair's). "
        f"{s['dose_skipped']} variants equal to the chosen answer were left out.", "",
        markdown_table(view), "",
        "Each pair's own slope of its gap on log2(achieved token ratio) across its variants "
        "(the unchanged pair included), then the mean over pairs with a 95% percentile "
        "bootstrap interval over pairs:", "", markdown_table(slopes), "",
        "![dose-response](figures/dose.png)", ""])


def _content_section(result: Audit, out: Path) -> str:
    pairs = result.pairs
    q = pairs.edit_distance.quantile([0.1, 0.25, 0.5, 0.75, 0.9])
    close = (pairs.edit_distance <= 0.1).sum()
    dupes = pairs.duplicate_of.notna().sum()
    shared = (pairs.prompt_group > 1).sum()
    save_figure(plots.histogram_plot(pairs, x="edit_distance", bins=20, binrange=(0, 1)),
               out / "figures" / "edit_distance.png")
    return "\n".join([
        "Edit distance between chosen and rejected (characters; 0 = identical, 1 = nothing in "
        "common, `prefstudy.data.edit_distance`): quantiles 10/25/50/75/90% = "
        + ", ".join(number(v, 2) for v in q) + f". {_count(close, len(pairs))} pairs differ by "
        "at most 0.1 (minimal edits, where chosen and rejected share most of their tokens).", "",
        f"{_count(shared, len(pairs))} pairs share their prompt (up to case and whitespace) "
        f"with another audited pair; {_count(dupes, len(pairs))} nearly repeat an earlier pair "
        f"(chosen and rejected each within edit distance {auditstats.NEAR_DUPLICATE:g}: "
        "`duplicate_of` in pairs.parquet).", "",
        f"Answers that differ only past a cut: see the cut lines above ({int(pairs.dropped.notna().sum())} "
        "pairs dropped by the scored cut).", "",
        "![edit distance](figures/edit_distance.png)", ""])


def _dpo_line(result: Audit) -> str:
    """The DPO = naive-sum-up-to-a-scale statement, with the measured ratio when both ran."""
    line = ("At the starting weights the policy is its own reference, so DPO's margin is 0 and "
            "its per-pair gradient is −β σ(0) ∇(log π(chosen) − log π(rejected)) = β/2 × the "
            "gradient of the naive summed objective nll_sum_p − nll_sum_n: the same direction, "
            "a fixed scale (Rafailov et al. 2023, eq. 7). DPO's cosines equal naive-sum's; "
            "its norms are β/2 as large.")
    ratio = auditstats.gradient_scale(result.gradients, of="dpo", to="naive-sum")
    if ratio["n"]:
        line += (f" Measured: grad_norm(dpo) / grad_norm(naive-sum) = "
                 f"{number(ratio['median'], 4)} (from {number(ratio['min'], 4)} to "
                 f"{number(ratio['max'], 4)} over {ratio['n']} pairs).")
    return line


def _gradient_section(result: Audit, out: Path) -> str:
    if not len(result.gradients):
        return ("Not computed: `prefstudy audit --gradients` (or `audit(..., gradients=True)`) "
                "adds per-pair gradient norms, leave-one-out cosines and entanglement.\n")
    grads = result.gradients.assign(tokens=result.gradients.len_p + result.gradients.len_n)
    key = auditstats.gradient_key(grads)
    g = result.gradient_summary
    view = pd.DataFrame({
        "objective": g[key], "pairs": g.n_pairs,
        "R² of grad norm on tokens": g.norm_r2.map(lambda v: number(v, 3)),
        "ρ": g.norm_spearman.map(lambda v: number(v, 3)),
        "leave-one-out cosine": interval_column(g, "cos_loo", 3),
        "orthogonal baseline": g.cos_orthogonal.map(lambda v: number(v, 3)),
        "pairs against the others": interval_column(g, "share_opposed", 1, share=True)})
    per_pair = grads.drop_duplicates("pair_id")  # entanglement and CHES: one value per pair
    per_pair = per_pair.assign(pairs=f"{len(per_pair)} pairs")
    q = per_pair[["entanglement", "ches"]].quantile([0.25, 0.5, 0.75])
    figures = out / "figures"
    save_figure(plots.gradient_norm_plot(grads, col=key),
               figures / "gradient_norm.png")
    save_figure(plots.distribution_plot(grads, x="grad_cos_loo", y=key,
                                       baseline="grad_cos_orthogonal", refline=0),
               figures / "gradient_cosine.png")
    save_figure(plots.distribution_panels(per_pair, columns=("entanglement", "ches"), y="pairs",
                                       symlog=("ches",)),
               figures / "entanglement.png")
    return "\n".join([
        f"Per-pair gradients at the starting weights of {g.n_pairs.max()} pairs (a stratified "
        "sample), in the gradient audit's batches (`prefstudy.gradaudit`). Under summed losses "
        "a pair's gradient norm grows with its length; under token-mean losses it should not. "
        "The leave-one-out cosine is each pair's gradient against the mean of the others in "
        "its batch, beside what orthogonal gradients would give (its interval: bootstrap over "
        "batches).", "", markdown_table(view), "", _dpo_line(result), "",
        "Entanglement, the cosine of a pair's chosen and rejected log-prob gradients, and CHES, "
        "which compares their hidden states (Razin et al. 2024), belong to the pair, not the "
        "objective: median [quartiles] over the pairs, entanglement "
        f"{number(q.entanglement[0.5], 3)} [{number(q.entanglement[0.25], 3)}, "
        f"{number(q.entanglement[0.75], 3)}], CHES {number(q.ches[0.5], 3)} "
        f"[{number(q.ches[0.25], 3)}, {number(q.ches[0.75], 3)}].", "",
        "![gradient norm against length](figures/gradient_norm.png)", "",
        "![leave-one-out cosine](figures/gradient_cosine.png)", "",
        "![entanglement and CHES](figures/entanglement.png)", ""])


def sections(result: Audit, out: str | os.PathLike) -> dict[str, str]:
    """The page's sections (Markdown) by name — provenance, claims, length, dose, content,
    gradients — drawing their figures into `out/figures/` (the study report embeds them)."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return {"provenance": _provenance(result), "claims": _claims(result),
            "length": _length_section(result, out), "dose": _dose_section(result, out),
            "content": _content_section(result, out),
            "gradients": _gradient_section(result, out)}


def render_page(result: Audit, out: str | os.PathLike) -> str:
    """The audit page (Markdown), drawing its figures into `out/figures/`."""
    part = sections(result, out)
    page = [
        f"# Audit of `{result.settings['source']}` at the starting model", "",
        "Every pair scored once by the starting model, before any training "
        "(`prefstudy audit`; numbers from `pairs.parquet` and `dose.parquet` beside this page). "
        "Each pair is one unit: every interval is 95% and resamples pairs.", "",
        "## Provenance", "", part["provenance"], "",
        "## What held", "", "The study's first claim (C1): when chosen and rejected differ in "
        "length and wording, the per-pair gap swings for reasons that are not preference.", "",
        part["claims"], "",
        "## Length", "", part["length"],
        "## Dose-response: only the length changes", "", part["dose"],
        "## Content", "", part["content"],
        "## Gradients", "", part["gradients"]]
    return "\n".join(page).rstrip() + "\n"
