# Shared by the study scripts of experiments/: run from the project root with the project's virtualenv.
# Each script sets SEED, OUT and RESULTS; `keep RUN_DIR DEST` copies a finished run's files into the results.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-.venv/bin}
SEED=${SEED:-0}

keep() {  # RUN_DIR DEST: the run's config, forgetting matrix, report and results (and order.*, if any)
  mkdir -p "$2"
  cp "$1"/{config.yaml,forgetting.json,forgetting.png,report.md,results.json} "$2/"
  if [[ -f "$1/order.json" ]]; then cp "$1"/order.{json,png} "$2/"; fi
}
