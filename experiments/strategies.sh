#!/usr/bin/env bash
# The six strategies on toxicity, bias, harmfulness with the quick preset on the embedded model, then the
# comparison report. Reproduce with: bash experiments/strategies.sh   (from the project root, after `make install`)
# Runs share the cached teacher data, base evaluation and specialists (under $COMPOSE_CACHE); a finished run
# folder is resumed, not redone. Each run's report, matrix, config and results are copied into
# experiments/results/strategies/STRATEGY/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs}
SEED=${SEED:-0}  # another seed: SEED=1 OUT=runs/seed1 RESULTS=experiments/results/strategies/seed1 bash ...
RESULTS=${RESULTS:-experiments/results/strategies}
STRATEGIES=(sequential-replay sequential stacked concatenated merged joint)
for s in "${STRATEGIES[@]}"; do
  "$BIN/compose" run --risks tox,bias,harm --strategy "$s" --seed "$SEED" --output-dir "$OUT/$s"
  mkdir -p "$RESULTS/$s"
  cp "$OUT/$s"/{config.yaml,forgetting.json,forgetting.png,report.md,results.json} "$RESULTS/$s/"
done
"$BIN/compose" report "${STRATEGIES[@]/#/$OUT/}" --out "$RESULTS"
