"""The report's C3 (collapse against progress) and C4 (displacement) sections: prose, tables and
figures from `findings.Findings`. Numbers come from the findings, figures from
`prefstudy.plots`; nothing here computes a statistic.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from . import progress as pg
from .auditpage import save_figure as _save
from .findings import Findings, in_order
from .formatting import interval_label, markdown_table, number, percent
from .verdicts import PREDICTOR_NAMES

ENVELOPE_MARK = "★"


def _cell(row, name: str, digits: int = 2) -> str:
    return interval_label(row[name], row.get(f"{name}_lo"), row.get(f"{name}_hi"), digits=digits)


def _cells(frame: pd.DataFrame, name: str, digits: int = 2) -> list[str]:
    return [_cell(r, name, digits) for _, r in frame.iterrows()]


def _share(row) -> str:
    if not row.n:
        return "–"
    return (f"{row.k} of {row.n} ({percent(row.share, 0)} [{percent(row.share_lo, 0)}, "
            f"{percent(row.share_hi, 0)}])")


def _sorted(frame: pd.DataFrame, order: list[str], *by: str) -> pd.DataFrame:
    rank = {label: i for i, label in enumerate(order)}
    return frame.assign(_o=frame.label.map(rank)).sort_values(["_o", *by], kind="stable") \
        .drop(columns="_o")


# --------------------------------------------------------------------------- C3


def collapse_section(tables, found: Findings, out: Path) -> str:
    order = tables.order
    if not len(found.paths):
        return "The runs evaluated no held-out pairs, so C3 is not measured here.\n"
    return "\n".join([*frontier_part(found, out, order), *levels_part(found),
                      *accuracy_language_part(found, order),
                      *matched_part(found, out, order), *comparison_part(found, order),
                      *collapse_part(found, order), *negative_part(found),
                      *losses_part(tables, out, order)])


def _families(frame: pd.DataFrame) -> dict[str, str]:
    """label → family of the rows that have one (for panel titles)."""
    if "family" not in frame.columns:
        return {}
    known = frame.dropna(subset=["family"]).drop_duplicates("label")
    return dict(zip(known.label, known.family))


def _present(order: list[str], frame: pd.DataFrame) -> list[str]:
    """`order`'s labels that `frame` has, then any it has that `order` lacks."""
    have = list(dict.fromkeys(frame.label))
    return [lab for lab in order if lab in have] + [lab for lab in have if lab not in order]


def frontier_part(found: Findings, out: Path, order: list[str]) -> list[str]:
    paths = found.paths.rename(columns={"accuracy": "reward_accuracy"})
    families = _families(paths)
    grid = plots.objective_frontier(paths, y="reward_accuracy", col_order=_present(order, paths),
                                    families=families, origin=(0.0, 0.5))
    _save(grid, out / "figures" / "frontier.png")
    text = [
        "Each run is a path: one point per evaluation, its held-out reward accuracy (the share "
        "of held-out pairs whose implicit reward against the starting model — summed log-ratios, "
        "as TRL's `rewards/accuracies` — favours the chosen answer, a tie counting one half: "
        "preference progress) against Δ NLL of neutral text (nats per token: capability cost), "
        "from the starting model at (0, ½), arrows in the direction of training; one panel per "
        "objective, its family in the title, one line per run, coloured by learning rate (light "
        "to dark as it grows; the seeds of a learning rate share its colour). One held-out pair "
        f"moves accuracy by {percent(1 / max(found.n_pairs, 1), 1)}.",
        "", "![progress against cost](figures/frontier.png)", ""]
    if found.paths.kl.notna().any():
        kl = plots.objective_frontier(paths, x="kl", y="reward_accuracy",
                                      col_order=_present(order, paths), families=families,
                                      origin=(0.0, 0.5))
        _save(kl, out / "figures" / "frontier_kl.png")
        text += ["The same paths against the KL from the starting model (mean per-token KL over "
                 "the vocabulary, teacher-forced on the held-out pairs' answers; Rafailov et al. "
                 "2024's axis):", "", "![progress against KL](figures/frontier_kl.png)", ""]
    else:
        text += ["The KL from the starting model, the second cost axis, was not recorded by these "
                 "runs (it needs new runs).", ""]
    return text


def accuracy_language_part(found: Findings, order: list[str]) -> list[str]:
    """Held-out accuracy at the end, language by language, per objective and learning rate."""
    acc = found.accuracy_languages
    if not len(acc):
        return []
    cells = acc.assign(cell=[interval_label(r.accuracy, r.lo, r.hi, digits=2)
                             for r in acc.itertuples()])
    wide = cells.pivot_table(index=["label", "lr"], columns="lang", values="cell",
                             aggfunc="first").reset_index()
    wide = _sorted(wide, order, "lr").assign(lr=lambda f: f.lr.map("{:g}".format))
    n = acc.groupby("lang").n_pairs.max()
    return ["Held-out reward accuracy at each run's last evaluation, by the pair's language ("
            + ", ".join(f"{k}: {v} pairs" for k, v in n.items()) + "; seeds averaged per pair, "
            "pair bootstrap), one row per objective and learning rate:", "",
            markdown_table(wide.rename(columns={"label": "objective", "lr": "learning rate"})),
            ""]


def levels_part(found: Findings) -> list[str]:
    lv = found.levels
    view = pd.DataFrame({
        "accuracy level": lv.level.map("{:g}".format),
        "above chance with these pairs": [
            f"{'yes' if r.above_chance else 'no'} ({int(np.ceil(r.level * r.n_pairs - 1e-9))} "
            f"of {r.n_pairs})" for r in lv.itertuples()],
        "pairs needed to be above chance": lv.min_pairs,
        "runs reaching it": lv.reached, "passed before the first evaluation": lv.before,
        "never reached": lv.not_reached})
    primary = (f"The verdicts use accuracy {found.primary:g}, the lowest level above chance "
               "that some run reached (a rule fixed before looking at any outcome)."
               if np.isfinite(found.primary) else
               "No level above chance was reached, so no verdict rests on a matched level.")
    return [
        "**Matched progress.** Objectives are compared where each run's held-out accuracy first "
        "reached the same level, interpolated between the two evaluations after step 0 that "
        "bracket it; a level a run's first evaluation had already passed is not interpolated "
        "from step 0 (it is counted as passed before the first evaluation). A level is "
        "resolved only where it is itself distinguishable from one half (the exact interval of "
        f"its count of pairs lies above ½). {primary}", "", markdown_table(view), ""]


def matched_part(found: Findings, out: Path, order: list[str]) -> list[str]:
    reached = found.matched[found.matched.status == pg.REACHED]
    if not len(reached):
        return ["No run reached any level after its first evaluation.", ""]
    rows = _sorted(reached, order, "level", "lr", "seed")
    view = pd.DataFrame({
        "objective": rows.label, "lr": rows.lr.map("{:g}".format), "seed": rows.seed,
        "accuracy": rows.level.map("{:g}".format), "at step": rows.step.map("{:.1f}".format),
        "Δ chosen loss": _cells(rows, "d_chosen"), "Δ rejected loss": _cells(rows, "d_rejected"),
        "Δ neutral NLL": _cells(rows, "d_neutral", 3), "KL": _cells(rows, "kl", 3),
        "envelope": rows.envelope.map({True: ENVELOPE_MARK, False: ""})})
    objectives = found.objectives
    text = [
        "Every run where it reached each level (nats per token since step 0; intervals: 95% "
        f"percentile bootstrap over the {found.n_pairs} held-out pairs and the "
        f"{found.n_passages} neutral passages, resampled together, the crossing recomputed in "
        f"each resample). Learning rates are never averaged: {ENVELOPE_MARK} marks each "
        f"objective's envelope, {pg.ENVELOPE_RULE}.", "", markdown_table(view), ""]
    if len(objectives):
        env = in_order(objectives, order)
        _save(plots.matched_chosen(env, hue_order=[lab for lab in order
                                                   if lab in set(env.label)], join=False),
              out / "figures" / "matched_chosen.png")
        text += ["Each objective's envelope, the chosen loss's change at each level (its "
                 "learning rate can differ from level to level, so the points are not joined):",
                 "", "![chosen loss at matched progress](figures/matched_chosen.png)", ""]
    return text


def comparison_part(found: Findings, order: list[str]) -> list[str]:
    comp = found.comparisons
    if not len(comp):
        return []
    wide = comp.assign(cell=[_cell(r, "diff", 3) for _, r in comp.iterrows()]).pivot_table(
        index=["a", "level", "lr_a", "lr_b"], columns="column", values="cell", aggfunc="first")
    wide = wide.reset_index().rename(columns={"a": "label"})
    wide = _sorted(wide, order, "level")
    view = pd.DataFrame({
        "objective": wide.label, "accuracy": wide.level.map("{:g}".format),
        "its lr": wide.lr_a.map("{:g}".format), "DPO's lr": wide.lr_b.map("{:g}".format),
        **{name: wide.get(column, "–") for column, name in (
            ("d_chosen", "Δ chosen loss, minus DPO's"), ("d_neutral", "Δ neutral NLL, minus DPO's"),
            ("kl", "KL, minus DPO's"))}})
    return [
        "**Against DPO, paired.** Each objective's envelope minus DPO's at each level both "
        "reached: the difference under the same resample of held-out pairs and neutral passages "
        "on both sides, so what they share cancels (an interval excluding 0: the objectives "
        "differ there).", "", markdown_table(view), ""]


def collapse_part(found: Findings, order: list[str]) -> list[str]:
    col = _sorted(found.collapse, order, "lr", "seed")
    onset = partial(_step_or_dash)
    view = pd.DataFrame({
        "objective": col.label, "lr": col.lr.map("{:g}".format), "seed": col.seed,
        "settled evaluations": col.n_settled, "verdict": col.verdict,
        "collapse from": col.collapse_step.map(onset),
        "degradation from": col.degradation_step.map(onset),
        "Δ chosen − Δ neutral at the end": _cells(col, "excess"),
        "Δ chosen loss": col.d_chosen.map(partial(number, digits=2)),
        "Δ neutral NLL": _cells(col, "d_neutral", 3),
        "accuracy at the end": col.accuracy.map(partial(number, digits=3)),
        **({"distinct-2": col.distinct_2.map(partial(number, digits=2)),
            "4-gram repetition": col.repetition.map(percent)}
           if "distinct_2" in col.columns else {}),
        "past a uniform guess": col.above_uniform.map({True: "yes", False: "no"})})
    warm = int(col.warmup_steps.max()) if len(col) else 0
    return [
        "**Collapse apart from degradation, run by run.** An evaluation *collapses* when the "
        "held-out chosen loss rose faster than neutral text (the 95% lower bound of Δchosen − "
        "Δneutral, over pairs and passages resampled together, above 0) while held-out accuracy "
        "is above one half or the mean reward margin is positive; it *degrades* when the "
        "chosen, rejected and neutral losses all rose beyond their bounds. Either is declared "
        "from the first of two settled evaluations in a row: after the learning-rate warm-up "
        + (f"({warm} steps)" if warm else "(these runs had none: a cold start, so their first "
           "evaluation is never settled)")
        + ". Degeneration of the greedy probe answers (distinct bigrams, repeated 4-grams) and "
        "whether any per-token loss passed ln|V| (a uniform guess) by a nat are beside it.", "",
        markdown_table(view), "", *_refusals(found, order)]


def _step_or_dash(value) -> str:
    return "–" if pd.isna(value) else f"step {value:g}"


def _refusals(found: Findings, order: list[str]) -> list[str]:
    refusal = found.refusals
    if not len(refusal):
        return []
    wide = {}
    for row in refusal.itertuples():
        wide.setdefault(row.label, {})[row.kind] = (
            f"{row.k} of {row.n} [{percent(row.share_lo, 0)}, {percent(row.share_hi, 0)}]")
    kinds = sorted({k for v in wide.values() for k in v}, key=lambda k: (k != "harmful", k))
    rows = [{"objective": label, **{f"refused, {k} probes": wide[label].get(k, "–")
                                    for k in kinds}}
            for label in ["(start)", *order] if label in wide]
    return ["**Refusals** (greedy answers opening with a refusal phrase), before training and at "
            "the end of each objective's largest-learning-rate run; over-refusal shows on the "
            "benign probes. Exact intervals over probes:", "",
            markdown_table(pd.DataFrame(rows)), ""]


def negative_part(found: Findings) -> list[str]:
    neg = found.negative
    if not len(neg):
        return []
    view = pd.DataFrame({
        "lr": neg.lr.map("{:g}".format), "seed": neg.seed, "at step": neg.step,
        "Δ neutral NLL, negative-only": neg.negative.map(partial(number, digits=3)),
        "Δ neutral NLL, naive-sum": neg.naive.map(partial(number, digits=3)),
        "difference": _cells(neg, "diff", 3)})
    return [
        "**The negative term alone.** The book's claim: training on −loss_n alone destroys the "
        "model's language, unlike the naive objective, whose positive term holds the chosen "
        "answer up. Each negative-only run against naive-sum at the same learning rate and data "
        "order, at their last common evaluation (interval over neutral passages, resampled):",
        "", markdown_table(view), ""]


def losses_part(tables, out: Path, order: list[str]) -> list[str]:
    top = tables.runs.lr.max()
    records = tables.records[tables.records.lr == top] if pd.notna(top) else tables.records
    if not len(records):
        return []
    _save(plots.normalisation_grid(records, col_order=[lab for lab in order
                                                       if lab in set(records.label)]),
          out / "figures" / "normalisation_grid.png")
    return [f"Training losses of every configuration at the largest learning rate (lr "
            f"{top:g}; each panel on its own scale, bands across seeds where there are "
            "several):", "", "![all normalisations](figures/normalisation_grid.png)", ""]


# --------------------------------------------------------------------------- C4


def displacement_section(tables, found: Findings, out: Path) -> str:
    order = tables.order
    if not len(found.curve):
        return "The runs evaluated no held-out pairs, so C4 is not measured here.\n"
    return "\n".join([*curve_part(found, out, order), *levels_displacement(found, order),
                      *predictor_part(found, order), *language_part(found, order),
                      *squeezing_part(found, order)])


def curve_part(found: Findings, out: Path, order: list[str]) -> list[str]:
    curve = found.curve[found.curve.split == "heldout"].rename(columns={"share": "displaced"})
    _save(plots.objective_frontier(curve, y="displaced", col_order=_present(order, curve),
                                   families=_families(curve)),
          out / "figures" / "displacement_curve.png")
    trained = "train" in set(found.curve.split)
    return [
        "A held-out pair is *displaced* when its chosen answer's per-token NLL rose more than "
        "neutral text's since step 0 (the starting model): the chosen answer lost more than "
        "everything else did. Each run is a path, its share of displaced held-out pairs at each "
        "evaluation against Δ neutral NLL, from the starting model (nothing displaced, no cost), "
        "one panel per objective, coloured by learning rate:",
        "", "![displacement against cost](figures/displacement_curve.png)", "",
        *([] if trained else ["These runs evaluated no trained pairs (Razin et al. 2024 measure "
                              "the displacement of the pairs trained on): it needs new runs.",
                              ""])]


def levels_displacement(found: Findings, order: list[str]) -> list[str]:
    shift = found.displacement
    if not len(shift):
        return []
    rows = _sorted(shift, order, "split", "level", "lr", "seed")
    view = pd.DataFrame({
        "objective": rows.label, "pairs": rows.split.map({"heldout": "held-out",
                                                          "train": "trained"}),
        "lr": rows.lr.map("{:g}".format), "seed": rows.seed,
        "accuracy": rows.level.map("{:g}".format),
        "Δ neutral NLL there": rows.d_neutral.map(partial(number, digits=3)),
        "displaced": [_share(r) for r in rows.itertuples()],
        "envelope": rows.envelope.map({True: ENVELOPE_MARK, False: ""})})
    return [
        "**At the points the levels fix.** Displacement counted where each run first reached "
        "each accuracy level (each pair's change and neutral text's interpolated there), not at "
        "a point chosen after looking; exact Clopper–Pearson intervals over pairs; "
        f"{ENVELOPE_MARK}: the objective's envelope ({pg.ENVELOPE_RULE}).", "",
        markdown_table(view), ""]


def predictor_part(found: Findings, order: list[str]) -> list[str]:
    rho = found.predictors
    if not len(rho):
        return []
    middle = sorted(rho.lr.dropna().unique())[len(rho.lr.dropna().unique()) // 2]
    at = _sorted(rho[rho.lr == middle], order, "seed")
    at = at.assign(cell=[f"{_cell(r, 'rho')} (plain {number(r.plain_rho, 2)})"
                         for _, r in at.iterrows()])
    wide = at.pivot_table(index="label", columns="predictor", values="cell", aggfunc="first")
    wide = wide.reindex(index=[lab for lab in order if lab in wide.index],
                        columns=[c for c in PREDICTOR_NAMES if c in wide.columns])
    signs = ", ".join(f"{PREDICTOR_NAMES[k]} {'+' if v > 0 else '−'}"
                      for k, v in rho.drop_duplicates("predictor")
                      .set_index("predictor").expected_sign.items())
    split = {"train": "trained", "heldout": "held-out"}[rho.split.iloc[0]]
    return [
        f"**What predicts it.** Per {split} pair at the end of each run (a point fixed in "
        "advance): the partial Spearman ρ between each predictor and the pair's displacement "
        "(its chosen per-token NLL rise minus neutral text's), with the chosen and rejected "
        "lengths partialled out, and the plain ρ beside it; 95% pair-bootstrap intervals. "
        f"Shown: the middle learning rate ({middle:g}); the verdict counts every run. The sign "
        f"each paper found (more displacement with a larger value: +): {signs} (Razin et al. "
        "2024; Pal et al. 2024 for edit distance). Edit distance is between the two answers' "
        "texts; entanglement, CHES and ln-CHES are the audit's, at the starting model.", "",
        markdown_table(wide.rename(columns=PREDICTOR_NAMES).reset_index()
                       .rename(columns={"label": "objective"})), ""]


def language_part(found: Findings, order: list[str]) -> list[str]:
    lang = found.by_language
    if not len(lang) or lang.lang.nunique() < 2 or not np.isfinite(found.primary):
        return []
    lang = lang[lang.level == found.primary]
    if not len(lang):
        return []
    wide = lang.assign(cell=[f"{r.k} of {r.n}" for r in lang.itertuples()]).pivot_table(
        index="label", columns="lang", values="cell", aggfunc="first")
    wide = wide.reindex([lab for lab in order if lab in wide.index])
    return [f"By the held-out pair's language (displaced, at accuracy {found.primary:g}, each "
            "objective's envelope point):", "",
            markdown_table(wide.reset_index().rename(columns={"label": "objective"})), ""]


def squeezing_part(found: Findings, order: list[str]) -> list[str]:
    sq = found.squeezing
    if not len(sq):
        return ["**The squeezing effect** (Ren & Sutherland 2025): the log-probability of the "
                "starting model's own greedy answer to each held-out prompt, which DPO is "
                "predicted to raise while the chosen and rejected answers both fall, was not "
                "recorded by these runs (it needs new runs).", ""]
    rows = _sorted(sq, order, "level", "seed")
    view = pd.DataFrame({
        "objective": rows.label, "lr": rows.lr.map("{:g}".format), "seed": rows.seed,
        "accuracy": rows.level.map("{:g}".format),
        "Δ log-prob of the greedy answer (nats)": _cells(rows, "d_greedy_logp"),
        "Δ chosen loss (nats/token)": _cells(rows, "d_chosen")})
    return ["**The squeezing effect** (Ren & Sutherland 2025): the change of the log-probability "
            "of the starting model's own greedy answer to each held-out prompt, at each "
            "objective's envelope point; a rise while the chosen answer's loss rises is the "
            "effect.", "", markdown_table(view), ""]
