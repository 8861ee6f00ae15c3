#!/usr/bin/env bash
# Runs the CUDA kernels of kernels/*.cu, unchanged, in a CPU emulation (kernels/emu/: one fiber
# per GPU thread, blocks in turn, warp shuffles and __syncthreads as barriers) against C++
# references, outputs NaN-poisoned. Needs only g++ (C++20): catches indexing, masking, split
# and reduction bugs without a GPU; timing and the real numerics are for tests/cuda_kernels.rs
# on the GPU. About 1-2 minutes on 2 cores. Usage: scripts/kernel_emu_check.sh [moe]
# (`moe`: only the fused-MoE checks; `sampling`: only the sampler's).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TMPDIR:-/tmp}/flare_check_kernels
g++ -std=c++20 -O2 -Ikernels/emu -o "$bin" kernels/emu/check_kernels.cpp
"$bin" "$@"
