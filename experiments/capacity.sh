#!/usr/bin/env bash
# Capacity: the capacity search's best allocation vs the equal split under the same budget (24 tokens shared by
# toxicity and bias, stacked; settings in experiments/search.yaml). The search scores each trial on 16 prompts
# per risk; its winner and the equal split are then re-run on 32 prompts per risk, which decides.
# Reproduce with: bash experiments/capacity.sh   (from the project root, after `make install`); SEED=1 for
# another seed. Runs go to $OUT (default runs/capacity/seedN), results to $RESULTS (default
# experiments/results/capacity/seedN); a re-run completes an interrupted search and keeps finished runs. Aggregate with
#   .venv/bin/python experiments/aggregate.py experiments/results/capacity \
#       --title "Capacity: the search's best allocation vs the equal split (stacked, toxicity + bias, 24 tokens)"
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${OUT:-runs/capacity/seed$SEED}
RESULTS=${RESULTS:-experiments/results/capacity/seed$SEED}
BUDGET=${BUDGET:-24}
TRIALS=${TRIALS:-12}
"$BIN/compose" search --config experiments/search.yaml --budget "$BUDGET" --total-trials "$TRIALS" --seed "$SEED" \
  --out "$OUT/search"
mkdir -p "$RESULTS/search"
cp "$OUT"/search/{trials.md,search.json,best.yaml,*.png} "$RESULTS/search/"
"$BIN/compose" run --config "$OUT/search/best.yaml" --eval-limit 32 --out "$OUT/best"
keep "$OUT/best" "$RESULTS/best"
"$BIN/compose" run --config experiments/search.yaml --tokens "tox=$((BUDGET / 2)),bias=$((BUDGET / 2))" \
  --eval-limit 32 --seed "$SEED" --out "$OUT/equal"
keep "$OUT/equal" "$RESULTS/equal"
