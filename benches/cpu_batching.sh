#!/usr/bin/env bash
# Aggregate output tokens/s of `flare generate --prompts-file` at batch 1, 8 and 32 on the
# default model, GGUF Q4_1 and f32 safetensors, greedy, 64 new tokens per prompt (ignore_eos so
# every request does the same work). Usage: benches/cpu_batching.sh [OUTFILE]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benches/results/cpu_batching-$(date +%Y-%m-%d).txt}
cargo build --release -q
cache=${FLARE_CACHE:-$HOME/.cache/flare}/models
{
  echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) host $(uname -m) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) threads ${CANDLE_NUM_THREADS:-all}"
  for model in "$cache/SmolLM2-135M-Instruct.Q4_1.gguf" "$cache/SmolLM2-135M-Instruct-hf"; do
    for n in 1 8 32; do
      head -n "$n" benches/prompts32.txt > /tmp/flare_prompts_$n.txt
      echo "## $(basename "$model") batch $n"
      RUST_LOG=warn target/release/flare generate "$model" --prompts-file /tmp/flare_prompts_$n.txt \
        --chat --max-tokens 64 --ignore-eos 2>&1 >/dev/null | tail -n 1
    done
  done
} | tee "$out"
