"""What held: one plain sentence per claim of the seed, from `findings.Findings` and the study's
audit. Each says held, held only under a condition, did not hold, not established, or too little
data to say (naming the minimum that would be enough), and names the number it rests on, its
interval and its unit of replication (../shared/STUDY.md). `what_held` is the report's first
section and the README's findings block; nothing here computes a statistic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import progress as pg
from .auditstats import gradient_key
from .findings import Findings, in_order
from .formatting import interval_label, number, percent

# The least data each verdict rests on. Below it the verdict is "too little data to say", naming
# what would be enough; the numbers are still given beside it, never hidden.
#
# Held-out pairs: a share's exact 95% interval over 20 pairs is about ±0.23 wide at one half, so
# 20 pairs are the least that can tell three in four from one half. Accuracy levels need more:
# a level counts only where it is itself above chance (`progress.above_chance`: at 0.6, 92 pairs).
# The predictors of displacement need as many pairs: a Spearman ρ over fewer than 20 has a 95%
# interval wider than ±0.45.
MIN_HELDOUT_PAIRS = 20
# Neutral passages: Δ neutral NLL is resampled over passages; a percentile bootstrap over fewer
# than 30 units understates its spread (the committed CPU study has 16; the study's design asks
# for at least 200).
MIN_PASSAGES = 30
# Settled evaluations (after warm-up, never the first after a cold start): an onset is two in a
# row, so a run needs at least two to show collapse or degradation, or to rule them out.
MIN_SETTLED = 2
# Seeds: a spread across data orders needs at least three.
MIN_SEEDS = 3
# Training pairs (C1, C2, at the starting model): a pair-bootstrap interval over fewer than 20
# pairs is too wide to order summed against token-mean losses.
MIN_TRAINING_PAIRS = 20

PREDICTOR_NAMES = {"edit_distance": "edit distance", "entanglement": "entanglement",
                   "ches": "CHES", "ln_ches": "ln-CHES"}


def short(*counts: tuple[int, int, str]) -> str:
    """The counts below their minimum, each (have, need, what) as "16 neutral passages, at least
    30 needed", joined by "; "; "" where every count suffices."""
    return "; ".join(f"{have} {what}, at least {need} needed" for have, need, what in counts
                     if have < need)


def verdict(held: bool | None, condition: str = "", *, lacking: str = "") -> str:
    """held (with its condition), did not hold, not established (None), or — where `lacking`
    (`short`) names data below its minimum — too little data to say."""
    if lacking:
        return f"too little data to say ({lacking})"
    if held is None:
        return "not established"
    return ("held" + (f" ({condition})" if condition else "")) if held else "did not hold"


def _iv(value, lo, hi, digits: int = 2) -> str:
    return interval_label(value, lo, hi, digits=digits)


def what_held(tables, found: Findings) -> str:
    """The report's "What held": one bullet per claim (see the module docstring)."""
    lines = [*length_claim(tables), *noise_claim(tables), *collapse_claim(found),
             *negative_claim(found), *displacement_claim(found, tables.order),
             *predictor_claim(found),
             *squeezing_claim(found), *seeds_claim(tables)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- C1, C2


def length_claim(tables) -> list[str]:
    audit = tables.audit
    if audit is None or not len(audit.length):
        return []
    rows = audit.length.set_index("normalisation")
    if not {"sum", "mean"} <= set(rows.index):
        return []
    s, m = rows.loc["sum"], rows.loc["mean"]
    lacking = short((int(s.n), MIN_TRAINING_PAIRS, "training pairs"))
    return [
        f"- **C1, the gap follows length:** "
        f"{verdict(bool(s.r2_lo > m.r2_hi), 'for summed losses', lacking=lacking)}. "
        f"On the {int(s.n)} training pairs at the starting model, Δlen explains R² = "
        f"{_iv(s.r2, s.r2_lo, s.r2_hi, 3)} of the summed gap and "
        f"{_iv(m.r2, m.r2_lo, m.r2_hi, 3)} of the token-mean gap (unit: the pair; pair "
        "bootstrap)."]


def noise_claim(tables) -> list[str]:
    """C2 as the data shows it: whether length normalisation makes per-pair gradients agree
    (it would, if length were the cause) and whether a single loss (SFT) agrees more than the
    difference of two (the cause is the difference)."""
    audit = tables.audit
    if audit is None or not len(audit.gradient_summary):
        return []
    g = audit.gradient_summary.set_index(gradient_key(audit.gradients))
    if not {"naive-sum", "naive-mean"} <= set(g.index):
        return []
    s, m = g.loc["naive-sum"], g.loc["naive-mean"]
    lacking = short((int(s.n_pairs), MIN_TRAINING_PAIRS, "training pairs"))
    cos = (f"the leave-one-out cosine of a pair's gradient to the other pairs' mean is "
           f"{_iv(s.cos_loo, s.cos_loo_lo, s.cos_loo_hi, 3)} summed and "
           f"{_iv(m.cos_loo, m.cos_loo_lo, m.cos_loo_hi, 3)} token-mean")
    length_fixes = bool(m.cos_loo_lo > s.cos_loo_hi)
    if "sft" in g.index:
        f = g.loc["sft"]
        difference = bool(f.cos_loo_lo > max(s.cos_loo_hi, m.cos_loo_hi))
        cos += f", against {_iv(f.cos_loo, f.cos_loo_lo, f.cos_loo_hi, 3)} for SFT's single loss"
        held = verdict(not length_fixes and difference, "from the difference of two losses, "
                       "not from length", lacking=lacking) if not length_fixes else verdict(
            True, "length normalisation makes gradients agree", lacking=lacking)
    else:
        held = verdict(None, lacking=lacking) + " (no single-loss baseline to locate the cause)"
    return [
        f"- **C2, a noisy direction:** {held}. At the starting model, {cos} (0 for orthogonal "
        f"gradients; over {int(s.n_pairs)} pairs, intervals over the audit's batches). The "
        f"gradient norm follows length under summed loss (R² = {number(s.norm_r2, 3)}, "
        f"token-mean {number(m.norm_r2, 3)}), but AdamW and gradient clipping undo norms: "
        "what the direction does is the claim."]


# --------------------------------------------------------------------------- C3


def _level_lacking(found: Findings) -> str:
    """What is missing for a comparison at matched accuracy: '' where the primary level exists."""
    if np.isfinite(found.primary):
        return ""
    return (f"no accuracy level above chance with {found.n_pairs} held-out pairs was reached "
            f"after the first evaluation; 0.6 needs {pg.min_pairs_above_chance(0.6)} pairs, "
            f"0.7 needs {pg.min_pairs_above_chance(0.7)}")


def _runs_named(rows: pd.DataFrame) -> str:
    return ", ".join(f"{r.label} lr {r.lr:g}" for r in rows.itertuples()) or "none"


def collapse_claim(found: Findings) -> list[str]:
    col = found.collapse
    if not len(col):
        return []
    naive = col[col.label.str.startswith("naive")]
    collapsed = col[col.verdict.str.contains(pg.COLLAPSE)]
    degraded = col[col.verdict.str.contains(pg.DEGRADATION)]
    lacking = short((found.n_pairs, MIN_HELDOUT_PAIRS, "held-out pairs"),
                    (found.n_passages, MIN_PASSAGES, "neutral passages"),
                    (int(col.n_settled.min()), MIN_SETTLED, "settled evaluations per run"))
    naive_collapsed = naive[naive.verdict.str.contains(pg.COLLAPSE)]
    warm = int(col.warmup_steps.max())
    start = (f"after a {warm}-step warm-up" if warm else
             "these runs had no warm-up, so never their first evaluation")
    strongest = naive.sort_values("excess", ascending=False).head(1)
    lines = [
        f"- **C3, both losses grow (collapse):** "
        f"{verdict(bool(len(naive_collapsed)), _runs_named(naive_collapsed), lacking=lacking)}"
        f". Collapse — the held-out chosen loss rising faster than neutral text (Δchosen − "
        f"Δneutral above its bound) while accuracy or margin grows, on two settled evaluations "
        f"in a row ({start}) — in {len(collapsed)} of {len(col)} runs; degradation, everything "
        f"rising, in {len(degraded)} (each run in the C3 section)."
        + "".join(f" The naive objective's largest: {r.label} lr {r.lr:g}, Δchosen − Δneutral "
                  f"{_iv(r.excess, r.excess_lo, r.excess_hi)} nats/token at the end (held-out "
                  "pairs × neutral passages, resampled together)."
                  for r in strongest.itertuples())]
    lines += _matched_line(found)
    return lines


def _has_kl(found: Findings) -> bool:
    return "kl" in found.paths.columns and bool(found.paths.kl.notna().any())


def _matched_line(found: Findings) -> list[str]:
    """The naive objective against DPO at the primary accuracy level, or why not."""
    lacking = _level_lacking(found) or short((found.n_passages, MIN_PASSAGES,
                                              "neutral passages"))
    level = found.primary
    comp = found.comparisons
    here = comp[(comp.level == level) & (comp.b == "dpo") & comp.a.str.startswith("naive")] \
        if len(comp) and np.isfinite(level) else pd.DataFrame()
    if not len(here):
        reason = lacking or (f"naive-sum or DPO never reached held-out accuracy {level:g} "
                             "after its first evaluation")
        return [f"  At matched held-out accuracy: too little data to compare the naive objective "
                f"with DPO ({reason}). KL from the starting model: "
                + ("recorded (the frontier against KL is in the C3 section)." if _has_kl(found)
                   else "not recorded by these runs (it needs new runs).")]
    cells = "; ".join(f"{r.a} (lr {r.lr_a:g}) − DPO (lr {r.lr_b:g}), {r.column}: "
                      f"{_iv(r.diff, r.diff_lo, r.diff_hi)}" for r in here.itertuples()
                      if np.isfinite(r.diff))
    return [f"  At held-out accuracy {level:g}, each at its envelope learning rate, paired over "
            f"the same pairs and passages: {cells}"
            + (f" (too little data to rest a verdict on: {lacking})" if lacking else "") + "."]


def negative_claim(found: Findings) -> list[str]:
    neg = found.negative
    if not len(neg):
        return []
    lacking = short((found.n_passages, MIN_PASSAGES, "neutral passages"))
    held = bool((neg.diff_lo > 0).all())
    col = found.collapse.set_index("run_id") if len(found.collapse) else pd.DataFrame()
    uniform = int(col.loc[neg.negative_run].above_uniform.sum()) if len(col) else 0
    cells = "; ".join(f"lr {r.lr:g}: {number(r.negative, 2)} against {number(r.naive, 2)}, "
                      f"difference {_iv(r.diff, r.diff_lo, r.diff_hi)}"
                      for r in neg.itertuples())
    return [
        f"- **C3, the negative term alone destroys language ability (unlike naive-sum with its "
        f"positive term):** {verdict(held, 'at every learning rate', lacking=lacking)}. "
        f"Δ neutral NLL (nats/token) at the last evaluation, negative-only against naive-sum "
        f"at the same learning rate and data order: {cells} (unit: neutral passages, "
        f"resampled); {uniform} of {len(neg)} negative-only runs passed a uniform guess."]


# --------------------------------------------------------------------------- C4


def displacement_claim(found: Findings, order: list[str]) -> list[str]:
    shift = found.displacement
    if not len(found.curve):
        return []
    level = found.primary
    lacking = _level_lacking(found) or short(
        (found.n_pairs, MIN_HELDOUT_PAIRS, "held-out pairs"),
        (found.n_passages, MIN_PASSAGES, "neutral passages"))
    at = shift[(shift.level == level) & shift.envelope.fillna(False).astype(bool)] \
        if np.isfinite(level) and len(shift) else found.curve.iloc[:0]
    held_out = in_order(at[at.split == "heldout"], order)
    cells = "; ".join(f"{r.label} (lr {r.lr:g}) {r.k} of {r.n} "
                      f"[{percent(r.share_lo, 0)}, {percent(r.share_hi, 0)}]"
                      for r in held_out.itertuples())
    majority = held_out[held_out.share_lo > 0.5].label.tolist()
    minority = bool(len(held_out)) and bool((held_out.share_hi < 0.5).all())
    said = verdict(True, "for " + ", ".join(majority), lacking=lacking) if majority else \
        verdict(False if minority else None, lacking=lacking)
    trained = "train" in set(found.curve.split)
    where = (f"at held-out accuracy {level:g} (each objective's envelope point)"
             if np.isfinite(level) else "at no level (none above chance was reached)")
    return [
        f"- **C4, displacement (the chosen answer's per-token NLL rising more than neutral "
        f"text's):** {said}. Held-out pairs displaced {where}: {cells or 'none measured'} "
        "(unit: the pair; exact intervals). "
        + ("Trained pairs: measured, in the table below." if trained else
           "Trained pairs: not evaluated by these runs (it needs new runs).")]


def predictor_claim(found: Findings) -> list[str]:
    rho = found.predictors
    if not len(rho):
        return []
    split = rho.split.iloc[0]
    lacking = short((int(rho.n.min()), MIN_HELDOUT_PAIRS, f"{split} pairs with a predictor")) \
        if split == "train" else (
        "measured on held-out pairs, never trained on; Razin et al. predict the displacement "
        "of trained pairs, which these runs did not evaluate")
    parts = []
    for name, group in rho.groupby("predictor", sort=False):
        ok = group.dropna(subset=["rho_lo"])
        agree = int(((ok.rho_lo > 0) & (ok.expected_sign > 0)).sum()
                    + ((ok.rho_hi < 0) & (ok.expected_sign < 0)).sum())
        oppose = int(((ok.rho_lo > 0) & (ok.expected_sign < 0)).sum()
                     + ((ok.rho_hi < 0) & (ok.expected_sign > 0)).sum())
        parts.append(f"{PREDICTOR_NAMES.get(name, name)} (expected sign "
                     f"{'+' if group.expected_sign.iloc[0] > 0 else '−'}): median partial ρ "
                     f"{group.rho.median():+.2f} (plain {group.plain_rho.median():+.2f}), the "
                     f"expected sign in {agree} of {len(group)} runs, the opposite in {oppose}")
    return [
        f"- **C4, what predicts displacement (Razin et al. 2024):** "
        f"{verdict(None, lacking=lacking)}. Partial Spearman ρ of each predictor with a pair's "
        "displacement at the end of each run, the chosen and rejected lengths partialled out "
        "(unit: the pair; pair bootstrap): " + "; ".join(parts) + "."]


def squeezing_claim(found: Findings) -> list[str]:
    sq = found.squeezing
    head = ("- **The squeezing effect (Ren & Sutherland 2025: DPO raises the log-probability "
            "of the starting model's own greedy answer while the chosen and rejected both "
            "fall):** ")
    recorded = "d_greedy_logp" in found.paths.columns and found.paths.d_greedy_logp.notna().any()
    if not recorded:
        return [head + "too little data to say (these runs did not record the greedy answers; "
                "it needs new runs)."]
    level = found.primary
    dpo = sq[(sq.label == "dpo") & (sq.level == level)] if np.isfinite(level) and len(sq) \
        else pd.DataFrame()
    if not len(dpo):
        reason = _level_lacking(found) or "DPO did not reach the level"
        return [head + f"too little data to say ({reason})."]
    r = dpo.iloc[0]
    held = bool(r.d_greedy_logp_lo > 0 and r.d_chosen_lo > 0)
    greedy = _iv(r.d_greedy_logp, r.d_greedy_logp_lo, r.d_greedy_logp_hi)
    chosen = _iv(r.d_chosen, r.d_chosen_lo, r.d_chosen_hi)
    return [head + f"{verdict(held)}. At held-out accuracy {level:g}, DPO (lr {r.lr:g}): the "
            f"greedy answer's log-prob changed by {greedy} nats, the chosen answer's per-token "
            f"NLL by {chosen} (unit: held-out prompts)."]


def seeds_claim(tables) -> list[str]:
    seeds = sorted({int(s) for s in tables.runs.seed.dropna()})
    lacking = short((len(seeds), MIN_SEEDS, "data-order seed(s)"))
    return [f"- **C5, seeds and intervals:** seeds {seeds} are data-order replicates on one "
            "starting model (SmolLM2-135M-Instruct, itself trained with DPO); "
            + (f"a spread across seeds: too little data to say ({lacking}); " if lacking else
               "per-seed values are shown beside every interval that pools them; ")
            + "every interval resamples held-out pairs and neutral passages (and seeds where "
            "several exist), or is exact over pairs."]
