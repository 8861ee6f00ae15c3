#!/usr/bin/env bash
# Builds flare and its CUDA test binaries with the `cuda` feature here (no GPU needed) and packs
# what scripts/gpu_check.sh needs on the GPU machine into gpu_bundle/ (git-ignored):
#   gpu_bundle/bin/        flare.gz, cuda_kernels.gz, cuda_model.gz        (~40 MB)
#   gpu_bundle/smollm2-a/, gpu_bundle/smollm2-b/   the SmolLM2 GGUF in two parts (94 MB)
# The device tool carries at most 64 MiB a call, so the GGUF travels in two staging calls
# before the check (see scripts/gpu_check.sh for the exact calls). Usage: scripts/gpu_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(scripts/cuda_toolchain.sh --env-file)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --features cuda
tests=$(cargo test --release --features cuda --no-run --message-format=json \
  --test cuda_kernels --test cuda_model 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])')
rm -rf gpu_bundle && mkdir -p gpu_bundle/bin gpu_bundle/smollm2-a gpu_bundle/smollm2-b
gzip -c "$CARGO_TARGET_DIR/release/flare" >gpu_bundle/bin/flare.gz
while read -r name exe; do
  gzip -c "$exe" >"gpu_bundle/bin/$name.gz"
done <<<"$tests"
python3 models/fetch_smollm2.py >/dev/null
gguf=${FLARE_CACHE:-$HOME/.cache/flare}/models/SmolLM2-135M-Instruct.Q4_1.gguf
half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
split -b "$half" -d -a 1 "$gguf" /tmp/flare_gguf_part.
mv /tmp/flare_gguf_part.0 gpu_bundle/smollm2-a/SmolLM2-135M-Instruct.Q4_1.gguf.part0
mv /tmp/flare_gguf_part.1 gpu_bundle/smollm2-b/SmolLM2-135M-Instruct.Q4_1.gguf.part1
(cd gpu_bundle && sha256sum "$gguf" | cut -d' ' -f1 >smollm2-b/SmolLM2-135M-Instruct.Q4_1.gguf.sha256)
du -sh gpu_bundle/*
