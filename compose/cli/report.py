"""``compose report RUN_DIR...``: the forgetting report of each finished run, and with several runs a
comparison with paired tests against a baseline run."""

from __future__ import annotations

import argparse
from pathlib import Path

from compose.errors import ComposeError
from compose.forgetting import ForgettingMatrix
from compose.io import check_output_dir, mark_output_dir
from compose.report import comparisons_table, paired_comparisons, write_comparison, write_report
from compose.schema import RESULTS, read_checked


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="folder for the comparison of several runs (default: the first run's parent)")
    p.add_argument("--force", action="store_true", help="write the comparison into a folder compose did not create")
    p.add_argument("--baseline", metavar="NAME",
                   help="run (strategy name or folder name, as listed) the others are tested against (default: the "
                        "first run)")


def main(args) -> int:
    matrices, loaded = {}, []
    out = Path(args.out or Path(args.runs[0]).resolve().parent / "comparison")
    if len(args.runs) > 1:
        check_output_dir(out, "--out", command="report", force=args.force, inputs=args.runs)
    for run in args.runs:
        path = Path(run) / "forgetting.json"
        if not path.is_file():
            raise ComposeError(f"'{run}' is not a finished run folder: forgetting.json is missing")
        results_path = Path(run) / "results.json"
        results = read_checked(results_path, RESULTS, "run results") if results_path.is_file() else {}
        loaded.append((Path(run), ForgettingMatrix.load(path), results))
    strategies = [results.get("strategy") for _, _, results in loaded]
    by_strategy = None not in strategies and len(set(strategies)) == len(strategies)  # else name runs by folder
    for run, matrix, results in loaded:
        name = results["strategy"] if by_strategy else run.name
        if name in matrices:
            name = str(run)
        matrices[name] = matrix
        written = write_report(matrix, run, title=f"{name}: {', '.join(matrix.risks)}",
                               extra={k: results[k] for k in ("parameters", "tokens", "wall_seconds") if k in results})
        print("wrote " + ", ".join(str(p) for p in written))
    if args.baseline is not None and args.baseline not in matrices:
        raise ComposeError(f"--baseline '{args.baseline}' is not one of the runs; valid: {', '.join(matrices)}")
    if len(matrices) > 1:
        mark_output_dir(out, "report")
        written = write_comparison(matrices, out, title="strategy comparison", baseline=args.baseline)
        print(comparisons_table(paired_comparisons(matrices, args.baseline)))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
