#!/usr/bin/env bash
# The example serving benchmark in benches/results/: starts `flare serve` on loopback, waits for
# /health, runs `flare bench serve` (a concurrency sweep with its plot, then one fixed-concurrency
# run with its latency distributions), and stops the server.
#
#   benches/serve_example.sh                 # default model (SmolLM2-135M GGUF), CPU, 2 threads
#   PORT=9000 MODEL=/path/to/model benches/serve_example.sh
#
# Knobs (environment): PORT, MODEL (server's model argument; empty: the default model),
# SERVE_ARGS (extra `flare serve` flags), CANDLE_NUM_THREADS, NUM_PROMPTS, INPUT_LEN,
# OUTPUT_LEN, SWEEP, CONCURRENCY, OUT (result directory), TAG (file name prefix), FLARE (the
# binary; default: cargo build --release), SERVER_FLARE (binary for `flare serve`; default FLARE).
set -euo pipefail
cd "$(dirname "$0")/.."

# Nothing may leave this host: no hub, loopback only.
export HF_HUB_OFFLINE=1
export CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-2}"
PORT="${PORT:-8765}"
MODEL="${MODEL:-}"
SERVE_ARGS="${SERVE_ARGS:-}"
# Small enough that the sweep's concurrency-1 point finishes in a few minutes on 2 CPU cores.
NUM_PROMPTS="${NUM_PROMPTS:-16}"
INPUT_LEN="${INPUT_LEN:-64}"
OUTPUT_LEN="${OUTPUT_LEN:-32}"
SWEEP="${SWEEP:-1,2,4,8}"
CONCURRENCY="${CONCURRENCY:-4}"
OUT="${OUT:-benches/results}"
TAG="${TAG:-serve-cpu-smollm2-t${CANDLE_NUM_THREADS}}"
BASE_URL="http://127.0.0.1:${PORT}"

if [[ -z "${FLARE:-}" ]]; then
    cargo build --release --quiet
    FLARE="${CARGO_TARGET_DIR:-target}/release/flare"
fi
SERVER_FLARE="${SERVER_FLARE:-$FLARE}"
mkdir -p "$OUT"
LOG="${TMPDIR:-/tmp}/$TAG.server.log"

# shellcheck disable=SC2086 # MODEL and SERVE_ARGS are word lists on purpose
"$SERVER_FLARE" serve $MODEL --host 127.0.0.1 --port "$PORT" $SERVE_ARGS >"$LOG" 2>&1 &
SERVER=$!
stop_server() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}
trap stop_server EXIT

echo "waiting for $BASE_URL/health (server log: $LOG)"
for _ in $(seq 1 300); do
    if curl -sf --noproxy '*' "$BASE_URL/health" >/dev/null; then
        break
    fi
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "flare serve exited; its log:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 1
done
curl -sf --noproxy '*' "$BASE_URL/health" >/dev/null || { echo "server not healthy after 300 s" >&2; exit 1; }

COMMON=(--base-url "$BASE_URL" --num-prompts "$NUM_PROMPTS"
    --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" --ignore-eos --seed 0)

# Throughput and latency against the concurrency cap.
"$FLARE" bench serve "${COMMON[@]}" --sweep-concurrency "$SWEEP" \
    --save-result "$OUT/$TAG-sweep.json" --plot "$OUT/$TAG-sweep.svg"

# One load level, its TTFT/TPOT/ITL/E2EL distributions.
"$FLARE" bench serve "${COMMON[@]}" --max-concurrency "$CONCURRENCY" \
    --save-result "$OUT/$TAG-c$CONCURRENCY.json" --plot "$OUT/$TAG-c$CONCURRENCY.svg"

echo "results: $OUT/$TAG-sweep.{json,svg} $OUT/$TAG-c$CONCURRENCY.{json,svg}"
