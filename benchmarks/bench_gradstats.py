"""Cost of the per-pair gradient statistics (prefstudy.gradstats.PerPairGradients) against a plain
backward pass, and against getting per-pair gradients the naive way.

Per training batch (B pairs, the DPO loss with cached reference log-probs, as train() runs it):
- plain        forward (prefstudy.step.forward) + backward of the batch-mean loss;
- gradstats    capture() + the same forward + backward + finish(): per-pair gradient norms,
               leave-one-out cosines and the gradient noise scale, from the one
               backward pass (what train() does with grad_stats=True);
- naive        the same forward, then one backward per pair (retain_graph) with the pair's
               gradient read after each, norms and cosines computed from them: B backward passes;
- per-pair     one forward + backward per pair (batches of one pair), gradients read after each.
Statistics cover the same parameters in every variant (the weights and biases of the trainable
nn.Linear layers, as PerPairGradients does), and the naive variants' norms are checked against
gradstats'. Every variant's time is measured with the device synchronised, the variants
interleaved, each `--repeats` times after one warm-up round; the table gives medians.

    python benchmarks/bench_gradstats.py --device cpu --trainable-blocks 4,all
"""

from __future__ import annotations

import time

import _common as C


def parse(argv=None):
    p = C.parser(__doc__, blocks="4,all")
    p.add_argument("--variants", default="plain,gradstats,naive,per-pair")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--float64", action="store_true",
                   help="run in float64 (a precision check of the norms, not a timing)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    import torch

    from prefstudy.encode import collate
    from prefstudy.gradstats import PerPairGradients
    from prefstudy.inputs import batch_indices
    from prefstudy.models import set_trainable
    from prefstudy.step import forward

    env = C.environment(args.device)
    C.print_environment(env)
    device = torch.device(args.device)
    cfg = C.bench_config(args, objective="dpo", params={"beta": 0.1})
    model, tokenizer, encoded, ref = C.bench_inputs(cfg)
    pad = tokenizer.pad_token_id
    if args.float64:
        model.double()  # token_logps still returns float32 log-probs (the loss is float32)
    items = [encoded.items[i] for i in batch_indices(len(encoded), cfg.batch_size, cfg.seed, 1)]
    batch = collate(items, pad).to(device)
    singles = [collate([e], pad).to(device) for e in items]
    model.train()
    b = cfg.batch_size
    print(f"# model {args.model}, {cfg.dtype}, batch {b} pairs ({2 * b} rows × "
          f"{batch.input_ids.shape[1]} tokens), DPO β=0.1; 1 warm-up round + {args.repeats} "
          f"timed rounds, variants interleaved", flush=True)

    def linear_params(layers):
        return [p for m in layers for p in (m.weight, m.bias)
                if p is not None and p.requires_grad]

    def flat_grads(params):
        dtype = torch.float64 if args.float64 else torch.float32
        return torch.cat([p.grad.detach().flatten().to(dtype) for p in params])

    def stats_from(per_pair: list[torch.Tensor]):
        """Norms and leave-one-out cosines (a pair against the sum of the others), as the
        records' grad_norm and grad_cos."""
        g = torch.stack(per_pair)  # (B, n) per-pair gradients
        norm = g.norm(dim=1)
        others = g.sum(0, keepdim=True) - g
        cos = (g * others).sum(1) / (norm * others.norm(dim=1)).clamp(min=1e-30)
        return norm.double().cpu(), cos.double().cpu()

    results = []
    for blocks in C.block_settings(args.trainable_blocks):
        n_trainable = set_trainable(model, blocks)
        grads = PerPairGradients(model)
        head = model.get_output_embeddings()  # token_logps calls the head functionally: the
        params = linear_params([m for m in grads.layers if m is not head])  # hooks never see it
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_stats = sum(p.numel() for p in params)

        def zero():
            for p in trainable:
                p.grad = None

        def plain():
            zero()
            forward(model, batch, cfg, ref).loss.mean().backward()

        def gradstats():
            zero()
            grads.capture()
            forward(model, batch, cfg, ref).loss.mean().backward()
            out = grads.finish(b)
            return out.norm.double(), out.cos.double()

        def naive():
            zero()
            loss = forward(model, batch, cfg, ref).loss
            per_pair = []
            for i in range(b):
                zero()
                loss[i].backward(retain_graph=i < b - 1)
                per_pair.append(flat_grads(params))
            return stats_from(per_pair)

        def per_pair():
            per = []
            for single in singles:
                zero()
                forward(model, single, cfg, ref).loss.sum().backward()
                per.append(flat_grads(params))
            return stats_from(per)

        fns = {"plain": plain, "gradstats": gradstats, "naive": naive, "per-pair": per_pair}
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        times = {n: [] for n in names}
        norms = {}
        for r in range(args.repeats + 1):
            for name in (names if r % 2 == 0 else names[::-1]):
                C.sync(args.device)
                start = time.perf_counter()
                out = fns[name]()
                C.sync(args.device)
                seconds = time.perf_counter() - start
                if r == 0:
                    norms[name] = out
                    continue  # warm-up round
                times[name].append(seconds)
                print(f"  blocks {C.blocks_name(blocks):>3} round {r} {name:>9}: {seconds:.3f} s", flush=True)
        grads.remove()
        zero()
        base = C.median(times["plain"]) if "plain" in times else float("nan")
        check = ""
        if "gradstats" in norms and "naive" in norms:
            ours, theirs = norms["gradstats"], norms["naive"]
            check = (f"max rel. diff of norms {float(((ours[0] - theirs[0]).abs() / theirs[0]).max()):.1e}"
                     f", of cosines {float((ours[1] - theirs[1]).abs().max()):.1e}")
        for name in names:
            med = C.median(times[name])
            results.append({"trainable": f"top {blocks}" if blocks is not None else "all",
                            "trainable params": n_trainable, "params in stats": n_stats,
                            "variant": name, "seconds (median)": med,
                            "min–max s": f"{min(times[name]):.3f}–{max(times[name]):.3f}",
                            "÷ plain": med / base})
        if check:
            print(f"  blocks {C.blocks_name(blocks)}: gradstats vs naive: {check}", flush=True)
            results[-1]["check"] = check
    print(C.table(results, ["trainable", "trainable params", "params in stats", "variant",
                            "seconds (median)", "min–max s", "÷ plain"]))
    for row in results:
        if row["variant"] == "gradstats" and row["÷ plain"] == row["÷ plain"]:  # not NaN
            print(f"goal ≤ 3× plain ({row['trainable']}): "
                  f"{'met' if row['÷ plain'] <= 3 else 'missed'} ({row['÷ plain']:.2f}×)")
    C.save_json(args.json, {"environment": env, "args": vars(args), "rows": results})


if __name__ == "__main__":
    main()
