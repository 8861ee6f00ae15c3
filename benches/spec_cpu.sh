#!/usr/bin/env bash
# Speculative decoding on the CPU (issue 10, acceptance 3): SmolLM2-135M f32 target, greedy,
# on the input-grounded workload (`--dataset grounded`), speculation off vs n-gram vs the Q4_1
# GGUF as a draft model, at batch 1 and batch 16, interleaved (ROUNDS times) so that load from
# other jobs hits every variant alike. Raw JSON results and the printed reports go to OUTDIR.
#
#   benches/spec_cpu.sh [OUTDIR]     (default benches/results/spec-cpu-<date>)
# Knobs: THREADS (RAYON_NUM_THREADS, default 2), ROUNDS (default 2), ROUNDS16 (default 1), N1 (prompts at batch 1,
# default 6), N16 (prompts at batch 16, default 32), OUTPUT_LEN (default 128), K (n-gram drafts,
# default 4), DRAFT_K (draft-model drafts, default 5), FLARE (binary, default
# $CARGO_TARGET_DIR/release/flare or target/release/flare). No variant sets
# disable_by_batch_size: batch 16 shows the default pause rule (docs/SPECULATIVE.md).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-2}"
ROUNDS16="${ROUNDS16:-1}"
N1="${N1:-6}"
N16="${N16:-32}"
OUTPUT_LEN="${OUTPUT_LEN:-128}"
K="${K:-4}"
DRAFT_K="${DRAFT_K:-5}"
FLARE="${FLARE:-${CARGO_TARGET_DIR:-target}/release/flare}"
OUTDIR="${1:-benches/results/spec-cpu-$(date -u +%Y%m%d)}"
MODELS="$HOME/.cache/flare/models"
TARGET="$MODELS/SmolLM2-135M-Instruct-hf"
DRAFT="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$OUTDIR"
export RAYON_NUM_THREADS="$THREADS"

declare -A SPEC=(
  [off]=""
  [ngram]="{\"method\": \"ngram\", \"num_speculative_tokens\": $K, \"prompt_lookup_min\": 2, \"prompt_lookup_max\": 4}"
  [draft]="{\"method\": \"draft\", \"model\": \"$DRAFT\", \"num_speculative_tokens\": $DRAFT_K}"
)

bench() { # variant batch num_prompts round
  local v=$1 b=$2 n=$3 r=$4
  local args=("$FLARE" bench throughput "$TARGET" --dataset grounded --num-prompts "$n"
    --output-len "$OUTPUT_LEN" --temperature 0 --no-ignore-eos --max-num-seqs "$b"
    --max-model-len 1024 --no-progress --save-result "$OUTDIR/$v-b$b-r$r.json")
  [ -n "${SPEC[$v]}" ] && args+=(--speculative-config "${SPEC[$v]}")
  {
    echo "### $v batch $b round $r; $(date -u +%FT%TZ); git $(git rev-parse --short HEAD); uptime: $(uptime)"
    echo "### RAYON_NUM_THREADS=$THREADS ${args[*]}"
  } | tee -a "$OUTDIR/log.txt"
  "${args[@]}" 2>&1 | grep -v '^\s*$' | tee -a "$OUTDIR/log.txt"
}

for r in $(seq 1 "$ROUNDS"); do
  for v in off ngram draft; do bench "$v" 1 "$N1" "$r"; done
done
for r in $(seq 1 "$ROUNDS16"); do
  for v in off ngram draft; do bench "$v" 16 "$N16" "$r"; done
done
python3 - "$OUTDIR" <<'PY' | tee "$OUTDIR/summary.txt"
import json, sys, glob, os, collections
d = sys.argv[1]
rows = collections.defaultdict(list)
for f in sorted(glob.glob(os.path.join(d, "*-b*-r*.json"))):
    v, b, r = os.path.basename(f)[:-5].split("-")
    m = json.load(open(f))["runs"][0]["metrics"]
    rows[(b, v)].append(m)
print(f"{'batch':<6} {'variant':<7} {'out tok/s (each round)':<28} {'mean':>7} {'speedup':>8} {'accept':>7} {'mean len':>8}")
for b in ("b1", "b16"):
    base = None
    for v in ("off", "ngram", "draft"):
        ms = rows.get((b, v), [])
        if not ms:
            continue
        tps = [m["output_tokens_per_s"] for m in ms]
        mean = sum(tps) / len(tps)
        base = mean if v == "off" else base
        s = ms[-1].get("spec") or {}
        acc = s.get("num_accepted_tokens", 0) / max(1, s.get("num_draft_tokens", 0))
        mlen = 1 + s.get("num_accepted_tokens", 0) / max(1, s.get("num_drafts", 0))
        sp = mean / base if base else float("nan")
        print(f"{b:<6} {v:<7} {' '.join(f'{t:.1f}' for t in tps):<28} {mean:>7.1f} {sp:>7.2f}x {acc if s else float('nan'):>7.3f} {mlen if s else float('nan'):>8.2f}")
PY
