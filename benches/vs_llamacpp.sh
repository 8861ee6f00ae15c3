#!/usr/bin/env bash
# flare against llama.cpp on the same GGUF, interleaved in one run (same machine noise for both):
# batch-1 prompt and decode speed (llama-bench vs `flare bench latency`) at 1 and 2 threads, and
# total tok/s at batch 8 and 32 (llama-batched-bench vs `flare bench throughput`) at 2 threads.
# llama.cpp is built from the llama-cpp-python 0.3.36 sdist (PyPI; cmake and ninja from PyPI
# wheels) as in shared/docs/PEERS.md and cached under $FLARE_CACHE/peers (about 7 minutes the
# first time on 2 cores).
#
# Usage: benches/vs_llamacpp.sh [smollm2|gemma3|PATH.gguf] [OUTFILE]
#   PROMPTS="128 2048"   prompt lengths for the batch-1 rows (default 128)
#   THREADS="1 2"        thread counts (default 1 2)
#   BATCHES="8 32"       batch sizes for the throughput rows (default 8 32; empty to skip)
#   ROUNDS=3             run each throughput pair (llama.cpp, flare) this many times, interleaved
#                        (default 1): on a noisy VM compare the medians of the per-round ratios
#   BUILD_ONLY=1         build the peer and flare, run nothing
#   FLARE=PATH           measure this flare binary instead of building the checkout's
#   FLARE_ARGS="..."     extra flare flags (e.g. "--kv-cache-dtype fp16", llama.cpp's own cache type)
set -euo pipefail
# An 8,192-token prompt plus its outputs runs past SmolLM2's 8,192 positions, as llama.cpp's
# runs do (it only warns); flare refuses that unless told.
export FLARE_ALLOW_LONG_MAX_MODEL_LEN=1
cd "$(dirname "$0")/.."
model=${1:-smollm2}
cache=${FLARE_CACHE:-$HOME/.cache/flare}
case "$model" in
  smollm2) python3 models/fetch_smollm2.py >/dev/null; gguf=$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf ;;
  gemma3) python3 models/fetch_gemma3.py >/dev/null; gguf=$cache/models/gemma-3-270m-q4_k_m.gguf ;;
  *) gguf=$model ;;
esac
name=$(basename "$gguf" .gguf)
out=${2:-benches/results/vs-llamacpp-$name-$(date +%Y-%m-%d).txt}
prompts=${PROMPTS:-128}
threads=${THREADS:-1 2}
batches=${BATCHES-8 32}
peers=$cache/peers/lcpp
bin=$peers/build/bin

# Not -march=native: on the Xeon VMs the CPU reports AMX but the kernel does not grant it, so
# llama.cpp's native build dies with SIGILL in its AMX kernels (tilezero). Instead the SIMD
# levels this CPU has (AVX-512 ones only where /proc/cpuinfo lists them: the AMD EPYC VMs have
# AVX2 only), never AMX; the flags line of the output lists them.
targets="llama-bench llama-batched-bench llama-perplexity"
have_all() { for t in $targets; do [ -x "$bin/$t" ] || return 1; done; }
cpu_flags=$(grep -m1 flags /proc/cpuinfo)
has() { [[ " $cpu_flags " == *" $1 "* ]] && echo ON || echo OFF; }
simd=(-DGGML_AVX512="$(has avx512f)" -DGGML_AVX512_VBMI="$(has avx512vbmi)"
  -DGGML_AVX512_VNNI="$(has avx512_vnni)" -DGGML_AVX512_BF16="$(has avx512_bf16)"
  -DGGML_AVX_VNNI="$(has avx_vnni)")
stamp="noamx ${simd[*]}"
if ! have_all || [ "$(cat "$peers/build/.flare-flags" 2>/dev/null)" != "$stamp" ]; then
  [ -x "$peers/bin/cmake" ] || { python3 -m venv "$peers" && "$peers/bin/pip" install -q cmake ninja scikit-build-core; }
  [ -f "$peers"/llama_cpp_python-0.3.36.tar.gz ] || "$peers/bin/pip" download -q --no-deps \
    --no-binary llama-cpp-python --no-build-isolation -d "$peers" llama-cpp-python==0.3.36
  [ -d "$peers/llama_cpp_python-0.3.36" ] || tar xzf "$peers"/llama_cpp_python-0.3.36.tar.gz -C "$peers"
  src=$peers/llama_cpp_python-0.3.36/vendor/llama.cpp
  PATH=$peers/bin:$PATH cmake -S "$src" -B "$peers/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    "${simd[@]}" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF >/dev/null
  # shellcheck disable=SC2086
  PATH=$peers/bin:$PATH cmake --build "$peers/build" -j2 --target $targets >/dev/null
  echo "$stamp" > "$peers/build/.flare-flags"
fi
[ -n "${FLARE:-}" ] || cargo build --release -q
[ -n "${BUILD_ONLY:-}" ] && exit 0
flare=${FLARE:-${CARGO_TARGET_DIR:-target}/release/flare}
# FLARE_ARGS: extra flare flags, e.g. "--kv-cache-dtype fp16" (llama.cpp's default cache type).
read -r -a extra <<< "${FLARE_ARGS:-}"
kv=(--kv-cache-memory 1000000000 "${extra[@]}")

{
  echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty') binary $flare $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  echo "# flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^avx|vnni|fma|amx' | sort -u | tr '\n' ' ')"
  echo "# model: $gguf; prompts: $prompts; threads: $threads; batches: $batches; flare flags: [${FLARE_ARGS:-}]"
  for p in $prompts; do
    for t in $threads; do
      echo "## load: $(uptime)"
      echo "## llama.cpp llama-bench, prompt $p, decode 128, threads $t"
      "$bin/llama-bench" -m "$gguf" -t "$t" -p "$p" -n 128 -r 3 -o md 2>/dev/null
      echo "## flare bench latency, prompt $p, decode 128, threads $t (RAYON_NUM_THREADS=$t)"
      RAYON_NUM_THREADS=$t RUST_LOG=warn $flare bench latency "$gguf" \
        --input-len "$p" --output-len 128 --batch-size 1 --num-iters-warmup 1 --num-iters 3 \
        "${kv[@]}" --max-model-len $((p + 256)) --no-progress 2>&1 | tail -n 12
    done
  done
  for round in $(seq "${ROUNDS:-1}"); do for b in $batches; do
    t=${threads##* }
    echo "## load: $(uptime)"
    echo "## round $round: llama.cpp llama-batched-bench, batch $b, prompt 128, generate 64, threads $t"
    "$bin/llama-batched-bench" -m "$gguf" -t "$t" -c $((b * 192 + 256)) -b 2048 -ub 512 \
      -npp 128 -ntg 64 -npl "$b" 2>/dev/null | grep -E '^\|' || true
    echo "## round $round: flare bench throughput, $b prompts of 128, generate 64, threads $t (RAYON_NUM_THREADS=$t)"
    RAYON_NUM_THREADS=$t RUST_LOG=warn $flare bench throughput "$gguf" \
      --input-len 128 --output-len 64 --num-prompts "$b" "${kv[@]}" --max-model-len 512 \
      --no-progress 2>&1 | tail -n 8
  done; done
} | tee "$out"
