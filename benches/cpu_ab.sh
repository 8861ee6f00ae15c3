#!/usr/bin/env bash
# Two flare binaries (A = before, B = after) on the same model and settings, interleaved in one
# run: batch-1 `flare bench latency` per dtype and thread count. Used for "the f32 and bf16
# safetensors paths do not get slower".
# Usage: A=/path/flare-before B=/path/flare-after benches/cpu_ab.sh MODEL OUTFILE
#   DTYPES="f32 bf16" THREADS="2" PROMPT=128 DECODE=64
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
out=$2
{
  echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); model $model"
  echo "# A=$A"
  echo "# B=$B"
  for dt in ${DTYPES:-f32 bf16}; do
    for t in ${THREADS:-2}; do
      for side in A B; do
        bin=${!side}
        echo "## $side dtype $dt threads $t prompt ${PROMPT:-128} decode ${DECODE:-64}; load: $(uptime)"
        RAYON_NUM_THREADS=$t RUST_LOG=warn "$bin" bench latency "$model" --dtype "$dt" \
          --input-len "${PROMPT:-128}" --output-len "${DECODE:-64}" --batch-size 1 \
          --num-iters-warmup 1 --num-iters 3 --kv-cache-memory 300000000 --max-model-len 512 \
          --no-progress 2>&1 | grep -E '^(Median|Prefill|Decode) '
      done
    done
  done
} | tee "$out"
