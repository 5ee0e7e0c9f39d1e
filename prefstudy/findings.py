"""The study's claims, each computed once: `summarise(tables)` → `Findings`, which the report,
the README's findings block, the notebooks and the widgets render.

Every function takes a `tables.Tables` (or its DataFrames) and returns a DataFrame. The rules:

- objectives are compared at matched progress along the learning-rate sweep (a margin gain
  every compared objective reached, `comparison_levels`), never at one learning rate;
- held-out pairs are the unit of replication: means get a pair bootstrap, shares an exact
  Clopper–Pearson interval over pairs, and "k of n" is always given;
- displacement is counted only where neutral text has held (|Δ NLL| ≤ NEUTRAL_HOLD nats per
  token); a model that got worse at everything is degraded, not displaced;
- collapse and degeneration are judged apart, so a destroyed model is never missed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from . import diagnostics as dg
from . import progress as pg
from .stats import share_interval

# Margin gains (nats per token) at which objectives can be compared: the report uses those that
# at least MIN_REACHED of the compared labels reached in some run of their sweep.
LEVEL_LADDER = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
MIN_REACHED = 0.5
NEUTRAL_HOLD = 0.05  # nats/token: neutral text "held" where its NLL moved by at most this
N_BOOT = 1000
PREDICTORS = ("edit_distance", "entanglement", "ches", "ln_ches")  # of displacement


@dataclass(frozen=True)
class Findings:
    """Every claim of a study, computed once from its `Tables`.

    paths:        every run's progress path (`run_paths`).
    levels:       the margin gains objectives are compared at (`comparison_levels`).
    matched:      Δ chosen, rejected and neutral at each level (`matched`).
    collapse:     one row per run (`collapse`).
    displacement: one row per label, where neutral text held (`displacement`).
    predictors:   Spearman ρ of each predictor with displacement (`predictors_of_displacement`).
    by_language:  displacement split by the held-out pair's language (`per_language`).
    refusals:     refusals on harmful and benign probes (`refusals`).
    noise:        gradient agreement during training (`diagnostics.gradient_noise`), empty
                  where gradient statistics were off.
    """

    paths: pd.DataFrame
    levels: list[float]
    matched: pd.DataFrame
    collapse: pd.DataFrame
    displacement: pd.DataFrame
    predictors: pd.DataFrame
    by_language: pd.DataFrame
    refusals: pd.DataFrame
    noise: pd.DataFrame


def summarise(tables) -> Findings:
    """Every finding of the study `tables` holds, each computed once."""
    paths = run_paths(tables)
    levels = comparison_levels(paths)
    shift = in_order(displacement(tables, paths), tables.order) if len(paths) \
        else pd.DataFrame()
    return Findings(
        paths=paths, levels=levels, matched=matched(tables, levels),
        collapse=collapse(tables) if len(tables.evals) else pd.DataFrame(),
        displacement=shift,
        predictors=predictors_of_displacement(tables, shift) if len(shift) else pd.DataFrame(),
        by_language=per_language(tables, shift), refusals=refusals(tables),
        noise=training_noise(tables))


def in_order(frame: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """`frame`'s rows by label in `order` (a study's `Tables.order`), the rest kept in place."""
    key = {label: i for i, label in enumerate(order)}
    return frame.sort_values("label", key=lambda s: s.map(key), kind="stable") \
        .reset_index(drop=True)


def run_paths(tables) -> pd.DataFrame:
    """Every run's progress path (`progress.progress_paths`) with its lr and family."""
    if not len(tables.evals):
        return pd.DataFrame(columns=[*pg.PATH_COLUMNS, "lr", "family"])
    return tables.with_runs(pg.progress_paths(tables.evals, tables.perplexity))


def reached(path_table: pd.DataFrame) -> pd.Series:
    """Per label, the largest margin gain any of its runs reached at an evaluation."""
    return path_table.groupby("label").margin_gain.max()


def comparison_levels(path_table: pd.DataFrame, *, ladder: Sequence[float] = LEVEL_LADDER,
                      min_reached: float = MIN_REACHED) -> list[float]:
    """The ladder's margin gains that at least `min_reached` of the labels reached."""
    best = reached(path_table)
    if not len(best):
        return []
    return [level for level in ladder if (best >= level).mean() >= min_reached]


def matched(tables, levels: Sequence[float], *, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Δ held-out chosen loss, Δ rejected loss and Δ neutral NLL (nats per token) where each
    label's runs first reached each margin gain, interpolated along their paths and averaged
    over the runs (learning rates, seeds) that reached it, with pair-bootstrap intervals
    (`progress.matched_progress`)."""
    if not levels or not len(tables.evals):
        return pd.DataFrame()
    return pg.matched_progress(tables.evals, tables.perplexity, levels,
                               y=("d_chosen", "d_rejected", "d_neutral"), n_boot=n_boot)


def displacement(tables, path_table: pd.DataFrame, *,
                 max_neutral: float = NEUTRAL_HOLD) -> pd.DataFrame:
    """Per label, likelihood displacement where neutral text held: of the label's runs'
    evaluations with |Δ neutral NLL| ≤ max_neutral, the one with the largest margin gain (the
    earliest step among equals); there the share of held-out pairs whose chosen log-prob fell,
    k of n with an exact interval, and chosen Δ per token minus neutral Δ per token. Labels
    with no such evaluation have n = 0."""
    changes = pg.pair_changes(tables.evals)
    held = path_table[path_table.d_neutral.abs() <= max_neutral]
    best = held.sort_values(["margin_gain", "step"], ascending=[False, True]) \
        .drop_duplicates("label")
    rows = []
    for label in path_table.label.unique():
        row = {"label": label, "run_id": None, "lr": np.nan, "step": np.nan,
               "margin_gain": np.nan, "d_neutral": np.nan, "k": 0, "n": 0,
               "d_chosen_minus_neutral": np.nan}
        pick = best[best.label == label]
        if len(pick):
            p = pick.iloc[0]
            pairs = changes[(changes.run_id == p.run_id) & (changes.step == p.step)]
            row.update(run_id=p.run_id, lr=p.lr, step=p.step, margin_gain=p.margin_gain,
                       d_neutral=p.d_neutral, k=int((pairs.d_chosen_logp < 0).sum()),
                       n=int(pairs.d_chosen_logp.notna().sum()),
                       d_chosen_minus_neutral=float(pairs.d_chosen.mean() - p.d_neutral))
        row["share"], row["share_lo"], row["share_hi"] = share_interval(row["k"], row["n"])
        rows.append(row)
    return pd.DataFrame(rows)


def pair_predictors(tables) -> pd.DataFrame:
    """Per held-out pair: edit_distance (chosen vs rejected, from the runs' pair facts) and,
    where the study audited its held-out pairs' gradients, entanglement, CHES and its
    length-normalised ln-CHES (Razin et al. 2024)."""
    pairs = tables.pairs
    held = pairs[pairs.split == "heldout"] if "split" in pairs.columns else pairs
    keep = ["pair_id"] + (["edit_distance"] if "edit_distance" in held.columns else [])
    out = held[keep].reset_index(drop=True)
    audit = tables.audit_heldout
    if audit is not None and len(audit.gradients):
        measured = [c for c in PREDICTORS[1:] if c in audit.gradients.columns]
        per_pair = audit.gradients.drop_duplicates("pair_id")[["pair_id", *measured]]
        out = out.merge(per_pair, on="pair_id", how="left")
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(x[ok], y[ok]).statistic)


def predictors_of_displacement(tables, shift: pd.DataFrame, *, n_boot: int = N_BOOT,
                               seed: int = 0) -> pd.DataFrame:
    """Per label and predictor: Spearman ρ between a held-out pair's predictor and the change
    of its chosen log-prob (summed, nats) at the label's point in `shift` (`displacement`),
    with a pair-bootstrap interval. A negative ρ: the larger the predictor, the more the chosen
    answer fell. Returns label, predictor, n, rho, rho_lo, rho_hi."""
    features = pair_predictors(tables)
    names = [c for c in PREDICTORS if c in features.columns]
    changes = pg.pair_changes(tables.evals)
    rng = np.random.default_rng(seed)
    rows = []
    for row in shift.dropna(subset=["run_id"]).itertuples():
        at = changes[(changes.run_id == row.run_id) & (changes.step == row.step)]
        merged = at.merge(features, on="pair_id", how="inner")
        y = merged.d_chosen_logp.to_numpy(float)
        draws = rng.integers(0, len(merged), size=(n_boot, len(merged))) if len(merged) else None
        for name in names:
            x = merged[name].to_numpy(float)
            rho = _spearman(x, y)
            boot = [_spearman(x[d], y[d]) for d in draws] if draws is not None else []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = (np.nanpercentile(boot, [2.5, 97.5]) if np.isfinite(boot).any()
                          else (np.nan, np.nan))
            rows.append({"label": row.label, "predictor": name,
                         "n": int(np.isfinite(x).sum()), "rho": rho, "rho_lo": float(lo),
                         "rho_hi": float(hi)})
    return pd.DataFrame(rows, columns=["label", "predictor", "n", "rho", "rho_lo", "rho_hi"])


def collapse(tables) -> pd.DataFrame:
    """Per run: `progress.collapse_onsets` (the chosen loss above its step-0 value by more than
    its pair-bootstrap bound while the gap widens, two evaluations in a row) with lr and family,
    and the run's degeneration at its last evaluation (`diagnostics.degeneration`: distinct-2,
    repetition, held-out perplexity ratio) and whether its per-token loss passed a uniform
    guess (`above_uniform`, from its meta.json)."""
    onsets = tables.with_runs(pg.collapse_onsets(tables.evals, n_boot=N_BOOT))
    if len(tables.generations):
        degen = dg.degeneration(tables.generations, tables.perplexity)
        last = degen.sort_values("step").drop_duplicates("run_id", keep="last")
        onsets = onsets.merge(last[["run_id", "distinct_2", "repetition", "ppl_ratio"]],
                              on="run_id", how="left")
    flagged = set(tables.runs.run_id[tables.runs.above_uniform_step.notna()])
    onsets["above_uniform"] = onsets.run_id.isin(flagged)
    return onsets


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


def per_language(tables, shift: pd.DataFrame) -> pd.DataFrame:
    """Displacement at each label's point in `shift` (`displacement`), split by the held-out
    pairs' language: label, lang, k, n, share, share_lo, share_hi."""
    pairs = tables.pairs
    if "lang" not in pairs.columns or not len(shift):
        return pd.DataFrame()
    changes = pg.pair_changes(tables.evals).merge(pairs[["pair_id", "lang"]], on="pair_id",
                                                  how="left")
    rows = []
    for row in shift.dropna(subset=["run_id"]).itertuples():
        at = changes[(changes.run_id == row.run_id) & (changes.step == row.step)]
        for lang, group in at.groupby("lang"):
            k, n = int((group.d_chosen_logp < 0).sum()), int(group.d_chosen_logp.notna().sum())
            share, lo, hi = share_interval(k, n)
            rows.append({"label": row.label, "lang": lang, "k": k, "n": n, "share": share,
                         "share_lo": lo, "share_hi": hi})
    return pd.DataFrame(rows)


def training_noise(tables) -> pd.DataFrame:
    """Gradient agreement during training per label (`diagnostics.gradient_noise` over every
    run and step), empty where the runs recorded no gradient statistics."""
    records = tables.records
    if "grad_cos" not in records.columns or records.grad_cos.isna().all():
        return pd.DataFrame()
    return dg.gradient_noise(records, tables.steps)
