#!/usr/bin/env bash
# Issue 11, acceptance 3: batch-1 decode tok/s of the Llama-3.1-8B dummy preset (random weights
# made at load, models/presets/llama-3.1-8b.json) in bf16, FP8 (e4m3 weights with per-channel
# scales, dynamic per-token activations: kernels/fp8_gemm.cu) and W4A16 (int4, groups of 128:
# kernels/w4a16_gemm.cu), each as a fraction of its HBM roofline (the bytes one decode step
# must read: every linear weight once in its format, plus the bf16 lm_head; the bandwidth
# measured by a device-to-device copy in PyTorch, else the GPU's nominal figure).
#
#   benches/quant_gpu.sh [FLARE] [OUT]     FLARE: the cuda-feature binary (default
#                                          target/release/flare), OUT: log folder (default
#                                          $OUT, else /tmp/flare_quant_gpu)
# Writes OUT/{bf16,fp8,w4a16}.err (flare's stderr, raw), OUT/bandwidth.txt, OUT/summary.txt
# (the table, also printed). Runs on the GPU machine (scripts/gpu_check.sh calls it last);
# about 3 minutes on an H100 (three 8B loads, 256 tokens each). The FP8 goal is >= 375 tok/s
# on an H100 SXM.
set -uo pipefail
cd "$(dirname "$0")/.."
flare=${1:-target/release/flare}
out=${2:-${OUT:-/tmp/flare_quant_gpu}}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
preset=llama-3.1-8b
prompt="The quick brown fox jumps over the lazy dog. Once upon a time in a land far away"

bw=$(python3 - <<'EOF' 2>"$out/bandwidth.err"
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
print(f"{2 * 10 * x.numel() / (s.elapsed_time(e) / 1e3) / 1e12:.3f}")
EOF
)
echo "${bw:-unmeasured} TB/s (torch device copy)" >"$out/bandwidth.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv >>"$out/bandwidth.txt" 2>&1

declare -A tps
for q in bf16 fp8 w4a16; do
  args=()
  [ "$q" != bf16 ] && args=(--quantization "$q")
  timeout 600 "$flare" generate "preset:$preset" "${args[@]}" --dtype bf16 --prompt "$prompt" \
    --max-tokens 256 --ignore-eos --kv-cache-memory 8000000000 >"$out/$q.out" 2>"$out/$q.err"
  echo "exit $?" >>"$out/$q.err"
  tps[$q]=$(grep -o '[0-9.]* tok/s after the first token' "$out/$q.err" | grep -o '^[0-9.]*' | tail -1)
done

python3 - "$preset" "${bw:-}" "${tps[bf16]:-}" "${tps[fp8]:-}" "${tps[w4a16]:-}" <<'EOF' | tee "$out/summary.txt"
import json, sys
preset, bw, *t = sys.argv[1:]
c = json.load(open(f"models/presets/{preset}.json"))
h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
hd = c.get("head_dim", h // c["num_attention_heads"])
q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
linear = L * (h * q + 2 * h * kv + q * h + 3 * h * i)  # q, k, v, o, gate, up, down
lm_head = v * h * 2  # bf16 (kept dense in every format)
bytes_per_weight = {"bf16": 2.0, "fp8": 1.0 + 4.0 / h, "w4a16": 0.5 + 8.0 / 128}
if bw:
    tbs, src = float(bw), "measured copy"
else:
    tbs, src = 3.35, "nominal H100 SXM (copy unmeasured)"
print(f"Llama-3.1-8B dummy, batch-1 decode (256 tokens), HBM {tbs:.2f} TB/s ({src})")
for name, tok in zip(["bf16", "fp8", "w4a16"], t):
    gb = (linear * bytes_per_weight[name] + lm_head) / 1e9
    roof = tbs * 1e3 / gb
    got = f"{float(tok):.1f} tok/s = {100 * float(tok) / roof:.0f}%" if tok else "FAILED (see the .err log)"
    print(f"  {name:6} {got} of roofline {roof:.0f} tok/s ({gb:.2f} GB/step)")
EOF
