"""Peak memory of the log-prob computation: prefstudy.logprobs.token_logps (response tokens only,
chunked gather − logsumexp, each chunk recomputed in backward) against plain_token_logps (full
logits, full float32 log_softmax, gather) on the same batch, gradients on, forward + backward.

token_logps is measured at its default chunk size ("auto": CHUNK_LOGITS logits per chunk, what
train() uses: the goal's number) and at other chunk sizes (`--chunks`), since the chunk bounds its
peak.

Two scopes:
- head:  the log-prob computation alone. The transformer's last hidden states are computed once
         without gradients and handed in as a leaf that requires grad; the measured region is
         output head → per-token log-probs → backward to the hidden states and the head weight.
         This is what the two functions differ in, and what the goal is about.
- step:  the whole forward + backward of the model through each path (all parameters trainable):
         the same transformer activations and parameter gradients on both sides, for context.

Method. Every (variant, scope, repeat) runs in a fresh process, so nothing one leaves behind
(allocator caches, freed-but-kept heap) counts for another.
- CUDA: torch.cuda.reset_peak_memory_stats(), then max_memory_allocated() − memory_allocated()
  before the measured region: the peak of live tensor bytes the region added.
- CPU: torch's CPU allocator has no statistics (and tracemalloc does not see its allocations), so
  the process's resident set is measured: the kernel's peak mark VmHWM is reset to the current
  RSS (writing 5 to /proc/self/clear_refs) just before the region, and VmHWM − VmRSS(before) is
  read after it. glibc is run with MALLOC_MMAP_THRESHOLD_=65536 (set for the child process), so
  every tensor larger than 64 KiB is its own mmap, returned to the kernel when freed: RSS then
  follows the live tensors instead of a heap that keeps freed memory (which would hide peaks).
The number is the median over `--repeats` processes (the spread is given too).

    python benchmarks/bench_logprob_memory.py --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import _common as C

SCOPES = ("head", "step")
DEFAULT_CHUNK = "auto"  # token_logps's default chunk_tokens (None: from the vocabulary)


def parse(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--scopes", default=",".join(SCOPES))
    p.add_argument("--chunks", default=f"{DEFAULT_CHUNK},256",
                   help="chunk_tokens values of token_logps to measure, 'auto' for its default "
                        "(the first is the goal's)")
    p.add_argument("--head-grad", action=argparse.BooleanOptionalAction, default=True,
                   help="the output head's weight is trained (all blocks trainable; SmolLM2 ties "
                        "it to the embeddings); --no-head-grad: frozen, as with trainable_blocks")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "<variant>:<scope>"
    return p.parse_args(argv)


def make_batch(args, tokenizer, device):
    from prefstudy.data import load_pairs
    from prefstudy.encode import collate, encode_pairs
    from prefstudy.inputs import batch_indices

    encoded = encode_pairs(load_pairs(C.REPO / "data" / "pairs"), tokenizer,
                           max_length=args.max_length, max_prompt_length=args.max_prompt_length)
    idx = batch_indices(len(encoded), args.batch_size, args.seed, 1)
    return collate([encoded.items[i] for i in idx], tokenizer.pad_token_id).to(device)


class HeadOnly:
    """A stand-in model whose backbone output is a given hidden-state tensor: what's left of the
    forward is the output head and the log-prob computation."""

    def __init__(self, model, hidden):
        self.model, self.hidden, self.config = model, hidden, model.config

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def base_model(self, **_):
        return SimpleNamespace(last_hidden_state=self.hidden)

    def __call__(self, **_):  # plain_token_logps reads `.logits`, as from the model's forward
        return SimpleNamespace(logits=self.model.get_output_embeddings()(self.hidden))


def worker(args) -> dict:
    import torch

    from prefstudy.logprobs import plain_token_logps, token_logps
    from prefstudy.models import load_model

    variant, scope = args.worker.split(":")
    if variant == "plain_token_logps":
        fn = plain_token_logps
    else:  # token_logps@<chunk_tokens>
        chunk = None if variant.endswith("@auto") else int(variant.split("@")[1])

        def fn(model, batch):
            return token_logps(model, batch, chunk_tokens=chunk)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    if not args.head_grad:
        model.get_output_embeddings().weight.requires_grad_(False)
    batch = make_batch(args, tokenizer, device)
    target = model
    if scope == "head":
        with torch.no_grad():
            hidden = model.base_model(input_ids=batch.input_ids,
                                      attention_mask=batch.attention_mask).last_hidden_state
        target = HeadOnly(model, hidden.detach().requires_grad_(True))

    def region():
        out = fn(target, batch)
        out.sum.sum().backward()
        return out

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = C.rss_kib() * 1024
        C.reset_peak_rss()
    start = time.perf_counter()
    out = region()
    C.sync(args.device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if cuda else C.rss_kib("VmHWM") * 1024) - before
    rows = int(batch.input_ids.shape[0])
    return {"variant": variant, "scope": scope, "peak_mb": peak / 2**20, "seconds": seconds,
            "rows": rows, "width": int(batch.input_ids.shape[1]),
            "response_tokens": int(out.mask.sum()), "vocab": int(model.config.vocab_size),
            "logp_sum": float(out.sum.sum())}


def spawn(args, variant: str, scope: str) -> dict:
    argv = ["--worker", f"{variant}:{scope}", *C.model_argv(args), "--seed", str(args.seed),
            "--head-grad" if args.head_grad else "--no-head-grad"]
    return C.run_worker(__file__, argv, f"{variant}:{scope}", {"MALLOC_MMAP_THRESHOLD_": "65536"})


def main(argv=None):
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    env = C.environment(args.device)
    C.print_environment(env)
    method = ("torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
              else "peak RSS (VmHWM reset via /proc/self/clear_refs), MALLOC_MMAP_THRESHOLD_=65536")
    print(f"# model {args.model}, {args.dtype}, batch {args.batch_size} pairs "
          f"({2 * args.batch_size} rows), max_length {args.max_length}; forward + backward, head "
          f"weight {'trained' if args.head_grad else 'frozen'}; "
          f"memory: {method}; median of {args.repeats} fresh processes", flush=True)
    scopes = [s for s in args.scopes.split(",") if s]
    variants = [f"token_logps@{c if c == 'auto' else int(c)}" for c in args.chunks.split(",")
                if c]
    variants.append("plain_token_logps")
    raw = {(v, s): [] for s in scopes for v in variants}
    for r in range(args.repeats):
        for scope in scopes:
            for variant in (variants if r % 2 == 0 else variants[::-1]):
                out = spawn(args, variant, scope)
                raw[(variant, scope)].append(out)
                print(f"  repeat {r + 1} {scope:>4} {variant:>18}: peak {out['peak_mb']:.1f} MiB, "
                      f"{out['seconds']:.3f} s", flush=True)
    rows = []
    for scope in scopes:
        plain = C.median([o["peak_mb"] for o in raw[("plain_token_logps", scope)]])
        for variant in variants:
            runs = raw[(variant, scope)]
            peaks = [o["peak_mb"] for o in runs]
            first = runs[0]
            rows.append({"scope": scope, "variant": variant,
                         "peak MiB (median)": C.median(peaks),
                         "min–max MiB": f"{min(peaks):.0f}–{max(peaks):.0f}",
                         "÷ plain": C.median(peaks) / plain,
                         "fwd+bwd s": C.median([o["seconds"] for o in runs]),
                         "rows × width": f"{first['rows']} × {first['width']}",
                         "response tokens": first["response_tokens"],
                         "Σ logp": first["logp_sum"]})
    print(C.table(rows))
    for scope in scopes:
        for variant in variants[:-1]:
            ratio = next(r["÷ plain"] for r in rows if r["scope"] == scope
                         and r["variant"] == variant)
            print(f"goal ≤ 0.5× plain, scope {scope}, {variant}: "
                  f"{'met' if ratio <= 0.5 else 'missed'} ({ratio:.3f}×)")
    C.save_json(args.json, {"environment": env, "args": vars(args), "rows": rows,
                            "raw": {f"{v}:{s}": o for (v, s), o in raw.items()}})


if __name__ == "__main__":
    main()
