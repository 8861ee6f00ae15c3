#!/usr/bin/env bash
# Every GPU check of flare's CUDA backend in one go, on the GPU machine (CUDA 13 driver, no
# Rust, no network): the CUDA test binaries (each kernel against its CPU reference, the model
# on CUDA against transformers and the CPU, SmolLM2 bf16 greedy against the f32 reference;
# the batched sampler's kernels against their CPU references and alone vs in a batch),
# SmolLM2 through the CLI on CUDA (greedy, and seeded sampling on the device twice), and decode speed of the dummy Llama-3.1-8B at
# batch 1 (with its memory roofline) and batch 32. Full logs go to LOGDIR; a table is printed
# last. Usage (from the repository root): scripts/gpu_check.sh BUNDLE LOGDIR
#
# Build and ship (here, on a CPU machine):
#   scripts/gpu_bundle.sh          # cuda build, gzipped binaries in gpu_bundle/bin (~40 MB),
#                                  # the SmolLM2 GGUF split in gpu_bundle/smollm2-{a,b}
# Then with the device tool (each call within the machine's warm time, ~30 s, of the last,
# so that /tmp/flare_stage survives; without the GGUF the SmolLM2 rows say "missing"):
#   run(carry=["gpu_bundle/smollm2-a"], command="mkdir -p /tmp/flare_stage && cp gpu_bundle/smollm2-a/* /tmp/flare_stage/")
#   run(carry=["gpu_bundle/smollm2-b"], command="cp gpu_bundle/smollm2-b/* /tmp/flare_stage/")
#   run(carry=["gpu_bundle/bin"], timeout_s=600, command="bash scripts/gpu_check.sh gpu_bundle /tmp/flare_logs; tar czf $OUT/gpu_logs.tar.gz -C /tmp flare_logs")
# The table is at the end of output_tail; the logs come back as one archive (the tool returns
# at most 8 files). Budget: ~1-2 min of device start, the check itself a few minutes.
set -uo pipefail
bundle=${1:?usage: gpu_check.sh BUNDLE LOGDIR}
logs=${2:?usage: gpu_check.sh BUNDLE LOGDIR}
mkdir -p "$logs"
work=/tmp/flare_gpu
mkdir -p "$work/bin"
declare -a rows

row() { rows+=("$(printf '%-44s %s' "$1" "$2")"); }

# The CUDA 13 libraries flare links against: the toolkit's, then PyTorch's wheels.
libs=/usr/local/cuda/lib64
for d in $(python3 -c 'import glob, site; print(" ".join(glob.glob(site.getsitepackages()[0] + "/nvidia/*/lib")))' 2>/dev/null); do
  libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=1 HF_HUB_OFFLINE=1

{ nvidia-smi; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv; } \
  >"$logs/nvidia-smi.txt" 2>&1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)

for gz in "$bundle"/bin/*.gz; do
  name=$(basename "$gz" .gz)
  gunzip -c "$gz" >"$work/bin/$name" && chmod +x "$work/bin/$name"
done
flare=$work/bin/flare
ldd "$flare" >"$logs/ldd.txt" 2>&1
if grep -q 'not found' "$logs/ldd.txt"; then
  row "shared libraries" "MISSING: $(grep 'not found' "$logs/ldd.txt" | awk '{print $1}' | tr '\n' ' ')"
else
  row "shared libraries" "ok"
fi

# SmolLM2 GGUF from its staged parts.
gguf=$work/SmolLM2-135M-Instruct.Q4_1.gguf
parts=$(ls "$bundle"/smollm2-*/*.part* /tmp/flare_stage/*.part* 2>/dev/null)
if [ ! -f "$gguf" ] && [ -n "$parts" ]; then
  # One copy of each part, in order, wherever it was staged.
  for p in 0 1; do
    f=$(ls "$bundle"/smollm2-*/*.part$p /tmp/flare_stage/*.part$p 2>/dev/null | head -1)
    [ -n "$f" ] && cat "$f"
  done >"$gguf.tmp"
  sum=$(cat "$bundle"/smollm2-*/*.sha256 /tmp/flare_stage/*.sha256 2>/dev/null | head -1)
  if [ -n "$sum" ] && [ "$(sha256sum "$gguf.tmp" | cut -d' ' -f1)" = "$sum" ]; then
    mv "$gguf.tmp" "$gguf"
  else
    rm -f "$gguf.tmp"
  fi
fi
[ -f "$gguf" ] && export FLARE_SMOLLM2_GGUF=$gguf

# 1. Test binaries (one at a time: they share the GPU).
for t in "$work"/bin/*; do
  name=$(basename "$t")
  [ "$name" = flare ] && continue
  start=$(date +%s)
  timeout 300 "$t" --test-threads=1 >"$logs/test_$name.log" 2>&1
  rc=$?
  summary=$(grep -E '^test result:' "$logs/test_$name.log" | tail -1 | sed 's/test result: //; s/; finished.*//')
  skipped=$(grep -c SKIPPED "$logs/test_$name.log")
  row "test $name" "$([ $rc = 0 ] && echo PASS || echo "FAIL rc=$rc") ${summary:-no summary} ($(($(date +%s) - start)) s)$([ "$skipped" != 0 ] && echo ", $skipped skipped")"
done
if grep -q 'SmolLM2 bf16 on CUDA' "$logs"/test_cuda_model.log 2>/dev/null; then
  row "SmolLM2 bf16 CUDA vs f32 reference" "$(grep -o '[0-9]* of [0-9]* reference tokens compared, all equal' "$logs/test_cuda_model.log")"
fi

# 2. SmolLM2 through the CLI on CUDA (bf16, dense from the GGUF): a clear question, greedy.
# (The token-for-token comparison with the f32 reference is cuda_model's test above; a CPU
# run of the GGUF would use quantized matmuls, a different computation.)
if [ -f "$gguf" ]; then
  q="What is the capital of France? Answer in one sentence."
  "$flare" generate "$gguf" --device cuda --dtype bf16 --chat --prompt "$q" --max-tokens 40 \
    >"$logs/smollm2_cuda.txt" 2>"$logs/smollm2_cuda.err"
  if grep -q Paris "$logs/smollm2_cuda.txt"; then
    row "SmolLM2 CLI CUDA bf16 answer" "ok: $(head -c 60 "$logs/smollm2_cuda.txt" | tr '\n' ' ')"
  else
    row "SmolLM2 CLI CUDA bf16 answer" "WRONG (see smollm2_cuda.*)"
  fi
  row "SmolLM2 CUDA bf16 decode" "$(grep -o '[0-9.]* tok/s after the first token' "$logs/smollm2_cuda.err")"
else
  row "SmolLM2 (GGUF not staged)" "missing"
fi

# 2b. Sampling on the device (issue 17: adjust_logits + sample_rows, Philox by seed and
# position): a seeded top-k/top-p/min-p run twice gives the same text, and its decode speed
# next to greedy's shows what the batched sampler costs per token.
if [ -f "$gguf" ]; then
  q="Write a short poem about the sea."
  for i in 1 2; do
    "$flare" generate "$gguf" --device cuda --dtype bf16 --chat --prompt "$q" --max-tokens 64 \
      --temperature 0.8 --top-k 50 --top-p 0.9 --seed 7 --ignore-eos \
      >"$logs/smollm2_cuda_seeded_$i.txt" 2>"$logs/smollm2_cuda_seeded_$i.err"
  done
  if [ -s "$logs/smollm2_cuda_seeded_1.txt" ] && cmp -s "$logs/smollm2_cuda_seeded_1.txt" "$logs/smollm2_cuda_seeded_2.txt"; then
    row "SmolLM2 CUDA seeded sampling reproducible" "ok, $(grep -o '[0-9.]* tok/s after the first token' "$logs/smollm2_cuda_seeded_1.err")"
  else
    row "SmolLM2 CUDA seeded sampling reproducible" "FAIL (see smollm2_cuda_seeded_*)"
  fi
fi

# 3. Dummy Llama-3.1-8B: batch 1 and batch 32 decode, and the memory roofline.
prompt="The quick brown fox jumps over the lazy dog. Once upon a time in a land far away"
"$flare" generate preset:llama-3.1-8b --prompt "$prompt" --max-tokens 256 --ignore-eos \
  --kv-cache-memory 8000000000 >/dev/null 2>"$logs/llama8b_b1.err"
b1=$(grep -o '[0-9.]* tok/s after the first token' "$logs/llama8b_b1.err" | grep -o '^[0-9.]*')
"$flare" generate preset:llama-3.1-8b --prompts-file benches/prompts32.txt --max-tokens 128 \
  --ignore-eos --kv-cache-memory 8000000000 >/dev/null 2>"$logs/llama8b_b32.err"
b32=$(grep -o '[0-9.]* tok/s aggregate' "$logs/llama8b_b32.err" | grep -o '^[0-9.]*')
bw=$(python3 - <<'EOF' 2>"$logs/bandwidth.err"
import torch
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(10):
    y.copy_(x)
e.record()
torch.cuda.synchronize()
print(f"{2 * 10 * x.numel() / (s.elapsed_time(e) / 1e3) / 1e12:.2f}")
EOF
)
# Bytes a batch-1 decode step must read: every weight once (8.03e9 bf16 parameters).
weights_gb=16.06
if [ -n "$b1" ] && [ -n "$bw" ]; then
  roof=$(python3 -c "print(f'{$bw * 1e3 / $weights_gb:.0f}')")
  pct=$(python3 -c "print(f'{100 * $b1 / ($bw * 1e3 / $weights_gb):.0f}')")
  row "Llama-3.1-8B dummy bf16 batch 1" "$b1 tok/s = $pct% of roofline $roof tok/s ($bw TB/s copy, $weights_gb GB/step)"
else
  row "Llama-3.1-8B dummy bf16 batch 1" "FAILED (see llama8b_b1.err) bw=${bw:-?}"
fi
row "Llama-3.1-8B dummy bf16 batch 32" "${b32:-FAILED (see llama8b_b32.err)} tok/s aggregate, 128 tokens each"

# 4. Quantized GEMMs at 8B scale (issue 11): bf16 / FP8 / W4A16 batch-1 decode vs roofline.
if [ -x benches/quant_gpu.sh ]; then
  benches/quant_gpu.sh "$flare" "$logs/quant" >/dev/null 2>&1
  while read -r line; do
    row "quant: $(echo "$line" | awk '{print $1}')" "$(echo "$line" | cut -d' ' -f2-)"
  done < <(grep -E '^  (bf16|fp8|w4a16) ' "$logs/quant/summary.txt" 2>/dev/null | sed 's/^  //')
fi

{
  echo
  echo "flare GPU check on ${gpu:-unknown GPU}, $(date -u +%FT%TZ); logs in $logs"
  printf '%s\n' "${rows[@]}"
} | tee "$logs/summary.txt"
