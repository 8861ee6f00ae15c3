#!/usr/bin/env bash
# The perplexity text: the Book of Genesis (King James Version, public domain) from Debian's
# `bible-kjv-text` package, read with its `bible` program (package `bible-kjv` 4.38), verse
# references stripped, one verse per line. ~38k words, ~50k SmolLM2 tokens.
#   apt-get install bible-kjv && benches/make_ppl_text.sh > benches/data/kjv_genesis.txt
set -euo pipefail
for ch in $(seq 1 50); do
  bible -f "Genesis $ch:1-200" | sed -E 's/^Ge[0-9]+:[0-9]+ //'
done
