#!/usr/bin/env bash
# Ordering study: sequential-replay on toxicity, bias, harmfulness in the dependency-graph order (given), the
# reverse order, and the order `--order auto` chooses from the measured interference of the specialists.
# Reproduce with: bash experiments/ordering.sh   (from the project root, after `make install`); SEED=1 for
# another seed. A given-order run of experiments/strategies.sh for the same seed is reused when it exists.
# Runs go to $OUT (default runs/ordering/seedN); results to $RESULTS (default
# experiments/results/ordering/seedN). Aggregate seeds with experiments/aggregate.py.
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${OUT:-runs/ordering/seed$SEED}
RESULTS=${RESULTS:-experiments/results/ordering/seed$SEED}
SAME=runs/strategies-tox-bias-harm/seed$SEED/sequential-replay
mkdir -p "$OUT"
if [[ ! -e "$OUT/given" && -f "$SAME/results.json" ]]; then cp -r "$SAME" "$OUT/given"; fi
run() {  # NAME RISKS [FLAGS...]
  local name=$1 risks=$2; shift 2
  "$BIN/compose" run --risks "$risks" --strategy sequential-replay --seed "$SEED" --out "$OUT/$name" "$@"
  keep "$OUT/$name" "$RESULTS/$name"
}
run given tox,bias,harm
run reverse harm,bias,tox
run auto tox,bias,harm --order auto
"$BIN/compose" report "$OUT/given" "$OUT/reverse" "$OUT/auto" --out "$RESULTS"
