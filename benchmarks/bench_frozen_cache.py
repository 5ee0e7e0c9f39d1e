"""Per-run time of a study run with and without the frozen-block cache (prefstudy.frozen).

With only the top blocks trainable, the bottom blocks' output for every training and held-out
sequence is the same in every run of a study. `cache_frozen = true` (the default) computes it
once per sequence and reuses it; `false` runs the full model at every step and evaluation. This
trains the same run (the committed CPU study's settings, `--steps` steps, evaluations every
`--eval-every`) three ways, after a one-step warm-up that fills the disk caches every run of a
study shares (reference log-probs, the starting model's evaluations):

    uncached      cache_frozen = false
    cached, cold  cache_frozen = true from an empty store: a study's first run, or a lone run
    cached, warm  cache_frozen = true again, the store filled by the cold run: every later run
                  of a study (they train on the same pairs and evaluate the same held-out ones)

and reports the wall time of `train()` of each and the largest difference between the uncached
and cached runs' per-pair training losses.

    python benchmarks/bench_frozen_cache.py --steps 8 --eval-every 4 \
        --json benchmarks/results/frozen-cache-cpu.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common as C


def one_run(cache: bool, steps: int, eval_every: int, objective: str, out: Path) -> dict:
    from prefstudy.records import load_table
    from prefstudy.study import load_study
    from prefstudy.train import train
    study = load_study(C.REPO / "configs/study.toml", profile="cpu-full", output=out,
                       overrides={"steps": steps, "eval_every": eval_every,
                                  "cache_frozen": cache})
    cfg = next(c for c in study.configs() if c.objective == objective and c.lr == 1e-3)
    began = time.perf_counter()
    folder = train(cfg, progress=False)
    seconds = time.perf_counter() - began
    records = load_table(folder, "records").sort_values(["step", "pair_id"])
    return {"cache_frozen": cache, "seconds": seconds, "loss_p": records.loss_p.tolist(),
            "loss_n": records.loss_n.tolist()}


def main(argv=None) -> None:
    p = C.parser(__doc__, model=False)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--eval-every", type=int, default=6)
    p.add_argument("--objective", default="dpo")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    env = C.environment("cpu")
    C.print_environment(env)
    from prefstudy import frozen

    with tempfile.TemporaryDirectory() as tmp:  # warm the disk caches all runs share (the
        one_run(False, 1, 1, args.objective, Path(tmp))  # reference log-probs, step-0 evals)
    runs = {}
    for name, cache in (("uncached", False), ("cached, cold", True), ("cached, warm", True)):
        if name == "cached, cold":
            frozen._STORE.clear()  # nothing computed by an earlier run of this process
        with tempfile.TemporaryDirectory() as tmp:
            runs[name] = one_run(cache, args.steps, args.eval_every, args.objective, Path(tmp))
    base = runs["uncached"]
    diff = max(abs(a - b) for r in list(runs.values())[1:] for k in ("loss_p", "loss_n")
               for a, b in zip(base[k], r[k]))
    print(f"{args.objective}, lr 1e-3, {args.steps} steps, evaluations every {args.eval_every}:")
    for name, r in runs.items():
        print(f"  {name:13} {r['seconds']:7.1f} s  ×{base['seconds'] / r['seconds']:.2f}")
    print(f"  largest per-pair loss difference from the uncached run: {diff:.2e} nats/token")
    C.save_json(args.json, {"env": env, "args": vars(args), "max_loss_diff": diff,
                            "seconds": {name: r["seconds"] for name, r in runs.items()}})


if __name__ == "__main__":
    main()
