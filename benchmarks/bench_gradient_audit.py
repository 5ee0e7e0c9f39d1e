"""Time of the gradient audit at the starting weights (prefstudy.gradaudit.gradient_audit).

`gradient_audit` on the first `--pairs` bundled pairs (data/pairs), SmolLM2-135M-Instruct by
default, its default objectives plus DPO (as `prefstudy audit --gradients` runs it), untruncated
unless `--max-length` is given, once per `--trainable-blocks` setting (the top k blocks' linear
layers, or 'all'). Per setting: wall time, wall and CPU time per pair, and how many cores the
process kept busy (CPU time ÷ wall time): on a shared machine a low figure means the timing is
slower than the machine can do; `--threads 1` gives the CPU time least disturbed by others. No warm-up run (the audit is run once in use too); each
setting is timed `--repeats` times and the table gives the median.

    python benchmarks/bench_gradient_audit.py --pairs 256 --trainable-blocks 4
"""

from __future__ import annotations

import time

import _common as C


def parse(argv=None):
    p = C.parser(__doc__)
    p.set_defaults(max_length=0, max_prompt_length=0)  # 0: nothing cut, as the audit's default
    p.add_argument("--pairs", type=int, default=256, help="the first N bundled pairs")
    C.add_blocks_arg(p, "4")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's); 1 gives CPU times that another "
                        "process on the machine disturbs least")
    return p.parse_args(argv)


def _audit_once(model, tokenizer, pairs, args, blocks) -> dict:
    from prefstudy.gradaudit import DEFAULT_GRADIENT_OBJECTIVES, gradient_audit

    cpu, start = C.cpu_seconds(), time.perf_counter()
    out = gradient_audit(model, tokenizer, pairs,
                         objectives=(*DEFAULT_GRADIENT_OBJECTIVES, ("dpo", {})),
                         batch_size=args.batch_size, max_length=args.max_length or None,
                         max_prompt_length=args.max_prompt_length or None,
                         trainable_blocks=blocks, seed=args.seed)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "cpu_s": C.cpu_seconds() - cpu, "rows": len(out),
            "pairs": out.pair_id.nunique()}


def main(argv=None):
    args = parse(argv)
    import torch

    from prefstudy.data import load_pairs
    from prefstudy.models import load_model

    env = C.announce(args)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    pairs = load_pairs(C.REPO / "data" / "pairs")[:args.pairs]
    print(f"# model {args.model}, {args.dtype}, {len(pairs)} pairs in batches of "
          f"{args.batch_size}, max_length {args.max_length or 'none'}", flush=True)
    rows = []
    for blocks in C.block_settings(args.trainable_blocks):
        runs = [_audit_once(model, tokenizer, pairs, args, blocks) for _ in range(args.repeats)]
        wall, cpu, n = (C.median([r["wall_s"] for r in runs]),
                        C.median([r["cpu_s"] for r in runs]), runs[0]["pairs"])
        rows.append({"blocks": C.blocks_name(blocks), "threads": torch.get_num_threads(), "pairs": n,
                     "rows": runs[0]["rows"], "wall s": wall, "s / pair": wall / n,
                     "CPU s / pair": cpu / n, "cores busy": cpu / wall,
                     "per repeat s": " / ".join(f"{r['wall_s']:.0f}" for r in runs)})
        print(C.table(rows[-1:]), flush=True)
    print(C.table(rows))
    C.save_json(args.json, {"environment": env, "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
