#!/usr/bin/env bash
# Blocks trained together, with and without random subsets active (strategy modular), on the two risks whose
# objectives compete for a shared patch (bias's equalizing loss, harm's refusal). One run per variant, the
# harm stage's recipe of the quick preset for every block (a joint stage keeps only the settings its risks
# share), then the paired comparisons on the built-in held-out sets:
#   subsets  each example trains with its own block and a random number of the others active
#   all      every block always active
#   own      as subsets, but an example's loss trains its own block alone (train.block_gradients: own)
#
#     bash experiments/modular.sh [SEED] [VARIANT ...]   # default: all three; runs in runs/modular/
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}
shift || true
VARIANTS=("${@:-subsets all own}")
read -r -a VARIANTS <<< "${VARIANTS[*]}"
for variant in "${VARIANTS[@]}"; do
  case "$variant" in
    subsets|all) extra=(--option activation="$variant") ;;
    own) extra=(--option activation=subsets --train block_gradients=own) ;;
    *) echo "unknown variant '$variant'; valid: subsets, all, own" >&2; exit 2 ;;
  esac
  .venv/bin/compose run --risks bias,harm --strategy modular "${extra[@]}" \
    --train sft_lr=0.03 --train sft_epochs=4 --train balance_weight=5 --seed "$SEED" \
    --out "runs/modular/$variant-seed$SEED"
done
for variant in subsets own; do
  if [ -d "runs/modular/$variant-seed$SEED" ] && [ -d "runs/modular/all-seed$SEED" ]; then
    .venv/bin/compose report "runs/modular/$variant-seed$SEED" "runs/modular/all-seed$SEED" \
      --baseline "all-seed$SEED" --out "runs/modular/report-$variant-seed$SEED"
  fi
done
if [ -d "runs/modular/own-seed$SEED" ] && [ -d "runs/modular/subsets-seed$SEED" ]; then
  .venv/bin/compose report "runs/modular/own-seed$SEED" "runs/modular/subsets-seed$SEED" \
    --baseline "subsets-seed$SEED" --out "runs/modular/report-own-vs-subsets-seed$SEED"
fi
