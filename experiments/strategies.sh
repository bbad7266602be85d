#!/usr/bin/env bash
# The six strategies on toxicity, bias, harmfulness with the quick preset on the embedded model, then the
# comparison report. Reproduce with: bash experiments/strategies.sh   (from the project root, after `make install`)
# Runs share the cached teacher data, base evaluation and specialists (under $COMPOSE_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs}
for s in sequential-replay sequential stacked concatenated merged joint; do
  "$BIN/compose" run --risks tox,bias,harm --strategy "$s" --output-dir "$OUT/$s"
done
"$BIN/compose" report "$OUT"/sequential-replay "$OUT"/sequential "$OUT"/stacked "$OUT"/concatenated "$OUT"/merged \
  "$OUT"/joint --out experiments/results/strategies
