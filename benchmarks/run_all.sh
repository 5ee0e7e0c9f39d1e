#!/usr/bin/env bash
# Every benchmark with the settings benchmarks/RESULTS.md reports, from the repository root:
#   bash benchmarks/run_all.sh            # CPU (the recorded results)
#   DEVICE=cuda bash benchmarks/run_all.sh  # a GPU: the same commands on cuda
# Each script prints its table and the machine; JSON copies go to benchmarks/results/.
# Run on an otherwise idle machine: the timings are wall-clock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 TRANSFORMERS_VERBOSITY=error \
       TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg

# 1. Training-step throughput, prefstudy against TRL's DPOTrainer (SmolLM2-135M, all blocks,
#    batch 4, max_length 128, float32).
$PY benchmarks/bench_throughput.py --device "$DEVICE" --dtype float32 --batch-size 4 \
    --max-length 128 --max-prompt-length 64 --warmup 2 --steps 4 --repeats 3 \
    --json "$OUT/throughput-$DEVICE.json" | tee "$OUT/throughput-$DEVICE.txt"

# 2. Per-pair record overhead (same model and batch).
$PY benchmarks/bench_record_overhead.py --device "$DEVICE" --dtype float32 --batch-size 4 \
    --max-length 128 --warmup 2 --steps 8 --repeats 3 \
    --json "$OUT/record-overhead-$DEVICE.json" | tee "$OUT/record-overhead-$DEVICE.txt"

# 3. Peak memory of the log-prob computation, token_logps against plain_token_logps.
$PY benchmarks/bench_logprob_memory.py --device "$DEVICE" --dtype float32 --batch-size 4 \
    --max-length 128 --chunks 2048,256 --repeats 3 \
    --json "$OUT/logprob-memory-$DEVICE.json" | tee "$OUT/logprob-memory-$DEVICE.txt"

# 4. Per-pair gradient statistics against a plain backward pass and one backward per pair.
$PY benchmarks/bench_gradstats.py --device "$DEVICE" --dtype float32 --batch-size 4 \
    --max-length 128 --trainable-blocks 4,all --repeats 3 \
    --json "$OUT/gradstats-$DEVICE.json" | tee "$OUT/gradstats-$DEVICE.txt"

# 5. Analysis speed on 10 million synthetic records (CPU only: no model involved).
if [ "$DEVICE" = cpu ]; then
  $PY benchmarks/bench_analysis.py --rows 10000000 --labels 13 --seeds 3 --batch-size 16 \
      --n-boot 3 --repeats 3 --report-timeout 900 \
      --json "$OUT/analysis.json" | tee "$OUT/analysis.txt"
fi
