#!/usr/bin/env bash
# What moves the main job (sequential-replay on toxicity, bias, harmfulness) toward the goals it misses:
# twice the replay (--replay 0.5 instead of 0.25) and twice the tokens (32 per risk instead of 16), each against
# the default run of experiments/strategies.sh for the same seed.
# Reproduce with: bash experiments/remedies.sh   (from the project root, after `make install`); SEED=1 for
# another seed; VARIANTS="replay-0.5" for one of them. Runs go to $OUT (default runs/remedies/seedN), results
# to $RESULTS (default experiments/results/remedies/seedN); aggregate with
#   .venv/bin/python experiments/aggregate.py experiments/results/remedies \
#       --specialists experiments/results/strategies-tox-bias-harm
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${OUT:-runs/remedies/seed$SEED}
RESULTS=${RESULTS:-experiments/results/remedies/seed$SEED}
VARIANTS=(${VARIANTS:-replay-0.5 tokens-32})
for v in "${VARIANTS[@]}"; do
  case "$v" in
    replay-*) flags=(--replay "${v#replay-}") ;;
    tokens-*) flags=(--tokens "${v#tokens-}") ;;
    *) echo "remedies.sh: unknown variant '$v'; valid: replay-SHARE, tokens-N" >&2; exit 2 ;;
  esac
  "$BIN/compose" run --risks tox,bias,harm --strategy sequential-replay --seed "$SEED" --out "$OUT/$v" "${flags[@]}"
  keep "$OUT/$v" "$RESULTS/$v"
done
DEFAULT=experiments/results/strategies-tox-bias-harm/seed$SEED/sequential-replay
if [[ -d "$DEFAULT" && ! -e "$RESULTS/default" ]]; then cp -r "$DEFAULT" "$RESULTS/default"; fi  # side by side
