#!/usr/bin/env bash
# Where a decode step and a prefill step of flare spend their time on the CPU, by op class:
# `perf record` (sampling, user + kernel) around `flare bench latency`, symbols grouped by
# benches/perf_classes.py. Model loading is a class of its own, so read the step classes as
# shares of the rest.
# Usage: benches/profile_cpu.sh [MODEL] [OUTFILE]   (env: THREADS=1, FLARE=path to the binary,
#   KINDS="decode prefill"; long-context kinds: prefill2k, prefill8k, decode4k (a 4,000-token
#   prompt then 256 decode steps: the samples mix both, compare it against prefill4k)),
#   FLARE_ARGS="..." (extra flare flags, e.g. "--kv-cache-dtype fp16")
set -euo pipefail
# An 8,192-token prompt plus its outputs runs past SmolLM2's 8,192 positions, as llama.cpp's
# runs do (it only warns); flare refuses that unless told.
export FLARE_ALLOW_LONG_MAX_MODEL_LEN=1
cd "$(dirname "$0")/.."
model=${1:-${FLARE_CACHE:-$HOME/.cache/flare}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
out=${2:-benches/results/profile-cpu-$(basename "$model" .gguf)-$(date +%Y-%m-%d).txt}
flare=${FLARE:-${CARGO_TARGET_DIR:-target}/release/flare}
t=${THREADS:-1}
tmp=$(mktemp -d)
{
  echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty') binary $flare"
  echo "# $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2); RAYON_NUM_THREADS=$t; FLARE_CPU_QGEMM=${FLARE_CPU_QGEMM:-unset}; flags: ${FLARE_ARGS:-none}"
  for kind in ${KINDS:-decode prefill}; do
    case $kind in
      decode) args=(--input-len 16 --output-len 128) ;;
      prefill) args=(--input-len 1024 --output-len 2) ;;
      prefill2k) args=(--input-len 2048 --output-len 2) ;;
      prefill4k) args=(--input-len 4000 --output-len 2) ;;
      prefill8k) args=(--input-len 8192 --output-len 2) ;;
      decode4k) args=(--input-len 4000 --output-len 256) ;;
      *) echo "unknown kind $kind" >&2; exit 2 ;;
    esac
    echo "## $kind: flare bench latency ${args[*]} --batch-size 1; load: $(uptime)"
    # shellcheck disable=SC2086 # FLARE_ARGS is a list of flags
    RAYON_NUM_THREADS=$t RUST_LOG=warn perf record -q -F 499 -o "$tmp/$kind.data" "$flare" bench latency \
      "$model" "${args[@]}" --batch-size 1 --num-iters-warmup 0 --num-iters 1 \
      --kv-cache-memory 1000000000 --max-model-len 8300 --no-progress ${FLARE_ARGS:-} 2>&1 |
      grep -E 'Median (prefill|decode)'
    perf report -i "$tmp/$kind.data" --no-children --sort symbol --stdio 2>/dev/null |
      python3 benches/perf_classes.py
  done
} | tee "$out"
rm -rf "$tmp"
