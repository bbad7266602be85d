#!/usr/bin/env bash
# The targets of the quick preset for one seed: the main job (the three-risk sequential-replay patch), the
# single-risk specialists, and every patch on the real sets of ../shared/data against the targets.
#   seed 0:            bash experiments/targets.sh
#   another seed:      SEED=1 bash experiments/targets.sh
#   over the seeds:    .venv/bin/python experiments/single_risk.py --aggregate experiments/results/single_risk
# Runs go to $OUT (default runs/targets/seedN); the main job's files are copied into
# experiments/results/main-job/seedN, the specialists' runs (built-in held-out sets) and the real-set report into
# experiments/results/single_risk/seedN. A finished run is read, not redone; the base model's real-set evaluation
# is shared by the seeds (runs/targets/single_risk).
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${OUT:-runs/targets/seed$SEED}
run() {  # OUT_DIR ARGS...: a finished run (results.json) is read, not redone; an interrupted one resumes
  local out=$1; shift
  if [[ -f "$out/results.json" ]]; then echo "finished: $out"; return; fi
  local resume=(); if [[ -f "$out/config.yaml" ]]; then resume=(--resume); fi
  "$BIN/compose" run "$@" --seed "$SEED" --out "$out" "${resume[@]}"
}
run "$OUT/main" --risks tox,bias,harm --strategy sequential-replay
keep "$OUT/main" "experiments/results/main-job/seed$SEED"
for risk in bias harmfulness; do
  run "$OUT/$risk" --risks "$risk" --strategy sequential
  keep "$OUT/$risk" "experiments/results/single_risk/seed$SEED/builtin-$risk"  # its built-in held-out rows
done
# the main job's first stage learns toxicity alone, from the base model, with the toxicity recipe: it is the
# toxicity specialist (the same data, settings and seed as a single-risk run)
"$BIN/python" experiments/single_risk.py --specialist toxicity="$OUT/main/stages/01-toxicity/patch" \
  --specialist bias="$OUT/bias/stages/01-bias/patch" \
  --specialist harmfulness="$OUT/harmfulness/stages/01-harmfulness/patch" \
  --composed "$OUT/main/patch" --out "runs/targets/single_risk/seed$SEED"
mkdir -p "experiments/results/single_risk/seed$SEED"
cp "runs/targets/single_risk/seed$SEED"/{report.md,results.json} "experiments/results/single_risk/seed$SEED/"
