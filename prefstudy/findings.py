"""The study's claims as tables: what the report states, computed from a study's tables.

Every function takes a `tables.Tables` (or its DataFrames) and returns a DataFrame; the report
turns them into sentences. The rules are ../shared/STUDY.md's:

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

import numpy as np
import pandas as pd
from scipy import stats

from . import diagnostics as dg
from . import progress as pg

# Margin gains (nats per token) at which objectives can be compared: the report uses those that
# at least MIN_REACHED of the compared labels reached in some run of their sweep.
LEVEL_LADDER = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
MIN_REACHED = 0.5
NEUTRAL_HOLD = 0.05  # nats/token: neutral text "held" where its NLL moved by at most this
N_BOOT = 1000


def with_lr(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each run's lr and family (from `tables.run_table`) joined on run_id."""
    extra = runs[["run_id", "lr", "family"]].drop_duplicates("run_id")
    return frame.drop(columns=[c for c in ("lr", "family") if c in frame.columns]).merge(
        extra, on="run_id", how="left")


def paths(tables) -> pd.DataFrame:
    """Every run's progress path (`progress.progress_paths`) with its lr and family."""
    if not len(tables.evals):
        return pd.DataFrame(columns=[*pg.PATH_COLUMNS, "lr", "family"])
    return with_lr(pg.progress_paths(tables.evals, tables.perplexity), tables.runs)


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
    evaluations with |Δ neutral NLL| ≤ max_neutral, the one with the largest margin gain; there
    the share of held-out pairs whose chosen log-prob fell, k of n with an exact interval, and
    chosen Δ per token minus neutral Δ per token (`progress.displacement_at_neutral` applied at
    every evaluation). Labels with no such evaluation have n = 0."""
    changes = pg.pair_changes(tables.evals)
    at = path_table[path_table.d_neutral.abs() <= max_neutral]
    best = at.sort_values(["margin_gain", "step"], ascending=[False, True]) \
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
        row["share"], row["share_lo"], row["share_hi"] = dg.share_interval(row["k"], row["n"])
        rows.append(row)
    return pd.DataFrame(rows)


def pair_predictors(tables) -> pd.DataFrame:
    """Per held-out pair: edit_distance (chosen vs rejected) and, where the study audited its
    held-out pairs' gradients, entanglement, CHES and its length-normalised ln-CHES (Razin et
    al. 2024)."""
    pairs = tables.pairs
    held = pairs[pairs.split == "heldout"] if "split" in pairs.columns else pairs
    out = dg.pair_features(held)[["pair_id", "edit_distance"]] if len(held) else \
        pd.DataFrame(columns=["pair_id", "edit_distance"])
    audit = tables.audit_heldout
    if audit is not None and len(audit.gradients):
        keep = [c for c in ("entanglement", "ches", "ln_ches") if c in audit.gradients.columns]
        per_pair = audit.gradients.drop_duplicates("pair_id")[["pair_id", *keep]]
        out = out.merge(per_pair, on="pair_id", how="left")
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(x[ok], y[ok]).statistic)


def predictors_of_displacement(tables, calm: pd.DataFrame, *, n_boot: int = N_BOOT,
                               seed: int = 0) -> pd.DataFrame:
    """Per label and predictor: Spearman ρ between a held-out pair's predictor and the change
    of its chosen log-prob (summed, nats) at the label's calm evaluation (`displacement`), with
    a pair-bootstrap interval. A negative ρ: the larger the predictor, the more the chosen
    answer fell. Returns label, predictor, n, rho, rho_lo, rho_hi."""
    features = pair_predictors(tables)
    names = [c for c in ("edit_distance", "entanglement", "ches", "ln_ches")
             if c in features.columns]
    changes = pg.pair_changes(tables.evals)
    rng = np.random.default_rng(seed)
    rows = []
    for row in calm.dropna(subset=["run_id"]).itertuples():
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
    guess (`above_uniform`)."""
    onsets = with_lr(pg.collapse_onsets(tables.evals, n_boot=N_BOOT), tables.runs)
    if len(tables.generations):
        degen = dg.degeneration(tables.generations, tables.perplexity)
        last = degen.sort_values("step").drop_duplicates("run_id", keep="last")
        onsets = onsets.merge(last[["run_id", "distinct_2", "repetition", "ppl_ratio"]],
                              on="run_id", how="left")
    flagged = {run_id for run_id, step in zip(tables.runs.run_id, _uniform_steps(tables))
               if pd.notna(step)}
    onsets["above_uniform"] = onsets.run_id.isin(flagged)
    return onsets


def _uniform_steps(tables) -> list:
    from .records import read_meta

    return [read_meta(folder).get("above_uniform_step") for folder in tables.folders]


def refusals(tables) -> pd.DataFrame:
    """Per label and probe kind (harmful, benign): refusals at step 0 and at the last
    evaluation of the label's largest-lr run (k of n probes, exact interval)."""
    if not len(tables.generations):
        return pd.DataFrame()
    rates = with_lr(pg.refusal_rates(tables.generations), tables.runs)
    last = rates.groupby("run_id").step.transform("max")
    top = rates.groupby("label").lr.transform("max")
    end = rates[(rates.step == last) & (rates.lr == top)]
    start = rates[rates.step == 0].drop_duplicates(["kind"]).assign(label="(start)")
    return pd.concat([start, end], ignore_index=True)


def per_language(tables, calm: pd.DataFrame) -> pd.DataFrame:
    """Displacement at each label's calm evaluation, split by the held-out pairs' language:
    label, lang, k, n, share, share_lo, share_hi."""
    pairs = tables.pairs
    if "lang" not in pairs.columns or not len(calm):
        return pd.DataFrame()
    changes = pg.pair_changes(tables.evals).merge(pairs[["pair_id", "lang"]], on="pair_id",
                                                  how="left")
    rows = []
    for row in calm.dropna(subset=["run_id"]).itertuples():
        at = changes[(changes.run_id == row.run_id) & (changes.step == row.step)]
        for lang, group in at.groupby("lang"):
            k, n = int((group.d_chosen_logp < 0).sum()), int(group.d_chosen_logp.notna().sum())
            share, lo, hi = dg.share_interval(k, n)
            rows.append({"label": row.label, "lang": lang, "k": k, "n": n, "share": share,
                         "share_lo": lo, "share_hi": hi})
    return pd.DataFrame(rows)
