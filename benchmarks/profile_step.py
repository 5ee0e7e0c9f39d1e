"""Where a training step's time goes: prefstudy's step by phase, and either side by operator.

Not a goal of its own: it explains bench_throughput's numbers.

- `--side prefstudy`: train()'s step written out (as in bench_record_overhead.py), each phase
  timed with the device synchronised (collate, forward, finiteness check, backward, records,
  clipping, optimiser), median over `--steps` steps after `--warmup`. `--deterministic` and
  `--optimizer` switch what train() fixes (it turns torch.use_deterministic_algorithms on and
  uses torch.optim.AdamW's default implementation), to show what each costs.
- `--ops`: also a torch.profiler table of the operators with the most self time over two steps
  (prefstudy's loop, or TRL's DPOTrainer with `--side trl-default-nogc` etc., as
  bench_throughput.py builds it).

    python benchmarks/profile_step.py --side prefstudy --deterministic on --optimizer default
    python benchmarks/profile_step.py --side prefstudy --deterministic off --optimizer fused
    python benchmarks/profile_step.py --side trl-precompute-nogc --ops
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict

import _common as C


def parse(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--side", default="prefstudy")
    p.add_argument("--trainable-blocks", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--deterministic", choices=("on", "off"), default="on",
                   help="torch.use_deterministic_algorithms (train() turns it on)")
    p.add_argument("--optimizer", choices=("default", "foreach", "fused"), default="default",
                   help="torch.optim.AdamW implementation (train() uses the default)")
    p.add_argument("--ops", action="store_true", help="also a torch.profiler operator table")
    return p.parse_args(argv)


def profile_prefstudy(args) -> None:
    import torch

    from prefstudy.config import TrainConfig
    from prefstudy.encode import collate
    from prefstudy.inputs import batch_indices, prepare_inputs
    from prefstudy.models import load_model, set_trainable
    from prefstudy.records import RunWriter
    from prefstudy.step import forward, forward_records, reference_logps

    torch.use_deterministic_algorithms(args.deterministic == "on", warn_only=True)
    total = args.warmup + args.steps + (2 if args.ops else 0)
    cfg = TrainConfig(objective="dpo", params={"beta": 0.1}, model=args.model, seed=args.seed,
                      n_heldout=0, n_neutral=0, n_probes=0, max_length=args.max_length,
                      max_prompt_length=args.max_prompt_length, batch_size=args.batch_size,
                      max_pairs=args.batch_size * total, trainable_blocks=args.trainable_blocks,
                      device=args.device, dtype=args.dtype, lr=1e-5, run_id="bench").resolved()
    device = torch.device(args.device)
    model, tokenizer = load_model(cfg.model, device=args.device, dtype=cfg.dtype)
    set_trainable(model, cfg.trainable_blocks)
    items = prepare_inputs(cfg, tokenizer).train
    pad = tokenizer.pad_token_id
    ref = reference_logps(model, items, cfg, pad, device)
    params = [p for p in model.parameters() if p.requires_grad]
    kind = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.optimizer]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, **kind)
    model.train()
    tmp = tempfile.TemporaryDirectory()
    writer = RunWriter(tmp.name)
    writer.start(cfg.to_dict())
    phases = defaultdict(list)

    def step(s):
        marks = [("start", time.perf_counter())]

        def mark(name):
            C.sync(args.device)
            marks.append((name, time.perf_counter()))

        idx = batch_indices(len(items), cfg.batch_size, cfg.seed, s)
        batch = collate([items.items[i] for i in idx], pad).to(device)
        mark("collate")
        fw = forward(model, batch, cfg, ref)
        mark("forward (token_logps + objective)")
        assert all(bool(torch.isfinite(t).all()) for t in
                   (fw.loss, fw.logps.chosen.logps, fw.logps.rejected.logps))
        mark("finiteness check")
        optimizer.zero_grad(set_to_none=True)
        fw.loss.mean().backward()
        mark("backward")
        rows = forward_records(fw, batch, cfg, s, 1e-5, f"s{s}-r0")
        mark("forward_records")
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        mark("clip_grad_norm_")
        optimizer.step()
        mark(f"AdamW step ({args.optimizer})")
        writer.append("records", rows, step=s)
        mark("RunWriter.append")
        return marks

    for s in range(1, args.warmup + 1):
        step(s)
    for s in range(args.warmup + 1, args.warmup + args.steps + 1):
        marks = step(s)
        for (_, t0), (name, t1) in zip(marks, marks[1:]):
            phases[name].append(t1 - t0)
        phases["total"].append(marks[-1][1] - marks[0][1])
    rows = [{"phase": k, "seconds (median)": C.median(v),
             "share %": 100 * C.median(v) / C.median(phases["total"])} for k, v in phases.items()]
    print(f"# prefstudy step, deterministic {args.deterministic}, AdamW {args.optimizer}; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(C.table(rows))
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        start = args.warmup + args.steps + 1
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for s in range(start, start + 2):
                step(s)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    tmp.cleanup()


def profile_trl(args) -> None:
    import bench_throughput as T
    from torch.profiler import ProfilerActivity, profile, schedule
    from transformers import TrainerCallback

    prof = profile(activities=[ProfilerActivity.CPU],
                   schedule=schedule(wait=args.warmup, warmup=0, active=2, repeat=1))

    class Step(TrainerCallback):
        def on_step_end(self, *a, **k):
            prof.step()

    targs = argparse.Namespace(**{**vars(args), "lr": 1e-5, "steps": 2})
    with prof:
        T.run_trl(targs, T.VARIANTS[args.side], callbacks=[Step()])
    print(f"# {args.side}: operators over 2 steps after {args.warmup} warm-up")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv=None):
    args = parse(argv)
    C.print_environment(C.environment(args.device))
    if args.side == "prefstudy":
        profile_prefstudy(args)
    else:
        profile_trl(args)


if __name__ == "__main__":
    main()
