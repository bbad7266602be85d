"""Wall time of one ``compose run`` in 1 process vs N processes (torchrun, gloo on CPU, nccl on GPUs).

    python experiments/bench/scaleout.py [--procs 2] [--threads-one 2] [--threads-each 1] -- RUN ARGS...
    # e.g. -- --model tiny-random --preset smoke --risks tox,bias

Each variant runs the same job from an empty cache (its own ``COMPOSE_CACHE`` and run folder under ``--work``), so
both build the training data, train and evaluate everything. Prints both wall times, the speed-up, and whether the
two runs' forgetting matrices agree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def timed_run(launcher: list[str], threads: int, run_args: list[str], work: Path, name: str) -> float:
    shutil.rmtree(work / name, ignore_errors=True)
    (work / name).mkdir(parents=True)
    env = {**os.environ, "COMPOSE_CACHE": str(work / name / "cache"), "OMP_NUM_THREADS": str(threads),
           "TQDM_DISABLE": "1"}
    command = [*launcher, "-m", "compose", "--threads", str(threads), "run", *run_args, "--out",
               str(work / name / "run")]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (work / name / "log.txt").write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"{name} failed (exit {done.returncode}); see {work / name / 'log.txt'}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads-one", type=int, default=2, help="torch threads of the single process")
    p.add_argument("--threads-each", type=int, default=1, help="torch threads of each of the N processes")
    p.add_argument("--work", default="/tmp/compose-scaleout")
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then the arguments of compose run")
    args = p.parse_args()
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    one = timed_run([sys.executable], args.threads_one, run_args, work, "one")
    many = timed_run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                      str(args.procs)], args.threads_each, run_args, work, "many")
    rows = [[(r["name"], r["scores"]) for r in json.loads((work / v / "run" / "forgetting.json").read_text())["rows"]]
            for v in ("one", "many")]
    print(f"1 process x {args.threads_one} threads: {one:.1f} s")
    print(f"{args.procs} processes x {args.threads_each} thread(s): {many:.1f} s")
    print(f"speed-up: {one / many:.2f}x")
    for (name, a), (_, b) in zip(*rows):
        print(f"  {name}: " + ", ".join(f"{r} {a[r]:.3f} / {b[r]:.3f}" for r in a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
