#!/usr/bin/env bash
# Perplexity of SmolLM2-135M-Instruct on the KJV Book of Genesis (benches/data/kjv_genesis.txt,
# from Debian's bible-kjv-text; see benches/make_ppl_text.sh), 40 chunks of 512 tokens
# (20,480 tokens, the second half of each chunk scored), in flare as f32, --quantization fp8,
# a compressed-tensors W4A16 copy made by tests/fixtures/make_quant_fixtures.py --w4a16
# (round-to-nearest, symmetric, group 64: SmolLM2's hidden size 576 is not a multiple of 128),
# the GGUF Q4_1, and f32 weights with --kv-cache-dtype fp8,
# then llama.cpp's llama-perplexity on the same GGUF and text.
# RUNS="w4a16 fp8-kv" picks some of the runs (names below; llama.cpp is `lcpp`).
# Raw output: benches/results/ppl_smollm2_<date>.txt; summary: benches/results/ppl_smollm2.md
set -euo pipefail
cd "$(dirname "$0")/.."
M=${FLARE_CACHE:-$HOME/.cache/flare}/models
HF=$M/SmolLM2-135M-Instruct-hf
GGUF=$M/SmolLM2-135M-Instruct.Q4_1.gguf
W4=$M/SmolLM2-135M-Instruct-w4a16
LCPP=${LCPP:-$HOME/.cache/flare/peers/lcpp/build/bin/llama-perplexity}
FLARE=${FLARE:-${CARGO_TARGET_DIR:-target}/release/flare}
TEXT=benches/data/kjv_genesis.txt
CHUNKS=${CHUNKS:-40}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=benches/results/ppl_smollm2_$(date -u +%Y%m%dT%H%M).txt
RUNS=${RUNS:-f32 fp8 w4a16 gguf-q4_1 fp8-kv lcpp}
[ -d "$W4" ] || python3 tests/fixtures/make_quant_fixtures.py --w4a16 "$HF" "$W4" --group 64
{
  echo "# $(date -u) $(uname -n) threads=$RAYON_NUM_THREADS; $(nproc) cores; uptime: $(uptime)"
  echo "# flare $(git rev-parse --short HEAD); text $TEXT ($(wc -c <$TEXT) bytes); $CHUNKS chunks x 512"
  for run in "f32|$HF|" "fp8|$HF|--quantization fp8" "w4a16|$W4|" "gguf-q4_1|$GGUF|" \
     "fp8-kv|$HF|--kv-cache-dtype fp8"; do
    IFS='|' read -r name model extra <<<"$run"
    [[ " $RUNS " == *" $name "* ]] || continue
    echo "## flare $name: $FLARE eval perplexity $model --text $TEXT --chunks $CHUNKS --dtype f32 $extra"
    echo "# uptime: $(uptime)"
    # shellcheck disable=SC2086
    "$FLARE" eval perplexity "$model" --text "$TEXT" --chunks "$CHUNKS" --dtype f32 $extra 2>&1
  done
  [[ " $RUNS " == *" lcpp "* ]] || exit 0
  echo "## llama.cpp: llama-perplexity -m $GGUF -f $TEXT -c 512 --chunks $CHUNKS -t $RAYON_NUM_THREADS"
  echo "# uptime: $(uptime)"
  "$LCPP" -m "$GGUF" -f "$TEXT" -c 512 --chunks "$CHUNKS" -t "$RAYON_NUM_THREADS" 2>&1 | grep -v "^llama_model_loader: - kv\|^load_tensors\|^print_info" || true
} | tee "$OUT"
