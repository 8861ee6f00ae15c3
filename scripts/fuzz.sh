#!/usr/bin/env bash
# Fuzzes flare's hostile-input entry points with cargo-fuzz (libFuzzer): each target of fuzz/
# for SECONDS (default 60), then merges what raised coverage into the committed corpus
# (fuzz/corpus/<target>/, replayed in CI by tests/fuzz_corpus.rs). A crash stops the run and
# leaves its input in fuzz/artifacts/<target>/: fix the bug, then copy the input to
# fuzz/regressions/<target>/ so the replay keeps it fixed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      targets: request template detokenize
#
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z coverage flags. No
# sanitizer (`-s none`): the code is safe Rust, and the invariants are asserted as panics.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_FUZZ_VERSION=0.13.2
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request template detokenize)

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
export RUSTC_BOOTSTRAP=1
target_dir=${FUZZ_TARGET_DIR:-fuzz/target}
opts=(-O -s none --target-dir "$target_dir" --fuzz-dir fuzz)

start=$(date +%s)
cargo fuzz build "${opts[@]}"
echo "fuzz build: $(( $(date +%s) - start )) s"

for t in "${targets[@]}"; do
    # New inputs go to a scratch directory; the committed corpus is read only.
    work="$target_dir/corpus-work/$t"
    mkdir -p "$work" "fuzz/corpus/$t"
    cargo fuzz run "${opts[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -max_len=4096 -timeout=30 -rss_limit_mb=4096 -print_final_stats=1
    # Keep only inputs that add coverage to the committed corpus.
    cargo fuzz run "${opts[@]}" "$t" "fuzz/corpus/$t" "$work" -- -merge=1 -max_len=4096
done
