#!/usr/bin/env bash
# Interleaved A/B of two flare binaries (before/after a kernel change) on the same GGUF:
# batch-1 prompt and decode at 1 and 2 threads, total tok/s at batch 8 and 32 (2 threads),
# with the load before each run. Usage: benches/qgemm_ab.sh OLD_BIN NEW_BIN MODEL.gguf
set -euo pipefail
old=$1 new=$2 gguf=$3
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nproc) cores"
echo "# old: $old  new: $new  model: $gguf"
for t in 1 2; do
  for bin in "$old" "$new"; do
    echo "## latency, prompt 128, decode 128, RAYON_NUM_THREADS=$t, $bin; load: $(uptime)"
    RAYON_NUM_THREADS=$t RUST_LOG=warn HF_HUB_OFFLINE=1 "$bin" bench latency "$gguf" \
      --input-len 128 --output-len 128 --batch-size 1 --num-iters-warmup 1 --num-iters 3 \
      --max-model-len 384 --no-progress 2>&1 | grep 'tok/s'
  done
done
for b in 8 32; do
  for bin in "$old" "$new"; do
    echo "## throughput, $b prompts of 128, generate 64, RAYON_NUM_THREADS=2, $bin; load: $(uptime)"
    RAYON_NUM_THREADS=2 RUST_LOG=warn HF_HUB_OFFLINE=1 "$bin" bench throughput "$gguf" \
      --input-len 128 --output-len 64 --num-prompts "$b" --max-model-len 512 --no-progress 2>&1 |
      tail -n 1
  done
done
