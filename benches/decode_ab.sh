#!/usr/bin/env bash
# A/B of two flare binaries on batch-1 decode after a context of CTX tokens: N alternating
# runs of `flare bench latency`, one median decode step (ms) per line.
# Usage: benches/decode_ab.sh A B CTX N [extra flare flags...]
#   env: T=threads (2), GGUF=model (SmolLM2-135M Q4_1), OUTLEN=decode steps per run (128)
set -euo pipefail
A=$1 B=$2 CTX=$3 N=$4
shift 4
gguf=${GGUF:-${FLARE_CACHE:-$HOME/.cache/flare}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
for _ in $(seq "$N"); do
  for b in "$A" "$B"; do
    r=$(RAYON_NUM_THREADS=${T:-2} RUST_LOG=warn "$b" bench latency "$gguf" --input-len "$CTX" \
      --output-len "${OUTLEN:-128}" --batch-size 1 --num-iters-warmup 0 --num-iters 1 \
      --kv-cache-memory 1000000000 --max-model-len $((CTX + 300)) --no-progress "$@" 2>&1 |
      grep -E 'Median decode step' | awk '{print $NF}')
    echo "$(basename "$b") $r"
  done
done
