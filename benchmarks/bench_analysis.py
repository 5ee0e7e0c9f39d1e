"""Analysis speed: loading, the diagnostics and the report on a synthetic 10-million-row record set.

The record set is synthesised with numpy (every column of prefstudy.records.RECORD_COLUMNS, with
the types train() writes; pair ids are the bundled pairs' ids so the diagnostics that look pairs
up work) and written as real run folders with RunWriter: `--labels` configurations × `--seeds`
seeds, each run `steps × --batch-size` rows, steps chosen to reach `--rows` in all; each run also
gets a per-step gradient-statistics table, held-out evals and perplexity at 11 evaluation steps and
greedy generations, as a study run has. Then, on what `load_runs` reads back:

- each diagnostic is timed (median of `--repeats` after one warm-up call, where a call takes under
  `--slow` seconds; a single call otherwise, said so in the table);
- length_effect is timed without its bootstrap and with `--n-boot` resamples (its default, 1000);
- the report runs in a child process with a time limit: the sections build_report is made of
  (prefstudy.report: load_tables, summary_section, …, length_section; figures drawn and saved),
  called in turn and each timed as it ends, so a section that does not end is named. The report's
  total is their sum.

    python benchmarks/bench_analysis.py --rows 10000000 --report-timeout 900
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

LABELS = [("naive-sum", "naive", "sum"), ("naive-mean", "naive", "mean"),
          ("negative_only", "negative_only", ""), ("sft", "sft", ""),
          ("unlikelihood", "unlikelihood", ""), ("dpo", "dpo", ""), ("book_dpo", "book_dpo", ""),
          ("ipo", "ipo", "mean"), ("simpo", "simpo", ""), ("rdpo", "rdpo", ""),
          ("ld_dpo", "ld_dpo", ""), ("dpop", "dpop", ""), ("rpo", "rpo", "")]
REFERENCE = {"dpo", "book_dpo", "ipo", "rdpo", "ld_dpo", "dpop", "rpo"}


def parse(argv=None):
    p = C.parser(__doc__, model=False)
    p.add_argument("--rows", type=int, default=10_000_000, help="training records in all")
    p.add_argument("--labels", type=int, default=13, help=f"≤ {len(LABELS)} configurations")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples of length_effect (its default: 1000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slow", type=float, default=60.0,
                   help="a call slower than this (s) is not repeated")
    p.add_argument("--report-timeout", type=float, default=900.0, help="0 skips the report")
    p.add_argument("--runs-dir", default=None, help="keep the synthetic runs here (default: temp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--report-worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- synthetic runs


def synthesize(root: Path, args) -> dict:
    import numpy as np
    import pandas as pd

    from prefstudy.data import load_pairs, load_probes, load_texts
    from prefstudy.records import RunWriter

    rng = np.random.default_rng(args.seed)
    pair_ids = np.array([p.pair_id for p in load_pairs(C.REPO / "data" / "pairs")], dtype=object)
    held_ids = np.array([p.pair_id for p in load_pairs(C.REPO / "data" / "heldout")],
                        dtype=object)
    probes = load_probes(C.REPO / "data" / "probes")
    texts = load_texts(C.REPO / "data" / "neutral")
    n_pairs = len(pair_ids)
    len_p_of, len_n_of = rng.integers(4, 200, n_pairs), rng.integers(4, 200, n_pairs)
    base_p, base_n = rng.normal(1.6, 0.3, n_pairs), rng.normal(2.0, 0.4, n_pairs)
    labels = LABELS[: args.labels]
    runs = len(labels) * args.seeds
    steps = math.ceil(args.rows / (runs * args.batch_size))
    b = args.batch_size
    eval_steps = sorted({int(s) for s in np.linspace(0, steps, 11)})
    total = 0
    for label, objective, norm in labels:
        for seed in range(args.seeds):
            run_id = f"{label}-s{seed}"
            n = steps * b
            per_epoch = (n_pairs // b) * b  # whole batches: no batch spans two epochs
            epochs = math.ceil(n / per_epoch)
            idx = np.concatenate([rng.permutation(n_pairs)[:per_epoch]
                                  for _ in range(epochs)])[:n]
            step = np.repeat(np.arange(1, steps + 1), b)
            t = step / steps
            len_p, len_n = len_p_of[idx], len_n_of[idx]
            loss_p = base_p[idx] + 0.8 * t ** 2 + rng.normal(0, 0.2, n)
            loss_n = base_n[idx] + 2.0 * t + rng.normal(0, 0.2, n)
            has_ref = objective in REFERENCE
            ref_p = -base_p[idx] * len_p if has_ref else np.full(n, np.nan)
            ref_n = -base_n[idx] * len_n if has_ref else np.full(n, np.nan)
            records = pd.DataFrame({
                "run_id": run_id, "objective": objective, "norm": norm, "seed": seed,
                "step": step, "pair_id": pair_ids[idx], "len_p": len_p, "len_n": len_n,
                "loss_p": loss_p, "loss_n": loss_n, "nll_sum_p": loss_p * len_p,
                "nll_sum_n": loss_n * len_n, "gap": loss_n - loss_p, "ref_logp_p": ref_p,
                "ref_logp_n": ref_n, "margin": rng.normal(0, 1, n), "pair_loss": rng.random(n),
                "lr": 5e-6, "grad_norm": rng.lognormal(0, 0.5, n),
                "grad_cos": rng.uniform(-0.3, 0.9, n)})
            sq = rng.lognormal(0, 0.3, steps)
            trace = sq * rng.uniform(5, 50, steps)
            step_stats = pd.DataFrame({"step": np.arange(1, steps + 1), "trace_sigma": trace,
                                       "grad_sq": sq - trace / b / 10, "mean_grad_sq": sq,
                                       "gns": trace / sq, "lr": 5e-6})
            ev = np.repeat(eval_steps, len(held_ids))
            m = len(ev)
            held = np.tile(np.arange(len(held_ids)), len(eval_steps))
            ev_lp = rng.normal(1.6, 0.3, m) + 0.3 * ev / steps
            ev_ln = rng.normal(2.0, 0.3, m) + 1.0 * ev / steps
            lp, ln = rng.integers(4, 200, m), rng.integers(4, 200, m)
            evals = pd.DataFrame({
                "run_id": run_id, "objective": objective, "norm": norm, "seed": seed,
                "step": ev, "pair_id": held_ids[held], "len_p": lp, "len_n": ln,
                "loss_p": ev_lp, "loss_n": ev_ln, "nll_sum_p": ev_lp * lp,
                "nll_sum_n": ev_ln * ln, "gap": ev_ln - ev_lp,
                "ref_logp_p": -1.6 * lp if has_ref else np.nan,
                "ref_logp_n": -2.0 * ln if has_ref else np.nan, "margin": rng.normal(0, 1, m),
                "pair_loss": rng.random(m), "lr": np.nan, "grad_norm": np.nan,
                "grad_cos": np.nan})
            pe = np.repeat(eval_steps, len(texts))
            ppl = pd.DataFrame({"step": pe, "text_id": np.tile(np.arange(len(texts)),
                                                                len(eval_steps)),
                                "lang": np.tile(texts.lang.to_numpy(), len(eval_steps)),
                                "nll_sum": rng.normal(300, 30, len(pe)) * (1 + pe / steps),
                                "n_tokens": 120})
            gen = pd.DataFrame({"step": np.repeat(eval_steps, len(probes)),
                                "probe_id": np.tile(np.arange(len(probes)), len(eval_steps)),
                                "lang": np.tile(probes.lang.to_numpy(), len(eval_steps)),
                                "kind": np.tile(probes.kind.to_numpy(), len(eval_steps)),
                                "prompt": np.tile(probes.prompt.to_numpy(), len(eval_steps)),
                                "text": "a synthetic continuation of a few words"})
            writer = RunWriter(root / run_id)
            writer.start({"run_id": run_id, "objective": objective,
                          "params": {"norm": norm} if norm else {}, "seed": seed,
                          "label": label, "model": "synthetic", "trainable_blocks": None,
                          "steps": steps, "batch_size": b, "lr": 5e-6, "max_grad_norm": 1.0,
                          "max_length": 256, "dtype": "float32", "pairs_train": n_pairs,
                          "data": "data/pairs", "heldout": "data/heldout",
                          "n_heldout": len(held_ids),
                          "n_neutral": len(texts), "n_probes": len(probes)})
            for table, frame in (("records", records), ("steps", step_stats),
                                 ("evals", evals), ("perplexity", ppl), ("generations", gen)):
                for step, part in frame.groupby("step", sort=True):  # a shard holds one step
                    writer.append(table, part, step=int(step))
            writer.finish("completed")
            total += n
    return {"runs": runs, "steps_per_run": steps, "records": total,
            "eval_steps": len(eval_steps)}


# --------------------------------------------------------------------------- timing


def measure(name, fn, args, rows, note=""):
    """Time fn(): a warm-up call and `repeats` timed calls when it is fast, else one call."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    if first >= args.slow:
        times, how = [first], "1 call (slow: not repeated)"
    else:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        how = f"median of {args.repeats} after a warm-up"
    row = {"step": name, "seconds": C.median(times), "how": how, "note": note}
    rows.append(row)
    print(f"  {name:<58} {row['seconds']:9.2f} s  ({how}) {note}", flush=True)
    return out


def report_worker(runs_dir: str, out_dir: str) -> None:
    """What build_report does, section by section, each timed and printed as it ends (so a
    section that does not end within the limit is named). length_section, the one with the
    bootstrap, runs last so the others are measured whatever happens to it."""
    from prefstudy import report, theme

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)

    def timed(name, fn):
        print(f"start {name}", flush=True)
        start = time.perf_counter()
        value = fn()
        print(f"section {name} {time.perf_counter() - start:.2f}", flush=True)
        return value

    tables = timed("load_tables", lambda: report.load_tables(runs_dir))
    order = tables.labels
    theme.set_style(order)
    timed("provenance", lambda: report.provenance(tables))
    timed("summary_section", lambda: report.summary_section(tables, order))
    timed("noise_section", lambda: report.noise_section(tables, out, order))
    timed("collapse_section", lambda: report.collapse_section(tables, out, order))
    timed("displacement_section", lambda: report.displacement_section(tables, out, order))
    timed("generations_section", lambda: report.generations_section(tables, order))
    timed("length_section", lambda: report.length_section(tables, out, order))


def run_report(args, runs_dir: Path) -> list[dict]:
    out = tempfile.mkdtemp(prefix="bench-report-")
    cmd = [sys.executable, __file__, "--report-worker", f"{runs_dir}|{out}"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=C.REPO,
                              timeout=args.report_timeout)
        text, finished = done.stdout, done.returncode == 0
        if done.returncode:
            sys.stderr.write(done.stderr[-3000:])
    except subprocess.TimeoutExpired as e:
        text, finished = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (
            e.stdout or ""), False
    elapsed = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    rows, started = [], None
    for line in text.splitlines():
        if line.startswith("start "):
            started = line.split()[1]
        elif line.startswith("section "):
            _, name, seconds = line.split()
            rows.append({"step": f"report: {name}", "seconds": float(seconds), "how": "1 call",
                         "note": ""})
            started = None
    if finished:
        rows.append({"step": "report: all sections (≈ build_report)",
                     "seconds": sum(r["seconds"] for r in rows), "how": "sum", "note": ""})
    else:
        rows.append({"step": f"report: {started or 'build_report'}", "seconds": float("nan"),
                     "how": f"did not end within {args.report_timeout:.0f} s",
                     "note": f"killed after {elapsed:.0f} s (report process, all sections)"})
    return rows


def main(argv=None):
    args = parse(argv)
    if args.report_worker:
        report_worker(*args.report_worker.split("|"))
        return

    from prefstudy import diagnostics as dg
    from prefstudy.progress import collapse_onsets
    from prefstudy.records import load_runs

    env = C.environment("cpu")
    C.print_environment(env)
    tmp = None
    if args.runs_dir:
        root = Path(args.runs_dir)
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-runs-")
        root = Path(tmp.name)
    rows = []
    start = time.perf_counter()
    shape = synthesize(root, args)
    rows.append({"step": "synthesise + write (RunWriter)", "seconds": time.perf_counter() - start,
                 "how": "1 call", "note": "not analysis"})
    print(f"# {shape['records']:,} training records in {shape['runs']} runs "
          f"({args.labels} labels × {args.seeds} seeds, {shape['steps_per_run']:,} steps × "
          f"{args.batch_size} pairs), {shape['eval_steps']} evaluation steps per run; "
          f"written in {rows[0]['seconds']:.1f} s", flush=True)

    records = measure("load_runs(records)", lambda: load_runs(root, "records"), args, rows)
    steps = measure("load_runs(steps)", lambda: load_runs(root, "steps"), args, rows)
    evals = measure("load_runs(evals)", lambda: load_runs(root, "evals"), args, rows)
    ppl = measure("load_runs(perplexity)", lambda: load_runs(root, "perplexity"), args, rows)
    print(f"# records frame: {len(records):,} rows, "
          f"{records.memory_usage(deep=True).sum() / 2**30:.2f} GiB", flush=True)

    gaps = measure("gap_normalisations(records)", lambda: dg.gap_normalisations(records), args,
                   rows, note="")
    rows[-1]["note"] = f"{len(gaps):,} rows out"
    measure("length_effect(gaps, n_boot=0)", lambda: dg.length_effect(gaps, n_boot=0), args,
            rows)
    measure(f"length_effect(gaps, n_boot={args.n_boot})",
            lambda: dg.length_effect(gaps, n_boot=args.n_boot), args, rows)
    measure("variance_by_length_bin(gaps)", lambda: dg.variance_by_length_bin(gaps), args, rows)
    measure("gradient_noise(records, steps)", lambda: dg.gradient_noise(records, steps), args,
            rows)
    measure("collapse_onsets(evals, ppl)", lambda: collapse_onsets(evals, ppl), args, rows)
    gaps = None  # frees the long frame before the report process starts
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.report_timeout > 0:
        del records, steps, evals, ppl
        print(f"# report sections (figures included), limit {args.report_timeout:.0f} s",
              flush=True)
        report_rows = run_report(args, root)
        for row in report_rows:
            print(f"  {row['step']:<58} {row['seconds']:9.2f} s  ({row['how']}) {row['note']}",
                  flush=True)
        rows += report_rows
    print(C.table(rows, ["step", "seconds", "how", "note"]))
    print(f"# peak RSS of the diagnostics process {peak_gb:.1f} GiB")
    C.save_json(args.json, {"environment": env, "args": vars(args), "shape": shape,
                            "rows": rows, "peak_rss_gb": peak_gb})
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
