"""Overhead of the per-pair records: the training step with recording on against the same step off.

The loop is train()'s step, written out here so that recording can be switched off (train() always
records): collate → forward (prefstudy.step.forward) → finiteness check → backward →
[forward_records] → clipping → AdamW step → scheduler → [RunWriter.append("records")]. The
bracketed parts are the recording; everything else is identical. Steps with recording on and off
are interleaved in an ABBA pattern in one process (same model, same warm caches), so drift of the
machine's speed falls on both alike. By default every step trains on the same batch (step 1's), so
steps with and without records do identical compute and their difference is the recording alone;
`--no-same-batch` uses the loop's batch order instead.

Two numbers, per repeat (a run of `--steps` steps), and their median over repeats:
- overhead (difference): median step time with records / median step time without − 1;
- overhead (direct): median time of the recording work itself (forward_records + append, timed
  around just those calls, device synchronised) / median step time without records. The direct
  figure is the precise one: the difference of two step times is noisy when the overhead is small.

    python benchmarks/bench_record_overhead.py --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import _common as C


def parse(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--trainable-blocks", type=int, default=None, help="top k blocks; default all")
    p.add_argument("--objective", default="dpo")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="steps per repeat (half with records)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--same-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="every step trains on step 1's batch, so on and off steps do the same "
                        "compute (--no-same-batch: the loop's own batch order)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    import torch

    from prefstudy.encode import collate
    from prefstudy.inputs import batch_indices
    from prefstudy.records import RunWriter
    from prefstudy.step import forward, forward_records

    env = C.environment(args.device)
    C.print_environment(env)
    cfg = C.bench_config(args, objective=args.objective,
                         trainable_blocks=args.trainable_blocks, lr=1e-5)
    device = torch.device(args.device)
    model, tokenizer, items, ref = C.bench_inputs(cfg)
    pad = tokenizer.pad_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model.train()

    tmp = tempfile.TemporaryDirectory()
    writer = RunWriter(tmp.name)
    writer.start(cfg.to_dict())

    def step(s: int, record: bool) -> tuple[float, float]:
        """One training step; returns (step seconds, seconds spent recording)."""
        C.sync(args.device)
        start = time.perf_counter()
        idx = batch_indices(len(items), cfg.batch_size, cfg.seed, 1 if args.same_batch else s)
        batch = collate([items.items[i] for i in idx], pad).to(device)
        lr = scheduler.get_last_lr()[0]
        fw = forward(model, batch, cfg, ref)
        finite = all(bool(torch.isfinite(t).all()) for t in
                     (fw.loss, fw.logps.chosen.logps, fw.logps.rejected.logps))
        assert finite, "non-finite loss in the benchmark"
        optimizer.zero_grad(set_to_none=True)
        fw.loss.mean().backward()
        recording = 0.0
        if record:
            C.sync(args.device)
            t0 = time.perf_counter()
            rows = forward_records(fw, batch, cfg, s, lr, f"s{s}-r0")
            recording += time.perf_counter() - t0
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        if record:
            C.sync(args.device)
            t0 = time.perf_counter()
            writer.append("records", rows, step=s)
            recording += time.perf_counter() - t0
        C.sync(args.device)
        return time.perf_counter() - start, recording

    print(f"# model {args.model}, {cfg.dtype}, batch {args.batch_size} pairs, max_length "
          f"{args.max_length}, trainable blocks {args.trainable_blocks or 'all'}, objective "
          f"{cfg.objective}; {args.warmup} warm-up steps, {args.repeats} repeats × "
          f"{args.steps} steps (ABBA on/off), "
          f"{'one batch throughout' if args.same_batch else 'the loop batch order'}", flush=True)
    s = 0
    for _ in range(args.warmup):
        s += 1
        step(s, True)
    pattern = [True, False, False, True]
    rows = []
    for r in range(args.repeats):
        on, off, work = [], [], []
        for i in range(args.steps):
            s += 1
            record = pattern[i % 4]
            seconds, recording = step(s, record)
            (on if record else off).append(seconds)
            if record:
                work.append(recording)
        row = {"repeat": r + 1, "step s, records on": C.median(on),
               "step s, records off": C.median(off),
               "recording s/step": C.median(work),
               "overhead (difference) %": 100 * (C.median(on) / C.median(off) - 1),
               "overhead (direct) %": 100 * C.median(work) / C.median(off)}
        rows.append(row)
        print(f"  repeat {r + 1}: on {row['step s, records on']:.4f} s, off "
              f"{row['step s, records off']:.4f} s, recording {row['recording s/step']*1e3:.2f} ms",
              flush=True)
    summary = {"repeat": "median"}
    for key in rows[0]:
        if key != "repeat":
            summary[key] = C.median([row[key] for row in rows])
    rows.append(summary)
    print(C.table(rows))
    direct = summary["overhead (direct) %"]
    print(f"goal ≤ 3%: {'met' if direct <= 3 else 'missed'} (direct {direct:.2f}%, difference "
          f"{summary['overhead (difference) %']:.2f}%)")
    C.save_json(args.json, {"environment": env, "args": vars(args), "rows": rows})
    tmp.cleanup()
    return 0 if math.isfinite(direct) else 1


if __name__ == "__main__":
    main()
