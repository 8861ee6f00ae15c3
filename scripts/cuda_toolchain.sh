#!/usr/bin/env bash
# Installs the CUDA 13.0 pieces that `cargo build --features cuda` needs, from PyPI wheels, into a
# cache outside git, on a machine without a GPU or a CUDA toolkit. Idempotent: a second run only
# prints the environment. Usage:
#
#   scripts/cuda_toolchain.sh              # install (once), write $CACHE/env.sh, print it
#   source "$(scripts/cuda_toolchain.sh --env-file)"
#   cargo build --release --features cuda
#
# Cache: $FLARE_CUDA_HOME, else ${FLARE_CACHE:-~/.cache/flare}/cuda. Compute capability:
# $CUDA_COMPUTE_CAP (default 90 = H100/H200; candle's kernel build turns 90 into sm_90a).
#
# CUDA 13.0 matches the GPU machine's driver (580): a newer nvcc writes PTX that driver cannot
# load. No wheel ships the driver library (libcuda.so): for linking, we build a stub exporting
# every `cu*` symbol cudarc declares; at run time the real driver's libcuda.so.1 is used.
# See shared/docs/GPU.md for the recipe this follows.
set -euo pipefail

ROOT_CACHE="${FLARE_CACHE:-$HOME/.cache/flare}"
CACHE="${FLARE_CUDA_HOME:-$ROOT_CACHE/cuda}"
CUDA="$CACHE/nvidia/cu13"
ENV_FILE="$CACHE/env.sh"
CAP="${CUDA_COMPUTE_CAP:-90}"

WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88
)
STAMP="$CACHE/.installed"
WANT="$(printf '%s\n' "${WHEELS[@]}")"

log() { echo "cuda_toolchain: $*" >&2; }

install() {
  mkdir -p "$CACHE/wheels"
  log "downloading ${#WHEELS[@]} wheels (~650 MB, mostly cuBLAS) into $CACHE/wheels"
  python3 -m pip download -q --no-deps -d "$CACHE/wheels" "${WHEELS[@]}"
  for spec in "${WHEELS[@]}"; do
    local name="${spec%%==*}" ver="${spec##*==}"
    local whl
    whl=$(ls "$CACHE/wheels/${name//-/_}-${ver}-"*.whl | head -1)
    log "unpacking $(basename "$whl")"
    unzip -q -o "$whl" 'nvidia/*' -d "$CACHE"
  done
  [ -x "$CUDA/bin/nvcc" ] || { log "no nvcc at $CUDA/bin/nvcc after unpacking"; exit 1; }
  chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/* 2>/dev/null || true

  # The wheels ship only versioned sonames: add the unversioned names the linker looks for.
  (cd "$CUDA/lib" && for f in lib*.so.*; do
     base="${f%%.so.*}.so"
     [ -e "$base" ] || ln -s "$f" "$base"
   done)

  # libcuda.so stub for linking only (never shipped, never loaded at run time).
  local sys
  sys=$(cudarc_sys_rs)
  mkdir -p "$CUDA/lib/stubs"
  grep -o 'fn cu[A-Za-z0-9_]*(' "$sys" | sed 's/^fn //; s/($//' | sort -u |
    awk '{print "void " $0 "(void) {}"}' >"$CUDA/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA/lib/stubs/libcuda.so" \
    "$CUDA/lib/stubs/libcuda_stub.c"
  ln -sf libcuda.so "$CUDA/lib/stubs/libcuda.so.1"
  log "libcuda stub: $(wc -l <"$CUDA/lib/stubs/libcuda_stub.c") symbols from $sys"

  echo "$WANT" >"$STAMP"
  # The wheels are unpacked; keep the cache small.
  rm -rf "$CACHE/wheels"
}

# cudarc's driver bindings (the list of cu* names to stub); fetched by cargo if absent.
cudarc_sys_rs() {
  local reg="${CARGO_HOME:-$HOME/.cargo}/registry/src"
  local f
  f=$(ls -d "$reg"/*/cudarc-0.19.*/src/driver/sys/mod.rs 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$f" ]; then
    (cd "$(dirname "$0")/.." && cargo fetch -q) >&2
    f=$(ls -d "$reg"/*/cudarc-0.19.*/src/driver/sys/mod.rs | sort -V | tail -1)
  fi
  echo "$f"
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  start=$(date +%s)
  install
  log "installed in $(($(date +%s) - start)) s; $(du -sh "$CACHE" | cut -f1) in $CACHE"
fi

cat >"$ENV_FILE" <<EOF
# Written by flare's scripts/cuda_toolchain.sh: source before \`cargo build --features cuda\`.
export CUDA_ROOT="$CUDA" CUDA_HOME="$CUDA" CUDA_PATH="$CUDA" NVCC="$CUDA/bin/nvcc"
case ":\$PATH:" in *":$CUDA/bin:"*) ;; *) export PATH="$CUDA/bin:\$PATH" ;; esac
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-$CAP}"
export LIBRARY_PATH="$CUDA/lib:$CUDA/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS="\${CUDAFORGE_THREADS:-2}"
EOF

if [ "${1:-}" = "--env-file" ]; then
  echo "$ENV_FILE"
else
  cat "$ENV_FILE"
  log "source $ENV_FILE, then: cargo build --release --features cuda"
fi
