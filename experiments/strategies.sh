#!/usr/bin/env bash
# Every strategy on the same risks with the quick preset on the embedded model, then the comparison report and
# the goals check. Reproduce with: bash experiments/strategies.sh   (from the project root, after `make install`)
#   three risks, seed 0 (default):  bash experiments/strategies.sh
#   another seed:                   SEED=1 bash experiments/strategies.sh
#   two risks, toxicity then bias:  RISKS=tox,bias bash experiments/strategies.sh
# Runs go to $OUT (default runs/strategies-RISKS/seedN); each run's config, matrix, report and results are
# copied into $RESULTS/STRATEGY/ (default experiments/results/strategies-RISKS/seedN). Runs share the cached
# teacher data, base evaluation and specialists (under $COMPOSE_CACHE); a finished run folder is resumed, not
# redone. Aggregate seeds with experiments/aggregate.py.
set -euo pipefail
source "$(dirname "$0")/common.sh"
RISKS=${RISKS:-tox,bias,harm}
NAME=strategies-${RISKS//,/-}
OUT=${OUT:-runs/$NAME/seed$SEED}
RESULTS=${RESULTS:-experiments/results/$NAME/seed$SEED}
STRATEGIES=(${STRATEGIES:-sequential-replay sequential stacked concatenated merged joint})
for s in "${STRATEGIES[@]}"; do
  "$BIN/compose" run --risks "$RISKS" --strategy "$s" --seed "$SEED" --out "$OUT/$s"
  keep "$OUT/$s" "$RESULTS/$s"
done
"$BIN/compose" report "${STRATEGIES[@]/#/$OUT/}" --out "$RESULTS" --baseline sequential
if [[ " ${STRATEGIES[*]} " == *" concatenated "* ]]; then
  "$BIN/python" experiments/goals.py "${STRATEGIES[@]/#/$OUT/}" --specialists "$OUT/concatenated" \
    --out "$RESULTS/goals.md"
fi
