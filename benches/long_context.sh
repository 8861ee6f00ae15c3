#!/usr/bin/env bash
# Long prompts and long-context decode, flare against llama.cpp on the same GGUF, interleaved in
# one run (the peer is the one benches/vs_llamacpp.sh builds; run that once first):
# - prefill time and prompt tok/s for prompts of 512..8192 tokens (`llama-bench -p P -n 0`
#   against `flare bench latency --input-len P`);
# - decode tok/s after a long context (`llama-bench -n 32 -d CTX` against the decode steps of
#   `flare bench latency --input-len CTX`), beside the short-context figure.
# Usage: benches/long_context.sh [GGUF] [OUTFILE]
#   PROMPTS="512 1024 2048 4096 8192"  THREADS="1 2"  DEPTHS="16 4000" (either empty: skip)  PEER=0 (flare only)
#   FLARE_OLD=path: an A/B, that binary runs right after each run of $FLARE (interleaved)
#   FLARE_ARGS / FLARE_OLD_ARGS: extra flags for each (e.g. "--kv-cache-dtype fp16", the cache
#   type llama.cpp uses by default); FLARE_OLD may be $FLARE itself for an A/B of flags
#   PEER_ARGS: extra llama-bench flags (e.g. "-ctk q8_0 -ctv q8_0 -fa 1" beside flare's fp8 cache)
set -euo pipefail
# An 8,192-token prompt plus its outputs runs past SmolLM2's 8,192 positions, as llama.cpp's
# runs do (it only warns); flare refuses that unless told.
export FLARE_ALLOW_LONG_MAX_MODEL_LEN=1
cd "$(dirname "$0")/.."
cache=${FLARE_CACHE:-$HOME/.cache/flare}
gguf=${1:-$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
out=${2:-benches/results/long-context-$(basename "$gguf" .gguf)-$(date +%Y-%m-%d).txt}
prompts=${PROMPTS-512 1024 2048 4096 8192}
threads=${THREADS:-1 2}
depths=${DEPTHS-16 4000}
bin=$cache/peers/lcpp/build/bin
flare=${FLARE:-${CARGO_TARGET_DIR:-target}/release/flare}
peer=${PEER:-1}
old=${FLARE_OLD:-}
kv=(--kv-cache-memory 1000000000)
read -r -a new_args <<< "${FLARE_ARGS:-}"
read -r -a old_args <<< "${FLARE_OLD_ARGS:-}"
read -r -a peer_args <<< "${PEER_ARGS:-}"
# Extra flags of the n-th binary of "$flare $old".
args_of() { if [ "$1" = 0 ]; then echo "${new_args[@]}"; else echo "${old_args[@]}"; fi; }
{
  echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty') $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  echo "# flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^avx|vnni|fma' | sort -u | tr '\n' ' ')"
  echo "# model: $gguf; prompts: $prompts; depths: $depths; threads: $threads"
  echo "# flare flags: [${FLARE_ARGS:-}]${old:+ old: [${FLARE_OLD_ARGS:-}]}; llama-bench flags: [${PEER_ARGS:-}]"
  for t in $threads; do
    for p in $prompts; do
      echo "## load: $(uptime)"
      if [ "$peer" = 1 ]; then
        echo "## llama.cpp llama-bench, prompt $p, threads $t"
        "$bin/llama-bench" -m "$gguf" -t "$t" -p "$p" -n 0 -r 1 -o md "${peer_args[@]}" 2>/dev/null | grep -E 'pp[0-9]'
      fi
      i=0
      for b in $flare $old; do
        # shellcheck disable=SC2046
        set -- $(args_of $i); i=$((i + 1))
        echo "## flare bench latency, prompt $p, threads $t, binary $b $*"
        RAYON_NUM_THREADS=$t RUST_LOG=warn $b bench latency "$gguf" "$@" --input-len "$p" \
          --output-len 2 --batch-size 1 --num-iters-warmup 0 --num-iters 1 "${kv[@]}" \
          --max-model-len $((p + 64)) --no-progress 2>&1 | grep -E 'Median prefill|Prefill \(tok'
      done
    done
    for c in $depths; do
      echo "## load: $(uptime)"
      if [ "$peer" = 1 ]; then
        echo "## llama.cpp llama-bench, decode 32 after a context of $c, threads $t"
        "$bin/llama-bench" -m "$gguf" -t "$t" -p 0 -n 32 -d "$c" -r 1 -o md "${peer_args[@]}" 2>/dev/null | grep -E 'tg[0-9]'
      fi
      i=0
      for b in $flare $old; do
        # shellcheck disable=SC2046
        set -- $(args_of $i); i=$((i + 1))
        echo "## flare bench latency, decode 64 after a prompt of $c, threads $t, binary $b $*"
        RAYON_NUM_THREADS=$t RUST_LOG=warn $b bench latency "$gguf" "$@" --input-len "$c" \
          --output-len 64 --batch-size 1 --num-iters-warmup 0 --num-iters 1 "${kv[@]}" \
          --max-model-len $((c + 128)) --no-progress 2>&1 | grep -E 'Median decode|Decode \(tok'
      done
    done
  done
} | tee "$out"
