#!/usr/bin/env bash
# CPU decode before/after the persistent batch and batched sampler (issue 17): `flare bench
# latency` on SmolLM2 Q4_1 (GGUF) and f32 (HF), RAYON_NUM_THREADS=1 and 2, the two binaries
# interleaved so that load changes hit both; each run also reports its CPU time (user + sys
# seconds from bash's `time`), which a loaded machine distorts far less than wall time.
# Usage: benches/persistent_batch_ab.sh BEFORE AFTER OUT [ROUNDS]
set -uo pipefail
before=${1:?before binary}; after=${2:?after binary}; out=${3:?output file}; rounds=${4:-1}
TIMEFORMAT='cpu time: user %U s, sys %S s, wall %R s'
models=~/.cache/flare/models
export HF_HUB_OFFLINE=1
{
  echo "# $(date -u +%FT%TZ) $(uname -n) $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo)"
  for model in "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$models/SmolLM2-135M-Instruct-hf"; do
    for threads in 1 2; do
      for which in $(for _ in $(seq "$rounds"); do echo before after; done); do
        bin=$before; [ "$which" = after ] && bin=$after
        echo "## $which $(basename "$model") RAYON_NUM_THREADS=$threads; load: $(uptime)"
        { time RAYON_NUM_THREADS=$threads "$bin" bench latency "$model" --input-len 32 --output-len 64 \
          --batch-size 1 --num-iters-warmup 2 --num-iters 5 --no-progress 2>&1 | tail -n 12; } 2>&1
      done
    done
  done
} >"$out"
