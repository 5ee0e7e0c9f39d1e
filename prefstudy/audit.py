"""Audit a preference dataset at the starting model, before any training.

The study's first claim (C1) is about the data: when chosen and rejected differ in length and wording,
the per-pair gap of loss_p − loss_n swings for reasons that are not preference. That can be
measured on any dataset before a single update. `audit` scores every pair once with the
starting model (no response cut unless `max_length` says so, and then the audit counts what was
cut) and returns tidy DataFrames; `write_audit` turns them into a page, figures and parquet:

    from prefstudy.audit import audit, write_audit
    result = audit("my_pairs.parquet", model="smollm2-135m-instruct", max_pairs=500)
    write_audit(result, "audits/my_pairs")      # README.md, figures/*.png, pairs.parquet, ...

or `prefstudy audit PATH [--model NAME] [--max-pairs N] [--max-length L] [--gradients]
[--keep-text | --ids-only]`.

What it measures (statistics in `prefstudy.auditstats` and `prefstudy.judge`, figures in
`prefstudy.auditplots`, the page in `prefstudy.auditpage`):

- length: R², Spearman ρ and slope of the gap on Δlen = len_n − len_p under summed and
  token-mean losses, with pair-bootstrap intervals; the starting model's preference accuracy
  by length kind, with exact Clopper–Pearson intervals and counts; the share of pairs whose
  chosen answer is longer.
- dose-response: a stratified sample of the pairs with only the rejected answer shortened or
  lengthened (`variants.length_variants`), against the token ratio each variant achieved; a slope
  per pair across its variants, then a pair-bootstrap interval over pairs.
- content: edit distance, near-duplicate pairs, what a cut would do (pairs cut, by how much,
  pairs whose answers differ only past the cut).
- gradients (`gradients=True`): per-pair gradient norms against length, the leave-one-out
  cosine beside its orthogonal baseline, chosen/rejected entanglement and CHES
  (`prefstudy.gradaudit.gradient_audit`).

Every pair is one unit: intervals resample pairs (gradient cosines: the batches they shared).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import auditpage, auditstats
from . import diagnostics as dg
from .cache import write_atomic
from .columns import parquet_safe, require_columns
from .data import PairSet, load_any, sample_pairs, strata_keys, text_facts
from .errors import PrefstudyError
from .paths import TEXT_COLUMNS, text_rule
from .scoring import encode_for_scoring, length_table, score_encoded
from .theme import from_defaults
from .variants import length_variants

DEFAULT_MODEL = "smollm2-135m-instruct"
DOSE_FACTORS = (0.5, 2.0, 4.0)  # nominal, in characters; the unchanged pair (1) is the control
DOSE_PAIRS = 50  # pairs the dose-response lengthens (a stratified sample; None = all): its
# variants are long (×4), so each costs about 2.5 pairs' scoring
GRADIENT_PAIRS = 64  # pairs whose per-pair gradients are taken (gradients=True)
TRAINING_CUT = (256, 128)  # TrainConfig's max_length, max_prompt_length: what training would cut
# What `write_audit` writes into its folder; anything else there is not the audit's.
AUDIT_FILES = ("README.md", "figures", "pairs.parquet", "dose.parquet", "gradients.parquet",
               "audit.json")
# audit()'s options and the `prefstudy audit` flags that set them, for messages.
FLAGS = {"max_pairs": "--max-pairs", "max_length": "--max-length",
         "max_prompt_length": "max_prompt_length", "dose_pairs": "--dose-pairs",
         "factors": "factors", "gradient_pairs": "--gradient-pairs",
         "batch_size": "--batch-size", "n_boot": "--n-boot", "seed": "--seed"}


class AuditError(PrefstudyError):
    """An audit option or input that cannot give an audit; the message names the option."""


class AuditWarning(UserWarning):
    """Something the audit left out or could not measure (non-finite scores, repeated pairs)."""


@dataclass(frozen=True)
class Audit:
    """What `audit` measured. Every table is a tidy DataFrame; `settings` says how.

    pairs:            one row per audited pair (scored or dropped by a cut): the record columns
                      pair_id, len_p, len_n, loss_p, loss_n, nll_sum_p, nll_sum_n, gap, gap_sum,
                      dlen, then length_kind, favours_chosen_sum / _mean, the uncut lengths,
                      truncated, dropped (why, or NA), shared_prefix, chars_p, chars_n,
                      edit_distance, prompt_group, duplicate_of, the meta columns (prefixed
                      meta_ where a name is taken, e.g. the bundled data's own length_kind
                      label) and the texts (TEXT_COLUMNS; pairs.parquet holds them only
                      where `write_audit` keeps them: never third-party text in reports/).
    length:           `diagnostics.length_effect` of the gap on Δlen, per normalisation.
    accuracy:         `auditstats.preference_accuracy`, per normalisation × length kind.
    chosen_longer:    `auditstats.chosen_longer_share` (one row).
    dose:             one row per scored variant (`auditstats.dose_token_ratios`).
    dose_slopes:      one slope per pair and normalisation (`auditstats.dose_pair_slopes`).
    dose_summary:     the mean per-pair slope with its interval (`dose_slope_summary`).
    dose_factors:     per nominal factor: achieved ratios, mean gap (`dose_by_factor`).
    cuts:             what each cut does (`auditstats.cut_summary`): the one scored, and
                      training's default.
    gradients:        the gradient audit's rows (empty unless gradients=True).
    gradient_summary: `auditstats.gradient_summary` of them.
    """

    pairs: pd.DataFrame
    length: pd.DataFrame
    accuracy: pd.DataFrame
    chosen_longer: pd.DataFrame
    dose: pd.DataFrame
    dose_slopes: pd.DataFrame
    dose_summary: pd.DataFrame
    dose_factors: pd.DataFrame
    cuts: pd.DataFrame
    gradients: pd.DataFrame = field(default_factory=pd.DataFrame)
    gradient_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    settings: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


def _model(model, tokenizer, device: str, dtype: str):
    """(model, tokenizer, name): a preset, hub id or path is loaded; a model object needs its
    tokenizer."""
    if isinstance(model, str | os.PathLike):
        from .models import load_model

        loaded, tok = load_model(str(model), device=device, dtype=dtype)
        return loaded, tok, str(model)
    if tokenizer is None:
        raise ValueError("audit: a model object needs its tokenizer (tokenizer=...)")
    return model, tokenizer, getattr(model, "name_or_path", type(model).__name__)


def _source_name(source) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return type(source).__name__


def _sample(pairs: PairSet, max_pairs: int | None, seed: int) -> PairSet:
    return sample_pairs(pairs, max_pairs, seed=seed) if max_pairs else pairs


# --------------------------------------------------------------------------- the per-pair table


def _pair_table(sample: PairSet, inputs, scores: pd.DataFrame) -> pd.DataFrame:
    """One row per sampled pair: scores (NaN where a cut dropped it), lengths, content."""
    texts = sample.to_frame()
    meta = texts.drop(columns=[*TEXT_COLUMNS, "pair_id"])
    lengths = length_table(inputs.full).drop_duplicates("pair_id").set_index("pair_id")
    table = texts[["pair_id"]].join(scores.drop(columns=lengths.columns, errors="ignore")
                                    .set_index("pair_id"), on="pair_id")
    table = table.join(lengths, on="pair_id")
    table["dlen"] = table.len_n - table.len_p
    table["length_kind"] = auditstats.length_kinds(table)
    table["favours_chosen_sum"] = (table.gap_sum > 0).where(table.gap_sum.notna())
    table["favours_chosen_mean"] = (table.gap > 0).where(table.gap.notna())
    dropped = dict(inputs.dropped)
    table["dropped"] = table.pair_id.map(dropped).astype("object")
    table["chars_p"] = texts.chosen.str.len()
    table["chars_n"] = texts.rejected.str.len()
    table["edit_distance"] = text_facts(texts).edit_distance.to_numpy()
    table = table.join(auditstats.near_duplicates(texts).set_index("pair_id"), on="pair_id")
    meta = meta.rename(columns={c: f"meta_{c}" for c in meta.columns if c in table.columns})
    return pd.concat([table, meta, texts[list(TEXT_COLUMNS)]], axis=1)


def _cuts(pairs: pd.DataFrame, max_length: int | None, max_prompt_length: int | None
          ) -> pd.DataFrame:
    """What the scored cut (if any) and training's default cut do to these pairs."""
    settings = [("scored", max_length, max_prompt_length)] if max_length else []
    if (max_length, max_prompt_length) != TRAINING_CUT:
        settings.append(("training default", *TRAINING_CUT))
    rows = []
    for name, length, prompt in settings:
        prompt = length // 2 if prompt is None else prompt
        cut = auditstats.cut_table(pairs, max_length=length, max_prompt_length=prompt)
        rows.append({"cut": name, "max_length": length, "max_prompt_length": prompt,
                     **auditstats.cut_summary(cut)})
    return pd.DataFrame(rows, columns=["cut", "max_length", "max_prompt_length", "n",
                                       "truncated", "cut_p", "cut_n", "cut_prompt",
                                       "identical", "lost_mean", "lost_max"])


# --------------------------------------------------------------------------- dose-response


def _dose(model, tokenizer, sample: PairSet, scored_ids: set, *, n_pairs: int | None,
          factors: Sequence[float], seed: int, encode: dict, cache: dict,
          batch_size: int, progress: bool = False) -> tuple[pd.DataFrame, int]:
    """The length-controlled variants of a stratified sample of the scored pairs, scored:
    (`dose_token_ratios` table, variants skipped because they equalled the other side)."""
    kept = PairSet(tuple(p for p in sample if p.pair_id in scored_ids))
    if not len(kept) or not factors:
        return pd.DataFrame(), 0
    chosen = sample_pairs(kept, n_pairs, seed=seed) if n_pairs else kept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = length_variants(chosen, (1.0, *factors), seed=seed, unknown_lang="script")
    inputs = encode_for_scoring(variants, tokenizer, **encode)
    scores = score_encoded(model, tokenizer, inputs, batch_size=batch_size, cache=cache,
                           progress="audit: dose-response" if progress else None)
    meta = pd.DataFrame([{"pair_id": v.pair_id, "variant_of": v.meta["variant_of"],
                          "factor": v.meta["factor"], "achieved_ratio": v.meta["achieved_ratio"],
                          "filler_lang": v.meta.get("filler_lang")}
                         for v in variants]).drop_duplicates("pair_id")
    dose = meta.merge(scores.drop_duplicates("pair_id"), on="pair_id")  # a cut can repeat one
    return auditstats.dose_token_ratios(dose), len(variants.skipped)


# --------------------------------------------------------------------------- gradients


def _gradients(model, tokenizer, pairs: PairSet, *, n_pairs: int | None, seed: int,
               max_length: int | None, max_prompt_length: int | None, objectives,
               batch_size: int, progress: bool = False) -> pd.DataFrame:
    """`prefstudy.gradaudit.gradient_audit` on a stratified sample of the pairs; by default its
    own objectives and DPO, whose gradients at the start the page compares with naive-sum's."""
    try:
        from .gradaudit import DEFAULT_GRADIENT_OBJECTIVES, gradient_audit
    except ImportError as e:
        raise ImportError("gradients=True needs prefstudy.gradaudit.gradient_audit, "
                          "which this installation does not have") from e
    subset = sample_pairs(pairs, n_pairs, seed=seed) if n_pairs else pairs
    if objectives is None:
        objectives = (*DEFAULT_GRADIENT_OBJECTIVES, ("dpo", {}))
    grads = gradient_audit(model, tokenizer, subset, objectives=tuple(objectives),
                           batch_size=batch_size, max_length=max_length,
                           max_prompt_length=max_prompt_length, seed=seed,
                           progress="audit: gradients" if progress else None)
    require_columns(grads, auditstats.GRADIENT_COLUMNS, "gradient_audit output")
    return grads


# --------------------------------------------------------------------------- statistics


def _in_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order of auditstats.AUDIT_GAPS (summed first), stable within each."""
    if "normalisation" not in table.columns:
        return table
    rank = table.normalisation.map({k: i for i, k in enumerate(auditstats.AUDIT_GAPS)})
    return table.iloc[rank.argsort(kind="stable")].reset_index(drop=True)


def audit_tables(pairs: pd.DataFrame, dose: pd.DataFrame | None = None, *, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every summary table of an audit from its per-pair table (`Audit.pairs`, or any table
    with the record columns len_p, len_n, loss_p, loss_n, nll_sum_p, nll_sum_n, gap, gap_sum)
    and its dose table (`auditstats.dose_token_ratios` output; None: no dose-response).
    Returns length, accuracy, chosen_longer, dose_slopes, dose_factors, dose_summary: the
    `Audit` fields of the same names. Pure: no model, the same numbers for the same tables."""
    dose = pd.DataFrame() if dose is None else dose
    gaps = dg.gap_normalisations(pairs, keep=("pair_id",))
    out = {"length": dg.length_effect(gaps, by=("normalisation",), n_boot=n_boot, seed=seed),
           "accuracy": auditstats.preference_accuracy(pairs),
           "chosen_longer": auditstats.chosen_longer_share(pairs)}
    if len(dose):
        slopes = auditstats.dose_pair_slopes(dose)
        out.update(dose_slopes=slopes, dose_factors=auditstats.dose_by_factor(dose),
                   dose_summary=auditstats.dose_slope_summary(slopes, n_boot=n_boot, seed=seed))
    else:
        out.update(dose_slopes=pd.DataFrame(), dose_factors=pd.DataFrame(),
                   dose_summary=pd.DataFrame())
    return {name: _in_order(table) for name, table in out.items()}


def _settings(source, loaded: PairSet, sample: PairSet, name: str, model, tokenizer,
              **given) -> dict:
    from .encode import has_chat_template
    from .records import environment

    skipped = [str(s) for s in loaded.skipped]
    return {"source": _source_name(source), "layout": loaded.layout, "n_loaded": len(loaded),
            "n_skipped": len(skipped), "skip_counts": loaded.skip_counts().to_dict(),
            "skipped": skipped[:10], "n_audited": len(sample), "strata": list(strata_keys(loaded)),
            "model": name, "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "chat_template": has_chat_template(tokenizer),
            "clearly_longer": auditstats.CLEARLY_LONGER, "cpu": _cpu_model(),
            "environment": environment(), **given}


def _cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo; platform.processor() is often empty)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _whole(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_options(*, max_pairs=None, max_length=None, max_prompt_length=None,
                  dose_pairs=DOSE_PAIRS, factors=DOSE_FACTORS, gradient_pairs=GRADIENT_PAIRS,
                  batch_size=8, n_boot=1000, seed=0) -> None:
    """Refuse an option `audit` cannot use, before anything is loaded: AuditError naming the
    option and its `prefstudy audit` flag (FLAGS). Counts are whole numbers ≥ 1 (None: all,
    where the option allows it); a cut leaves the prompt at least one token and the responses
    at least one; factors are finite and > 0; n_boot ≥ 1 (an interval needs resamples)."""
    def refuse(name: str, value, rule: str):
        flag = FLAGS[name]
        shown = f"{name} = {value!r}" + (f" ({flag})" if flag != name else "")
        raise AuditError(f"audit: {shown}: {rule}")

    for name, value, none in (
            ("max_pairs", max_pairs, "None (the flag left out) for every pair"),
            ("dose_pairs", dose_pairs, "None (0 on the command line) for every scored pair"),
            ("gradient_pairs", gradient_pairs, "None (0 on the command line) for every pair"),
            ("batch_size", batch_size, None), ("n_boot", n_boot, None)):
        if value is None and none is not None:
            continue
        if not _whole(value) or value < 1:
            refuse(name, value, "must be a whole number ≥ 1" + (f", or {none}" if none else ""))
    if not _whole(seed) or seed < 0:
        refuse("seed", seed, "must be a whole number ≥ 0")
    if max_length is not None and (not _whole(max_length) or max_length < 2):
        refuse("max_length", max_length, "must be a whole number ≥ 2 (a prompt token and a "
               "response token), or None: nothing is cut")
    if max_prompt_length is not None and max_length is not None:  # unused without a cut
        if not _whole(max_prompt_length) or not 1 <= max_prompt_length < max_length:
            refuse("max_prompt_length", max_prompt_length, f"must be a whole number from 1 to "
                   f"max_length − 1 = {max_length - 1}")
    bad = [f for f in factors if isinstance(f, bool) or not isinstance(f, int | float)
           or not math.isfinite(f) or f <= 0]
    if bad:
        refuse("factors", tuple(factors), f"every factor must be a finite number > 0, not "
               f"{bad[0]!r}")


def _unique_pairs(loaded: PairSet) -> PairSet:
    """`loaded` with a repeated pair id left out (an AuditWarning names how many): a PairSet
    built by hand is not checked by a loader."""
    if len({p.pair_id for p in loaded}) == len(loaded):
        return loaded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unique = load_any(list(loaded))
    warnings.warn(f"audit: {len(unique.skipped)} of the {len(loaded)} pairs repeat an earlier "
                  f"pair (the same pair_id); each is audited once: {unique.skipped[0]}",
                  AuditWarning, stacklevel=3)
    return PairSet(unique.pairs, loaded.skipped + unique.skipped, loaded.layouts)


def _check_scores(scores: pd.DataFrame, inputs, n: int, max_length, name: str) -> None:
    """Refuse an audit with nothing scored (every pair cut away), and warn of pairs the model
    scored non-finite (left out of every statistic, their reason columns say so)."""
    if not len(scores):
        reasons = sorted({reason for _, reason in inputs.dropped})
        raise AuditError(f"audit: max_length = {max_length} (--max-length) cuts away every one "
                         f"of the {n} pairs ({'; '.join(reasons) or 'nothing left to score'}); "
                         "raise it, or leave it out to cut nothing")
    bad = ~np.isfinite(scores[["nll_sum_p", "nll_sum_n"]].to_numpy(float)).all(axis=1)
    if bad.any():
        warnings.warn(f"audit: the model {name} scored {int(bad.sum())} of the {len(scores)} "
                      f"pairs non-finite (NaN or inf log-probs; first: "
                      f"{scores.pair_id[bad].iloc[0]}): they are left out of every statistic",
                      AuditWarning, stacklevel=3)


def audit(pairs, *, model=DEFAULT_MODEL, tokenizer=None, split: str | None = None,
          layout: str = "auto", columns: str | Mapping[str, str] | None = None,
          max_pairs: int | None = None, max_length: int | None = None,
          max_prompt_length: int | None = None, dose_pairs: int | None = DOSE_PAIRS,
          factors: Sequence[float] = DOSE_FACTORS, gradients: bool = False,
          gradient_pairs: int | None = GRADIENT_PAIRS, objectives: Sequence[str] | None = None,
          batch_size: int = 8, n_boot: int = 1000, seed: int = 0, device: str = "auto",
          dtype: str = "auto", progress: bool = True) -> Audit:
    """Score a preference dataset at the starting model and measure what its gaps follow.

    pairs: anything `data.load_any` reads (a path: JSON Lines, a JSON array, parquet, CSV,
    plain or gzip, or a folder of them; an http(s) URL; a `save_to_disk` folder, a hub id; a
    DataFrame; a `datasets` Dataset; a PairSet), in any layout `prefstudy.layouts` knows.
    layout, columns: as for `data.load_any` ("auto": recognised from each record's fields).
    model: a preset, hub id or path (`models.load_model`), or a model object with `tokenizer`.
    max_pairs: audit a stratified random sample of this many pairs (`data.sample_pairs`,
    seeded by `seed`); None = every pair. max_length: cut each side to this many tokens
    (prompt ≤ max_prompt_length, default half); None = nothing is cut.
    dose_pairs, factors: the dose-response lengthens the rejected answer of this many pairs (a
    stratified sample of the scored ones; None = all) by each nominal factor.
    gradients: also take per-pair gradients of `gradient_pairs` pairs under `objectives`
    (default: the gradient audit's own). n_boot: bootstrap resamples of every interval.
    progress: a progress bar per stage (scoring, dose-response, gradients) on stderr.
    An option it cannot use is refused before anything loads (`check_options`: AuditError
    naming the option and its flag); so is a cut that leaves no pair to score.
    Returns an `Audit`; `write_audit` writes it.
    """
    check_options(max_pairs=max_pairs, max_length=max_length,
                  max_prompt_length=max_prompt_length, dose_pairs=dose_pairs, factors=factors,
                  gradient_pairs=gradient_pairs, batch_size=batch_size, n_boot=n_boot, seed=seed)
    started = time.perf_counter()
    loaded = _unique_pairs(load_any(pairs, split=split, layout=layout, columns=columns,
                                    seed=seed))
    sample = _sample(loaded, max_pairs, seed)
    net, tok, name = _model(model, tokenizer, device, dtype)
    encode = {"max_length": max_length, "max_prompt_length": max_prompt_length}
    inputs = encode_for_scoring(sample, tok, **encode)
    cache: dict = {}
    scores = score_encoded(net, tok, inputs, batch_size=batch_size, cache=cache,
                           progress="audit: scoring" if progress else None)
    _check_scores(scores, inputs, len(sample), max_length, name)
    scored_at = time.perf_counter()
    table = _pair_table(sample, inputs, scores)
    dose, n_skipped = _dose(net, tok, sample, set(scores.pair_id), n_pairs=dose_pairs,
                            factors=factors, seed=seed, encode=encode, cache=cache,
                            batch_size=batch_size, progress=progress)
    dosed_at = time.perf_counter()
    grads = (_gradients(net, tok, sample, n_pairs=gradient_pairs, seed=seed,
                        max_length=max_length, max_prompt_length=max_prompt_length,
                        objectives=objectives, batch_size=4, progress=progress)
             if gradients else pd.DataFrame())
    tables = audit_tables(table, dose, n_boot=n_boot, seed=seed)
    seconds = {"scoring": scored_at - started, "dose": dosed_at - scored_at,
               "gradients": time.perf_counter() - dosed_at if gradients else 0.0}
    settings = _settings(pairs, loaded, sample, name, net, tok, max_pairs=max_pairs, seed=seed,
                         max_length=max_length, max_prompt_length=max_prompt_length,
                         dose_pairs=dose_pairs, factors=list(factors), dose_skipped=n_skipped,
                         gradients=gradients, gradient_pairs=gradient_pairs, n_boot=n_boot,
                         batch_size=batch_size, seconds=seconds,
                         total_seconds=time.perf_counter() - started)
    return Audit(pairs=table, dose=dose, cuts=_cuts(table, max_length, max_prompt_length),
                 gradients=grads,
                 gradient_summary=(auditstats.gradient_summary(grads, n_boot=n_boot, seed=seed)
                                   if len(grads) else pd.DataFrame()),
                 settings=settings, **tables)


# --------------------------------------------------------------------------- files


def write_audit(result: Audit, out: str | os.PathLike, *,
                nested: Mapping[str, Audit] | None = None, keep_text: bool | None = None,
                reference: str | os.PathLike | None = None) -> Path:
    """Write an audit: `out/README.md` (the page), `out/figures/*.png`, `out/pairs.parquet`
    (one row per pair), `out/dose.parquet` (one per variant), `out/gradients.parquet` (with
    gradients) and `out/audit.json` (settings and every summary table). Returns the page.

    nested: more audits, each written the same way into the subfolder its key names (a
    study's held-out pairs: `audit/heldout/`).

    keep_text: whether pairs.parquet holds the pair texts (TEXT_COLUMNS); every number computed
    from them is kept either way. None: `paths.text_rule`'s default, left out where `out` is in
    the repository's reports/ and the pairs (settings "data", else "source") are not the
    project's own. audit.json's settings say keep_text, text_kept and text_kept_why.

    reference: the folder of another audit (e.g. the bundled pairs' `reports/runs/audit`) that
    the page compares the length effect with; its path relative to `out` is kept in the
    settings, so that `rewrite_page` finds it again wherever the two folders move together.

    The folder is written whole under a temporary name beside `out` and then takes its place
    (`cache.write_atomic`), so an interrupted audit leaves the earlier one as it was, never
    a mix of the two. What an earlier audit there held besides AUDIT_FILES (a nested audit
    not written now) is kept. `out` must be new, empty or an earlier audit's folder
    (AuditError otherwise: nothing of another folder is replaced).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AuditError(f"{out}: exists and is not a folder; choose a folder for the audit")
    if out.is_dir() and not (out / "audit.json").exists() and any(out.iterdir()):
        raise AuditError(f"{out}: a folder that is not empty and holds no audit (no audit.json)"
                         "; write the audit to a new or empty folder, or over an earlier audit")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise AuditError(f"{out}: the current folder (or one above it); write the audit to a "
                         "folder of its own")

    if reference is not None:
        compared = read_audit(reference)  # before anything is written: a bad folder is one line
        result = replace(result, settings={
            **result.settings, "reference": os.path.relpath(os.path.abspath(reference),
                                                            os.path.abspath(out))})

    def write(folder: Path) -> None:
        _write_files(result, folder, _texts(result, out, keep_text),
                     compared if reference is not None else None)
        for name, more in (nested or {}).items():
            _write_files(more, folder / name, _texts(more, out / name, keep_text))
        for entry in sorted(out.iterdir()) if out.is_dir() else ():  # copied: the old stays
            if entry.name not in AUDIT_FILES and not (folder / entry.name).exists():  # whole
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, folder / entry.name)

    write_atomic(Path(os.path.abspath(out)), write)
    return out / "README.md"


def _texts(result: Audit, out: Path, keep_text: bool | None) -> dict:
    """`paths.text_rule` for an audit written to `out`: of the pairs it names as its data."""
    return text_rule(out, result.settings.get("data", result.settings.get("source")), keep_text)


def _write_files(result: Audit, out: Path, texts: dict, reference: Audit | None = None) -> None:
    """An audit's files (see `write_audit`) into the folder `out`, the pair texts only where
    `texts` (`_texts`) says they are kept; the page compares with `reference` where given."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    pairs = result.pairs if texts["text_kept"] else result.pairs.drop(
        columns=list(TEXT_COLUMNS), errors="ignore")
    parquet_safe(pairs).to_parquet(out / "pairs.parquet", index=False)
    if len(result.dose):
        result.dose.to_parquet(out / "dose.parquet", index=False)
    if len(result.gradients):
        result.gradients.to_parquet(out / "gradients.parquet", index=False)
    summary = {name: getattr(result, name).to_dict(orient="records")
               for name in ("length", "accuracy", "chosen_longer", "dose_summary",
                            "dose_factors", "cuts", "gradient_summary")}
    settings = {**result.settings, **texts}
    (out / "audit.json").write_text(json.dumps({"settings": settings, **summary},
                                               indent=2, default=str, ensure_ascii=False) + "\n")
    with from_defaults():  # the same figures whatever style the caller set
        page = auditpage.render_page(replace(result, settings=settings), out, reference=reference)
    (out / "README.md").write_text(page)


def rewrite_page(folder: str | os.PathLike) -> Path:
    """Draw an audit's page and figures again from its tables (`read_audit`), with no model and
    no data: after a change to the page or the figures. The reference audit its settings name
    (`write_audit(reference=…)`) is read from where it lies relative to `folder`. Returns the
    page."""
    folder = Path(folder)
    result = read_audit(folder)
    ref = result.settings.get("reference")
    compared = read_audit(folder / ref) if ref else None
    with from_defaults():
        page = auditpage.render_page(result, folder, reference=compared)
    write_atomic(folder / "README.md", lambda tmp: tmp.write_text(page))
    return folder / "README.md"


def read_audit(folder: str | os.PathLike) -> Audit:
    """The Audit `write_audit` wrote to `folder`, its summary tables recomputed from the
    per-pair tables with the settings' bootstrap seed (`audit_tables`: the same numbers)."""
    folder = Path(folder)
    if not (folder / "audit.json").exists():
        raise FileNotFoundError(f"{folder}: no audit here (audit.json); run `prefstudy audit`")
    saved = json.loads((folder / "audit.json").read_text())
    settings = saved["settings"]

    def table(name: str) -> pd.DataFrame:
        path = folder / f"{name}.parquet"
        return pd.read_parquet(path) if path.exists() else pd.DataFrame()

    pairs, dose, grads = table("pairs"), table("dose"), table("gradients")
    n_boot, seed = settings.get("n_boot", 1000), settings.get("seed", 0)
    return Audit(pairs=pairs, dose=dose, cuts=pd.DataFrame(saved.get("cuts", [])),
                 gradients=grads, settings=settings,
                 gradient_summary=(auditstats.gradient_summary(grads, n_boot=n_boot, seed=seed)
                                   if len(grads) else pd.DataFrame()),
                 **audit_tables(pairs, dose, n_boot=n_boot, seed=seed))
