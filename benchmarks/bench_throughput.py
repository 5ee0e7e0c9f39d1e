"""Training-step throughput: prefstudy's training loop against TRL's DPOTrainer, side by side.

Same model, same token ids, same batches in the same order, same batch size, sequence lengths,
dtype, device, objective (DPO, β = 0.1), optimiser settings (AdamW, lr 1e-5, no weight decay,
gradient clipping at 1.0) and trainable parameters on every side:

- prefstudy   `prefstudy.train.train()` itself, per-pair records on (one parquet shard per step),
              reference log-probs cached before training as it always does.
- trl-*       `trl.DPOTrainer` on the token ids prefstudy encoded (its own tokenisation is
              bypassed so both train on identical sequences), fed in prefstudy's batch order
              (`train_sampling_strategy="sequential"`):
              default        TRL's defaults: a reference-model forward every step and gradient
                             checkpointing on (TRL's DPOConfig default);
              precompute     `precompute_ref_log_probs=True` (the precompute before training is
                             not timed), gradient checkpointing on;
              *-nogc         the same with `gradient_checkpointing=False`, as prefstudy trains:
                             the like-for-like comparison of the compute each step does.
              (TRL's other default that differs, bf16, is off: the dtype must be the same.)
- trl-perpair-* (optional) prefstudy's `PerPairDPOTrainer` (TRL with per-pair records).

What is timed: the wall time between the ends of consecutive optimiser steps (everything a step
does: collation, forward, backward, clipping, optimiser, records), for the steps after
`--warmup`. prefstudy's step ends are taken where train() writes the step's records (a wrapper
around RunWriter.append, the loop itself unchanged); TRL's at `on_step_end`. Model loading,
reference precomputation and evaluation are outside the timed steps.
Tokens: prompt + response tokens of every sequence of the batch (padding excluded), counted from
the same token ids for every side. Pairs/s = batch size × steps / time.

Each (variant, repeat) runs in a fresh process; repeats cycle through the variants (rotated each
round) so a slow spell of the machine hits every variant alike. On a CPU each process starts only
once the machine has been idle (< 15 % busy over 2 s), and reports how many cores it kept busy
over its timed steps (CPU time / wall time): a value well below the torch thread count means
something else took the cores meanwhile. The table gives the median over repeats.

    python benchmarks/bench_throughput.py --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _common as C

VARIANTS = {
    "prefstudy": {},
    "trl-default": {"precompute": False, "gc": True},
    "trl-precompute": {"precompute": True, "gc": True},
    "trl-default-nogc": {"precompute": False, "gc": False},
    "trl-precompute-nogc": {"precompute": True, "gc": False},
    "trl-perpair-default-nogc": {"precompute": False, "gc": False, "perpair": True},
    "trl-perpair-precompute-nogc": {"precompute": True, "gc": False, "perpair": True},
}
DEFAULT_VARIANTS = ["prefstudy", "trl-default", "trl-precompute", "trl-default-nogc",
                    "trl-precompute-nogc"]


def parse(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--trainable-blocks", type=int, default=None, help="top k blocks; default all")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, in every process")
    p.add_argument("--steps", type=int, default=8, help="timed steps per process")
    p.add_argument("--repeats", type=int, default=3, help="processes per variant")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, of {list(VARIANTS)}")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- shared set-up


def train_config(args, output: str):
    from prefstudy.config import TrainConfig

    total = args.warmup + args.steps
    return TrainConfig(
        objective="dpo", params={"beta": 0.1}, model=args.model, seed=args.seed,
        data="data/pairs", n_heldout=0, n_neutral=0, n_probes=0,
        max_pairs=args.batch_size * total,  # exactly the pairs the timed run draws
        max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        steps=total, batch_size=args.batch_size, lr=args.lr, weight_decay=0.0,
        max_grad_norm=1.0, trainable_blocks=args.trainable_blocks, device=args.device,
        dtype=args.dtype, checkpoint_every=10**9, output=output, run_id="bench")


def batches(args, tokenizer):
    """The encoded pairs of every step, in the order prefstudy's loop draws them."""
    from prefstudy.inputs import batch_indices, prepare_inputs

    items = prepare_inputs(train_config(args, "unused").resolved(), tokenizer).train.items
    n = len(items)
    return [[items[i] for i in batch_indices(n, args.batch_size, args.seed, step)]
            for step in range(1, args.warmup + args.steps + 1)]


def tokens(batch) -> int:
    return sum(2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in batch)


# --------------------------------------------------------------------------- workers


def run_prefstudy(args) -> list[float]:
    """Step-end times of prefstudy.train.train(), from its own per-step record writes."""
    from prefstudy import records, train

    ends = []
    original = records.RunWriter.append

    def append(self, table, rows, *, step):
        path = original(self, table, rows, step=step)
        if table == "records":
            C.sync(args.device)
            ends.append((time.perf_counter(), C.cpu_seconds()))
        return path

    records.RunWriter.append = append
    with tempfile.TemporaryDirectory() as out:
        train.train(train_config(args, out), progress=False)
    return ends


def run_trl(args, variant: dict, callbacks=()) -> list[float]:
    """Step-end times of TRL's DPOTrainer on prefstudy's token ids, in prefstudy's batch order."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from prefstudy.models import load_model, set_trainable

    policy, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    set_trainable(policy, args.trainable_blocks)
    ref = None
    if not variant["precompute"]:
        ref = load_model(args.model, device=args.device, dtype=args.dtype)[0]
    rows = [{"pair_id": e.pair_id, "prompt_ids": list(e.prompt_ids),
             "chosen_ids": list(e.chosen_ids), "rejected_ids": list(e.rejected_ids)}
            for batch in batches(args, tokenizer) for e in batch]
    dataset = Dataset.from_list(rows)
    if variant.get("perpair"):
        from prefstudy.integrations import PerPairDPOTrainer as base
    else:
        dataset = dataset.remove_columns("pair_id")
        base = DPOTrainer

    class PretokenizedDPOTrainer(base):
        """TRL's trainer on rows that are already prompt_ids / chosen_ids / rejected_ids."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    ends = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            C.sync(args.device)
            ends.append((time.perf_counter(), C.cpu_seconds()))

    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out, max_steps=args.warmup + args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
            weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type="sigmoid",
            max_length=args.max_length, precompute_ref_log_probs=variant["precompute"],
            gradient_checkpointing=variant["gc"], bf16=args.dtype == "bfloat16",
            fp16=args.dtype == "float16", use_cpu=args.device == "cpu",
            train_sampling_strategy="sequential", seed=args.seed, report_to=[],
            save_strategy="no", logging_strategy="no", eval_strategy="no", disable_tqdm=True)
        extra = {"records_dir": Path(out) / "records"} if variant.get("perpair") else {}
        trainer = PretokenizedDPOTrainer(model=policy, ref_model=ref, args=config,
                                         train_dataset=dataset, processing_class=tokenizer,
                                         callbacks=[StepEnds(), *callbacks], **extra)
        trainer.train()
    return ends


def worker(args) -> dict:
    import resource

    import torch

    from prefstudy.models import load_tokenizer

    torch.manual_seed(args.seed)
    name = args.worker
    ends = run_prefstudy(args) if name == "prefstudy" else run_trl(args, VARIANTS[name])
    total = args.warmup + args.steps
    if len(ends) != total:
        raise RuntimeError(f"{name}: {len(ends)} step ends recorded, expected {total}")
    steps = batches(args, load_tokenizer(args.model))
    timed = range(args.warmup, total)  # step s (0-based) took ends[s] − ends[s − 1]
    cpu = [c for _, c in ends]
    ends = [t for t, _ in ends]
    seconds = ends[-1] - ends[args.warmup - 1]
    cores = (cpu[-1] - cpu[args.warmup - 1]) / seconds  # ≈ torch threads when nothing else runs
    n_tokens = sum(tokens(steps[s]) for s in timed)
    return {"variant": name, "seconds": seconds, "steps": len(timed),
            "step_s": [ends[s] - ends[s - 1] for s in timed],
            "pairs_per_s": args.batch_size * len(timed) / seconds,
            "tokens_per_s": n_tokens / seconds, "tokens_per_step": n_tokens / len(timed),
            "cores_used": cores, "threads": torch.get_num_threads(),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


# --------------------------------------------------------------------------- the comparison


def spawn(args, name: str) -> dict:
    argv = ["--worker", name, *C.model_argv(args), "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--lr", str(args.lr), "--seed", str(args.seed)]
    if args.trainable_blocks is not None:
        argv += ["--trainable-blocks", str(args.trainable_blocks)]
    return C.run_worker(__file__, argv, name,
                        {"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"})


def main(argv=None):
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.warmup < 1:
        raise SystemExit("--warmup must be ≥ 1 (the first timed step needs the previous step's end)")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    env = C.environment(args.device)
    C.print_environment(env)
    print(f"# model {args.model}, {args.dtype}, batch {args.batch_size} pairs, max_length "
          f"{args.max_length} (prompt ≤ {args.max_prompt_length}), trainable blocks "
          f"{args.trainable_blocks or 'all'}, DPO β=0.1; {args.warmup} warm-up + {args.steps} "
          f"timed steps per process, {args.repeats} processes per variant", flush=True)
    results = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            waited = C.wait_for_idle() if args.device == "cpu" else 0.0
            out = spawn(args, name)
            out["waited_for_idle_s"] = waited
            results[name].append(out)
            print(f"  repeat {r + 1} {name:>28}: {out['pairs_per_s']:.3f} pairs/s, "
                  f"{out['tokens_per_s']:.1f} tokens/s, median step "
                  f"{C.median(out['step_s']):.3f} s, {out['cores_used']:.2f} cores busy "
                  f"(of {out['threads']} threads)", flush=True)
    rows = []
    ours = C.median([o["pairs_per_s"] for o in results.get("prefstudy", [])])
    for name in names:
        runs = results[name]
        pairs = C.median([o["pairs_per_s"] for o in runs])
        rows.append({"variant": name, "pairs/s": pairs,
                     "tokens/s": C.median([o["tokens_per_s"] for o in runs]),
                     "step s (median)": C.median([s for o in runs for s in o["step_s"]]),
                     "prefstudy ×": ours / pairs if "prefstudy" in results else float("nan"),
                     "peak RSS GB": max(o["peak_rss_gb"] for o in runs),
                     "cores busy (min)": min(o["cores_used"] for o in runs),
                     "repeats": len(runs)})
    print(C.table(rows))
    C.save_json(args.json, {"environment": env, "args": vars(args), "rows": rows,
                            "raw": results})


if __name__ == "__main__":
    main()
