#!/usr/bin/env bash
# The standard GPU benchmark matrix, in one go: for each model, `flare bench latency` (batch
# sweep), `flare bench throughput` (max-num-seqs sweep) and `flare bench serve` against
# `flare serve` on loopback (concurrency sweep). JSON results and SVG plots go to
# benches/results/gpu/<date>-<gpu>/, with a summary table; with COMMIT=1 they are committed.
#
#   benches/gpu_matrix.sh            # build (cuda feature), then run the matrix
#   benches/gpu_matrix.sh build      # only build (a fresh machine: the CUDA build is long)
#   benches/gpu_matrix.sh run        # only run, with the binary built before
#
# Knobs (environment):
#   MODELS       space-separated; a preset name (models/presets: smollm2-135m, smollm2-360m,
#                qwen2.5-0.5b, qwen2.5-7b, llama-3.2-1b, llama-3.1-8b; random weights made on
#                the GPU) or label=PATH for a local HF directory / .gguf.
#                Default: "llama-3.2-1b qwen2.5-0.5b llama-3.1-8b".
#   LOAD_FORMAT  for label=PATH entries: auto (real weights) or dummy (random weights of the
#                checkpoint's config). Default auto.
#   The GPU machine has no Rust: run `build` here and ship the binary (FLARE=path), as
#   scripts/gpu_bundle.sh does.
#   STEPS        any of latency,throughput,serve (default all three)
#   KV_CACHE_MEMORY (bytes, default 32 GiB), MAX_MODEL_LEN (default 4096), PORT (default 8766),
#   STEP_TIMEOUT seconds per benchmark command (default 900), OUT (also copy results there),
#   COMMIT=1     git add + commit the result directory.
set -uo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1
MODELS="${MODELS:-llama-3.2-1b qwen2.5-0.5b llama-3.1-8b}"
LOAD_FORMAT="${LOAD_FORMAT:-auto}"
STEPS="${STEPS:-latency,throughput,serve}"
KV_CACHE_MEMORY="${KV_CACHE_MEMORY:-34359738368}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-4096}"
PORT="${PORT:-8766}"
STEP_TIMEOUT="${STEP_TIMEOUT:-900}"
TARGET="${CARGO_TARGET_DIR:-target}"
FLARE="${FLARE:-$TARGET/release/flare}"
ACTION="${1:-all}"

if [[ "$ACTION" == build || "$ACTION" == all ]]; then
    cargo build --release --features cuda || exit 1
    [[ "$ACTION" == build ]] && exit 0
fi
[[ -x "$FLARE" ]] || { echo "no binary at $FLARE: run '$0 build' first" >&2; exit 1; }
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: this script is for the GPU machine" >&2; exit 1; }

GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' /' '--' | tr -cd 'A-Za-z0-9._-')"
DIR="benches/results/gpu/$(date +%Y%m%d)-${GPU}"
mkdir -p "$DIR"
FAILED=()
echo "GPU matrix -> $DIR (models: $MODELS; load format: $LOAD_FORMAT; steps: $STEPS)"

# The model flags of one matrix entry, for `flare bench throughput|latency` and `flare serve`.
model_args() {
    local entry="$1"
    if [[ "$entry" == *=* ]]; then
        echo "${entry#*=} --load-format $LOAD_FORMAT"
    else
        echo "preset:$entry"
    fi
}
label_of() { echo "${1%%=*}"; }
want() { [[ ",$STEPS," == *",$1,"* ]]; }

# Runs one benchmark command with a time limit; a failure is noted and the matrix goes on.
step() {
    local name="$1"
    shift
    echo "=== $name"
    if ! timeout "$STEP_TIMEOUT" "$@" --no-progress >"$DIR/$name.log" 2>&1; then
        echo "FAILED: $name (see $DIR/$name.log)"
        tail -5 "$DIR/$name.log"
        FAILED+=("$name")
    else
        grep -E "Throughput:|Median|Output token throughput" "$DIR/$name.log" | head -8
    fi
}

ENGINE=(--kv-cache-memory "$KV_CACHE_MEMORY" --max-model-len "$MAX_MODEL_LEN")

for entry in $MODELS; do
    label="$(label_of "$entry")"
    # shellcheck disable=SC2207 # word splitting of the model flags is intended
    margs=($(model_args "$entry"))
    # shellcheck disable=SC2207
    sargs=($(model_args "$entry"))

    if want latency; then
        step "$label-latency-in128-out128" "$FLARE" bench latency "${margs[@]}" "${ENGINE[@]}" \
            --input-len 128 --output-len 128 --sweep-concurrency 1,8,32,128 \
            --num-iters-warmup 3 --num-iters 10 \
            --save-result "$DIR/$label-latency-in128-out128.json" \
            --plot "$DIR/$label-latency-in128-out128.svg"
        step "$label-latency-in2048-out128-bs1" "$FLARE" bench latency "${margs[@]}" "${ENGINE[@]}" \
            --input-len 2048 --output-len 128 --batch-size 1 \
            --num-iters-warmup 3 --num-iters 10 \
            --save-result "$DIR/$label-latency-in2048-out128-bs1.json" \
            --plot "$DIR/$label-latency-in2048-out128-bs1.svg"
    fi

    if want throughput; then
        step "$label-throughput-in512-out256" "$FLARE" bench throughput "${margs[@]}" "${ENGINE[@]}" \
            --max-num-batched-tokens 8192 \
            --input-len 512 --output-len 256 --num-prompts 512 --sweep-concurrency 16,64,256 \
            --save-result "$DIR/$label-throughput-in512-out256.json" \
            --plot "$DIR/$label-throughput-in512-out256.svg"
    fi

    if want serve; then
        LOG="$DIR/$label-serve.server.log"
        "$FLARE" serve "${sargs[@]}" "${ENGINE[@]}" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
        SERVER=$!
        for _ in $(seq 1 600); do
            curl -sf --noproxy '*' "http://127.0.0.1:$PORT/health" >/dev/null && break
            kill -0 "$SERVER" 2>/dev/null || break
            sleep 1
        done
        if curl -sf --noproxy '*' "http://127.0.0.1:$PORT/health" >/dev/null; then
            step "$label-serve-in512-out128" "$FLARE" bench serve --base-url "http://127.0.0.1:$PORT" \
                --random-input-len 512 --random-output-len 128 --num-prompts 256 --ignore-eos \
                --sweep-concurrency 1,4,16,64 --seed 0 \
                --save-result "$DIR/$label-serve-in512-out128.json" \
                --plot "$DIR/$label-serve-in512-out128.svg"
        else
            echo "FAILED: flare serve for $label did not come up (see $LOG)"
            FAILED+=("$label-serve")
        fi
        kill "$SERVER" 2>/dev/null
        wait "$SERVER" 2>/dev/null
    fi
done

# One table over every JSON of this run.
python3 - "$DIR" >"$DIR/SUMMARY.md" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
print(f"# GPU matrix {d.name}\n")
print("| result | sweep point | key numbers |\n|---|---|---|")
for f in sorted(d.glob("*.json")):
    r = json.loads(f.read_text())
    for run in r["runs"]:
        m = run["metrics"]
        if run["kind"] == "latency":
            point = f"batch {m['batch_size']}"
            nums = (f"prefill median {m['prefill_ms']['median']:.1f} ms, decode step median "
                    f"{m['decode_step_ms']['median']:.2f} ms / p99 {m['decode_step_ms']['p99']:.2f} ms, "
                    f"{m['decode_tokens_per_s']:.0f} tok/s")
        elif run["kind"] == "throughput":
            point = f"max_num_seqs {run['max_num_seqs']}"
            nums = (f"{m['requests_per_s']:.2f} req/s, {m['output_tokens_per_s']:.0f} output tok/s, "
                    f"{m['total_tokens_per_s']:.0f} total tok/s")
        else:
            point = f"concurrency {run['max_concurrency']}"
            nums = (f"{m['output_throughput']:.0f} output tok/s, TTFT median {m['ttft_ms']['median']:.1f} ms, "
                    f"TPOT median {m['tpot_ms']['median']:.2f} ms, ITL p99 {m['itl_ms']['p99']:.2f} ms")
        print(f"| {f.stem} | {point} | {nums} |")
env = next((json.loads(f.read_text())["environment"] for f in sorted(d.glob("*.json"))), None)
if env:
    print(f"\nGPU: {', '.join(env['gpus'])}; CPU: {env['cpu']}; flare {env['flare_version']} at {env['git_commit']}")
PY

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT" && cp -r "$DIR" "$OUT/"
fi
if [[ "${COMMIT:-0}" == 1 ]] && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git add "$DIR" && git commit -m "bench results: GPU matrix $(basename "$DIR")" -- "$DIR"
fi
echo "done: $DIR (failed: ${FAILED[*]:-none})"
[[ ${#FAILED[@]} -eq 0 ]]
