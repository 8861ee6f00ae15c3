#!/usr/bin/env bash
# Load and fault runs (tests/server_fault_runs.rs) at the heavy scale: 1,000 concurrent streams
# with 30% cut, 64 slow readers beside 128 well-behaved streams, a 600-request burst past
# --max-queue-len, 48 long prompts over a 48-block KV pool, shutdown with 256 streams in flight.
# Loopback only, against the MockRunner engine (2 ms per step). Prints one line per run:
# requests sent, faulty clients, 5xx, panics, leaked blocks, p50/p99 of the well-behaved clients.
# Also runs the hostile corpus, slowloris and schemathesis tests, whose counts the report quotes.
#
# With --model smollm2 the same five runs go against the real SmolLM2-135M Q4_1 GGUF instead
# (models/fetch_smollm2.py), served by a `flare serve` child process on the CPU with the
# invariant checker on, at a scale that finishes in minutes on two cores: 100 streams with 30%
# cut, 16 slow readers beside 32 streams, a 120-request burst past --max-queue-len 16, 16 long
# prompts (8 distinct) over a 48-block pool, SIGTERM with 32 streams in flight (exit 0 checked).
# RAYON_NUM_THREADS defaults to 2 there.
#
# Usage: benches/faults.sh [--model smollm2] [OUT]
#        (default OUT: benches/results/faults-<date>.txt, or faults-smollm2-<date>.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
if [[ ${1:-} == --model ]]; then
  [[ ${2:-} == smollm2 ]] || { echo "--model: only smollm2 is known" >&2; exit 2; }
  out=${3:-benches/results/faults-smollm2-$(date -u +%F).txt}
  export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
  {
    echo "# benches/faults.sh --model smollm2 at $(git rev-parse --short HEAD), $(date -u +%FT%TZ)"
    echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); RAYON_NUM_THREADS=$RAYON_NUM_THREADS"
    echo "# model: $(ls -l ~/.cache/flare/models/SmolLM2-135M-Instruct.Q4_1.gguf | awk '{print $5, $NF}')"
    echo "# load: $(uptime)"
    echo "## FLARE_FAULT_MODEL=smollm2 cargo test --release --test server_fault_runs -- --nocapture --test-threads 1 --skip real_model"
    FLARE_FAULT_MODEL=smollm2 cargo test --release --test server_fault_runs -- --nocapture --test-threads 1 --skip real_model 2>&1 \
      | grep -E 'fault run|^test |test result|panicked'
    echo "# load after: $(uptime)"
  } | tee "$out"
  exit 0
fi
out=${1:-benches/results/faults-$(date -u +%F).txt}
{
  echo "# benches/faults.sh at $(git rev-parse --short HEAD), $(date -u +%FT%TZ)"
  echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-unset}"
  echo "# load: $(uptime)"
  echo "## FLARE_FAULT_SCALE=heavy cargo test --release --test server_fault_runs -- --nocapture --test-threads 1"
  FLARE_FAULT_SCALE=heavy cargo test --release --test server_fault_runs -- --nocapture --test-threads 1 2>&1 \
    | grep -E 'fault run|^test |test result|panicked'
  echo "## cargo test --release --test server_hostile -- --nocapture"
  cargo test --release --test server_hostile -- --nocapture 2>&1 | grep -E '^hostile corpus|^test |test result'
  echo "## cargo test --release --test schemathesis -- --nocapture"
  cargo test --release --test schemathesis -- --nocapture 2>&1 \
    | grep -E '^schemathesis|generated|Failures|ST[0-9]+|Coverage|Fuzzing|Stateful|^test |test result'
  echo "# load after: $(uptime)"
} | tee "$out"
