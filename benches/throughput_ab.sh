#!/usr/bin/env bash
# A/B of flare binaries on batched total tok/s (the batch rows of benches/vs_llamacpp.sh):
# `flare bench throughput` with B prompts of 128 tokens generating 64, the binaries alternating
# round by round so that the VM's drift hits each alike. One line per run: binary, batch, total
# tok/s.
# Usage: benches/throughput_ab.sh OUT ROUNDS BIN... (env: BATCHES="8 32", T=2, GGUF,
#   FLARE_ARGS, default "--kv-cache-dtype fp16" as vs_llamacpp.sh's committed runs)
set -euo pipefail
out=$1 rounds=$2
shift 2
gguf=${GGUF:-${FLARE_CACHE:-$HOME/.cache/flare}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
read -r -a extra <<< "${FLARE_ARGS:---kv-cache-dtype fp16}"
{
  echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), threads ${T:-2}; model $gguf; flags [${extra[*]}]"
  for r in $(seq "$rounds"); do
    for b in ${BATCHES:-8 32}; do
      for bin in "$@"; do
        tps=$(RAYON_NUM_THREADS=${T:-2} RUST_LOG=warn "$bin" bench throughput "$gguf" \
          --input-len 128 --output-len 64 --num-prompts "$b" --kv-cache-memory 1000000000 \
          "${extra[@]}" --max-model-len 512 --no-progress 2>&1 |
          grep -oE '[0-9.]+ total tokens/s' | cut -d' ' -f1)
        echo "round $r $(basename "$bin") batch $b $tps"
      done
    done
  done
} | tee "$out"
