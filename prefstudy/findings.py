"""The study's claims, each computed once: `summarise(tables)` → `Findings`, which the report,
the README's findings block, the notebooks and the widgets render (`verdicts` words them).

Every function takes a `tables.Tables` (or its DataFrames) and returns a DataFrame. The rules
(../shared/STUDY.md; `prefstudy.progress` says how each measure is computed):

- progress is held-out implicit-reward accuracy against the starting model; objectives are
  compared where each run first reached the same accuracy level (`progress.LEVELS`), never
  interpolated from step 0 and never averaged over learning rates: each run is shown, and each
  objective's envelope picks one learning rate per level by `progress.ENVELOPE_RULE`;
- two objectives are compared by their paired difference over the same held-out pairs;
- held-out pairs and neutral passages are resampled together (and seeds where there are
  several); shares get exact Clopper–Pearson intervals over pairs, with "k of n";
- collapse (the chosen loss rising faster than neutral text while preference grows) is judged
  apart from degradation (everything rising), never on the first evaluation after a cold start;
- displacement is counted at the points the levels fix, and drawn as a curve against cost.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import diagnostics as dg
from . import external
from . import progress as pg
from .stats import partial_spearman

N_BOOT = 1000
PREDICTORS = ("edit_distance", "entanglement", "ches", "ln_ches")  # of displacement
# The sign each predictor's ρ with a pair's displacement (its chosen per-token NLL rise) has
# where its paper found it: Razin et al. 2024 — a higher CHES (and ln-CHES) and more entangled
# gradients displace more; Razin et al. and Pal et al. 2024 — a smaller edit distance between the
# two answers displaces more.
EXPECTED_SIGN = {"edit_distance": -1, "entanglement": +1, "ches": +1, "ln_ches": +1}
REFERENCE_LABEL = "dpo"  # the objective every other is compared with, where the study has it
COMPARED = ("d_chosen", "d_neutral", "kl")


@dataclass(frozen=True)
class Findings:
    """Every claim of a study, computed once from its `Tables`.

    paths:        every run's held-out path, one row per evaluation after step 0 (`run_paths`).
    levels:       per accuracy level: resolution, whether it is above chance with the study's
                  held-out pairs, and how many runs reached it (`level_table`).
    primary:      the level the report's verdicts use (`primary_level`), NaN if none.
    matched:      every run at every level (`progress.matched_progress`), with lr, family and
                  the envelope flag.
    objectives:   each objective's envelope at each level (`progress.objective_levels`).
    comparisons:  paired differences against REFERENCE_LABEL (`comparisons`).
    collapse:     one row per run (`collapse`).
    negative:     the negative-only objective against naive-sum, learning rate by learning rate
                  (`negative_only`).
    displacement: displacement at the levels, held-out and trained pairs (`displacement`).
    curve:        displacement along every run against cost (`displacement_curve`).
    predictors:   partial Spearman ρ of each predictor with displacement (`predictors`).
    by_language:  displacement at the envelope points by the pair's language (`per_language`).
    squeezing:    the starting model's greedy answers' log-prob at the levels (`squeezing`).
    refusals:     refusals on harmful and benign probes (`refusals`).
    noise:        gradient agreement during training (`training_noise`).
    n_pairs, n_passages: the held-out pairs and neutral passages resampled.
    chosen_logp:  the chosen answer's log-prob change by objective and learning rate
                  (`external.chosen_logp_change`: Pal et al. 2024, Pang et al. 2024).
    overoptimisation: accuracy at the largest KL against its best, per run
                  (`external.overoptimisation`: Rafailov et al. 2024).
    start_languages: the starting model, language by language (`start_by_language`).
    accuracy_languages: held-out accuracy at the end by language (`accuracy_by_language`).
    """

    paths: pd.DataFrame
    levels: pd.DataFrame
    primary: float
    matched: pd.DataFrame
    objectives: pd.DataFrame
    comparisons: pd.DataFrame
    collapse: pd.DataFrame
    negative: pd.DataFrame
    displacement: pd.DataFrame
    curve: pd.DataFrame
    predictors: pd.DataFrame
    by_language: pd.DataFrame
    squeezing: pd.DataFrame
    refusals: pd.DataFrame
    noise: pd.DataFrame
    n_pairs: int
    n_passages: int
    chosen_logp: pd.DataFrame = field(default_factory=pd.DataFrame)
    overoptimisation: pd.DataFrame = field(default_factory=pd.DataFrame)
    start_languages: pd.DataFrame = field(default_factory=pd.DataFrame)
    accuracy_languages: pd.DataFrame = field(default_factory=pd.DataFrame)


def summarise(tables, *, n_boot: int = N_BOOT) -> Findings:
    """Every finding of the study `tables` holds, each computed once."""
    if not len(tables.evals):
        empty = pd.DataFrame()
        return Findings(empty, level_table(empty, 0), float("nan"), *([empty] * 10),
                        refusals=refusals(tables), noise=training_noise(tables), n_pairs=0,
                        n_passages=0)
    matched = pg.matched_progress(tables.evals, tables.perplexity, n_boot=n_boot)
    lrs = dict(zip(tables.runs.run_id, tables.runs.lr))
    table = tables.with_runs(pg.envelope(matched.table, lrs).drop(columns="lr"))
    levels = level_table(table, matched.n_pairs)
    shift = displacement(tables, table)
    return Findings(
        paths=run_paths(tables), levels=levels, primary=primary_level(levels),
        matched=table, objectives=in_order(pg.objective_levels(matched, lrs), tables.order),
        comparisons=comparisons(matched, lrs, tables.labels), collapse=collapse(tables, n_boot),
        negative=negative_only(tables, n_boot), displacement=shift,
        curve=displacement_curve(tables), predictors=predictors(tables, n_boot=n_boot),
        by_language=per_language(tables, table), squeezing=squeezing(table),
        refusals=refusals(tables), noise=training_noise(tables), n_pairs=matched.n_pairs,
        n_passages=matched.n_passages,
        chosen_logp=external.chosen_logp_change(tables, n_boot=n_boot),
        overoptimisation=external.overoptimisation(tables, n_boot=n_boot),
        start_languages=start_by_language(tables),
        accuracy_languages=accuracy_by_language(tables, n_boot=n_boot))


def in_order(frame: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """`frame`'s rows by label in `order` (a study's `Tables.order`), the rest kept in place."""
    if not len(frame):
        return frame
    key = {label: i for i, label in enumerate(order)}
    return frame.sort_values("label", key=lambda s: s.map(key), kind="stable") \
        .reset_index(drop=True)


def run_paths(tables) -> pd.DataFrame:
    """Every run's held-out path (`progress.progress_paths`) with its lr and family."""
    if not len(tables.evals):
        return pd.DataFrame(columns=[*pg.PATH_COLUMNS, "lr", "family"])
    return tables.with_runs(pg.progress_paths(tables.evals, tables.perplexity))


def level_table(matched: pd.DataFrame, n_pairs: int) -> pd.DataFrame:
    """Per accuracy level: resolution (one pair's share), above_chance (whether the level is
    itself distinguishable from ½ with `n_pairs` held-out pairs: `progress.above_chance`),
    min_pairs (the fewest pairs at which it would be), and how many runs reached it, passed it
    before their first evaluation, or never reached it."""
    rows = []
    for level in pg.LEVELS:
        at = matched[matched.level == level] if len(matched) else matched
        status = at.status.value_counts() if len(at) else pd.Series(dtype=int)
        rows.append({"level": level, "n_pairs": n_pairs, "resolution": pg.resolution(n_pairs),
                     "above_chance": pg.above_chance(level, n_pairs),
                     "min_pairs": pg.min_pairs_above_chance(level),
                     "reached": int(status.get(pg.REACHED, 0)),
                     "before": int(status.get(pg.BEFORE, 0)),
                     "not_reached": int(status.get(pg.NOT_REACHED, 0))})
    return pd.DataFrame(rows)


def primary_level(levels: pd.DataFrame) -> float:
    """The level the verdicts use, fixed before looking at any outcome: the lowest level that is
    above chance with the study's held-out pairs and that some run reached. NaN if none."""
    usable = levels[levels.above_chance & (levels.reached > 0)]
    return float(usable.level.min()) if len(usable) else float("nan")


def comparisons(matched: pg.Matched, lrs, labels: Sequence[str], *,
                reference: str = REFERENCE_LABEL) -> pd.DataFrame:
    """Every label against `reference` at every level both reached: the paired difference
    (label − reference, `progress.paired_difference`) of each of COMPARED."""
    if reference not in labels:
        return pd.DataFrame()
    reached = matched.table[matched.table.status == pg.REACHED]
    rows = []
    for level, at in reached.groupby("level", sort=True):
        if reference not in set(at.label):
            continue
        for label in [lab for lab in labels if lab != reference and lab in set(at.label)]:
            for column in COMPARED:
                rows.append(pg.paired_difference(matched, lrs, label, reference, level, column))
    return pd.DataFrame(rows)


def displacement(tables, matched: pd.DataFrame) -> pd.DataFrame:
    """Displacement where each run reached each level (`progress.displacement_at_levels`), on
    held-out pairs and, where the runs evaluated them, trained pairs; with lr, family and the
    envelope flag of `matched`."""
    splits = set(tables.evals.split.dropna()) if "split" in tables.evals.columns else set()
    frames = [pg.displacement_at_levels(tables.evals, tables.perplexity, matched, split=split)
              for split in ["heldout", *sorted(splits - {"heldout"})]]
    out = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    flags = matched[["run_id", "level", "envelope", "lr", "family"]]
    return out.merge(flags, on=["run_id", "level"], how="left")


def displacement_curve(tables) -> pd.DataFrame:
    """Every run's displacement at every evaluation against Δ neutral NLL
    (`progress.displacement_curve`), held-out and trained pairs, with lr and family."""
    splits = sorted(set(tables.evals.split.dropna())) if "split" in tables.evals.columns \
        else ["heldout"]
    frames = [pg.displacement_curve(tables.evals, tables.perplexity, split=s) for s in splits]
    return tables.with_runs(pd.concat(frames, ignore_index=True))


def pair_predictors(tables) -> pd.DataFrame:
    """Per pair: split, len_p, len_n where known, edit_distance (chosen vs rejected) and, where
    the study audited the pairs' gradients (the training pairs' audit, then the held-out
    pairs'), entanglement, CHES and ln-CHES (Razin et al. 2024)."""
    pairs = tables.pairs
    keep = [c for c in ("pair_id", "split", "edit_distance") if c in pairs.columns]
    out = pairs[keep].reset_index(drop=True)
    audits = [a for a in (tables.audit, tables.audit_heldout) if a is not None
              and len(a.gradients)]
    if audits:
        grads = pd.concat([a.gradients for a in audits]).drop_duplicates("pair_id")
        measured = [c for c in PREDICTORS[1:] if c in grads.columns]
        out = out.merge(grads[["pair_id", *measured]], on="pair_id", how="left")
    return out


def predictors(tables, *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per run (at its last evaluation, a point fixed in advance) and split: the partial
    Spearman ρ of each predictor with the pair's displacement (its chosen per-token NLL rise
    minus neutral text's), the chosen and rejected lengths partialled out, with a pair-bootstrap
    interval; beside it the plain ρ. Trained pairs where the runs evaluated them, else held-out.
    Returns run_id, label, seed, split, predictor, expected_sign, n, rho, rho_lo, rho_hi,
    plain_rho."""
    features = pair_predictors(tables)
    names = [c for c in PREDICTORS if c in features.columns]
    columns = ["run_id", "label", "seed", "split", "predictor", "expected_sign", "n", "rho",
               "rho_lo", "rho_hi", "plain_rho"]
    if not names:
        return pd.DataFrame(columns=columns)
    evals = tables.evals
    splits = set(evals.split.dropna()) if "split" in evals.columns else set()
    split = "train" if "train" in splits else "heldout"
    changes = pg.pair_changes(evals, split)
    last = changes[changes.step == changes.groupby("run_id").step.transform("max")]
    neutral = pg.neutral_change(tables.perplexity).set_index(["run_id", "step"]).d_neutral
    lengths = evals[evals.step == 0].drop_duplicates("pair_id")[["pair_id", "len_p", "len_n"]]
    rng = np.random.default_rng(seed)
    rows = []
    for (run_id, label, run_seed), at in last.groupby(["run_id", "label", "seed"], sort=True):
        merged = at.merge(features, on="pair_id").merge(lengths, on="pair_id")
        y = merged.d_chosen.to_numpy(float) - neutral.get((run_id, at.step.iloc[0]), np.nan)
        cov = np.log(merged[["len_p", "len_n"]].to_numpy(float).clip(min=1))
        for name in names:
            x = merged[name].to_numpy(float)
            rho, lo, hi = _partial_interval(x, y, cov, n_boot, rng)
            rows.append({"run_id": run_id, "label": label, "seed": run_seed, "split": split,
                         "predictor": name, "expected_sign": EXPECTED_SIGN[name],
                         "n": int((np.isfinite(x) & np.isfinite(y)).sum()), "rho": rho,
                         "rho_lo": lo, "rho_hi": hi,
                         "plain_rho": partial_spearman(x, y, np.empty((len(x), 0)))})
    return tables.with_runs(pd.DataFrame(rows, columns=columns))


def _partial_interval(x, y, cov, n_boot: int, rng) -> tuple[float, float, float]:
    """The partial ρ (`stats.partial_spearman`) and its percentile interval over pairs."""
    rho = partial_spearman(x, y, cov)
    n = int((np.isfinite(x) & np.isfinite(y) & np.isfinite(cov).all(axis=1)).sum())
    boot = partial_spearman(x, y, cov, rng.integers(0, n, size=(n_boot, n)))
    if not np.isfinite(rho) or not np.isfinite(boot).any():
        return rho, float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return rho, float(lo), float(hi)


def collapse(tables, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per run: `progress.collapse_onsets` (collapse apart from degradation, on settled
    evaluations after each run's warm-up) with lr and family, the run's degeneration at its last
    evaluation (`diagnostics.degeneration`: distinct-2, repetition, held-out perplexity ratio)
    and whether its per-token loss passed a uniform guess (`above_uniform`, its meta.json)."""
    warmup = dict(zip(tables.runs.run_id, tables.runs.warmup_steps.fillna(0).astype(int))) \
        if "warmup_steps" in tables.runs.columns else {}
    onsets = tables.with_runs(pg.collapse_onsets(tables.evals, tables.perplexity, warmup,
                                                 n_boot=n_boot))
    if len(tables.generations):
        degen = dg.degeneration(tables.generations, tables.perplexity)
        last = degen.sort_values("step").drop_duplicates("run_id", keep="last")
        onsets = onsets.merge(last[["run_id", "distinct_2", "repetition", "ppl_ratio"]],
                              on="run_id", how="left")
    flagged = set(tables.runs.run_id[tables.runs.above_uniform_step.notna()])
    onsets["above_uniform"] = onsets.run_id.isin(flagged)
    return onsets


def negative_only(tables, n_boot: int = N_BOOT, *, negative: str = "negative_only",
                  naive: str = "naive-sum", seed: int = 0) -> pd.DataFrame:
    """The book's claim that the negative term alone destroys language ability, unlike the naive
    objective with its positive term: per learning rate and seed both ran, at the last
    evaluation both have, Δ neutral NLL of each and their difference (negative − naive) with an
    interval over the same resampled neutral passages; and each run's degeneration. Empty
    where the study lacks either objective."""
    runs = tables.runs[tables.runs.label.isin([negative, naive])]
    if set(runs.label) != {negative, naive}:
        return pd.DataFrame()
    resampled = pg.resample_paths(tables.evals, tables.perplexity, n_boot=n_boot, seed=seed)
    index, neutral = resampled.index, resampled.means["d_neutral"]
    rows = []
    for (lr, run_seed), pair in runs.groupby(["lr", "seed"], sort=True):
        ids = dict(zip(pair.label, pair.run_id))
        if len(ids) < 2:
            continue
        rows_of = {k: index[index.run_id == v] for k, v in ids.items()}
        step = min(r.step.max() for r in rows_of.values())
        at = {k: neutral[r.index[r.step == step][0]] for k, r in rows_of.items()}
        diff = at[negative] - at[naive]
        lo, hi = pg._percentiles(diff[1:], 0.95)
        rows.append({"lr": lr, "seed": run_seed, "step": step, "negative": at[negative][0],
                     "naive": at[naive][0], "diff": diff[0], "diff_lo": float(lo),
                     "diff_hi": float(hi), "negative_run": ids[negative],
                     "naive_run": ids[naive]})
    return pd.DataFrame(rows)


def refusals(tables) -> pd.DataFrame:
    """Per label and probe kind (harmful, benign): refusals at step 0 and at the last
    evaluation of the label's largest-lr run (k of n probes, exact interval)."""
    if not len(tables.generations):
        return pd.DataFrame()
    rates = tables.with_runs(pg.refusal_rates(tables.generations))
    last = rates.groupby("run_id").step.transform("max")
    top = rates.groupby("label").lr.transform("max")
    end = rates[(rates.step == last) & (rates.lr == top)]
    start = rates[rates.step == 0].drop_duplicates(["kind"]).assign(label="(start)")
    return pd.concat([start, end], ignore_index=True)


def per_language(tables, matched: pd.DataFrame) -> pd.DataFrame:
    """Displacement of held-out pairs at each objective's envelope points, by the pair's
    language: label, level, lang, k, n, share, share_lo, share_hi."""
    pairs = tables.pairs
    if "lang" not in pairs.columns or not len(matched):
        return pd.DataFrame()
    env = matched[matched.envelope]
    lang = dict(zip(pairs.pair_id, pairs.lang))
    frames = []
    for value in sorted({v for v in lang.values() if isinstance(v, str)}):
        keep = tables.evals.pair_id.map(lang) == value
        out = pg.displacement_at_levels(tables.evals[keep], tables.perplexity, env)
        frames.append(out.assign(lang=value))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def accuracy_by_language(tables, *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Held-out reward accuracy at each run's last evaluation, by the pair's language, per
    objective and learning rate (never pooled over learning rates): a pair's correctness
    averaged over the seeds, a percentile interval over pairs. Returns label, lr, lang,
    n_pairs, n_seeds, accuracy, lo, hi; empty where the pairs have fewer than two languages."""
    columns = ["label", "lr", "lang", "n_pairs", "n_seeds", "accuracy", "lo", "hi"]
    pairs = tables.pairs
    if "lang" not in pairs.columns or pairs.lang.dropna().nunique() < 2 or not len(tables.evals):
        return pd.DataFrame(columns=columns)
    changes = tables.with_runs(pg.pair_changes(tables.evals, "heldout"))
    last = changes[changes.step == changes.groupby("run_id").step.transform("max")]
    last = last.assign(lang=last.pair_id.map(dict(zip(pairs.pair_id, pairs.lang))))
    rng = np.random.default_rng(seed)
    rows = []
    for (label, lr, lang), at in last.dropna(subset=["lang"]).groupby(["label", "lr", "lang"],
                                                                       sort=False):
        per_pair = at.groupby("pair_id").correct.mean().to_numpy(float)
        per_pair = per_pair[np.isfinite(per_pair)]
        draws = per_pair[rng.integers(0, len(per_pair), (n_boot, len(per_pair)))].mean(1) \
            if len(per_pair) > 1 else np.array([np.nan])
        rows.append({"label": label, "lr": float(lr), "lang": lang, "n_pairs": len(per_pair),
                     "n_seeds": at.seed.nunique(), "accuracy": float(per_pair.mean()),
                     "lo": float(np.percentile(draws, 2.5)),
                     "hi": float(np.percentile(draws, 97.5))})
    return pd.DataFrame(rows, columns=columns)


def squeezing(matched: pd.DataFrame) -> pd.DataFrame:
    """The squeezing effect (Ren & Sutherland 2025) at each objective's envelope points: the
    change of the log-prob of the starting model's own greedy answers beside the chosen
    answer's. Empty where the runs did not record the greedy answers."""
    if "d_greedy_logp" not in matched.columns or not matched.d_greedy_logp.notna().any():
        return pd.DataFrame()
    keep = ["label", "level", "lr", "seed", "run_id", "d_greedy_logp", "d_greedy_logp_lo",
            "d_greedy_logp_hi", "d_chosen", "d_chosen_lo", "d_chosen_hi"]
    return matched[matched.envelope & matched.d_greedy_logp.notna()][keep] \
        .reset_index(drop=True)


def start_by_language(tables) -> pd.DataFrame:
    """What the starting model (step 0, shared by every run: the first run's rows) does in each
    language: its NLL of neutral text (Σ nll / Σ tokens over the passages, nats/token) and, over
    its greedy answers to the probes, distinct-2 and 4-gram repetition (`diagnostics.
    degeneration`). Returns lang, n_passages, neutral_nll, n_probes, distinct_2, repetition;
    empty where the runs record no language."""
    columns = ["lang", "n_passages", "neutral_nll", "n_probes", "distinct_2", "repetition"]
    ppl, gen = tables.perplexity, tables.generations
    rows = {}
    if len(ppl) and "lang" in ppl.columns:
        start = ppl[(ppl.step == 0) & (ppl.run_id == ppl.run_id.iloc[0])]
        for lang, at in start.groupby("lang", sort=True):
            rows.setdefault(lang, {}).update(n_passages=len(at),
                                             neutral_nll=at.nll_sum.sum() / at.n_tokens.sum())
    if len(gen) and "lang" in gen.columns:
        start = gen[(gen.step == 0) & (gen.run_id == gen.run_id.iloc[0])]
        degen = dg.degeneration(start, by=("lang",))
        for r in degen.itertuples():
            rows.setdefault(r.lang, {}).update(n_probes=int(r.n_texts), distinct_2=r.distinct_2,
                                               repetition=r.repetition)
    out = pd.DataFrame([{"lang": lang, **values} for lang, values in rows.items()
                        if isinstance(lang, str) and lang], columns=columns)
    return out if out.lang.nunique() > 1 else pd.DataFrame(columns=columns)


def training_noise(tables) -> pd.DataFrame:
    """Gradient agreement during training per label (`diagnostics.gradient_noise` over every
    run and step), empty where the runs recorded no gradient statistics."""
    records = tables.records
    if not len(records) or "grad_cos" not in records.columns or records.grad_cos.isna().all():
        return pd.DataFrame()
    return dg.gradient_noise(records, tables.steps)
