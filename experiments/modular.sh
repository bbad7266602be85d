#!/usr/bin/env bash
# Blocks trained together, with and without random subsets active (strategy modular), on the two risks whose
# objectives compete for a shared patch (bias's equalizing loss, harm's refusal). One run per activation, the
# harm stage's recipe of the quick preset for every block (a joint stage keeps only the settings its risks
# share), then the paired comparison of the two on the built-in held-out sets.
#
#     bash experiments/modular.sh [SEED]      # runs in runs/modular/, the comparison in runs/modular/report-seedSEED
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}
for activation in subsets all; do
  .venv/bin/compose run --risks bias,harm --strategy modular --option activation="$activation" \
    --train sft_lr=0.03 --train sft_epochs=4 --train balance_weight=5 --seed "$SEED" \
    --out "runs/modular/$activation-seed$SEED"
done
.venv/bin/compose report "runs/modular/subsets-seed$SEED" "runs/modular/all-seed$SEED" \
  --baseline "all-seed$SEED" --out "runs/modular/report-seed$SEED"
