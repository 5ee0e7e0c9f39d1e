"""The audit's page: an `audit.Audit` written as Markdown, with its figures.

`render_page(result, out)` is the whole page (`audit.write_audit` writes it as `out/README.md`);
`sections(result, out)` its sections by name — provenance, claims, length, dose, content,
gradients — which the study report embeds. Each section turns the audit's tables into prose and
Markdown tables and draws its figures (`prefstudy.plots`, `prefstudy.auditplots`) into
`out/figures/`; nothing here computes a statistic the tables do not hold, except two sections
whose tables the Audit does not carry, computed from its pairs by `prefstudy.judge`: "judge"
(only for pairs that name the models of their answers: a real judge's length preference) and
"reference" (only when a reference Audit is given: how the length effect here differs from it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from . import auditplots, auditstats, judge, plots, theme
from . import diagnostics as dg
from .formatting import MISSING, interval_column, interval_label, markdown_table, number, percent

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


def _layout(settings: dict) -> str:
    """", read as layout `name`" where the audit recorded the layout it read."""
    return f", read as layout `{settings['layout']}`" if settings.get("layout") else ""


def _skips(settings: dict) -> str:
    """What loading skipped: counts by reason where recorded, else the first three records."""
    s = settings
    if not s["n_skipped"]:
        return ""
    if s.get("skip_counts"):
        counts = "; ".join(f"{kind}: {n}" for kind, n in s["skip_counts"].items())
        return (f" ({s['n_skipped']} records or folder entries skipped while loading, by "
                f"reason: {counts})")
    return (f" ({s['n_skipped']} records skipped while loading: "
            f"{'; '.join(s['skipped'][:3])}{' …' if s['n_skipped'] > 3 else ''})")


def _provenance(result: Audit) -> str:
    s, env = result.settings, result.settings.get("environment", {})
    sampled = (f"a stratified random sample of {s['n_audited']} (over "
               f"{' × '.join(s['strata']) or 'no metadata: a simple random sample'}, seed "
               f"{s['seed']})" if s["n_audited"] < s["n_loaded"] else "all of them")
    lines = [f"- Data: `{s['source']}`{_layout(s)}, {s['n_loaded']} pairs{_skips(s)}; "
             f"audited: {sampled}."]
    if s.get("text_kept") is False:
        lines.append(f"- Pair texts: not kept in `pairs.parquet` ({s.get('text_kept_why')}); "
                     "ids and the numbers computed from the texts are.")
    lines.append(f"- Model: `{s['model']}` ({s['parameters'] / 1e6:.1f} M parameters, "
                 f"{s['dtype']}, {'chat template' if s['chat_template'] else 'no chat template'}"
                 "), at its starting weights: nothing here trains.")
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
        save_figure(auditplots.accuracy_plot(shown, order=list(auditstats.LENGTH_KINDS),
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
    save_figure(auditplots.dose_plot(auditstats.dose_gaps(result.dose), summary=f, slopes=d,
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
    save_figure(auditplots.histogram_plot(pairs, x="edit_distance", bins=20, binrange=(0, 1)),
                out / "figures" / "edit_distance.png")
    return "\n".join([
        "Normalised edit (Levenshtein) distance between chosen and rejected (characters; "
        "0 = identical, 1 = nothing in common, `prefstudy.data.edit_distance`): quantiles "
        "10/25/50/75/90% = "
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
    save_figure(auditplots.gradient_norm_plot(grads, col=key), figures / "gradient_norm.png")
    save_figure(auditplots.distribution_plot(grads, x="grad_cos_loo", y=key,
                                             baseline="grad_cos_orthogonal", refline=0),
                figures / "gradient_cosine.png")
    save_figure(auditplots.distribution_panels(per_pair, columns=("entanglement", "ches"),
                                               y="pairs", symlog=("ches",)),
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


ALPACA_EVAL_NOTE = ("AlpacaEval's length-controlled win rate exists because this judge prefers "
                    "longer answers: Dubois et al. (2024, \"Length-Controlled AlpacaEval\", "
                    "arXiv:2404.04475) fit a model of the judge's preference with a length term "
                    "and report that controlling for length raises AlpacaEval's Spearman "
                    "correlation with Chatbot Arena's ranking from 0.94 to 0.98.")


def _judge_reading(row: pd.Series) -> str:
    """Two plain sentences on the judge's length preference over all pairs (the ALL row)."""
    if not row.n:
        return "No pair's answers differ in length: the judge's taste for length cannot be read."
    lean = ("prefers the longer answer (the interval lies above one half)" if row.share_lo > 0.5
            else "prefers the shorter answer (the interval lies below one half)"
            if row.share_hi < 0.5 else
            "shows no clear preference for either length (the interval includes one half)")
    why = f" ({row.reason})" if row.reason else ""
    chosen = interval_label(row.p_longer, row.p_longer_lo, row.p_longer_hi, digits=1,
                            share=True)
    return (f"Over all {row.n} pairs whose answers differ in length, the judge chose the longer "
            f"answer in {_share(row)}: it {lean}. By the logistic fit an answer twice as long as "
            f"the other is chosen with probability {chosen} (β = "
            f"{interval_label(row.beta, row.beta_lo, row.beta_hi)} per doubling; 50% would mean "
            f"length does not sway it){why}.")


def _judge_section(result: Audit, out: Path) -> str:
    """The judge's preference for length (`judge.judge_length_bias`) per comparison and over
    all pairs, read in plain words, with its figure: for pairs that name their answers' models."""
    n_boot = result.settings.get("n_boot", 1000)
    bias = judge.judge_length_bias(result.pairs, n_boot=n_boot,
                                   seed=result.settings.get("seed", 0))
    view = pd.DataFrame({
        "comparison": bias.comparison, "pairs differing in length": bias.n,
        "longer answer chosen": [_share(r) for _, r in bias.iterrows()],
        "β per doubling": interval_column(bias, "beta", 2),
        "P(prefer the answer twice as long)": interval_column(bias, "p_longer", 1, share=True)})
    bins = judge.judge_length_bins(result.pairs)
    if len(bins):
        save_figure(auditplots.judge_length_plot(bins, fits=bias),
                    out / "figures" / "judge_length.png")
    names = judge.judges(result.pairs)
    who = (f"Judge: {', '.join(f'`{n}`' for n in names)} (the pairs' `judge`)" if names
           else "The pairs do not name their judge (no `judge` column)")
    cite = any("alpaca_eval" in name for name in names)
    return "\n".join([
        f"{who}; a comparison is the two models whose answers a pair holds (`chosen_model`, "
        "`rejected_model`). Lengths are response tokens as the starting model's tokenizer counts "
        "them. Each pair's answers are named A and B by a fixed coin from its pair_id, and "
        "P(the judge chooses A) = σ(β · log2(len_A / len_B)) is fitted without an intercept "
        "by maximum likelihood (`prefstudy.judge`): the length difference on a log scale, so "
        "that a few answers hundreds of tokens long do not carry the fit. Intervals: the "
        "share's exact "
        f"Clopper–Pearson; β's a 95% percentile bootstrap over pairs ({n_boot} resamples).", "",
        markdown_table(view), "", _judge_reading(bias.iloc[-1]), "",
        *([ALPACA_EVAL_NOTE, ""] if cite else []),
        *(["![the judge's choice against the length difference](figures/judge_length.png)", ""]
          if len(bins) else [])])


SHARE_MEASURES = judge.COMPARED[1:3]  # compare_audits' measures that are shares of pairs


def _compared(value, lo, hi, *, share: bool, digits: int, difference: bool = False) -> str:
    """A compare_audits number with its interval: shares in %, their differences in
    percentage points (pp)."""
    if not share:
        return interval_label(value, lo, hi, digits=digits)
    if difference:
        return f"{interval_label(100 * value, 100 * lo, 100 * hi, digits=1)} pp"
    return interval_label(value, lo, hi, digits=1, share=True)


def _reference_reading(table: pd.DataFrame) -> str:
    """One plain sentence: how much smaller (or not) Δlen's R² of the summed gap is here."""
    row = _row(table, measure=judge.COMPARED[0], normalisation="sum")
    if row is None or not pd.notna(row.difference):
        return ("The length effect could not be compared"
                + (f": {row.reason}." if row is not None and row.reason else "."))
    d, lo, hi = row.difference, row.difference_lo, row.difference_hi
    if pd.notna(hi) and hi < 0:
        verdict = (f"smaller here: lower by {interval_label(-d, -hi, -lo, digits=3)} "
                   "(reference − this data)")
    elif pd.notna(lo) and lo > 0:
        verdict = f"larger here: higher by {interval_label(d, lo, hi, digits=3)}"
    else:
        verdict = (f"not clearly different: the difference, {interval_label(d, lo, hi, digits=3)}"
                   ", includes 0" if pd.notna(lo) else
                   f"{interval_label(d, digits=3)} apart, without an interval ({row.reason})")
    return (f"On this data Δlen explains R² = "
            f"{interval_label(row.real, row.real_lo, row.real_hi, digits=3)} of the summed gap "
            f"({int(row.n_real)} pairs), against "
            f"{interval_label(row.reference, row.reference_lo, row.reference_hi, digits=3)} on "
            f"the reference pairs ({int(row.n_reference)}): the length effect is {verdict}.")


def _reference_section(result: Audit, reference: Audit) -> str:
    """This audit's length effect beside a reference audit's (`judge.compare_audits`)."""
    n_boot = result.settings.get("n_boot", 1000)
    table = judge.compare_audits(result, reference, n_boot=n_boot,
                                 seed=result.settings.get("seed", 0))
    digits = {judge.COMPARED[0]: 3, judge.COMPARED[3]: 3}
    cells = {name: [_compared(r[name], r[f"{name}_lo"], r[f"{name}_hi"],
                              share=r.measure in SHARE_MEASURES, digits=digits.get(r.measure, 2),
                              difference=name == "difference") for _, r in table.iterrows()]
             for name in ("real", "reference", "difference")}
    view = pd.DataFrame({
        "measure": table.measure, "gap normalised by": table.normalisation,
        "length kind": table.length_kind,
        "pairs (here / reference)": [f"{_whole_or_dash(r.n_real)} / "
                                     f"{_whole_or_dash(r.n_reference)}"
                                     for _, r in table.iterrows()],
        "this data": cells["real"], "reference": cells["reference"],
        "difference (this − reference)": cells["difference"]})
    source = reference.settings.get("source", "the reference audit")
    return "\n".join([
        f"The same measures on the reference pairs (`{source}`, audited by "
        f"`{reference.settings.get('model', '?')}`). Each side's value and interval are its own "
        "audit's (as its page shows them); the difference's interval is a 95% percentile "
        f"bootstrap that resamples the pairs of each audit independently ({n_boot} resamples), "
        "recomputing the measure on each. The unit is the pair (for the dose slope, the "
        "dose-response pair).", "", markdown_table(view), "",
        *([f"Missing numbers: {_reasons(table)}.", ""] if (table.reason != "").any() else []),
        _reference_reading(table), ""])


def _reasons(table: pd.DataFrame) -> str:
    """Each distinct reason of a compare_audits table, with the measures it holds for."""
    rows = table[table.reason != ""]
    named = rows.measure + rows.normalisation.map(lambda v: f" ({v})" if v else "") \
        + rows.length_kind.map(lambda v: f", {v}" if v else "")
    return "; ".join(f"{', '.join(named[rows.reason == reason])}: {reason}"
                     for reason in dict.fromkeys(rows.reason))


def _whole_or_dash(value) -> str:
    return str(int(value)) if pd.notna(value) else MISSING


def sections(result: Audit, out: str | os.PathLike, reference: Audit | None = None
             ) -> dict[str, str]:
    """The page's sections (Markdown) by name — provenance, claims, length, dose, content,
    gradients, and "judge" where the pairs name the models of their answers and "reference"
    where a reference Audit is given — drawing their figures into `out/figures/` (the study
    report embeds them)."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    part = {"provenance": _provenance(result), "claims": _claims(result),
            "length": _length_section(result, out)}
    if judge.has_models(result.pairs):
        part["judge"] = _judge_section(result, out)
    if reference is not None:
        part["reference"] = _reference_section(result, reference)
    return {**part, "dose": _dose_section(result, out), "content": _content_section(result, out),
            "gradients": _gradient_section(result, out)}


def render_page(result: Audit, out: str | os.PathLike, reference: Audit | None = None) -> str:
    """The audit page (Markdown), drawing its figures into `out/figures/`; with `reference`
    (another Audit, e.g. of the bundled pairs), a section on how the length effect differs."""
    part = sections(result, out, reference=reference)
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
        *(["## The judge", "", part["judge"]] if "judge" in part else []),
        *(["## Against the reference pairs", "", part["reference"]] if "reference" in part
          else []),
        "## Dose-response: only the length changes", "", part["dose"],
        "## Content", "", part["content"],
        "## Gradients", "", part["gradients"]]
    return "\n".join(page).rstrip() + "\n"
