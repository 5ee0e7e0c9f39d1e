"""The report: every figure and the report page, regenerated from runs.

`build_report(runs, out)` reads the runs' tables once (`tables.load_tables`), takes every
finding from `findings.summarise` (seeded bootstraps: the same runs give the same numbers, byte
for byte), draws each figure with one call to `prefstudy.plots`, and writes `out/README.md`,
`out/figures/*.png` and `out/report.json` (REPORT_FILE: which runs the report was made from).
`out` defaults to where the runs' report belongs (`default_out`): `<runs>/report`, as
`prefstudy study` writes it, or `reports/` for the committed study in reports/runs. The report is
built in a temporary sibling folder and moved into place only when complete, and a folder that
holds the report of other runs is never replaced unless `force=True`. This module writes prose
and tables only; nothing here trains or loads a model, and numbers come from records, never
typed by hand.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pandas as pd

from . import findings, plots
from .auditpage import save_figure as _save
from .auditpage import sections as audit_sections
from .errors import PrefstudyError
from .external import checks as external_checks
from .external import checks_section
from .findings import Findings, in_order
from .formatting import markdown_table, number, percent
from .paths import in_repo
from .records import default_runs_dir
from .studypage import _sorted, collapse_section, displacement_section
from .tables import Tables, load_tables
from .theme import from_defaults, study_palette
from .verdicts import what_held

# --------------------------------------------------------------------------- provenance


def _given(config: dict, key: str) -> str:
    """A config field as the page shows it: "?" where a run made elsewhere lacks it."""
    return str(config[key]) if key in config else "?"


def provenance(tables: Tables, found: Findings | None = None) -> str:
    metas = [tables.metas[f.name] for f in tables.folders]
    configs = [tables.configs[f.name] for f in tables.folders]
    env = metas[0].get("environment", {})
    cfg = configs[0]  # a run made elsewhere (an integration) may lack some fields
    statuses = pd.Series([m.get("status", "?") for m in metas]).value_counts().to_dict()
    devices = sorted({m.get("environment", {}).get("device", "?") for m in metas})
    trainable = _trainable(configs)
    evals = sorted(set(tables.evals.step)) if len(tables.evals) else []
    seconds = tables.runs.seconds.sum() if len(tables.runs) else float("nan")
    given = partial(_given, cfg)
    return "\n".join([
        f"- Runs: {len(tables.folders)} ({', '.join(f'{v} {k}' for k, v in statuses.items())}), "
        f"{_design(tables)}. The seeds change only the order of the training pairs: every run "
        "starts from the same weights, so seeds are data-order replicates, not independent "
        "models.",
        f"- Model: `{given('model')}`{_history(cfg.get('model'))}, {trainable} trainable, "
        f"{given('steps')} steps of {given('batch_size')} pairs, AdamW, "
        f"{_warmup(cfg.get('warmup_steps'))}, gradient clipping {cfg.get('max_grad_norm')}, "
        f"sequences up to {given('max_length')} tokens (prompt up to "
        f"{given('max_prompt_length')}), dtype {given('dtype')}; held-out evaluations at steps "
        f"{', '.join(str(int(s)) for s in evals) or '–'} (step 0: the starting model itself).",
        _data_line(tables, cfg), *_sweep_line(found),
        *_left_out(configs), *_past_uniform(tables.folders, metas),
        f"- Hardware: {'; '.join(devices)} ({env.get('cpu_count')} cores); torch "
        f"{env.get('torch')}, transformers {env.get('transformers')}; prefstudy commit "
        f"`{env.get('git_commit')}`; started {min(m.get('started', '') for m in metas)}; "
        f"training took {seconds / 60:.0f} min in all (the runs' own start-to-end times).",
    ])


def _sweep_line(found: Findings | None) -> list[str]:
    """What each learning rate did by the end, across objectives: the evidence that the sweep
    spans barely moving to degrading (held-out accuracy and Δ neutral NLL at each run's last
    evaluation, their range over runs)."""
    paths = found.paths if found is not None else pd.DataFrame()
    if not len(paths):
        return []
    last = paths[paths.step == paths.groupby("run_id").step.transform("max")]
    parts = []
    for lr, at in last.groupby("lr", sort=True):
        acc, cost = at.accuracy, at.d_neutral
        parts.append(f"lr {lr:g}: held-out accuracy {acc.min():.2f} to {acc.max():.2f} "
                     f"(median {acc.median():.2f}), Δ neutral NLL {number(cost.min(), 3)} to "
                     f"{number(cost.max(), 3)} nats/token (median {number(cost.median(), 3)})")
    return ["- What each learning rate did by the end, over the runs at it (the sweep should "
            "run from barely moving to degrading): " + "; ".join(parts) + "."]


def _design(tables: Tables) -> str:
    """The study's shape: configurations × learning rates × seeds where every configuration ran
    at the same ones, else each group of configurations with its own."""
    runs = tables.runs
    shape = runs.groupby("label", sort=False).agg(
        lrs=("lr", lambda v: tuple(sorted({float(x) for x in v.dropna()}))),
        seeds=("seed", lambda v: tuple(sorted({int(x) for x in v.dropna()}))))
    shape = shape.reindex([lab for lab in tables.order if lab in shape.index])

    def named(lrs, seeds) -> str:
        return (f"{len(lrs)} learning rate(s) ({', '.join(f'{v:g}' for v in lrs)}) × seeds "
                f"{list(seeds)}")

    if len(set(zip(shape.lrs, shape.seeds))) <= 1:
        return f"{len(shape)} configurations × {named(shape.lrs.iloc[0], shape.seeds.iloc[0])}"
    groups = shape.groupby(["lrs", "seeds"], sort=False).groups
    return "; ".join(f"{', '.join(labels)} at {named(lrs, seeds)}"
                     for (lrs, seeds), labels in groups.items())


def _data_line(tables: Tables, cfg: dict) -> str:
    """Where the training, held-out and neutral material came from, and how much was used."""
    given = partial(_given, cfg)
    held = tables.evals[tables.evals.split == "heldout"].pair_id.nunique() \
        if len(tables.evals) and "split" in tables.evals.columns else 0
    passages = tables.perplexity.text_id.nunique() if len(tables.perplexity) else 0
    common = (f"{passages} neutral passages, {given('n_probes')} probe prompts (harmful and "
              "benign); greedy generations, one sample per probe.")
    if not cfg.get("heldout_prompts"):
        return (f"- Data: {given('pairs_train')} training pairs from `{given('data')}` (a "
                "stratified sample, the same in every run), "
                f"{held} held-out pairs from `{given('heldout')}` (balanced over the pairs' "
                f"labels where they have some), {common}")
    neutral = (f"{given('neutral_model')}'s answers to {given('split_neutral_prompts')} further "
               "instructions" if cfg.get("neutral_model") else
               f"one answer to each of {given('split_neutral_prompts')} further instructions")
    too_long = (f"; pairs longer than {given('max_length')} tokens were left out before any "
                f"sample ({given('pairs_too_long')} of the training pool, "
                f"{given('heldout_pairs_too_long')} held out)"
                if cfg.get("too_long") == "drop" else "")
    return (f"- Data: `{given('data')}` split by instruction ({given('split_prompts')} "
            f"instructions; none on two sides): every pair of {given('split_heldout_prompts')} "
            f"instructions held out ({held} pairs evaluated), {neutral} as neutral text, and "
            f"{given('pairs_train')} training pairs sampled from the pairs of the other "
            f"{given('split_train_prompts')} (stratified, the same in every run){too_long}; "
            f"{common}")


def _warmup(steps) -> str:
    return (f"the learning rate warmed up linearly over {steps} steps" if steps else
            "no learning-rate warm-up (a cold start)")


def _history(model) -> str:
    """What the report must say of a starting model's own training, where it is known."""
    if model == "smollm2-135m-instruct":
        return (" (SmolLM2-135M-Instruct, itself aligned with DPO: UltraFeedback, β 0.5, lr "
                "1e-6, two epochs, SmolLM2's recipe; its weights a 4-bit (Q4_1) GGUF file, "
                "de-quantised)")
    return ""


def _counted(configs: list[dict], key: str) -> str:
    values = sorted({c[key] for c in configs if key in c})
    return " to ".join(str(v) for v in (values[:1] + values[1:][-1:])) if values else "–"


def _left_out(configs: list[dict]) -> list[str]:
    """What loading and truncation left out or cut, as the runs' configs counted it (no line
    where their configs hold no such count, as in runs made by the integrations)."""
    if not any("records_skipped" in c for c in configs):
        return []
    line = (f"- Left out or cut (per run): {_counted(configs, 'records_skipped')} records skipped "
            f"while loading, {_counted(configs, 'pairs_dropped_by_truncation')} pairs dropped by "
            f"truncation, {_counted(configs, 'pairs_truncated')} of {_counted(configs, 'pairs_train')} training "
            "pairs truncated")
    if any("heldout_records_skipped" in c for c in configs):
        line += (f"; held-out: {_counted(configs, 'heldout_records_skipped')} skipped, "
                 f"{_counted(configs, 'heldout_pairs_dropped_by_truncation')} dropped, "
                 f"{_counted(configs, 'heldout_pairs_truncated')} truncated")
    return [line + "."]


def _past_uniform(folders: list[Path], metas: list[dict]) -> list[str]:
    """Runs whose per-token loss passed ln|V| (a uniform guess) by more than a nat."""
    known = [m for m in metas if "uniform_loss" in m]
    if not known:
        return []
    flagged = [f"`{f.name}` (step {m['above_uniform_step']}, up to "
               f"{m['above_uniform_max_loss']:.3g} nats)"
               for f, m in zip(folders, metas) if "above_uniform_step" in m]
    bound = f"ln|V| = {known[0]['uniform_loss']:.2f} nats per token, a uniform guess"
    return [f"- Past {bound}, by more than a nat: "
            + (", ".join(flagged) if flagged else f"no run (of {len(known)})") + "."]


def _trainable(configs: list[dict]) -> str:
    """Which blocks trained: the most runs' setting, and the labels of runs with another."""
    def blocks(c):
        return "all blocks" if c.get("trainable_blocks") is None \
            else f"the top {c['trainable_blocks']} blocks"
    counts = pd.Series([blocks(c) for c in configs]).value_counts()
    others = [f"{b} in {', '.join(sorted({str(c.get('label')) for c in configs if blocks(c) == b}))}"
              for b in counts.index[1:]]
    return counts.index[0] + (f" ({'; '.join(others)})" if others else "")


def length_section(tables: Tables, out: Path, audit_parts: dict | None) -> str:
    """C1 from the audit of the pairs the study trains on, at the starting model."""
    if audit_parts is None:
        return ("This study has no audit of its training pairs (`prefstudy.study.audit_study`, "
                "run by `prefstudy study`), so C1 is not measured here.\n")
    return "\n".join([
        "Measured at the starting model on the pairs the study trains on, cut as training cuts "
        "them (`prefstudy.study.audit_study`, the audit's page is in the study's `audit/` "
        "folder). Each pair is one unit; intervals are 95% pair bootstraps, shares exact "
        "Clopper–Pearson.", "", audit_parts["claims"], "", audit_parts["length"],
        "### Dose-response: only the length changes", "", audit_parts["dose"]])


def _setting_colours(noise: pd.DataFrame) -> dict:
    """Each row's setting (label · lr) in its label's colour (the report's pinned palette)."""
    from .theme import colours_of

    by_label = colours_of(list(dict.fromkeys(noise.label)))
    return dict(zip(noise.setting, noise.label.map(by_label)))


def noise_section(found: Findings, out: Path, order: list[str],
                  audit_parts: dict | None) -> str:
    text = []
    if audit_parts is not None:
        text += ["### At the starting model", "", audit_parts["gradients"]]
    if not len(found.noise):
        return "\n".join(text + ["Gradient statistics were off in the training runs.", ""])
    noise = in_order(found.noise, order)
    if "lr" in noise.columns:  # one row per objective and learning rate, never pooled
        noise = _sorted(noise, order, "lr")
        noise = noise.assign(setting=[f"{r.label} · lr {r.lr:g}" for r in noise.itertuples()])
    else:
        noise = noise.assign(setting=noise.label)
    _save(plots.gradient_agreement(noise, y="setting", order=list(noise.setting),
                                   palette=_setting_colours(noise)),
          out / "figures" / "gradient_agreement.png")
    view = pd.DataFrame({
        "objective": noise.label,
        **({"learning rate": noise.lr.map("{:g}".format)} if "lr" in noise.columns else {}),
        "runs": noise.n_seeds,
        "leave-one-out cosine (orthogonal: 0)": noise.grad_cos.map(partial(number, digits=3)),
        "cosine incl. the pair itself": noise.grad_cos_with_self.map(partial(number, digits=3)),
        "the same, orthogonal gradients": noise.grad_cos_with_self_orthogonal.map(
            partial(number, digits=3)),
        "pair rows pulling against the rest": noise.share_opposed.map(percent),
        "noise scale tr(Σ)/|G|², pooled": [
            reason or number(value, 1) for value, reason in zip(noise.gns, noise.gns_reason)],
    })
    return "\n".join(text + [
        "### During training", "",
        "Every training step of every run, one row per objective and learning rate: each "
        "pair's own gradient "
        "(linear weights of the trainable blocks) against the mean gradient of the other pairs "
        "of its batch — the leave-one-out cosine, 0 for orthogonal gradients (the line in the "
        "figure). Beside it the cosine with the batch mean including the pair, which "
        "orthogonal gradients of the same norms already raise to |g_i|/√Σ_j|g_j|² (0.5 at "
        "B = 4), and the gradient noise scale with numerator and denominator pooled over a "
        "run's steps (McCandlish et al. 2018). Means over pair rows and seeds; no interval: "
        "rows of one pair at many steps are not independent pairs.", "",
        markdown_table(view), "", "![gradient agreement](figures/gradient_agreement.png)", ""])


def languages_line(found: Findings) -> list[str]:
    """What the starting model does in each language, where the runs span several."""
    start = found.start_languages
    if not len(start):
        return []
    parts = [f"{r.lang}: neutral text at {number(r.neutral_nll, 2)} nats/token over "
             f"{r.n_passages:.0f} passages; its greedy answers to {r.n_probes:.0f} probes have "
             f"distinct-2 {number(r.distinct_2, 2)} and 4-gram repetition "
             f"{number(r.repetition, 2)}" for r in start.itertuples()]
    return ["The starting model, before any training, language by language (one run's step 0, "
            "which every run shares): " + "; ".join(parts) + ". Displacement by language is "
            "in the C4 section.", ""]


def generations_section(tables: Tables, order: list[str], per_label: int = 2,
                        found: Findings | None = None) -> str:
    gen = tables.generations
    if not len(gen):
        return "No generations were recorded.\n"
    seed0 = gen[gen.seed == gen.seed.min()]
    last = seed0.groupby("run_id").step.transform("max")
    lines = [*(languages_line(found) if found is not None else []),
             "Greedy continuations, first seed, before training and at the end. Harmful probes "
             "first.", ""]
    start = seed0[seed0.step == 0].drop_duplicates("probe_id").sort_values(
        ["kind", "probe_id"], ascending=[False, True])
    probes = start.head(per_label)
    for _, probe in probes.iterrows():
        lines += [f"**Probe ({probe.lang}, {probe.kind}):** {probe.prompt}", "",
                  f"- *before training:* {_quote(probe.text)}"]
        end = seed0[(seed0.step == last) & (seed0.probe_id == probe.probe_id)]
        for label in order:
            row = end[end.label == label]
            if len(row):
                lines.append(f"- *{label}:* {_quote(row.text.iloc[0])}")
        lines.append("")
    return "\n".join(lines)


def _quote(text: str) -> str:
    text = " ".join(str(text).split())
    return f"“{text[:160]}{'…' if len(text) > 160 else ''}”" if text else "(empty)"


# --------------------------------------------------------------------------- the page

PAGE = "README.md"
FIGURES = "figures"
REPORT_FILE = "report.json"  # in a report folder: the runs its report was made from (`_record`)


class ReportFolderError(PrefstudyError):
    """A report's folder holds what the report must not replace: the report of other runs, or
    a README.md that no report recorded."""


def default_out(runs=None) -> Path:
    """Where the report of `runs` belongs: reports/ for the committed study (its runs are
    reports/runs; the report sits beside them), else the runs folder's report/ (as `prefstudy
    study` writes it); for a list of run folders, report/ in the folder they share."""
    if runs is None or isinstance(runs, (str, os.PathLike)):
        folder = default_runs_dir() if runs is None else Path(runs)
        committed = in_repo("reports", "runs")
        return committed.parent if folder.resolve() == committed.resolve() else folder / "report"
    parents = {Path(r).parent for r in runs}
    if len(parents) != 1:
        raise ReportFolderError("the runs are in several folders: say where their report goes "
                                "(out=, or --out)")
    return parents.pop() / "report"


def _made_from(runs) -> Path | list[Path]:
    """What a report is made from, resolved: the folder of runs (the committed study's for
    None), or each run folder of a list."""
    if runs is None:
        return default_runs_dir().resolve()
    if isinstance(runs, (str, os.PathLike)):
        return Path(runs).resolve()
    return sorted(Path(r).resolve() for r in runs)


def _record(runs, folders: list[Path], out: Path) -> dict:
    """REPORT_FILE's content: the runs folder (or run folders) relative to `out`, so a study
    folder moved or copied with its report still matches, and the run ids."""
    def relative(path: Path) -> str:
        return Path(os.path.relpath(path, out.resolve())).as_posix()

    made_from = _made_from(runs)
    return {"runs": [relative(p) for p in made_from] if isinstance(made_from, list)
            else relative(made_from), "run_ids": [folder.name for folder in folders]}


def _check_out(out: Path, runs, force: bool) -> None:
    """Refuse (ReportFolderError, one line) to replace what `out` holds unless it is a report
    of the same runs (its REPORT_FILE says so), or a report that predates REPORT_FILE in the
    folder where the runs' report belongs (`default_out`); `force` replaces anything."""
    if force or not out.exists():
        return
    how = "--force replaces it, or choose another --out"
    if not out.is_dir():
        raise ReportFolderError(f"{out}: not a folder; choose another --out")
    record = out / REPORT_FILE
    if record.exists():
        try:
            made = json.loads(record.read_text(encoding="utf-8"))
            held = made["runs"]
            theirs = ([(out / p).resolve() for p in held] if isinstance(held, list)
                      else (out / held).resolve())
        except (ValueError, KeyError, TypeError) as e:
            raise ReportFolderError(f"{record}: not a report's record of its runs ({e}); "
                                    f"{how}") from None
        if theirs == _made_from(runs):
            return
        ours = _made_from(runs)
        raise ReportFolderError(
            f"{out}: holds the report of {len(made.get('run_ids') or [])} other run(s) "
            f"({_named(theirs)}), not of {_named(ours)}; {how}")
    if (out / PAGE).exists() and out.resolve() != default_out(runs).resolve():
        raise ReportFolderError(f"{out}: holds a {PAGE} that is not a report of these runs "
                                f"(no {REPORT_FILE}); {how}")


def _named(made_from: Path | list[Path]) -> str:
    """What a report was made from, in a message: its runs folder, or how many run folders."""
    return (f"{len(made_from)} run folders" if isinstance(made_from, list)
            else f"the runs in {made_from}")


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block has run (they arrive just after it)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal mask
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _install(built: Path, out: Path) -> None:
    """Move the finished report in `built` (README.md, figures/, REPORT_FILE) into `out`: the
    whole folder where `out` does not exist; else entry by entry, the old ones set aside first,
    with Ctrl-C and SIGTERM held for those few renames (and undone if one fails), so an
    interruption leaves the old report or the new one, never a mix. Anything else in `out`
    (reports/runs) is left as it is."""
    if not out.exists():
        built.rename(out)
        return
    for stale in out.glob(".replaced-*"):  # left by a kill between the renames and the cleanup
        shutil.rmtree(stale, ignore_errors=True)
    aside = out / f".replaced-{secrets.token_hex(4)}"
    names = sorted(entry.name for entry in built.iterdir())
    moved, placed = [], []
    with _signals_held():
        aside.mkdir()
        try:
            for name in names:
                if (out / name).exists() or (out / name).is_symlink():
                    (out / name).rename(aside / name)
                    moved.append(name)
            for name in names:
                (built / name).rename(out / name)
                placed.append(name)
        except OSError:
            for name in placed:
                (out / name).rename(built / name)
            for name in moved:
                (aside / name).rename(out / name)
            raise
    shutil.rmtree(aside, ignore_errors=True)


def _progress(show: bool) -> Callable[[str], None]:
    """`say(what)`: one line on stderr as each step of a report begins, with the seconds since
    the report began (nothing where `show` is false)."""
    began = time.perf_counter()

    def say(what: str) -> None:
        if show:
            print(f"report {time.perf_counter() - began:4.0f} s  {what}", file=sys.stderr,
                  flush=True)

    return say


def build_report(runs: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 *, readme: str | os.PathLike | None = None, force: bool = False,
                 progress: bool = False, block: str = "findings") -> Path:
    """Regenerate the report of `runs` (a folder of runs, one run folder, a list of run
    folders, or None for the committed study: see `prefstudy.tables`) in `out` (default:
    `default_out(runs)`, where the runs' report belongs): README.md, figures/ and REPORT_FILE,
    the runs it was made from; with `readme`, that file's findings block named `block`
    (`update_readme`).

    The report is built in a temporary folder beside `out` and moved into place only when
    complete (`_install`): a failure or an interruption leaves the previous report as it was.
    An `out` that holds the report of other runs, or a README.md no report recorded outside
    the runs' own report folder, is refused (ReportFolderError) unless `force`. `progress`:
    one line per step on stderr. Returns the page's path."""
    say = _progress(progress)
    out = default_out(runs) if out is None else Path(out)
    _check_out(out, runs, force)
    tables = load_tables(runs)  # before the first line: bad runs are one line, as any error
    say(f"read {len(tables.folders)} runs; computing the findings")
    found = findings.summarise(tables)
    home = out.absolute()
    home.parent.mkdir(parents=True, exist_ok=True)
    built = home.parent / f".{home.name or 'report'}.building-{secrets.token_hex(4)}"
    try:
        (built / FIGURES).mkdir(parents=True)
        with from_defaults(), study_palette(tables.order, tables.families):
            page, held = _page(tables, found, built, say)
        (built / PAGE).write_text(page, encoding="utf-8")
        (built / REPORT_FILE).write_text(
            json.dumps(_record(runs, tables.folders, out), indent=1) + "\n", encoding="utf-8")
        say(f"moving it into {out}")
        _install(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    if readme is not None:
        update_readme(readme, held, block)
    say("done")
    return out / PAGE


def _page(tables: Tables, found: Findings, out: Path,
          say: Callable[[str], None] = lambda what: None) -> tuple[str, str]:
    """The report page's Markdown, drawing every figure into `out/figures/`, and its "What
    held" section; `say` (`_progress`) is told each section as it begins."""
    order = tables.order
    say("the audit's sections (C1, C2 at the starting model)")
    audit_parts = (audit_sections(tables.audit, out) if tables.audit is not None else None)
    held = what_held(tables, found)
    say("C1 — length")
    length = length_section(tables, out, audit_parts)
    say("C2 — gradient agreement during training")
    noise = noise_section(found, out, order, audit_parts)
    say("C3 — collapse: frontier, matched progress, runs, training losses")
    collapse = collapse_section(tables, found, out)
    say("C4 — displacement and its predictors")
    displaced = displacement_section(tables, found, out)
    say("generations")
    generations = generations_section(tables, order, found=found)
    checks = checks_section(external_checks(found, tables)) if len(tables.evals) else ""
    sections = [
        "# prefstudy report: how stable are preference objectives?", "",
        "Regenerated by `prefstudy report` from the runs it names; every number and figure "
        "below comes from the per-pair records and the study's audit. Objectives are compared "
        "along a learning-rate sweep, where each run reached the same held-out reward accuracy, "
        "never at one setting and never averaged over learning rates. Every interval is 95%; "
        "its kind and unit of replication are said where it is given.",
        "", "## What held", "", held,
        *(["## External checks", "", "What five papers found, beside what these runs show "
           "(their direction, ours with its interval, whether it reproduced, and how the "
           "settings differ):", "", checks, ""] if checks else []),
        "## Provenance", "", provenance(tables, found), "",
        "## C1 — the gap follows length, not preference", "", length,
        "## C2 — a noisy optimisation direction", "", noise,
        "## C3 — collapse: both losses grow", "", collapse,
        "## C4 — displacement of the chosen response", "", displaced,
        "## Generations", "", generations,
    ]
    return "\n".join(sections).rstrip() + "\n", held


def markers(block: str) -> tuple[str, str]:
    """The README's start and end markers of a findings block."""
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


FINDINGS = markers("findings")  # the README's block of the committed study's first arm

# The committed study's arms: (its runs, its report folder, its block in the README), relative
# to the repository. `prefstudy report` without --runs regenerates every arm whose runs exist.
ARMS = (("reports/runs", "reports", "findings"),
        ("reports/real/runs", "reports/real", "findings-real"))


def committed_arms() -> list[tuple[Path, Path, str]]:
    """The ARMS whose runs are in the repository, as paths."""
    return [(in_repo(runs), in_repo(out), block) for runs, out, block in ARMS
            if in_repo(runs).is_dir()]


def update_readme(readme: str | os.PathLike, held: str, block: str = "findings") -> bool:
    """Replace the block between `markers(block)` in `readme` with `held` (the report's "What
    held" section, `what_held`); ValueError naming the file where it has no such block.
    Returns whether the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = markers(block)
    if start not in text or end not in text:
        raise ValueError(f"{readme}: no {start} … {end} block to regenerate")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    new = f"{before}{start}\n{held.strip()}\n{end}{after}"
    readme.write_text(new)
    return new != text
