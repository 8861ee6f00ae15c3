#!/usr/bin/env bash
# Runs flare's whole test suite on a fresh machine: installs the Python reference stack,
# fetches the default model and Gemma 3 270M (each with its HF-format conversion), then
# `cargo test --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Nothing may phone home: no hub, no remote price maps.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
python3 -m pip install -q --disable-pip-version-check -r models/requirements.txt
python3 models/fetch_smollm2.py --hf
python3 models/fetch_gemma3.py --hf
cargo test --release "$@"
