"""Cost of WPO weighting (TrainConfig.use_weighting): the training step's forward + backward, and
the output head alone, with and without the per-token log Σ_v p_v² the weights need.

Per training batch (B pairs, DPO β = 0.1 with cached reference log-probs, as train() runs it):
- step   prefstudy.step.forward + backward of the batch-mean loss (no optimiser step), with
         use_weighting off and on: on, token_logps also computes log Σ_v p_v² from its chunks
         and the loss is multiplied by the WPO weights;
- head   the output head alone: the response positions' last hidden states are computed once
         without gradients and handed in as a leaf that requires grad; timed is the chunked head
         (prefstudy.logprobs.head_logps: the logits, log-probs and, on, log Σ_v p_v²) and its
         backward to the hidden states (and the head weight where it is trained);
- head-fwd  the same head forward only, without gradients (the reference pass, held-out
         evaluation): on − off is the extra work itself, what every step pays for the weights.
Each is measured for every `--trainable-blocks` setting (SmolLM2 ties the head to the
embeddings: it is trained with all blocks, frozen with the top k). The variants are interleaved
(off, on, then on, off in the next round), one warm-up round, then `--repeats` timed rounds;
the table gives medians and the cost of `on` as a ratio to `off`, both as the ratio of the
medians and as the median of each round's own on ÷ off (the two timings of a round are back to
back, so a slow spell of the machine falls on both: the robust figure). Each timing also reports the
cores the process kept busy over it (CPU time ÷ wall time): well below the torch thread count
means something else took the cores meanwhile. On a CPU, before each round the share of the
machine that others kept busy is sampled for 2 s (`--wait-idle`: wait, up to 2 minutes, until it
is below 15 %), and printed with the round. `--threads 1` keeps torch off the second core: on
a machine where another process holds one core, two torch threads wait on each other at every
operator and the timings swing several-fold; one thread gives steadier ratios.

    python benchmarks/bench_wpo_weighting.py --device cpu --trainable-blocks 4,all --repeats 7
"""

from __future__ import annotations

import dataclasses
import os
import time

import _common as C

VARIANTS = ("off", "on")


def parse(argv=None):
    p = C.parser(__doc__, blocks="4,all")
    p.add_argument("--scopes", default="head-fwd,head,step")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--wait-idle", action="store_true",
                   help="on a CPU, wait (up to 2 min) for an idle machine before each round")
    return p.parse_args(argv)


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, cores busy) of one call of `fn`."""
    C.sync(device)
    cpu, start = C.cpu_seconds(), time.perf_counter()
    fn()
    C.sync(device)
    seconds = time.perf_counter() - start
    return seconds, (C.cpu_seconds() - cpu) / seconds


def workloads(model, batch, cfg, ref):
    """{(scope, variant): a function doing one forward + backward}."""
    import torch

    from prefstudy.logprobs import CHUNK_LOGITS, head_logps
    from prefstudy.step import forward

    head = model.get_output_embeddings()
    chunk = max(16, CHUNK_LOGITS // head.weight.shape[0])  # token_logps' default
    mask = batch.response_mask[:, 1:]
    with torch.no_grad():
        hidden = model.base_model(input_ids=batch.input_ids,
                                  attention_mask=batch.attention_mask).last_hidden_state
    h = hidden[:, :-1][mask].detach().requires_grad_()
    targets = batch.input_ids[:, 1:][mask]
    trainable = [p for p in model.parameters() if p.requires_grad]
    configs = {"off": cfg, "on": dataclasses.replace(cfg, use_weighting=True)}

    def zero():
        h.grad = None
        for p in trainable:
            p.grad = None

    def step(variant):
        zero()
        forward(model, batch, configs[variant], ref).loss.mean().backward()

    def head_only(variant):
        zero()
        logps, _ = head_logps(h, targets, head.weight, head.bias, chunk=chunk,
                              sum_sq=variant == "on")
        logps.sum().backward()

    @torch.no_grad()
    def head_forward(variant):
        head_logps(h, targets, head.weight, head.bias, chunk=chunk, sum_sq=variant == "on")

    fns = {"step": step, "head": head_only, "head-fwd": head_forward}
    return ({(scope, v): (lambda fn=fn, v=v: fn(v)) for scope, fn in fns.items()
             for v in VARIANTS}, len(h), chunk)


def measure(args, model, batch, cfg, ref, blocks: int | None) -> list[dict]:
    from prefstudy.models import set_trainable
    from prefstudy.step import forward

    blocks_arg = C.blocks_name(blocks)
    n_trainable = set_trainable(model, blocks)
    fns, n_tokens, chunk = workloads(model, batch, cfg, ref)
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    times = {(s, v): [] for s in scopes for v in VARIANTS}
    for r in range(args.repeats + 1):
        if args.device == "cpu":
            if args.wait_idle:
                C.wait_for_idle(max_wait=120)
            print(f"  round {r}: machine {100 * C.busy_fraction():.0f} % busy before it",
                  flush=True)
        for scope in scopes:
            for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                seconds, cores = timed(fns[scope, variant], args.device)
                if r == 0:
                    continue  # warm-up round
                times[scope, variant].append((seconds, cores))
                print(f"  blocks {blocks_arg:>3} round {r} {scope:>4} {variant:>3}: "
                      f"{seconds:.3f} s, {cores:.2f} cores busy", flush=True)
    weighted = forward(model, batch, dataclasses.replace(cfg, use_weighting=True), ref)
    print(f"  blocks {blocks_arg}: {n_tokens} response tokens through the head in chunks of "
          f"{chunk}; WPO weights {[round(float(w), 4) for w in weighted.weight]}", flush=True)
    rows = []
    for scope in scopes:
        off = C.median([s for s, _ in times[scope, "off"]])
        paired = [a / b for (a, _), (b, _) in zip(times[scope, "on"], times[scope, "off"])]
        for variant in VARIANTS:
            runs = times[scope, variant]
            med = C.median([s for s, _ in runs])
            rows.append({"trainable": f"top {blocks}" if blocks is not None else "all",
                         "trainable params": n_trainable, "scope": scope,
                         "use_weighting": variant, "seconds (median)": med,
                         "min–max s": f"{min(s for s, _ in runs):.3f}–"
                                      f"{max(s for s, _ in runs):.3f}",
                         "÷ off": med / off,
                         "paired on ÷ off (median)": C.median(paired) if variant == "on" else 1.0,
                         "paired min–max": f"{min(paired):.3f}–{max(paired):.3f}"
                                           if variant == "on" else "",
                         "cores busy (min)": min(c for _, c in runs),
                         "raw s": [s for s, _ in runs]})
    return rows


def main(argv=None):
    args = parse(argv)
    import torch

    from prefstudy.encode import collate
    from prefstudy.inputs import batch_indices

    env = C.announce(args)
    cfg = C.bench_config(args, objective="dpo", params={"beta": 0.1})
    model, tokenizer, encoded, ref = C.bench_inputs(cfg)
    items = [encoded.items[i] for i in batch_indices(len(encoded), cfg.batch_size, cfg.seed, 1)]
    batch = collate(items, tokenizer.pad_token_id).to(torch.device(args.device))
    model.train()
    print(f"# model {args.model}, {cfg.dtype}, batch {cfg.batch_size} pairs "
          f"({2 * cfg.batch_size} rows × {batch.input_ids.shape[1]} tokens), DPO β=0.1; 1 "
          f"warm-up round + {args.repeats} timed rounds, off/on interleaved; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    rows = []
    for blocks in C.block_settings(args.trainable_blocks):
        rows += measure(args, model, batch, cfg, ref, blocks)
    print(C.table(rows, ["trainable", "trainable params", "scope", "use_weighting",
                         "seconds (median)", "min–max s", "÷ off", "paired on ÷ off (median)",
                         "paired min–max", "cores busy (min)"]))
    env["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(f"# 1-min load average at the end {env['load_avg_1m_end']}")
    C.save_json(args.json, {"environment": env, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
