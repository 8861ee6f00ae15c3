#!/usr/bin/env bash
# Gemma 3 270M Q4_K_M (the PyPI GGUF), batch-1 prompt and decode speed: llama.cpp's llama-bench
# and `flare bench latency` on the same file, at 1 and 2 threads, interleaved in one run.
# llama.cpp is built from the llama-cpp-python 0.3.36 sdist as in shared/docs/PEERS.md and
# cached under $FLARE_CACHE/peers (about 6.5 minutes the first time on 2 cores).
# Usage: benches/gemma3_vs_llamacpp.sh [OUTFILE]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benches/results/gemma3-270m-vs-llamacpp-$(date +%Y-%m-%d).txt}
cache=${FLARE_CACHE:-$HOME/.cache/flare}
peers=$cache/peers/lcpp
python3 models/fetch_gemma3.py >/dev/null
gguf=$cache/models/gemma-3-270m-q4_k_m.gguf

# Not -march=native: on this VM the CPU reports AMX but the kernel does not grant it, so
# llama.cpp's native build dies with SIGILL in its AMX kernels (tilezero). The same AVX-512
# levels without AMX, as listed in the flags line of the output.
if [ ! -x "$peers/build/bin/llama-bench" ] || [ "$(cat "$peers/build/.flare-flags" 2>/dev/null)" != noamx ]; then
  [ -x "$peers/bin/cmake" ] || { python3 -m venv "$peers" && "$peers/bin/pip" install -q cmake ninja scikit-build-core; }
  [ -f "$peers"/llama_cpp_python-0.3.36.tar.gz ] || "$peers/bin/pip" download -q --no-deps \
    --no-binary llama-cpp-python --no-build-isolation -d "$peers" llama-cpp-python==0.3.36
  [ -d "$peers/llama_cpp_python-0.3.36" ] || tar xzf "$peers"/llama_cpp_python-0.3.36.tar.gz -C "$peers"
  src=$peers/llama_cpp_python-0.3.36/vendor/llama.cpp
  PATH=$peers/bin:$PATH cmake -S "$src" -B "$peers/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF >/dev/null
  PATH=$peers/bin:$PATH cmake --build "$peers/build" -j2 --target llama-bench >/dev/null
  echo noamx > "$peers/build/.flare-flags"
fi
cargo build --release -q

{
  echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  echo "# flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^avx|vnni|fma' | sort -u | tr '\n' ' ')"
  echo "# model: $gguf (prompt 128, decode 128 tokens, batch 1)"
  for t in 1 2; do
    echo "## llama.cpp llama-bench, threads $t"
    "$peers/build/bin/llama-bench" -m "$gguf" -t "$t" -p 128 -n 128 -r 3 -o md 2>/dev/null
    echo "## flare bench latency, threads $t (RAYON_NUM_THREADS=$t)"
    RAYON_NUM_THREADS=$t RUST_LOG=warn target/release/flare bench latency "$gguf" \
      --input-len 128 --output-len 128 --batch-size 1 --num-iters-warmup 2 --num-iters 5 \
      --kv-cache-memory 100000000 --no-progress 2>&1 | tail -n 12
  done
} | tee "$out"
