"""The audit's tables: a preference dataset scored at the starting model (`prefstudy.audit`).

Every row is one pair (or one length-controlled variant of a pair), scored once by the starting
model: pairs are the units, and every interval resamples pairs (or, for gradient cosines, the
batches the pairs shared). Shares get exact Clopper–Pearson intervals (`stats.share_interval`)
and their counts. Nothing here draws (`prefstudy.auditplots` does) or writes (`prefstudy.audit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .columns import require_columns
from .data import edit_distance
from .diagnostics import length_effect
from .stats import (
    cluster_mean_interval,
    finite_rows,
    groups_of,
    interval_reason,
    join_reasons,
    seed_interval,
    share_interval,
)

CLEARLY_LONGER = 1.5  # "clearly longer": at least 1.5 × the other response's tokens
LENGTH_KINDS = ("chosen longer", "similar", "rejected longer")
AUDIT_GAPS = {"sum": "gap_sum", "mean": "gap"}  # normalisation → the scores' gap column
NEAR_DUPLICATE = 0.1  # two pairs of one prompt whose chosen and rejected each differ ≤ 0.1
# in normalised edit (Levenshtein) distance
DOSE_CHANGES = {"sum": "dgap_sum", "mean": "dgap"}  # normalisation → change from the control


def length_kinds(scores: pd.DataFrame, *, ratio: float = CLEARLY_LONGER) -> pd.Series:
    """Each pair's length kind from its response tokens (len_p, len_n): "chosen longer" when
    len_p ≥ ratio × len_n, "rejected longer" when len_n ≥ ratio × len_p, else "similar"; an
    ordered categorical of LENGTH_KINDS named length_kind (NA where a length is missing)."""
    require_columns(scores, ["len_p", "len_n"], "length_kinds")
    p, n = scores.len_p.astype(float), scores.len_n.astype(float)
    kind = np.select([p >= ratio * n, n >= ratio * p], [LENGTH_KINDS[0], LENGTH_KINDS[2]],
                     LENGTH_KINDS[1])
    kind = pd.Series(kind, index=scores.index).where(p.notna() & n.notna())
    return kind.astype(pd.CategoricalDtype(list(LENGTH_KINDS), ordered=True)).rename(
        "length_kind")


def _share_row(flags: pd.Series, confidence: float) -> dict:
    """k, n and the share with its Clopper–Pearson interval, of a 0/1 Series."""
    k, n = int(flags.sum()), int(flags.size)
    share, lo, hi = share_interval(k, n, confidence)
    return {"n": n, "k": k, "share": share, "share_lo": lo, "share_hi": hi}


def preference_accuracy(scores: pd.DataFrame, *, by: str | None = "length_kind",
                        ratio: float = CLEARLY_LONGER, confidence: float = 0.95) -> pd.DataFrame:
    """The starting model's preference accuracy: the share of pairs whose gap favours the
    chosen response, under summed (gap_sum > 0) and token-mean (gap > 0) cross-entropy.

    scores: one row per pair (`scoring.score_pairs`: gap_sum, gap, len_p, len_n). by: a column to
    split by, "length_kind" by default (`length_kinds(ratio=)` when the column is absent), or
    None; every table also has an "all" row. A tie (gap exactly 0) does not favour the chosen
    response (n_ties counts them); pairs without a finite gap are left out (n_dropped).
    Returns normalisation, `by`, n, k (pairs favouring chosen), n_ties, accuracy (k/n),
    accuracy_lo, accuracy_hi (exact Clopper–Pearson), n_dropped, reason (why the accuracy is
    undefined: no pair of that kind, or none with a finite gap; '' where it is defined).
    """
    require_columns(scores, [*AUDIT_GAPS.values(), "len_p", "len_n"], "preference_accuracy")
    frame = scores.copy()
    if by == "length_kind" and by not in frame.columns:
        frame[by] = length_kinds(frame, ratio=ratio)
    key = by or "group"
    groups = (list(_order_of(frame[by])) if by else []) + ["all"]
    rows = []
    for norm, column in AUDIT_GAPS.items():
        kept = finite_rows(frame, [column])
        for group in groups:
            sel = kept if group == "all" else kept[kept[by] == group]
            row = _share_row(sel[column] > 0, confidence)
            n_all = len(frame) if group == "all" else int((frame[by] == group).sum())
            rows.append({"normalisation": norm, key: group, "n": row["n"], "k": row["k"],
                         "n_ties": int((sel[column] == 0).sum()), "accuracy": row["share"],
                         "accuracy_lo": row["share_lo"], "accuracy_hi": row["share_hi"],
                         "n_dropped": n_all - row["n"],
                         "reason": _share_reason(row["n"], n_all, column, group)})
    return pd.DataFrame(rows)


def _share_reason(n: int, n_all: int, column: str, group) -> str:
    """Why a share over `n` of `n_all` pairs is undefined, '' where it is not."""
    if n:
        return ""
    if not n_all:
        return "no pair" if group == "all" else f"no pair is {group}"
    return f"none of its {n_all} pairs has a finite {column} (cut away or not finite)"


def _order_of(values: pd.Series) -> list:
    """A categorical's categories (all of them), else the distinct values sorted."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return list(values.cat.categories)
    return sorted(values.dropna().unique(), key=str)


def chosen_longer_share(scores: pd.DataFrame, *, by: Sequence[str] = (),
                        confidence: float = 0.95) -> pd.DataFrame:
    """The share of pairs whose chosen response has more tokens than the rejected one.

    scores: len_p, len_n per pair (and `by`). Pairs of equal length count as not longer
    (n_equal says how many). Returns `by`, n, k, n_equal, share, share_lo, share_hi (exact
    Clopper–Pearson over pairs).
    """
    by = list(by)
    require_columns(scores, ["len_p", "len_n", *by], "chosen_longer_share")
    rows = []
    for key, group in groups_of(finite_rows(scores, ["len_p", "len_n"]), by):
        rows.append({**key, **_share_row(group.len_p > group.len_n, confidence),
                     "n_equal": int((group.len_p == group.len_n).sum())})
    return pd.DataFrame(rows, columns=[*by, "n", "k", "n_equal", "share", "share_lo",
                                       "share_hi"])


def dose_token_ratios(dose: pd.DataFrame, *, side: str = "rejected") -> pd.DataFrame:
    """Length-controlled variants against their control, in tokens.

    dose: one row per scored variant: variant_of (the original pair), factor (nominal; 1 = the
    unchanged pair), len_p, len_n, gap_sum, gap. side: the response the variants changed.
    Adds token_ratio = the changed side's tokens / the control's (what the model saw, which a
    nominal factor in characters only approximates), log2_ratio, and dgap_sum, dgap: the gap
    minus the control's. Variants whose pair has no scored control are left out.
    """
    require_columns(dose, ["variant_of", "factor", "len_p", "len_n", "gap_sum", "gap"],
                    "dose_token_ratios")
    length = {"rejected": "len_n", "chosen": "len_p"}[side]
    control = dose[dose.factor == 1].drop_duplicates("variant_of").set_index("variant_of")
    out = dose[dose.variant_of.isin(control.index)].copy()
    base = out.variant_of.map(control[length]).astype(float)
    out["token_ratio"] = out[length].astype(float) / base
    out["log2_ratio"] = np.log2(out.token_ratio)
    out["dgap_sum"] = out.gap_sum - out.variant_of.map(control.gap_sum)
    out["dgap"] = out.gap - out.variant_of.map(control.gap)
    return out.reset_index(drop=True)


def dose_gaps(dose: pd.DataFrame) -> pd.DataFrame:
    """`dose_token_ratios` output long: one row per variant and normalisation, with gap_value
    and, where the table has the change from the control, dgap_value."""
    frames = []
    for norm, column in AUDIT_GAPS.items():
        change = DOSE_CHANGES[norm]
        frames.append(dose.assign(normalisation=norm, gap_value=dose[column],
                                  dgap_value=dose[change] if change in dose else np.nan))
    return pd.concat(frames, ignore_index=True)


def dose_pair_slopes(dose: pd.DataFrame) -> pd.DataFrame:
    """Each pair's own dose slope: the OLS slope of its gap on log2(achieved token ratio) over
    its variants, in nats per doubling, under each normalisation.

    dose: `dose_token_ratios` output. Variants with a non-finite gap or ratio are left out; a
    pair with fewer than two distinct ratios left (none, where the model scored it NaN) has a
    NaN slope. Returns variant_of, normalisation, n_variants, slope.
    """
    require_columns(dose, ["variant_of", "log2_ratio", *AUDIT_GAPS.values()], "dose_pair_slopes")
    every = pd.MultiIndex.from_frame(dose_gaps(dose)[["variant_of", "normalisation"]]
                                     .drop_duplicates())
    long = finite_rows(dose_gaps(dose), ["log2_ratio", "gap_value"])
    x, y = long.log2_ratio, long.gap_value
    keys = [long.variant_of, long.normalisation]
    n = x.groupby(keys).size()
    mx, my = x.groupby(keys).transform("mean"), y.groupby(keys).transform("mean")
    sxy = ((x - mx) * (y - my)).groupby(keys).sum()
    sxx = ((x - mx) ** 2).groupby(keys).sum()
    slope = (sxy / sxx).where(sxx > 1e-12)
    out = pd.DataFrame({"n_variants": n, "slope": slope})
    if len(out) < len(every):  # pairs without a finite variant: kept, without a slope
        out = out.reindex(out.index.append(every.difference(out.index))).sort_index()
        out["n_variants"] = out.n_variants.fillna(0).astype(int)
    out = out.rename_axis(["variant_of", "normalisation"]).reset_index()
    return out[["variant_of", "normalisation", "n_variants", "slope"]]


def dose_slope_summary(slopes: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95,
                       seed: int = 0) -> pd.DataFrame:
    """The dose slope over pairs: per normalisation, the mean of the per-pair slopes
    (`dose_pair_slopes`) in nats per achieved doubling, with a percentile pair-bootstrap
    interval (`n_boot` resamples of pairs, seeded), and their median and quartiles.

    Returns normalisation, n_pairs, slope, slope_lo, slope_hi, slope_median, slope_q25,
    slope_q75, n_dropped (pairs without a slope), reason (why the slope or its interval is
    undefined; '' where both are defined).
    """
    require_columns(slopes, ["variant_of", "normalisation", "slope"], "dose_slope_summary")
    rows = []
    for norm, group in slopes.groupby("normalisation", sort=False):
        kept = finite_rows(group, ["slope"])
        mean, lo, hi = cluster_mean_interval(kept.slope.to_numpy(), kept.variant_of.to_numpy(),
                                             n_boot=n_boot, ci=ci, seed=seed)
        q25, q50, q75 = (kept.slope.quantile([0.25, 0.5, 0.75]).tolist() if len(kept)
                         else [float("nan")] * 3)
        if not len(kept):
            reason = (f"none of its {len(group)} pairs has a dose slope (a slope needs two "
                      "distinct achieved token ratios with a finite gap)")
        else:
            reason = interval_reason(len(kept), n_boot, "variant_of")
        rows.append({"normalisation": norm, "n_pairs": len(kept), "slope": mean,
                     "slope_lo": lo, "slope_hi": hi, "slope_median": q50, "slope_q25": q25,
                     "slope_q75": q75, "n_dropped": len(group) - len(kept), "reason": reason})
    return pd.DataFrame(rows, columns=["normalisation", "n_pairs", "slope", "slope_lo",
                                       "slope_hi", "slope_median", "slope_q25", "slope_q75",
                                       "n_dropped", "reason"])


def dose_by_factor(dose: pd.DataFrame, *, ci: float = 0.95) -> pd.DataFrame:
    """What each nominal factor achieved, and the mean gap there, per normalisation.

    dose: `dose_token_ratios` output (and achieved_ratio, the character ratio, if present).
    Returns normalisation, factor, n (pairs), token_ratio (geometric mean of the achieved token
    ratios), token_ratio_min, token_ratio_max, char_ratio (geometric mean of achieved_ratio, NaN
    without it), mean (gap), mean_lo, mean_hi (t-interval over the pairs: each pair once per
    factor), dgap, dgap_lo, dgap_hi (the same for the change from the control).
    """
    require_columns(dose, ["variant_of", "factor", "token_ratio", *AUDIT_GAPS.values()],
                    "dose_by_factor")
    long = finite_rows(dose_gaps(dose), ["token_ratio", "gap_value"])
    rows = []
    for norm in AUDIT_GAPS:
        for factor, at in long[long.normalisation == norm].groupby("factor", sort=True):
            mean, lo, hi = seed_interval(at.gap_value, ci)
            dmean, dlo, dhi = seed_interval(at.dgap_value, ci)
            chars = (np.exp(np.log(at.achieved_ratio.astype(float)).mean())
                     if "achieved_ratio" in at.columns else float("nan"))
            rows.append({"normalisation": norm, "factor": factor, "n": len(at),
                         "token_ratio": float(np.exp(np.log(at.token_ratio).mean())),
                         "token_ratio_min": float(at.token_ratio.min()),
                         "token_ratio_max": float(at.token_ratio.max()),
                         "char_ratio": float(chars), "mean": mean, "mean_lo": lo,
                         "mean_hi": hi, "dgap": dmean, "dgap_lo": dlo, "dgap_hi": dhi})
    return pd.DataFrame(rows, columns=["normalisation", "factor", "n", "token_ratio",
                                       "token_ratio_min", "token_ratio_max", "char_ratio",
                                       "mean", "mean_lo", "mean_hi", "dgap", "dgap_lo",
                                       "dgap_hi"])


def _normalised_prompt(text: str) -> str:
    return " ".join(str(text).casefold().split())


def near_duplicates(pairs: pd.DataFrame, *, threshold: float = NEAR_DUPLICATE) -> pd.DataFrame:
    """Pairs that nearly repeat an earlier pair of the same prompt.

    pairs: `PairSet.to_frame()` (pair_id, prompt, chosen, rejected). Two pairs are near
    duplicates when their prompts are equal up to case and whitespace and their chosen and
    their rejected responses each have a normalised edit (Levenshtein) distance
    (`data.edit_distance`) ≤ threshold. Returns one row per pair:
    pair_id, prompt_group (pairs sharing its prompt, itself included), duplicate_of (the first
    earlier pair it nearly repeats, in `pairs` order; NA if none).
    """
    require_columns(pairs, ["pair_id", "prompt", "chosen", "rejected"], "near_duplicates")
    prompt = pairs.prompt.map(_normalised_prompt)
    out = pd.DataFrame({"pair_id": pairs.pair_id.to_numpy(),
                        "prompt_group": prompt.map(prompt.value_counts()).to_numpy(),
                        "duplicate_of": pd.Series(pd.NA, index=range(len(pairs)),
                                                  dtype="object")})
    rows = pairs.reset_index(drop=True)
    for members in pd.Series(range(len(rows))).groupby(prompt.to_numpy()).groups.values():
        members = sorted(members)
        for j, b in enumerate(members):
            for a in members[:j]:
                if (edit_distance(rows.chosen[a], rows.chosen[b]) <= threshold
                        and edit_distance(rows.rejected[a], rows.rejected[b]) <= threshold):
                    out.loc[b, "duplicate_of"] = rows.pair_id[a]
                    break
    return out


def cut_table(lengths: pd.DataFrame, *, max_length: int, max_prompt_length: int) -> pd.DataFrame:
    """What cutting to `max_length` tokens per side (prompt ≤ `max_prompt_length`) does to each
    pair, by `encode.encode_pairs`' policy, from the uncut token counts alone.

    lengths: pair_id, prompt_len_full, len_p_full, len_n_full, shared_prefix (leading response
    tokens the two sides share). Per pair: room (response tokens that fit after the kept
    prompt), cut_prompt, cut_p, cut_n (tokens lost), truncated (any lost), identical (the two
    responses are equal in what fits: shared_prefix ≥ room; encode_pairs drops such a pair).
    """
    require_columns(lengths, ["pair_id", "prompt_len_full", "len_p_full", "len_n_full",
                              "shared_prefix"], "cut_table")
    prompt = lengths.prompt_len_full.clip(upper=max_prompt_length)
    room = max_length - prompt
    out = lengths[["pair_id"]].copy()
    out["room"] = room
    out["cut_prompt"] = lengths.prompt_len_full - prompt
    out["cut_p"] = (lengths.len_p_full - room).clip(lower=0)
    out["cut_n"] = (lengths.len_n_full - room).clip(lower=0)
    out["truncated"] = (out.cut_prompt > 0) | (out.cut_p > 0) | (out.cut_n > 0)
    out["identical"] = lengths.shared_prefix >= room
    return out


def cut_summary(cuts: pd.DataFrame) -> dict:
    """Counts of `cut_table`: n, truncated (pairs losing any token), cut_p / cut_n (pairs whose
    chosen / rejected response lost tokens), identical (left equal: dropped), and the tokens
    lost per cut response: mean and max, chosen and rejected together."""
    require_columns(cuts, ["cut_p", "cut_n", "truncated", "identical"], "cut_summary")
    lost = pd.concat([cuts.cut_p[cuts.cut_p > 0], cuts.cut_n[cuts.cut_n > 0]])
    return {"n": len(cuts), "truncated": int(cuts.truncated.sum()),
            "cut_p": int((cuts.cut_p > 0).sum()), "cut_n": int((cuts.cut_n > 0).sum()),
            "cut_prompt": int((cuts.cut_prompt > 0).sum()) if "cut_prompt" in cuts else 0,
            "identical": int(cuts.identical.sum()),
            "lost_mean": float(lost.mean()) if len(lost) else 0.0,
            "lost_max": int(lost.max()) if len(lost) else 0}


GRADIENT_COLUMNS = ("objective", "pair_id", "batch", "len_p", "len_n", "grad_norm",
                    "grad_cos_loo", "grad_cos_orthogonal", "entanglement", "ches")


def gradient_key(grads: pd.DataFrame) -> str:
    """The column that names what a gradient-audit row was taken under: label (objective with
    its norm, naive-sum / naive-mean, as the study labels runs) where present, else objective."""
    return "label" if "label" in grads.columns else "objective"


def gradient_summary(grads: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """Per-pair gradients at the starting model, one row per objective (label).

    grads: one row per objective × pair (`prefstudy.gradaudit.gradient_audit`: objective,
    label, pair_id, batch, len_p, len_n, grad_norm, grad_cos_loo, grad_cos_orthogonal,
    entanglement, ches). Returns `gradient_key(grads)`, n_pairs; norm_r2, norm_spearman,
    norm_slope: the OLS fit of grad_norm on the pair's response tokens (len_p + len_n;
    `length_effect`, no interval); cos_loo with cos_loo_lo, cos_loo_hi (mean leave-one-out
    cosine, percentile bootstrap over batches: a pair's cosine depends on the others in its
    batch), cos_orthogonal (the mean orthogonal baseline beside it), share_opposed (cos_loo < 0,
    Clopper–Pearson over pairs: share_opposed_lo/_hi), entanglement and ches medians, reason
    (why a number is undefined: the norm's fit, the cosine's interval; '' where none is).
    """
    require_columns(grads, GRADIENT_COLUMNS, "gradient_summary")
    key = gradient_key(grads)
    frame = grads.assign(tokens=grads.len_p + grads.len_n)
    fits = length_effect(frame, x="tokens", y="grad_norm", by=(key,), n_boot=0).set_index(key)
    rows = []
    for name, group in frame.groupby(key, sort=True):
        kept = finite_rows(group, ["grad_cos_loo"])
        cos, lo, hi = cluster_mean_interval(kept.grad_cos_loo.to_numpy(),
                                            kept.batch.to_numpy(), n_boot=n_boot, ci=ci,
                                            seed=seed)
        opposed = _share_row(kept.grad_cos_loo < 0, ci)
        rows.append({key: name, "n_pairs": group.pair_id.nunique(),
                     "norm_r2": fits.r2[name], "norm_spearman": fits.spearman[name],
                     "norm_slope": fits.slope[name], "cos_loo": cos, "cos_loo_lo": lo,
                     "cos_loo_hi": hi, "cos_orthogonal": float(group.grad_cos_orthogonal.mean()),
                     "share_opposed": opposed["share"], "share_opposed_lo": opposed["share_lo"],
                     "share_opposed_hi": opposed["share_hi"],
                     "entanglement": float(group.entanglement.median()),
                     "ches": float(group.ches.median()),
                     "reason": join_reasons(
                         f"gradient norm on length: {fits.reason[name]}"
                         if not np.isfinite(fits.slope[name]) else "",
                         _cosine_reason(len(kept), len(group), kept.batch.nunique(), n_boot))})
    return pd.DataFrame(rows)


def _cosine_reason(n: int, n_all: int, n_batches: int, n_boot: int) -> str:
    """Why the mean leave-one-out cosine or its interval over batches is undefined."""
    if not n:
        return (f"leave-one-out cosine: none of its {n_all} pairs has one (a pair alone in its "
                "batch has no others; or its gradient is not finite)")
    reason = interval_reason(n_batches, n_boot, "batch")
    return f"leave-one-out cosine: {reason}" if reason else ""


def gradient_scale(grads: pd.DataFrame, *, of: str, to: str) -> dict:
    """The per-pair ratio grad_norm(of) / grad_norm(to) over the pairs both objectives (labels,
    `gradient_key`) scored: n, median, min, max (NaN without common pairs). At the starting
    weights DPO's per-pair gradient is β/2 × naive-sum's, so of="dpo", to="naive-sum" gives β/2
    at every pair."""
    require_columns(grads, ["pair_id", "grad_norm"], "gradient_scale")
    wide = grads.pivot_table(index="pair_id", columns=gradient_key(grads), values="grad_norm",
                             aggfunc="first")
    nan = float("nan")
    if of not in wide.columns or to not in wide.columns:
        return {"n": 0, "median": nan, "min": nan, "max": nan}
    ratio = (wide[of] / wide[to]).replace([np.inf, -np.inf], np.nan).dropna()
    if not len(ratio):
        return {"n": 0, "median": nan, "min": nan, "max": nan}
    return {"n": len(ratio), "median": float(ratio.median()), "min": float(ratio.min()),
            "max": float(ratio.max())}
