"""Audit speed: `prefstudy.audit.audit` of 1,000 pairs on SmolLM2-135M-Instruct, no gradients.

The pairs: the 540 bundled pairs (data/pairs, then data/heldout), then length-controlled variants
of them with only the rejected answer lengthened (nominal ×2, `length_variants`)
until there are `--pairs`; a pair with a response over `--max-response` tokens is left out before
counting. A variant shares its prompt and chosen answer with its original (the audit scores a
shared sequence once, as it always does); every rejected answer is a new sequence. Then the whole
`audit()` call is timed (the model is loaded before, and timed on its own), with its parts
(scoring, dose-response, the rest: statistics and tables), and, on the first `--compare` pairs,
scoring with a prompt and its responses packed into one row against one row per sequence (the
same log-probs).

    python benchmarks/bench_audit.py --pairs 1000 --max-response 256 \
        --json benchmarks/results/audit-cpu-float32.json

`--data PATH` audits real pairs instead: a stratified random sample of `--pairs` of them
(`data.sample_pairs`, seeded), whole unless `--max-length` cuts them (the audit counts what a
cut removes); `--max-response` does not apply:

    python benchmarks/bench_audit.py --data ../shared/datasets/alpaca_eval --pairs 1000 \
        --dtype bfloat16 --json benchmarks/results/audit-real-cpu-bfloat16.json

`--save DIR` writes the audit (page, tables); `--diff A B` compares two saved audits (e.g. float32
and bfloat16: per-pair differences, accuracy counts, the headline statistics) and exits.
"""

from __future__ import annotations

import time
import warnings

import _common as C


def parse(argv=None):
    p = C.parser(__doc__, model=False)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--max-response", type=int, default=256, help="response tokens, per side")
    p.add_argument("--data", default=None, help="audit a sample of these pairs (any source "
                   "`data.load_any` reads) instead of the bundled pairs and their variants")
    p.add_argument("--max-length", type=int, default=None, help="the audit's cut (tokens per "
                   "side; default: none)")
    p.add_argument("--dose-pairs", type=int, default=None, help="default: the audit's")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--compare", type=int, default=200, help="pairs for packed vs one row per "
                   "sequence (0 skips it)")
    p.add_argument("--wait-idle", type=float, default=600.0,
                   help="wait up to this many seconds for an idle machine first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="also write the audit (page, tables) here")
    p.add_argument("--diff", nargs=2, metavar=("A", "B"), help="compare two saved audits")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def workload(tokenizer, n: int, max_response: int):
    """(pairs, what they are): bundled pairs, then ×2-rejected variants, each response ≤
    max_response tokens."""
    from prefstudy.data import PairSet, data_dir, load_pairs
    from prefstudy.scoring import encode_for_scoring, length_table
    from prefstudy.variants import length_variants

    train, heldout = load_pairs(data_dir() / "pairs"), load_pairs(data_dir() / "heldout")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = length_variants([*train, *heldout], (2.0,))
    candidates = [*train, *heldout, *variants]
    lengths = length_table(encode_for_scoring(candidates, tokenizer, max_length=None).full)
    short = set(lengths.pair_id[(lengths.len_p_full <= max_response)
                                & (lengths.len_n_full <= max_response)])
    kept = [p for p in candidates if p.pair_id in short][:n]
    n_bundled = sum(1 for p in kept if "variant_of" not in p.meta)
    what = (f"{n_bundled} bundled pairs and {len(kept) - n_bundled} ×2-rejected variants "
            f"(responses ≤ {max_response} tokens)")
    return PairSet(tuple(kept)), what, lengths[lengths.pair_id.isin(short)]


def real_workload(tokenizer, source: str, n: int, seed: int):
    """(pairs, what they are, lengths): a stratified random sample of n pairs of `source`."""
    from prefstudy.data import load_any, sample_pairs
    from prefstudy.scoring import encode_for_scoring, length_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_any(source)
    pairs = sample_pairs(loaded, n, seed=seed)
    lengths = length_table(encode_for_scoring(pairs, tokenizer, max_length=None).full)
    what = (f"a stratified random sample (seed {seed}) of the {len(loaded)} pairs of {source} "
            f"({loaded.layout} layout), whole")
    return pairs, what, lengths


def tokens_through_model(pairs, tokenizer, packed: bool) -> int:
    """Tokens the model sees scoring `pairs` once: packed, each prompt once per row of its
    responses; else prompt + response per distinct sequence."""
    from prefstudy.scoring import _rows, encode_for_scoring

    items = encode_for_scoring(pairs, tokenizer, max_length=None).encoded.items
    seqs = {s for e in items for s in ((e.prompt_ids, e.chosen_ids), (e.prompt_ids, e.rejected_ids))}
    if not packed:
        return sum(len(p) + len(r) for p, r in seqs)
    return sum(len(p) + sum(map(len, rs)) for p, rs in _rows(sorted(seqs)))


def compare_packing(model, tokenizer, pairs, batch_size: int) -> list[dict]:
    """Scoring time of `pairs`, packed and one row per sequence, alternated (packed first)."""
    from prefstudy.scoring import score_pairs

    rows = []
    for packed in (True, False, True, False):
        busy = C.cpu_seconds()
        seconds = C.timed(lambda: score_pairs(model, tokenizer, pairs, batch_size=batch_size,
                                              max_length=None, packed=packed))
        rows.append({"packed": packed, "pairs": len(pairs), "seconds": seconds,
                     "s_per_pair": seconds / len(pairs),
                     "tokens": tokens_through_model(pairs, tokenizer, packed),
                     "cores_busy": (C.cpu_seconds() - busy) / seconds})
    return rows


def differences(a: str, b: str) -> None:
    """Print how two saved audits of the same pairs differ: per-pair losses and gaps, pairs whose
    preference verdict flips, and the length and dose statistics side by side."""
    import json
    from pathlib import Path

    import pandas as pd

    first = pd.read_parquet(Path(a) / "pairs.parquet").set_index("pair_id")
    second = pd.read_parquet(Path(b) / "pairs.parquet").set_index("pair_id").loc[first.index]
    rows = [{"column": c, "max_abs_diff": (first[c] - second[c]).abs().max(),
             "median_abs_diff": (first[c] - second[c]).abs().median()}
            for c in ("nll_sum_p", "nll_sum_n", "gap_sum", "loss_p", "loss_n", "gap")]
    print(C.table(rows))
    flips = [{"gap": c, "pairs": len(first), "favours_chosen_A": int((first[c] > 0).sum()),
              "favours_chosen_B": int((second[c] > 0).sum()),
              "verdict_flips": int(((first[c] > 0) != (second[c] > 0)).sum())}
             for c in ("gap_sum", "gap")]
    print(C.table(flips))
    saved = [json.loads((Path(d) / "audit.json").read_text()) for d in (a, b)]
    stats = [{"table": key, "normalisation": ra["normalisation"], "statistic": k,
              "A": ra[k], "B": rb[k]}
             for key, names in (("length", ("r2", "spearman", "slope")),
                                ("dose_summary", ("slope", "slope_lo", "slope_hi")))
             for ra, rb in zip(saved[0][key], saved[1][key]) for k in names]
    print(C.table(stats))


def main(argv=None) -> None:
    args = parse(argv)
    if args.diff:
        differences(*args.diff)
        return
    waited = C.wait_for_idle(max_wait=args.wait_idle) if args.wait_idle > 0 else 0.0
    busy_before = C.busy_fraction()
    env = C.announce(args)
    print(f"# waited {waited:.0f} s for an idle machine; {100 * busy_before:.0f}% busy at start",
          flush=True)

    from prefstudy.audit import DOSE_PAIRS, audit
    from prefstudy.models import load_model

    started = time.perf_counter()
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - started
    pairs, what, lengths = (real_workload(tokenizer, args.data, args.pairs, args.seed)
                            if args.data else workload(tokenizer, args.pairs, args.max_response))
    dose_pairs = DOSE_PAIRS if args.dose_pairs is None else args.dose_pairs
    print(f"# {len(pairs)} pairs: {what}; dose-response on {dose_pairs} of them", flush=True)
    started, busy = time.perf_counter(), C.cpu_seconds()
    result = audit(pairs, model=model, tokenizer=tokenizer, dose_pairs=dose_pairs,
                   batch_size=args.batch_size, seed=args.seed, max_length=args.max_length)
    total = time.perf_counter() - started
    seconds = result.settings["seconds"]
    row = {"pairs": len(pairs), "dose_pairs": dose_pairs, "load_model_s": load_s, "total_s": total,
           "scoring_s": seconds["scoring"], "dose_s": seconds["dose"],
           "rest_s": total - seconds["scoring"] - seconds["dose"],
           "s_per_pair": total / len(pairs), "scoring_s_per_pair": seconds["scoring"] / len(pairs),
           "tokens_packed": tokens_through_model(pairs, tokenizer, True),
           "max_response_tokens": int(lengths[["len_p_full", "len_n_full"]].max().max()),
           "mean_tokens_per_pair": float((2 * lengths.prompt_len_full + lengths.len_p_full
                                          + lengths.len_n_full).mean()),
           "cores_busy": (C.cpu_seconds() - busy) / total}
    print(C.table([row]), flush=True)
    if args.save:
        from prefstudy.audit import write_audit

        write_audit(result, args.save)
    compare = (compare_packing(model, tokenizer, pairs[:args.compare], args.batch_size)
               if args.compare else [])
    if compare:
        print(C.table(compare))
    C.save_json(args.json, {"environment": env, "waited_s": waited, "busy_before": busy_before,
                            "workload": what, "audit": row, "packing": compare,
                            "args": vars(args)})


if __name__ == "__main__":
    main()
