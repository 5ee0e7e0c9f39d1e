"""The `prefstudy` command. Each subcommand has --help.

Bad input of any kind (data, config, schema, a value out of range, an unwritable or missing
file) is one line on stderr and exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args) -> int:
    import pandas as pd

    from .data import data_dir, load_pairs
    from .models import load_model
    from .scoring import score_pairs

    pairs = load_pairs(args.data or data_dir() / "pairs")
    per_lang = {}
    for p in pairs:  # a handful from each language
        per_lang.setdefault(p.meta.get("lang", "?"), []).append(p)
    chosen = [p for group in per_lang.values() for p in group[: args.pairs]]
    model, tokenizer = load_model(args.model, device=args.device)
    scores = score_pairs(model, tokenizer, chosen)
    scores.insert(1, "prompt", [p.prompt_text[:32] for p in chosen])
    cols = ["prompt", "len_p", "len_n", "nll_sum_p", "nll_sum_n", "gap_sum", "loss_p", "loss_n",
            "gap"]
    with pd.option_context("display.width", 160, "display.max_columns", 20,
                           "display.float_format", "{:.3f}".format):
        print(f"{args.model}: loss = cross-entropy of the response; gap = loss_n − loss_p")
        print(scores[cols].to_string(index=False))
        print(f"\nstd of gap across pairs:  summed = {scores.gap_sum.std():.2f} nats,  token-mean = {scores.gap.std():.3f} nats")
    return 0


def _train(args) -> int:
    import os

    from .config import ConfigError, check, describe, from_dict, load_config
    from .records import read_meta
    from .train import train

    overrides = {**dict(_setting(s) for s in args.set or ()),
                 **{k: v for k, v in vars(args).items() if k in TRAIN_FLAGS and v is not None}}
    if overrides.get("heldout") == "none":
        overrides["heldout"] = None  # no held-out evaluation
    params = dict(_param(p) for p in args.param or ())
    if args.config:
        cfg = load_config(args.config, extra_params=params, **overrides)
    else:  # TrainConfig's defaults, as the line below says: the tiny random model unless --model
        cfg = from_dict({**overrides, "params": params}, "the command's flags")
        try:
            check(cfg)
        except ConfigError as e:
            raise ConfigError(f"the command's flags (no --config): {e}") from None
    cfg = cfg.resolved()
    if os.environ.get("RANK", "0") == "0":  # one line, also under `accelerate launch`
        print(describe(cfg), flush=True)
    run = train(cfg, resume=args.resume, progress=not args.quiet)
    meta = read_meta(run)
    print(f"{run}: {meta['status']}" + (f" at step {meta['diverged_step']} ({meta['reason']})"
                                         if meta["status"] == "diverged" else ""))
    return 0


# `prefstudy train` flags that set the TrainConfig field of the same name (dest).
TRAIN_FLAGS = ("objective", "model", "data", "heldout", "lr", "steps", "batch_size", "max_pairs",
               "eval_every", "seed", "device", "output", "run_id", "keep_text", "layout",
               "columns", "report_to")


def _setting(text: str) -> tuple[str, object]:
    """--set FIELD=VALUE: any TrainConfig field, VALUE read as TOML (as `_param`)."""
    return _param(text, flag="--set")


def _param(text: str, flag: str = "--param") -> tuple[str, object]:
    """NAME=VALUE with VALUE read as TOML (numbers, true/false, quoted or bare strings)."""
    import tomllib

    from .config import ConfigError

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"{flag} {text[:80]!r}: expected NAME=VALUE")
    try:
        return name.strip(), tomllib.loads(f"v = {value}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return name.strip(), value


def _runs(args) -> int:
    import pandas as pd

    from .config import TrainConfig
    from .records import run_folders, runs_summary

    root = Path(args.root or TrainConfig.output)
    where = f"{root}/" + ("" if args.root else " (where `prefstudy train` writes; the committed "
                          "study: prefstudy runs reports/runs)")
    if not root.is_dir() and not args.root:  # nothing trained here yet; a named folder must be
        print(f"no runs in {where}: no such folder")
        return 0
    table = runs_summary(root)
    studies = [f"{p}/ ({len(run_folders(p))} runs)" for p in sorted(root.iterdir())
               if p.is_dir() and not (p / "meta.json").exists() and any(p.glob("*/meta.json"))]
    print(f"{len(table)} run(s) in {where}" + (":" if len(table) else ""))
    if len(table):
        table["lr"] = [f"{v:g}" if isinstance(v, (int, float)) else "" for v in table["lr"]]
        with pd.option_context("display.width", 200, "display.max_columns", 20,
                               "display.float_format", "{:.3f}".format):
            print(table.drop(columns="path").to_string(index=False))
    if studies:
        print(f"studies' runs, in their own folders (prefstudy runs FOLDER): {', '.join(studies)}")
    return 0


def _data_stats(args) -> int:
    from .datacard import stats_command

    print(stats_command(write=args.write, tokens=args.tokens), end="")
    return 0


def _data_read(args) -> int:
    import warnings

    from .data import SkippedPairsWarning, load_any

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedPairsWarning)  # counted below, by kind
        pairs = load_any(args.path, split=args.split, layout=args.layout, columns=args.columns,
                         seed=args.seed)
    print(f"{args.path}: {len(pairs)} pairs read "
          f"({', '.join(f'{n} in layout {name}' for name, n in pairs.layouts) or 'as given'})")
    for kind, n in pairs.skip_counts().items():
        first = next(s for s in pairs.skipped if s.category == kind)
        print(f"  skipped {n}: {kind} (first: {first})")
    for pair in pairs[: args.show]:
        short = {k: " ".join(str(v).split())[:70] for k, v in (
            ("prompt", pair.prompt_text), ("chosen", pair.chosen), ("rejected", pair.rejected))}
        print(f"- {pair.pair_id}  " + "  ".join(f"{k}: {v!r}" for k, v in short.items()))
        if pair.meta:
            print(f"  meta: {dict(pair.meta)}")
    return 0


def _study(args) -> int:
    import time

    from tqdm.auto import tqdm

    from .records import read_meta
    from .report import build_report
    from .study import describe, load_study, parse_shard, pending, plan, run_study

    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ValueError(f"--seeds {args.seeds[:80]!r}: expected whole numbers separated by "
                         "commas, e.g. 0,1,2") from None
    study = load_study(args.config, profile=args.profile, seeds=seeds, output=args.output,
                       overrides={"data": args.data, "heldout": args.heldout,
                                  "model": args.model, "keep_text": args.keep_text,
                                  "layout": args.layout, "columns": args.columns},
                       labels=args.labels.split(",") if args.labels else None)
    shard = parse_shard(args.shard) if args.shard else None
    print(describe(study), flush=True)
    if args.list:
        table = plan(study, shard)
        shown = table if shard else table.drop(columns="shard")
        print(shown.assign(lr=table.lr.map("{:g}".format)).to_string(index=False))
        counts = table.state.value_counts()
        print(", ".join(f"{v} {k}" for k, v in counts.items()) or "no runs")
        return 0
    todo, total = len(pending(study)), len(study.configs())
    print(f"{total - todo} of {total} runs done already, {todo} to train"
          + (f" (shard {shard[0]}/{shard[1]} trains its share)" if shard else ""), flush=True)
    started = time.time()

    def ran(i: int, n: int, folder: Path) -> None:  # beside the progress bars, or alone
        tqdm.write(f"[{i}/{n}] {folder.name}: {read_meta(folder)['status']} "
                   f"({_minutes(time.time() - started)} elapsed)")

    run_study(study, progress=not args.quiet, on_run=ran, shard=shard)
    left = len(pending(study)) if shard else 0
    if left:
        print(f"{left} run(s) of the study not ended yet (other shards); "
              "`prefstudy study` with the same options, without --shard, gathers the study "
              "and writes its report once every run has ended")
        return 0
    page = build_report(study.output, args.report or study.output / "report",
                        progress=not args.quiet)
    print(f"done in {_minutes(time.time() - started)}; report: {page}")
    return 0


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def _objectives(args) -> int:
    from .formatting import catalogue_table
    from .objectives import catalogue

    rows = catalogue()
    if args.markdown:
        print(catalogue_table(rows))
        return 0
    for r in rows:
        print(f"{r['name']}  ({'needs a reference' if r['needs_reference'] else 'reference-free'}"
              f"{', batch-level' if r['batch_level'] else ''})\n  {r['summary']}\n"
              f"  source: {r['source']}\n  TRL: {r['trl'] or 'none'}")
        for name, value in r["params"].items() or [("(no parameters)", "")]:
            print(f"  {name} = {value}" if value else f"  {name}")
        print()
    return 0


def _audit(args) -> int:
    from .audit import DOSE_PAIRS, GRADIENT_PAIRS, audit, read_audit, rewrite_page, write_audit
    from .data import data_dir

    if args.page:
        print(f"page drawn again from its tables: {rewrite_page(args.page)}")
        return 0
    if args.reference:
        read_audit(args.reference)  # a folder without an audit is refused before scoring

    source = args.path or data_dir() / "pairs"
    dose_pairs = DOSE_PAIRS if args.dose_pairs is None else args.dose_pairs or None
    grad_pairs = GRADIENT_PAIRS if args.gradient_pairs is None else args.gradient_pairs or None
    result = audit(source, model=args.model, split=args.split, layout=args.layout,
                   columns=args.columns, max_pairs=args.max_pairs,
                   max_length=args.max_length, dose_pairs=dose_pairs, gradients=args.gradients,
                   gradient_pairs=grad_pairs, batch_size=args.batch_size, n_boot=args.n_boot,
                   seed=args.seed, device=args.device, dtype=args.dtype)
    out = args.out or f"audits/{_slug(source)}"
    page = write_audit(result, out, keep_text=args.keep_text, reference=args.reference)
    s = result.settings
    skips = ", ".join(f"{kind}: {n}" for kind, n in s["skip_counts"].items())
    print(f"read {s['n_loaded']} pairs ({s['layout'] or 'pairs'} layout)"
          + (f"; skipped {s['n_skipped']} ({skips})" if s["n_skipped"] else ""))
    print(f"audited {s['n_audited']} of {s['n_loaded']} pairs in {s['total_seconds']:.0f} s "
          f"({s['seconds']['scoring'] / max(s['n_audited'], 1):.2f} s per pair scored): {page}")
    return 0


def _slug(source) -> str:
    """A folder name for an audit of `source`: its file or folder name, or a hub id's name."""
    import re
    from pathlib import Path

    name = Path(str(source).rstrip("/")).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet", ".pq", ".csv"):
        name = name.removesuffix(suffix)
    return re.sub(r"[^\w.-]+", "-", name) or "pairs"


def _report(args) -> int:
    from .report import build_report, committed_arms

    before = Path(args.readme).read_text() if args.readme else None
    arms = committed_arms() if args.runs is None and args.out is None else []
    for runs, out, block in arms or [(args.runs, args.out, "findings")]:
        print(build_report(runs, out, readme=args.readme, force=args.force,
                           progress=not args.quiet, block=block))
    if args.readme:
        changed = Path(args.readme).read_text() != before
        print(f"{args.readme}: findings {'regenerated' if changed else 'unchanged'}")
    return 0


def _add_layout(parser, default: str | None) -> None:
    """--layout NAME and --columns FIELD=COLUMN,… (`layouts`): how the pairs file is read."""
    from .layouts import LAYOUTS

    parser.add_argument("--layout", default=default, choices=("auto", *LAYOUTS),
                        metavar="NAME", help="the data's layout: auto (recognised from each "
                        f"record's fields; the default) or one of {', '.join(LAYOUTS)}")
    parser.add_argument("--columns", metavar="FIELD=COLUMN,...",
                        help="read a layout's field from a column of another name, e.g. "
                        "prompt=question,chosen=good,rejected=bad")


def _add_keep_text(parser, where: str) -> None:
    """The --keep-text / --ids-only pair (dest keep_text, default None: the rule)."""
    both = parser.add_mutually_exclusive_group()
    both.add_argument("--keep-text", dest="keep_text", action="store_const", const=True,
                      help=f"keep the pair texts (prompt, chosen, rejected) in {where}. Default: "
                      "kept, except where the output is inside the repository's reports/ and "
                      "the pairs are not the bundled ones: third-party text is never committed "
                      "(prefstudy.paths.text_rule)")
    both.add_argument("--ids-only", dest="keep_text", action="store_const", const=False,
                      help=f"leave the pair texts out of {where}: ids and the numbers computed "
                      "from the texts (lengths, edit distances) only")


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="score a few bundled pairs with the real model")
    demo.add_argument("--model", default="smollm2-135m-instruct",
                      help="preset, Hugging Face id or local path (default: %(default)s)")
    demo.add_argument("--data", default=None, help="pairs file or folder (default: bundled)")
    demo.add_argument("--pairs", type=int, default=4, help="pairs per language")
    demo.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu, "
                      "cuda, cuda:1, mps")
    demo.set_defaults(func=_demo)


def _add_train(sub) -> None:
    from .config import TrainConfig

    train = sub.add_parser(
        "train", help="train one run, writing per-pair records",
        description="Train one run under a TOML config (e.g. configs/tiny.toml); flags override "
        "its fields. Without --config, prefstudy's defaults (prefstudy.config.TrainConfig): the "
        f"random tiny model on the bundled pairs, {TrainConfig.steps} steps, unless flags say "
        "otherwise. The first "
        "line printed says exactly what is trained and where it is written.")
    train.add_argument("--config", help="TOML config, e.g. configs/tiny.toml (default: none, "
                       "TrainConfig's defaults)")
    train.add_argument("--objective", metavar="NAME",
                       help="an objective of `prefstudy objectives` (e.g. naive, dpo, ipo), or "
                       "TRL's loss_type with TRL's meaning and defaults: sigmoid (dpo), "
                       "sigmoid_norm (book_dpo, both weights 1), or trl:NAME for any TRL "
                       "loss_type; where prefstudy has TRL's name, prefstudy's meaning wins "
                       "(ipo sums over tokens; trl:ipo averages, as TRL)")
    train.add_argument("--param", action="append", metavar="NAME=VALUE",
                       help="objective parameter, e.g. --param beta=0.2 (repeatable)")
    train.add_argument("--model", help="preset (tiny: random weights; smollm2-135m-instruct), "
                       "Hugging Face id or local path")
    train.add_argument("--data", help="training pairs: a JSON Lines / JSON array / parquet / CSV "
                       "file or folder, an http(s) URL, or a dataset (any layout: --layout)")
    train.add_argument("--heldout", help="held-out pairs evaluated during training, never "
                       "trained on ('none': no held-out evaluation)")
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument("--steps", type=int, help="optimiser steps")
    train.add_argument("--batch-size", dest="batch_size", type=int, metavar="N",
                       help="pairs per optimiser step")
    train.add_argument("--max-pairs", dest="max_pairs", type=int, metavar="N",
                       help="a stratified sample of N training pairs (default: all)")
    train.add_argument("--eval-every", dest="eval_every", type=int, metavar="N",
                       help="evaluate every N steps (0: at the start and the end only)")
    train.add_argument("--seed", type=int, help="data-order seed (the tiny model's weights "
                       "use model_seed)")
    train.add_argument("--set", action="append", metavar="FIELD=VALUE",
                       help="any other config field, e.g. --set trainable_blocks=4 (repeatable; "
                       "the fields: prefstudy.config.TrainConfig)")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    train.add_argument("--report-to", dest="report_to", metavar="TRACKER,...",
                       type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                       help="also send each step's batch means to these trackers, through "
                       "accelerate: tensorboard, wandb, mlflow, trackio, … (where installed; "
                       "files under <run>/trackers); the per-pair records stay the source of "
                       "truth")
    train.add_argument("--output", help="folder the run folder goes in (default: runs)")
    train.add_argument("--run-id", dest="run_id",
                       help="the run folder's name (default: objective, lr and seed, e.g. "
                       "naive-sum-lr0.001-s0, and a short hash of any other setting that "
                       "differs from the defaults)")
    _add_layout(train, None)
    _add_keep_text(train, "the run's pairs.parquet")
    train.add_argument("--resume", action="store_true", help="continue a killed run")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)


def _add_runs(sub) -> None:
    runs = sub.add_parser("runs", help="list runs: status, objective, lr, seed, steps, "
                          "loss_p / loss_n")
    runs.add_argument("root", nargs="?", default=None,
                      help="folder of run folders (default: runs, where `prefstudy train` "
                      "writes; the committed study: reports/runs)")
    runs.set_defaults(func=_runs)


def _add_study(sub) -> None:
    from .paths import resolve_path
    from .study import DEFAULT_STUDY

    study = sub.add_parser("study", help="train every objective of a study, then the report",
                           description="Train what is missing of a study (a killed study "
                           "resumes), then regenerate its report.")
    study.add_argument("--config", default=str(resolve_path(DEFAULT_STUDY)),
                       help=f"the study file (default: {DEFAULT_STUDY})")
    study.add_argument("--profile", help="a profile of the study file (cpu, cpu-full, "
                       "cpu-focused, gpu, tiny); default: gpu when CUDA is available, else cpu")
    study.add_argument("--seeds", help="comma-separated, overriding the profile's")
    study.add_argument("--labels", help="comma-separated: train only these runs of the profile "
                       "now (e.g. the first of a long study's priorities)")
    study.add_argument("--list", action="store_true", help="print the planned runs and their "
                       "state (pending, running, training elsewhere, completed, …) and exit")
    study.add_argument("--shard", metavar="I/N", help="train only the I-th of N disjoint shares "
                       "of the planned runs (a stable split by run id: a Slurm array, or one "
                       "process per GPU); a run another process is training is skipped")
    study.add_argument("--data", help="your own training pairs: a JSON Lines / JSON array / "
                       "parquet / CSV file or folder, an http(s) URL, or a dataset, in any layout "
                       "(--layout: TRL's, HH, Arena, SHP, AlpacaEval, UltraFeedback)")
    study.add_argument("--heldout", help="your own held-out pairs (default: the study's)")
    study.add_argument("--model", help="a preset, Hugging Face id or local path (default: the "
                       "study's)")
    study.add_argument("--output", help="run folder (default: runs/<study>-<profile>)")
    study.add_argument("--report", help="report folder (default: <output>/report)")
    _add_layout(study, None)
    _add_keep_text(study, "each run's and the audit's pairs.parquet")
    study.add_argument("--quiet", action="store_true",
                       help="no per-step progress bars (one line per run remains)")
    study.set_defaults(func=_study)


def _add_objectives(sub) -> None:
    objectives = sub.add_parser("objectives", help="every registered objective: formula, source, "
                                "parameters, reference, TRL loss_type")
    objectives.add_argument("--markdown", action="store_true", help="as the README's table")
    objectives.set_defaults(func=_objectives)


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="regenerate every figure and the report page",
                            description="Regenerate a study's report (README.md, figures/ and "
                            "report.json, which records the runs it was made from) from its "
                            "runs. It is built in a temporary folder and moved into place when "
                            "complete; a folder holding the report of other runs is refused "
                            "unless --force.")
    report.add_argument("--runs", help="folder of runs (default: every arm of the committed "
                        "study: reports/runs, and reports/real/runs where it exists)")
    report.add_argument("--out", help="folder for the report (default: <runs>/report, as "
                        "`prefstudy study` writes it; reports/ for the committed runs)")
    report.add_argument("--force", action="store_true",
                        help="replace a report of other runs in --out")
    report.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    report.add_argument("--readme", help="also regenerate the findings block of this README "
                        "(between <!-- findings:start --> and <!-- findings:end -->; the real-data "
                        "arm's between <!-- findings-real:start --> and its end) from the "
                        "report's What-held section")
    report.set_defaults(func=_report)


def _add_audit(sub) -> None:
    audit = sub.add_parser(
        "audit", help="score a preference dataset at the starting model: what its gap follows",
        description="Score every pair (or a stratified sample) once with the starting model, "
        "no training, and write a page, figures and a per-pair parquet table: the gap against "
        "the length difference, preference accuracy by length kind, a length dose-response, "
        "content checks and, with --gradients, per-pair gradients.")
    audit.add_argument("path", nargs="?", default=None,
                       help="a JSON Lines / JSON array / parquet / CSV file (plain or .gz) or "
                       "folder of them, an http(s) URL, a save_to_disk folder, or a hub id, in "
                       "any layout (--layout) (default: the bundled pairs)")
    audit.add_argument("--model", default="smollm2-135m-instruct",
                       help="preset, hub id or path (tiny: random weights, for tests)")
    audit.add_argument("--split", help="split of a dataset dict or hub dataset")
    audit.add_argument("--max-pairs", type=int, metavar="N",
                       help="a stratified random sample of N pairs (seeded), not the first N")
    audit.add_argument("--max-length", type=int, metavar="L",
                       help="cut each side to L tokens (default: nothing is cut; the page "
                       "counts what a cut removes)")
    audit.add_argument("--dose-pairs", type=int, metavar="N",
                       help="pairs the dose-response lengthens (0 = all; default: "
                       "prefstudy.audit.DOSE_PAIRS, 50)")
    audit.add_argument("--gradients", action="store_true", help="also per-pair gradients")
    audit.add_argument("--gradient-pairs", type=int, metavar="N",
                       help="pairs whose gradients are taken (0 = all; default: "
                       "prefstudy.audit.GRADIENT_PAIRS, 64)")
    audit.add_argument("--batch-size", type=int, default=8,
                       help="pairs scored per forward pass (default: %(default)s)")
    audit.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    audit.add_argument("--seed", type=int, default=0, help="seed of the samples (--max-pairs, "
                       "the dose-response and gradient pairs) and of the bootstrap "
                       "(default: %(default)s)")
    audit.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu, "
                       "cuda, cuda:1, mps")
    audit.add_argument("--dtype", default="auto", help="auto (float32 on a CPU), float32, "
                       "bfloat16 (about twice as fast on a CPU with bf16 units; see "
                       "benchmarks/RESULTS.md for what it changes)")
    audit.add_argument("--out", help="folder for the page (default: audits/<data name>)")
    _add_layout(audit, "auto")
    _add_keep_text(audit, "pairs.parquet")
    audit.add_argument("--reference", metavar="FOLDER", help="another audit's folder (e.g. "
                       "reports/runs/audit, the bundled pairs') that the page compares the "
                       "length effect with, with intervals")
    audit.add_argument("--page", metavar="FOLDER", help="only draw the page and figures of the "
                       "audit in FOLDER again from its tables (no model, no data)")
    audit.set_defaults(func=_audit)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="read any preference data; the bundled data's card"
                          ).add_subparsers(dest="data_command",
                                                                          required=True)
    stats = data.add_parser("stats", help="statistics of the bundled data (the data card's)")
    stats.add_argument("--write", action="store_true", help="rewrite data/README.md's section")
    stats.add_argument("--tokens", action="store_true", help="also count SmolLM2 tokens")
    stats.set_defaults(func=_data_stats)
    read = data.add_parser("read", help="read any preference data as the other commands would: "
                           "the layout recognised, the pairs, the records skipped by reason")
    read.add_argument("path", help="a file, folder, http(s) URL, save_to_disk folder or hub id")
    read.add_argument("--split", help="split of a dataset dict or hub dataset")
    _add_layout(read, "auto")
    read.add_argument("--seed", type=int, default=0, help="seed of a layout's draws "
                      "(UltraFeedback: which lower-rated completion is rejected)")
    read.add_argument("--show", type=int, default=3, metavar="N", help="print the first N pairs")
    read.set_defaults(func=_data_read)


COMMANDS = (_add_demo, _add_train, _add_runs, _add_study, _add_objectives, _add_report, _add_data,
            _add_audit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefstudy", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one line")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


MAX_LINE = 1000  # an error line is cut here, whatever a message holds


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"
    return text if len(text) <= MAX_LINE else text[:MAX_LINE - 1] + "…"


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"prefstudy: {category.__name__}: {' '.join(str(message).split())}\n"


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    import signal
    import warnings

    args = build_parser().parse_args(argv)
    if not args.debug:
        warnings.formatwarning = _warning_line
    # a polite kill (SIGTERM: a scheduler, `kill`) ends a run as "interrupted", like Ctrl-C
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"prefstudy {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # every PrefstudyError is a ValueError
        if args.debug:
            raise
        print(f"prefstudy {args.command}: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
