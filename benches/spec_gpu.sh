#!/usr/bin/env bash
# Speculative decoding on a GPU (issue 10, acceptance 4). UNRUN: written on a CPU-only machine.
# Dummy Llama-3.1-8B (random weights of the real config, bf16, made on the GPU):
#  1. the verify-cost curve: forward time of one sequence computing 1..K+1 tokens (`flare bench
#     latency --input-len n --output-len 2`: its prefill time is one forward of n tokens), at
#     batch 1 and 16;
#  2. n-gram speculation off vs on, batch 1 and 16, on the input-grounded dataset. Random weights
#     do not copy their input, so acceptance will be low: this part measures what speculation
#     costs when it does not pay (the "no slowdown" side, and disable_by_batch_size); the
#     speedup side needs a real model (set MODEL=label path, e.g. a local Llama 3.1 8B dir).
# Results (JSON + log) go to OUTDIR.
#
#   FLARE=/path/to/flare benches/spec_gpu.sh [OUTDIR]
# Build the binary here with scripts/gpu_bundle.sh (cuda feature) and ship it as gpu_check.sh
# describes; then, e.g.: run(carry=["gpu_bundle/bin"], timeout_s=600, command="gunzip -c
# gpu_bundle/bin/flare.gz > /tmp/flare && chmod +x /tmp/flare && FLARE=/tmp/flare bash
# benches/spec_gpu.sh $OUT/spec")
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
FLARE="${FLARE:-${CARGO_TARGET_DIR:-target}/release/flare}"
MODEL="${MODEL:-preset:llama-3.1-8b}"
K="${K:-4}"
OUTDIR="${1:-benches/results/spec-gpu-$(date -u +%Y%m%d)}"
STEP_TIMEOUT="${STEP_TIMEOUT:-240}"
mkdir -p "$OUTDIR"
common=(--kv-cache-memory 17179869184 --max-model-len 2048 --no-progress)
log() { echo "$*" | tee -a "$OUTDIR/log.txt"; }
log "### $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)"

for b in 1 16; do
  for n in $(seq 1 $((K + 1))); do
    log "### verify cost: batch $b, $n tokens per sequence"
    timeout "$STEP_TIMEOUT" "$FLARE" bench latency "$MODEL" "${common[@]}" --input-len "$n" \
      --output-len 2 --batch-size "$b" --num-iters-warmup 3 --num-iters 10 \
      --save-result "$OUTDIR/verify-b$b-n$n.json" 2>&1 | tee -a "$OUTDIR/log.txt"
  done
done

ngram="{\"method\": \"ngram\", \"num_speculative_tokens\": $K, \"prompt_lookup_min\": 2, \"prompt_lookup_max\": 4}"
for b in 1 16; do
  n=$((b == 1 ? 4 : 32))
  for v in off ngram off ngram; do
    args=("$FLARE" bench throughput "$MODEL" "${common[@]}" --dataset grounded --num-prompts "$n"
      --output-len 128 --temperature 0 --max-num-seqs "$b" --save-result "$OUTDIR/$v-b$b-$RANDOM.json")
    [ "$v" = ngram ] && args+=(--speculative-config "$ngram")
    log "### $v batch $b: ${args[*]}"
    timeout "$STEP_TIMEOUT" "${args[@]}" 2>&1 | tee -a "$OUTDIR/log.txt"
  done
done
log "### done $(date -u +%FT%TZ)"
