"""Audit a preference dataset at the starting model, before any training.

The seed's first claim is about the data: when chosen and rejected differ in length and wording,
the per-pair gap of loss_p − loss_n swings for reasons that are not preference. That can be
measured on any dataset before a single update. `audit` scores every pair once with the
starting model (no response cut unless `max_length` says so, and then the audit counts what was
cut) and returns tidy DataFrames; `write_audit` turns them into a page, figures and parquet:

    from prefstudy.audit import audit, write_audit
    result = audit("my_pairs.parquet", model="smollm2-135m-instruct", max_pairs=500)
    write_audit(result, "audits/my_pairs")      # README.md, figures/*.png, pairs.parquet, ...

or `prefstudy audit PATH [--model NAME] [--max-pairs N] [--max-length L] [--gradients]`.

What it measures (statistics in `prefstudy.diagnostics`, figures in `prefstudy.plots`):

- length: R², Spearman ρ and slope of the gap on Δlen = len_n − len_p under summed and
  token-mean losses, with pair-bootstrap intervals; the starting model's preference accuracy
  by length kind, with exact Clopper–Pearson intervals and counts; the share of pairs whose
  chosen answer is longer.
- dose-response: a stratified sample of the pairs with only the rejected answer shortened or
  lengthened (`data.length_variants`), against the token ratio each variant achieved; a slope
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
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import diagnostics as dg
from . import plots
from .data import PairSet, length_variants, load_any, sample_pairs, strata_keys
from .formatting import interval_column, interval_label, markdown_table, number, percent
from .records import require_columns
from .scoring import encode_for_scoring, length_table, score_encoded

DEFAULT_MODEL = "smollm2-135m-instruct"
DOSE_FACTORS = (0.5, 2.0, 4.0)  # nominal, in characters; the unchanged pair (1) is the control
DOSE_PAIRS = 50  # pairs the dose-response lengthens (a stratified sample; None = all): its
# variants are long (×4), so each costs about 2.5 pairs' scoring
GRADIENT_PAIRS = 64  # pairs whose per-pair gradients are taken (gradients=True)
TRAINING_CUT = (256, 128)  # TrainConfig's max_length, max_prompt_length: what training would cut
TEXT_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Audit:
    """What `audit` measured. Every table is a tidy DataFrame; `settings` says how.

    pairs:            one row per audited pair (scored or dropped by a cut): the record columns
                      pair_id, len_p, len_n, loss_p, loss_n, nll_sum_p, nll_sum_n, gap, gap_sum,
                      dlen, then length_kind, favours_chosen_sum / _mean, the uncut lengths,
                      truncated, dropped (why, or NA), shared_prefix, chars_p, chars_n,
                      edit_distance, prompt_group, duplicate_of, the meta columns (prefixed
                      meta_ where a name is taken, e.g. the bundled data's own length_kind
                      label) and the texts.
    length:           `diagnostics.length_effect` of the gap on Δlen, per normalisation.
    accuracy:         `diagnostics.preference_accuracy`, per normalisation × length kind.
    chosen_longer:    `diagnostics.chosen_longer_share` (one row).
    dose:             one row per scored variant (`diagnostics.dose_token_ratios`).
    dose_slopes:      one slope per pair and normalisation (`diagnostics.dose_pair_slopes`).
    dose_summary:     the mean per-pair slope with its interval (`dose_slope_summary`).
    dose_factors:     per nominal factor: achieved ratios, mean gap (`dose_by_factor`).
    cuts:             what each cut does (`diagnostics.cut_summary`): the one scored, and
                      training's default.
    gradients:        the gradient audit's rows (empty unless gradients=True).
    gradient_summary: `diagnostics.gradient_summary` of them.
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
    table["length_kind"] = dg.length_kinds(table)
    table["favours_chosen_sum"] = (table.gap_sum > 0).where(table.gap_sum.notna())
    table["favours_chosen_mean"] = (table.gap > 0).where(table.gap.notna())
    dropped = dict(inputs.dropped)
    table["dropped"] = table.pair_id.map(dropped).astype("object")
    table["chars_p"] = texts.chosen.str.len()
    table["chars_n"] = texts.rejected.str.len()
    table["edit_distance"] = dg.pair_features(texts).edit_distance.to_numpy()
    table = table.join(dg.near_duplicates(texts).set_index("pair_id"), on="pair_id")
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
        cut = dg.cut_table(pairs, max_length=length, max_prompt_length=prompt)
        rows.append({"cut": name, "max_length": length, "max_prompt_length": prompt,
                     **dg.cut_summary(cut)})
    return pd.DataFrame(rows, columns=["cut", "max_length", "max_prompt_length", "n",
                                       "truncated", "cut_p", "cut_n", "cut_prompt",
                                       "identical", "lost_mean", "lost_max"])


# --------------------------------------------------------------------------- dose-response


def _dose(model, tokenizer, sample: PairSet, scored_ids: set, *, n_pairs: int | None,
          factors: Sequence[float], seed: int, encode: dict, cache: dict,
          batch_size: int) -> tuple[pd.DataFrame, int]:
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
    scores = score_encoded(model, tokenizer, inputs, batch_size=batch_size, cache=cache)
    meta = pd.DataFrame([{"pair_id": v.pair_id, "variant_of": v.meta["variant_of"],
                          "factor": v.meta["factor"], "achieved_ratio": v.meta["achieved_ratio"],
                          "filler_lang": v.meta.get("filler_lang")}
                         for v in variants]).drop_duplicates("pair_id")
    dose = meta.merge(scores.drop_duplicates("pair_id"), on="pair_id")  # a cut can repeat one
    return dg.dose_token_ratios(dose), len(variants.skipped)


# --------------------------------------------------------------------------- gradients


def _gradients(model, tokenizer, pairs: PairSet, *, n_pairs: int | None, seed: int,
               max_length: int | None, max_prompt_length: int | None, objectives,
               batch_size: int) -> pd.DataFrame:
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
                           max_prompt_length=max_prompt_length, seed=seed)
    require_columns(grads, dg.GRADIENT_COLUMNS, "gradient_audit output")
    return grads


# --------------------------------------------------------------------------- statistics


def _in_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order of diagnostics.AUDIT_GAPS (summed first), stable within each."""
    if "normalisation" not in table.columns:
        return table
    rank = table.normalisation.map({k: i for i, k in enumerate(dg.AUDIT_GAPS)})
    return table.iloc[rank.argsort(kind="stable")].reset_index(drop=True)


def audit_tables(pairs: pd.DataFrame, dose: pd.DataFrame | None = None, *, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every summary table of an audit from its per-pair table (`Audit.pairs`, or any table
    with the record columns len_p, len_n, loss_p, loss_n, nll_sum_p, nll_sum_n, gap, gap_sum)
    and its dose table (`diagnostics.dose_token_ratios` output; None: no dose-response).
    Returns length, accuracy, chosen_longer, dose_slopes, dose_factors, dose_summary: the
    `Audit` fields of the same names. Pure: no model, the same numbers for the same tables."""
    dose = pd.DataFrame() if dose is None else dose
    gaps = dg.gap_normalisations(pairs, keep=("pair_id",))
    out = {"length": dg.length_effect(gaps, by=("normalisation",), n_boot=n_boot, seed=seed),
           "accuracy": dg.preference_accuracy(pairs),
           "chosen_longer": dg.chosen_longer_share(pairs)}
    if len(dose):
        slopes = dg.dose_pair_slopes(dose)
        out.update(dose_slopes=slopes, dose_factors=dg.dose_by_factor(dose),
                   dose_summary=dg.dose_slope_summary(slopes, n_boot=n_boot, seed=seed))
    else:
        out.update(dose_slopes=pd.DataFrame(), dose_factors=pd.DataFrame(),
                   dose_summary=pd.DataFrame())
    return {name: _in_order(table) for name, table in out.items()}


def _settings(source, loaded: PairSet, sample: PairSet, name: str, model, tokenizer,
              **given) -> dict:
    from .encode import has_chat_template
    from .records import environment

    skipped = [str(s) for s in loaded.skipped]
    return {"source": _source_name(source), "n_loaded": len(loaded), "n_skipped": len(skipped),
            "skipped": skipped[:10], "n_audited": len(sample), "strata": list(strata_keys(loaded)),
            "model": name, "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "chat_template": has_chat_template(tokenizer),
            "clearly_longer": dg.CLEARLY_LONGER, "cpu": _cpu_model(),
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


def audit(pairs, *, model=DEFAULT_MODEL, tokenizer=None, split: str | None = None,
          max_pairs: int | None = None, max_length: int | None = None,
          max_prompt_length: int | None = None, dose_pairs: int | None = DOSE_PAIRS,
          factors: Sequence[float] = DOSE_FACTORS, gradients: bool = False,
          gradient_pairs: int | None = GRADIENT_PAIRS, objectives: Sequence[str] | None = None,
          batch_size: int = 8, n_boot: int = 1000, seed: int = 0, device: str = "auto",
          dtype: str = "auto") -> Audit:
    """Score a preference dataset at the starting model and measure what its gaps follow.

    pairs: anything `data.load_any` reads (a path: JSONL, .jsonl.gz, parquet, CSV, a
    `save_to_disk` folder, a hub id; a DataFrame; a `datasets` Dataset; a PairSet).
    model: a preset, hub id or path (`models.load_model`), or a model object with `tokenizer`.
    max_pairs: audit a stratified random sample of this many pairs (`data.sample_pairs`,
    seeded by `seed`); None = every pair. max_length: cut each side to this many tokens
    (prompt ≤ max_prompt_length, default half); None = nothing is cut.
    dose_pairs, factors: the dose-response lengthens the rejected answer of this many pairs (a
    stratified sample of the scored ones; None = all) by each nominal factor.
    gradients: also take per-pair gradients of `gradient_pairs` pairs under `objectives`
    (default: the gradient audit's own). n_boot: bootstrap resamples of every interval.
    Returns an `Audit`; `write_audit` writes it.
    """
    started = time.perf_counter()
    loaded = load_any(pairs, split=split)
    sample = _sample(loaded, max_pairs, seed)
    net, tok, name = _model(model, tokenizer, device, dtype)
    encode = {"max_length": max_length, "max_prompt_length": max_prompt_length}
    inputs = encode_for_scoring(sample, tok, **encode)
    cache: dict = {}
    scores = score_encoded(net, tok, inputs, batch_size=batch_size, cache=cache)
    scored_at = time.perf_counter()
    table = _pair_table(sample, inputs, scores)
    dose, n_skipped = _dose(net, tok, sample, set(scores.pair_id), n_pairs=dose_pairs,
                            factors=factors, seed=seed, encode=encode, cache=cache,
                            batch_size=batch_size)
    dosed_at = time.perf_counter()
    grads = (_gradients(net, tok, sample, n_pairs=gradient_pairs, seed=seed,
                        max_length=max_length, max_prompt_length=max_prompt_length,
                        objectives=objectives, batch_size=4)
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
                 gradient_summary=(dg.gradient_summary(grads, n_boot=n_boot, seed=seed)
                                   if len(grads) else pd.DataFrame()),
                 settings=settings, **tables)


# --------------------------------------------------------------------------- files


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns of mixed types (free-form meta) as text, so parquet can store them."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            kinds = {type(v) for v in out[column].dropna()}
            if len(kinds) > 1 or kinds - {str}:
                out[column] = out[column].map(lambda v: v if v is None or isinstance(v, str)
                                              else json.dumps(v, default=str, ensure_ascii=False))
    return out


def write_audit(result: Audit, out: str | os.PathLike) -> Path:
    """Write an audit: `out/README.md` (the page), `out/figures/*.png`, `out/pairs.parquet`
    (one row per pair), `out/dose.parquet` (one per variant), `out/gradients.parquet` (with
    gradients) and `out/audit.json` (settings and every summary table). Returns the page."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    _parquet_safe(result.pairs).to_parquet(out / "pairs.parquet", index=False)
    if len(result.dose):
        result.dose.to_parquet(out / "dose.parquet", index=False)
    if len(result.gradients):
        result.gradients.to_parquet(out / "gradients.parquet", index=False)
    summary = {name: getattr(result, name).to_dict(orient="records")
               for name in ("length", "accuracy", "chosen_longer", "dose_summary",
                            "dose_factors", "cuts", "gradient_summary")}
    (out / "audit.json").write_text(json.dumps({"settings": result.settings, **summary},
                                               indent=2, default=str, ensure_ascii=False) + "\n")
    page = out / "README.md"
    page.write_text(render_page(result, out))
    return page


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
                 gradient_summary=(dg.gradient_summary(grads, n_boot=n_boot, seed=seed)
                                   if len(grads) else pd.DataFrame()),
                 **audit_tables(pairs, dose, n_boot=n_boot, seed=seed))


# --------------------------------------------------------------------------- the page


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


def _verdict(lo: float, hi: float, rising: str, falling: str) -> str:
    """"held" and which way (`rising` above 0, `falling` below) when the interval excludes 0,
    else that it did not, and why."""
    if not (pd.notna(lo) and pd.notna(hi)):
        return "could not be judged (too few pairs for an interval)"
    if lo > 0 or hi < 0:
        return f"held: {rising if lo > 0 else falling}"
    return "did not hold (the interval includes 0)"


LENGTH_WAYS = ("the gap grows with Δlen, so a pair's longer answer is the one it counts against",
               "the gap shrinks as Δlen grows, so a pair's shorter answer is the one it counts "
               "against")
DOSE_WAYS = ("a longer rejected answer widens it", "a longer rejected answer narrows it")


def _claims(result: Audit) -> str:
    """One plain sentence per measurement of the seed's first claim: claim, numbers, verdict."""
    lines = []
    for norm, words in (("sum", "summed"), ("mean", "token-mean")):
        row = _row(result.length, normalisation=norm)
        if row is not None:
            lines.append(f"- The {words} gap follows Δlen: slope "
                         f"{interval_label(row.slope, row.slope_lo, row.slope_hi, digits=4)} "
                         f"nats per token, R² = "
                         f"{interval_label(row.r2, row.r2_lo, row.r2_hi, digits=3)}, over "
                         f"{row.n} pairs — {_verdict(row.slope_lo, row.slope_hi, *LENGTH_WAYS)}.")
    for norm, words in (("sum", "summed"), ("mean", "token-mean")):
        row = _row(result.dose_summary, normalisation=norm)
        if row is not None:
            lines.append(f"- Length alone moves the {words} gap: lengthening only the rejected "
                         f"answer changes it by "
                         f"{interval_label(row.slope, row.slope_lo, row.slope_hi, digits=3)} "
                         f"nats per doubling of its tokens (mean of {row.n_pairs} per-pair "
                         f"slopes) — {_verdict(row.slope_lo, row.slope_hi, *DOSE_WAYS)}.")
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
    plots.save(plots.gap_vs_length(gaps, effect=effect, col_order=list(dg.AUDIT_GAPS)),
               out / "figures" / "gap_vs_length.png")
    acc = result.accuracy
    acc_view = pd.DataFrame({
        "gap normalised by": acc.normalisation, "length kind": acc.length_kind.astype(str),
        "gap favours chosen": [_share(r, "accuracy") for _, r in acc.iterrows()],
        "ties": acc.n_ties})
    shown = acc[(acc.length_kind != "all") & (acc.n > 0)]
    if len(shown):
        plots.save(plots.accuracy_plot(shown, order=list(dg.LENGTH_KINDS),
                                       hue_order=list(dg.AUDIT_GAPS)),
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
        f"{dg.CLEARLY_LONGER:g} × the other answer's response tokens; *similar* is every other "
        "pair. Intervals: exact Clopper–Pearson. A tie favours neither. There is no reference "
        "gap here: at the starting weights the policy is its own reference, so DPO's implicit "
        "reward is 0 for every pair and ranks none.", "", markdown_table(acc_view), "",
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
    plots.save(plots.dose_plot(dg.dose_gaps(result.dose), summary=f, slopes=d,
                               col_order=list(dg.AUDIT_GAPS)),
               out / "figures" / "dose.png")
    s = result.settings
    return "\n".join([
        f"A stratified sample of the scored pairs ({d.n_pairs.max()} pairs) with only the "
        "rejected answer changed: shortened to its leading sentences or lengthened with neutral "
        "filler sentences in its language (`prefstudy.data.length_variants`; the filler "
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
    plots.save(plots.histogram_plot(pairs, x="edit_distance", bins=20, binrange=(0, 1)),
               out / "figures" / "edit_distance.png")
    return "\n".join([
        "Edit distance between chosen and rejected (characters; 0 = identical, 1 = nothing in "
        "common, `prefstudy.data.edit_distance`): quantiles 10/25/50/75/90% = "
        + ", ".join(number(v, 2) for v in q) + f". {_count(close, len(pairs))} pairs differ by "
        "at most 0.1 (minimal edits, where chosen and rejected share most of their tokens).", "",
        f"{_count(shared, len(pairs))} pairs share their prompt (up to case and whitespace) "
        f"with another audited pair; {_count(dupes, len(pairs))} nearly repeat an earlier pair "
        f"(chosen and rejected each within edit distance {dg.NEAR_DUPLICATE:g}: "
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
    ratio = dg.gradient_scale(result.gradients, of="dpo", to="naive-sum")
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
    key = dg.gradient_key(grads)
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
    plots.save(plots.gradient_norm_plot(grads, col=key),
               figures / "gradient_norm.png")
    plots.save(plots.distribution_plot(grads, x="grad_cos_loo", y=key,
                                       baseline="grad_cos_orthogonal", refline=0),
               figures / "gradient_cosine.png")
    plots.save(plots.distribution_panels(per_pair, columns=("entanglement", "ches"), y="pairs",
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
        "## What held", "", "The seed's first claim: when chosen and rejected differ in length "
        "and wording, the per-pair gap swings for reasons that are not preference.", "",
        part["claims"], "",
        "## Length", "", part["length"],
        "## Dose-response: only the length changes", "", part["dose"],
        "## Content", "", part["content"],
        "## Gradients", "", part["gradients"]]
    return "\n".join(page).rstrip() + "\n"
