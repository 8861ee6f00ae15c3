#!/usr/bin/env bash
# Load and fault runs (tests/server_fault_runs.rs) at the heavy scale: 1,000 concurrent streams
# with 30% cut, 64 slow readers beside 128 well-behaved streams, a 600-request burst past
# --max-queue-len, 48 long prompts over a 48-block KV pool, shutdown with 256 streams in flight.
# Loopback only, against the MockRunner engine (2 ms per step). Prints one line per run:
# requests sent, faulty clients, 5xx, panics, leaked blocks, p50/p99 of the well-behaved clients.
# Also runs the hostile corpus, slowloris and schemathesis tests, whose counts the report quotes.
#
# Usage: benches/faults.sh [OUT]   (default benches/results/faults-<date>.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benches/results/faults-$(date -u +%F).txt}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
{
  echo "# benches/faults.sh at $(git rev-parse --short HEAD), $(date -u +%FT%TZ)"
  echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-unset}"
  echo "# load: $(uptime)"
  echo "## FLARE_FAULT_SCALE=heavy cargo test --release --test server_fault_runs -- --nocapture --test-threads 1"
  FLARE_FAULT_SCALE=heavy cargo test --release --test server_fault_runs -- --nocapture --test-threads 1 2>&1 \
    | grep -E '^fault run|^test |test result'
  echo "## cargo test --release --test server_hostile -- --nocapture"
  cargo test --release --test server_hostile -- --nocapture 2>&1 | grep -E '^hostile corpus|^test |test result'
  echo "## cargo test --release --test schemathesis -- --nocapture"
  cargo test --release --test schemathesis -- --nocapture 2>&1 \
    | grep -E '^schemathesis|generated|Failures|ST[0-9]+|Coverage|Fuzzing|Stateful|^test |test result'
  echo "# load after: $(uptime)"
} | tee "$out"
