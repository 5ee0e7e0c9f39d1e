"""External checks: what five papers found, beside what this study's runs show.

Each check states the paper's claim in its own direction, our number with its 95% interval and
unit of replication, and an outcome: "reproduced", "did not reproduce", "mixed" (some learning
rates each way), "not established" (no interval excludes the boundary) or "not measured" (the
runs lack the objective or the measurement). Learning rates are never pooled: a check gives one
number per learning rate, and its outcome says at how many the paper's direction held. Beside
each, `SETUPS` says how this study's setting differs from the paper's, which is where a
difference would come from.

The findings behind them are computed once, in `findings.summarise`: `chosen_logp_change`
(Pal et al. 2024, Pang et al. 2024), `overoptimisation` (Rafailov et al. 2024), and the
predictors (Razin et al. 2024) and squeezing (Ren & Sutherland 2025) rows the verdicts use.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import progress as pg
from .formatting import interval_label

# How this study differs from each paper's setting (why a check might not reproduce).
# `{ours}` is `our_setting` of the runs.
SETUPS = {
    "pal": "Pal et al. train every weight of 7B models for several epochs, and derive the fall "
           "for pairs whose answers differ in few tokens; here {ours}",
    "pang": "Pang et al. train 70B models iteratively on answers they sampled themselves "
            "(on-policy); here the answers are other models' (off-policy), {ours}",
    "razin": "Razin et al. measure CHES on the pairs trained on, in models trained until the "
             "chosen log-probability falls; here {ours}",
    "rafailov": "Rafailov et al. measure a gold reward model's win rate over long training at "
                "several KL budgets; here held-out agreement with the data's own preference "
                "labels, {ours}",
    "ren": "Ren & Sutherland describe off-policy DPO over many epochs; here {ours}, the greedy "
           "answers cut at the generation limit",
}


def our_setting(tables) -> str:
    """What the runs trained, in words, from their configs: "the top 4 blocks of
    smollm2-135m-instruct trainable, 24 steps of 4 pairs over 96 training pairs (1 pass)"."""
    configs = [tables.configs[f.name] for f in tables.folders] if tables.folders else []
    if not configs:
        return "these runs"
    cfg = configs[0]
    blocks = sorted({c.get("trainable_blocks") for c in configs}, key=lambda b: (b is None, b))
    which = " or ".join("every block" if b is None else f"the top {b} blocks" for b in blocks)
    seen = cfg.get("steps", 0) * cfg.get("batch_size", 0)
    n = len(tables.pairs[tables.pairs.split == "train"]) if "split" in tables.pairs.columns \
        else 0
    passes = f" ({seen / n:.3g} pass{'' if seen == n else 'es'})" if n else ""
    return (f"{which} of {cfg.get('model')} trainable, {cfg.get('steps')} steps of "
            f"{cfg.get('batch_size')} pairs over {n} training pairs{passes}")
CHECK_COLUMNS = ["paper", "claim", "theirs", "ours", "outcome", "setup"]


def _boot_mean(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile interval of the mean over resampled units (NaN for fewer than two)."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def chosen_logp_change(tables, *, n_boot: int = pg.N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per objective and learning rate: the mean change of the chosen answer's summed log-prob
    (log π(y_c), nats; < 0: it fell) from step 0 to each run's last evaluation, on trained pairs
    where the runs evaluated them, else held-out; a pair's change averaged over the seeds, an
    interval over pairs. Returns label, lr, split, n_pairs, n_seeds, value, lo, hi, per_seed
    (seed → value)."""
    columns = ["label", "lr", "split", "n_pairs", "n_seeds", "value", "lo", "hi", "per_seed"]
    evals = tables.evals
    if not len(evals):
        return pd.DataFrame(columns=columns)
    splits = set(evals.split.dropna()) if "split" in evals.columns else set()
    split = "train" if "train" in splits else "heldout"
    changes = tables.with_runs(pg.pair_changes(evals, split))
    last = changes[changes.step == changes.groupby("run_id").step.transform("max")]
    rng = np.random.default_rng(seed)
    rows = []
    for (label, lr), at in last.groupby(["label", "lr"], sort=False):
        per_pair = at.groupby("pair_id").d_chosen_logp.mean().to_numpy(float)
        lo, hi = _boot_mean(per_pair, n_boot, rng)
        rows.append({"label": label, "lr": float(lr), "split": split, "n_pairs": len(per_pair),
                     "n_seeds": at.seed.nunique(), "value": float(np.nanmean(per_pair)),
                     "lo": lo, "hi": hi,
                     "per_seed": at.groupby("seed").d_chosen_logp.mean().round(3).to_dict()})
    return pd.DataFrame(rows, columns=columns)


def overoptimisation(tables, *, n_boot: int = pg.N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per objective and run: whether held-out accuracy fell as the KL from the start grew past
    its best (Rafailov et al. 2024). Over the run's evaluations after step 0, in KL order: the
    accuracy at the largest KL minus the best accuracy at a smaller one, the best re-picked in
    every resample of the held-out pairs (so picking it is not a bias). Returns run_id, label,
    lr, seed, kl_best, acc_best, kl_last, acc_last, diff, lo, hi; empty without KL."""
    columns = ["run_id", "label", "lr", "seed", "kl_best", "acc_best", "kl_last", "acc_last",
               "diff", "lo", "hi"]
    evals = tables.evals
    if not len(evals) or "kl_sum_p" not in evals.columns or not evals.kl_sum_p.notna().any():
        return pd.DataFrame(columns=columns)
    changes = tables.with_runs(pg.pair_changes(evals, "heldout"))
    rng = np.random.default_rng(seed)
    rows = []
    for (run_id, label, lr, run_seed), run in changes.groupby(["run_id", "label", "lr", "seed"],
                                                               sort=False):
        wide = run.pivot_table(index="pair_id", columns="step", values="correct")
        kl = run.groupby("step").kl.mean().reindex(wide.columns)
        if len(wide.columns) < 2 or not kl.notna().all():
            continue
        order = kl.sort_values().index
        acc = wide[order].to_numpy(float)
        acc = np.where(np.isfinite(acc), acc, 0.5)
        draws = rng.integers(0, len(acc), size=(n_boot, len(acc)))
        boot = acc[draws].mean(1)  # Shape: (n_boot, evaluations)
        diffs = boot[:, -1] - boot[:, :-1].max(1)
        means = acc.mean(0)
        best = int(np.argmax(means[:-1]))
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        rows.append({"run_id": run_id, "label": label, "lr": float(lr), "seed": run_seed,
                     "kl_best": float(kl[order[best]]), "acc_best": float(means[best]),
                     "kl_last": float(kl[order[-1]]), "acc_last": float(means[-1]),
                     "diff": float(means[-1] - means[:-1].max()), "lo": float(lo),
                     "hi": float(hi)})
    return pd.DataFrame(rows, columns=columns)


def _outcome(rows: pd.DataFrame, *, expect: int, of: str = "learning rates",
             lo: str = "lo", hi: str = "hi") -> str:
    """The outcome over rows (one per learning rate or run): the paper's direction (`expect`
    +1: above 0, −1: below) where every interval lies on its side, the opposite where every one
    lies on the other, mixed where some lie each way, not established where none excludes 0."""
    if not len(rows) or not rows[lo].notna().any():
        return "not measured"
    agree = ((rows[lo] > 0) if expect > 0 else (rows[hi] < 0)).sum()
    oppose = ((rows[hi] < 0) if expect > 0 else (rows[lo] > 0)).sum()
    n = len(rows)
    if agree == n:
        return "reproduced"
    if oppose == n:
        return "did not reproduce"
    if agree or oppose:
        return (f"mixed: the paper's direction at {agree} of {n} {of}, the opposite at "
                f"{oppose or 'none'}, neither clearly at {n - agree - oppose or 'none'}")
    return "not established"


def _per_lr(rows: pd.DataFrame, unit: str) -> str:
    """"lr 0.0001: -2.1 [-3.0, -1.2]; lr 0.0003: …" with the unit, or "not measured"."""
    if not len(rows):
        return "not measured"
    parts = [f"lr {r.lr:g}: {interval_label(r.value, r.lo, r.hi, digits=2)}"
             for r in rows.sort_values("lr").itertuples()]
    return "; ".join(parts) + f" ({unit})"


def checks(found, tables) -> pd.DataFrame:
    """One row per external check (CHECK_COLUMNS), from `found` (findings.Findings) of
    `tables`' runs (whose settings `our_setting` describes)."""
    logp = found.chosen_logp
    split = logp.split.iloc[0] if len(logp) else "train"
    unit = (f"mean Δ log π(chosen), nats, {'trained' if split == 'train' else 'held-out'} "
            "pairs at each run's last evaluation, seeds averaged; pair bootstrap")

    def of(label: str) -> pd.DataFrame:
        return logp[logp.label == label] if len(logp) else logp

    rows = [
        {"paper": "Pal et al. 2024", "claim": "DPO lowers the chosen answer's log-probability",
         "theirs": "falls (Δ log π(chosen) < 0)", "ours": _per_lr(of("dpo"), unit),
         "outcome": _outcome(of("dpo"), expect=-1), "setup": SETUPS["pal"]},
        {"paper": "Pal et al. 2024", "claim": "DPOP's penalty keeps it from falling",
         "theirs": "does not fall (Δ log π(chosen) ≥ 0)", "ours": _per_lr(of("dpop"), unit),
         "outcome": _outcome(of("dpop"), expect=+1) if len(of("dpop")) else "not measured",
         "setup": SETUPS["pal"]},
        {"paper": "Pang et al. 2024", "claim": "DPO + NLL (RPO) raises the chosen answer's "
         "log-probability", "theirs": "rises (Δ log π(chosen) > 0)",
         "ours": _per_lr(of("rpo"), unit), "outcome": _outcome(of("rpo"), expect=+1),
         "setup": SETUPS["pang"]},
        _razin(found), _rafailov(found), _ren(found)]
    ours = our_setting(tables)
    return pd.DataFrame([{**r, "setup": r["setup"].format(ours=ours)} for r in rows],
                        columns=CHECK_COLUMNS)


def _razin(found) -> dict:
    rho = found.predictors
    at = rho[(rho.predictor == "ches") & (rho.label == "dpo")] if len(rho) else rho
    row = {"paper": "Razin et al. 2024", "claim": "pairs with a higher CHES score are displaced "
           "more", "theirs": "ρ(CHES, displacement) > 0", "setup": SETUPS["razin"]}
    if not len(at):
        return {**row, "ours": "not measured", "outcome": "not measured"}
    split = at.split.iloc[0]
    shown = at.rename(columns={"rho": "value", "rho_lo": "lo", "rho_hi": "hi"})
    parts = [f"lr {r.lr:g} seed {r.seed}: {interval_label(r.value, r.lo, r.hi, digits=2)}"
             for r in shown.sort_values(["lr", "seed"]).itertuples()]
    unit = (f"DPO runs, partial Spearman ρ with the lengths partialled out, "
            f"{'trained' if split == 'train' else 'held-out'} pairs at the last evaluation; "
            "pair bootstrap")
    return {**row, "ours": "; ".join(parts) + f" ({unit})",
            "outcome": _outcome(shown, expect=+1, of="runs")}


def _rafailov(found) -> dict:
    over = found.overoptimisation
    at = over[over.label == "dpo"] if len(over) else over
    row = {"paper": "Rafailov et al. 2024", "claim": "past some KL from the start, the preferred "
           "quality falls as KL grows (over-optimisation)", "theirs": "a hump: quality at the "
           "largest KL below its best", "setup": SETUPS["rafailov"]}
    if not len(at):
        return {**row, "ours": "not measured (the runs did not record the KL)",
                "outcome": "not measured"}
    parts = [f"lr {r.lr:g} seed {r.seed}: accuracy {r.acc_last:.3f} at KL {r.kl_last:.3f} "
             f"against its best {r.acc_best:.3f} at KL {r.kl_best:.3f}, difference "
             f"{interval_label(r.diff, r.lo, r.hi, digits=3)}"
             for r in at.sort_values(["lr", "seed"]).itertuples()]
    unit = ("DPO runs, held-out reward accuracy, KL in nats per token; pair bootstrap, the best "
            "evaluation re-picked in every resample")
    shown = at.rename(columns={"diff": "value"})
    return {**row, "ours": "; ".join(parts) + f" ({unit})",
            "outcome": _outcome(shown, expect=-1, of="runs")}


def _ren(found) -> dict:
    sq = found.squeezing
    row = {"paper": "Ren & Sutherland 2025", "claim": "DPO squeezes probability into the "
           "starting model's own greedy answer", "theirs": "its log-probability rises while "
           "the chosen answer's falls", "setup": SETUPS["ren"]}
    at = sq[sq.label == "dpo"] if len(sq) else sq
    level = found.primary
    if len(at) and np.isfinite(level):
        at = at[at.level == level]
    if not len(at) or not np.isfinite(level):
        return {**row, "ours": "not measured (no greedy answers, or DPO reached no level above "
                "chance)", "outcome": "not measured"}
    r = at.iloc[0]
    ours = (f"at held-out accuracy {level:g}, DPO lr {r.lr:g}: the greedy answer's log-prob "
            f"{interval_label(r.d_greedy_logp, r.d_greedy_logp_lo, r.d_greedy_logp_hi, digits=2)}"
            f" nats, the chosen answer's per-token NLL "
            f"{interval_label(r.d_chosen, r.d_chosen_lo, r.d_chosen_hi, digits=2)} "
            "(held-out prompts; pairs × passages bootstrap)")
    both = pd.DataFrame({"value": [r.d_greedy_logp], "lo": [r.d_greedy_logp_lo],
                         "hi": [r.d_greedy_logp_hi]})
    outcome = _outcome(both, expect=+1)
    if outcome == "reproduced" and not r.d_chosen_lo > 0:
        outcome = "mixed: the greedy answer rose, the chosen answer did not clearly fall"
    return {**row, "ours": ours, "outcome": outcome}


def checks_section(table: pd.DataFrame) -> str:
    """The report's external checks: one bullet per check, the paper's direction beside ours,
    the outcome, and how the settings differ."""
    if not len(table):
        return ""
    lines = []
    for r in table.itertuples():
        lines.append(f"- **{r.paper}: {r.claim}.** {r.outcome[0].upper() + r.outcome[1:]}. "
                     f"Theirs: {r.theirs}. Ours: {r.ours}. Where the settings differ: "
                     f"{r.setup}.")
    return "\n".join(lines) + "\n"
