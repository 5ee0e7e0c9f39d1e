"""Shared helpers for the benchmark scripts: where the numbers came from, and how they are timed.

Not part of the library. Every script imports this as `_common` (scripts are run as
`python benchmarks/<script>.py` from the repository root, so this folder is on sys.path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from anywhere: the package is importable from the checkout
    sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- provenance


def cpu_model() -> str:
    """`lscpu`'s model name (platform.processor() is often empty on Linux)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return f"CPU {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"


def environment(device: str = "cpu") -> dict:
    """Machine, versions, commit and date: printed by every script next to its numbers."""
    import torch
    import transformers

    from prefstudy.records import git_commit

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "device": device_name(device),
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "trl": trl_version,
        "prefstudy_commit": git_commit(REPO),
    }


def announce(args) -> dict:
    """Set torch's thread count (--threads, where the script has it) and print the machine, the
    versions and the commit; returns them."""
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    env = environment(args.device)
    print_environment(env)
    return env


def print_environment(env: dict) -> None:
    print(f"# date {env['date']}; device: {env['device']}; memory {env['memory_gb']} GiB; "
          f"1-min load average at start {env['load_avg_1m']}")
    print(f"# python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
          f"trl {env['trl']}, prefstudy commit {env['prefstudy_commit']}")


# --------------------------------------------------------------------------- options and workers

MODEL_OPTIONS = ("model", "device", "dtype", "batch_size", "max_length", "max_prompt_length")


def parser(doc: str, *, model: bool = True, blocks: str | None = None) -> argparse.ArgumentParser:
    """A script's argument parser, described by the first paragraph of its docstring `doc`: with
    the model and batch options (`add_model_args`) unless `model` is False, and with
    `--trainable-blocks` (`add_blocks_arg`) defaulting to `blocks` where it is given."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if model:
        add_model_args(p)
    if blocks is not None:
        add_blocks_arg(p, blocks)
    return p


def add_model_args(p) -> None:
    """The model and batch options every model benchmark shares (same defaults everywhere)."""
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step (2× rows)")
    p.add_argument("--max-length", type=int, default=128, help="prompt + response tokens per side")
    p.add_argument("--max-prompt-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")


def add_blocks_arg(p, default: str = "4,all") -> None:
    """--trainable-blocks: the settings a script measures, read by `block_settings`."""
    p.add_argument("--trainable-blocks", default=default,
                   help="comma-separated: top-k block counts, 'all' for every block")


def block_settings(text: str) -> list[int | None]:
    """"4,all" → [4, None]: each top-k block count, None for every block."""
    return [None if s == "all" else int(s) for s in (x.strip() for x in text.split(",")) if s]


def blocks_name(blocks: int | None) -> str:
    """A block setting as written on the command line: "4", or "all"."""
    return "all" if blocks is None else str(blocks)


def bench_config(args, **fields):
    """The resolved TrainConfig of a benchmark: the model and batch options of `add_model_args`,
    no held-out evaluation, and `fields` (objective, parameters, trainable blocks ...)."""
    from prefstudy.config import TrainConfig

    return TrainConfig(model=args.model, seed=args.seed, n_heldout=0, n_neutral=0, n_probes=0,
                       max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                       batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                       run_id="bench", **fields).resolved()


def bench_inputs(cfg):
    """(model, tokenizer, encoded training pairs, reference log-probs or None) for `cfg`, the
    model seeded by cfg.seed and its top cfg.trainable_blocks trainable."""
    import torch

    from prefstudy.inputs import prepare_inputs
    from prefstudy.models import load_model, set_trainable
    from prefstudy.objectives import get_objective
    from prefstudy.step import reference_logps

    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    set_trainable(model, cfg.trainable_blocks)
    encoded = prepare_inputs(cfg, tokenizer).train
    ref = (reference_logps(model, encoded, cfg, tokenizer.pad_token_id, torch.device(cfg.device))
           if get_objective(cfg.objective).needs_reference else None)
    return model, tokenizer, encoded, ref


def model_argv(args) -> list[str]:
    """`add_model_args`' options of `args` as command-line arguments, for a worker process."""
    return [arg for name in MODEL_OPTIONS
            for arg in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]


def run_worker(script: str, argv: Sequence[str], what: str, env: dict | None = None) -> dict:
    """Run `python script argv` from the repository root, offline, in a fresh process, and
    return the JSON object its last output line holds; its stderr tail is shown if it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", **(env or {})}
    done = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True,
                          env=env, cwd=REPO)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise RuntimeError(f"worker {what} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- timing


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds one call of `fn` takes, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    t = os.times()
    return t.user + t.system


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of the machine's CPU time that was busy over `seconds` (from /proc/stat)."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return idle, sum(fields)

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_idle(threshold: float = 0.15, max_wait: float = 900.0) -> float:
    """Wait (up to max_wait s) until the machine is idle; returns the seconds waited.

    The machine may be shared (tests run by others): a timing started while it is busy is
    slower for reasons that have nothing to do with what is measured.
    """
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        if busy_fraction() < threshold:
            break
        time.sleep(10)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- memory (CPU)


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process to its current RSS (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_kib(field: str = "VmRSS") -> int:
    """VmRSS (current) or VmHWM (peak since the last reset) of this process, KiB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


# --------------------------------------------------------------------------- output


def table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A small Markdown table (the same text goes to RESULTS.md)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
