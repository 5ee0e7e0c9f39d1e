#!/usr/bin/env bash
# Every benchmark with the settings benchmarks/RESULTS.md reports, from the repository root:
#   bash benchmarks/run_all.sh              # CPU (the recorded results)
#   DEVICE=cuda bash benchmarks/run_all.sh  # a GPU: the same comparisons on cuda, more steps
# Each script prints its table and the machine; text and JSON copies go to $OUT
# (default benchmarks/results/). Timings are wall-clock: run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 TRANSFORMERS_VERBOSITY=error \
       TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
if [ "$DEVICE" = cpu ]; then STEPS=4; OVERHEAD_STEPS=8; else STEPS=20; OVERHEAD_STEPS=40; fi
# Every result is named <benchmark>-<device>[-<variant>]:
#   run NAME VARIANT SCRIPT ARGS...  the script's printed output to $OUT/NAME-$DEVICE-VARIANT.txt
#                                    and its JSON to .json (VARIANT "": NAME-$DEVICE)
#   log NAME VARIANT SCRIPT ARGS...  the printed output only, for a script that writes no JSON
result() { echo "$OUT/$1-$DEVICE${2:+-$2}"; }
run() { local file; file=$(result "$1" "$2"); shift 2; "$PY" "$@" --json "$file.json" | tee "$file.txt"; }
log() { local file; file=$(result "$1" "$2"); shift 2; "$PY" "$@" | tee "$file.txt"; }
SMALL=(--device "$DEVICE" --dtype float32 --batch-size 4 --max-length 128 --max-prompt-length 64)
SAVED=$(mktemp -d)  # the audits item 9 compares
trap 'rm -rf "$SAVED"' EXIT

# 1. Training-step throughput, prefstudy against TRL's DPOTrainer (SmolLM2-135M-Instruct, all
#    blocks, DPO β = 0.1).
run throughput "" benchmarks/bench_throughput.py "${SMALL[@]}" --warmup 2 --steps "$STEPS" \
    --repeats 3
if [ "$DEVICE" != cpu ]; then  # the GPU study's shape and dtype as well
  run throughput b16-l256-bf16 benchmarks/bench_throughput.py --device "$DEVICE" \
      --dtype bfloat16 --batch-size 16 --max-length 256 --max-prompt-length 96 --warmup 3 \
      --steps 20 --repeats 3
fi
# Where a step's time goes: prefstudy's phases and operators, and TRL's fastest setting's.
log profile-step prefstudy benchmarks/profile_step.py "${SMALL[@]}" --side prefstudy --ops
log profile-step trl-precompute-nogc benchmarks/profile_step.py "${SMALL[@]}" \
    --side trl-precompute-nogc --ops

# 2. Per-pair record overhead (same model and batch).
run record-overhead "" benchmarks/bench_record_overhead.py "${SMALL[@]}" --warmup 2 \
    --steps "$OVERHEAD_STEPS" --repeats 3

# 3. Peak memory of the log-prob computation: token_logps against plain_token_logps.
run logprob-memory "" benchmarks/bench_logprob_memory.py "${SMALL[@]}" --chunks auto,2048,256 \
    --repeats 3
run logprob-memory frozen-head benchmarks/bench_logprob_memory.py "${SMALL[@]}" --scopes head \
    --no-head-grad --chunks auto,2048,256 --repeats 3
run logprob-memory b16-l256 benchmarks/bench_logprob_memory.py --device "$DEVICE" \
    --dtype float32 --batch-size 16 --max-length 256 --max-prompt-length 96 --scopes head \
    --chunks auto,2048,512 --repeats 3

# 4. Per-pair gradient statistics against a plain backward and one backward per pair, and the
#    same in float64 (a precision check of the norms, not a timing).
run gradstats "" benchmarks/bench_gradstats.py "${SMALL[@]}" --trainable-blocks 4,all --repeats 3
log gradstats float64-check benchmarks/bench_gradstats.py "${SMALL[@]}" --trainable-blocks all \
    --variants gradstats,naive,per-pair --repeats 1 --float64

# 5. Analysis speed on 10 million synthetic records (no model: CPU only).
if [ "$DEVICE" = cpu ]; then
  run analysis "" benchmarks/bench_analysis.py --rows 10000000 --labels 13 --seeds 3 \
      --batch-size 16 --n-boot 1000 --repeats 3 --report-timeout 900
fi

# 6. The gradient audit at the starting weights: 256 bundled pairs, top 4 blocks (2 threads and
#    1), and 32 pairs with the top 4 and with all blocks.
run gradient-audit 256 benchmarks/bench_gradient_audit.py --device "$DEVICE" --pairs 256 \
    --trainable-blocks 4
if [ "$DEVICE" = cpu ]; then
  run gradient-audit 256-1thread benchmarks/bench_gradient_audit.py --device cpu --pairs 256 \
      --trainable-blocks 4 --threads 1
fi
run gradient-audit 32-all-blocks benchmarks/bench_gradient_audit.py --device "$DEVICE" \
    --pairs 32 --trainable-blocks 4,all

# 7. Cost of WPO weighting (use_weighting): the step and the output head with and without
#    log Σ_v p_v², top 4 blocks and all blocks.
run wpo-weighting "" benchmarks/bench_wpo_weighting.py "${SMALL[@]}" --trainable-blocks 4,all \
    --repeats 7

# 8. A study run with and without the frozen-block cache (the CPU study's top 4 blocks; the GPU
#    profile trains every block, so nothing is frozen there).
if [ "$DEVICE" = cpu ]; then
  run frozen-cache "" benchmarks/bench_frozen_cache.py --steps 8 --eval-every 4
fi

# 9. prefstudy audit of 1,000 pairs (≤ 256 response tokens), no gradients: float32 and bfloat16,
#    what bfloat16 changes, and packed scoring against one row per sequence on 200 pairs.
run audit float32 benchmarks/bench_audit.py --device "$DEVICE" --dtype float32 --pairs 1000 \
    --compare 0 --save "$SAVED/float32"
run audit bfloat16 benchmarks/bench_audit.py --device "$DEVICE" --dtype bfloat16 --pairs 1000 \
    --compare 0 --save "$SAVED/bfloat16"
log audit float32-vs-bfloat16 benchmarks/bench_audit.py --diff "$SAVED/float32" "$SAVED/bfloat16"
run audit packing benchmarks/bench_audit.py --device "$DEVICE" --pairs 200 --compare 200
