"""``compose eval``: a model, optionally patched, on several risks.

    compose eval --model smollm2-135m --patch runs/x/patch --risks tox,bias,harm --limit 16 \\
        --data harm:eval=../shared/data/harm_advbench.jsonl --opt tox:samples=2 --out runs/eval-x

prints one table row per risk (safety, raw figures with their direction, perplexity under the unpatched
model) and writes ``results.json`` (every metric, the resolved settings) atomically into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time

from compose.cli.arguments import add_model_arguments
from compose.cli.config import DATA_HELP, build_risks, parse_data_args, parse_option_args
from compose.cli.patch import apply_patches
from compose.errors import ComposeError
from compose.evaluate import evaluate_risks, format_results
from compose.io import atomic_write_json, check_output_dir, mark_output_dir
from compose.models import load_model

DEFAULT_RISKS = "toxicity,bias,harmfulness"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--patch", action="append", default=[], metavar="DIR",
                   help="patch directory to apply (repeatable: several patches are composed)")
    p.add_argument("--risks", default=DEFAULT_RISKS, help=f"comma-separated risks or aliases (default {DEFAULT_RISKS})")
    p.add_argument("--split", default="eval", help="split to evaluate: eval (default), train, retain, retain_eval")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N prompts of each set")
    p.add_argument("--data", action="append", default=[], metavar="RISK[:SPLIT]=PATH", help=DATA_HELP)
    p.add_argument("--opt", action="append", default=[], metavar="RISK:KEY=VALUE",
                   help="set a risk option, e.g. tox:samples=2, harm:judge=refusal:0.35 (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR", help="where results.json goes (default runs/eval-TIMESTAMP)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--force", action="store_true", help="write into an --out folder that compose did not create")


def main(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise ComposeError(f"--limit must be >= 1, got {args.limit}")
    out_dir = check_output_dir(args.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}", "--out", command="eval",
                               force=args.force, inputs=args.patch)
    risks = build_risks(args.risks, parse_data_args(args.data), parse_option_args(args.opt))
    for risk in risks:
        risk.prompts(args.split, args.limit)  # check every data file before loading the model
    loaded = load_model(args.model, args.dtype)
    model = apply_patches(loaded, args.patch)
    start = time.perf_counter()
    results = evaluate_risks(model, loaded.tokenizer, risks, limit=args.limit, split=args.split)
    mark_output_dir(out_dir, "eval")
    record = {"model": args.model, "fingerprint": loaded.fingerprint, "patches": list(args.patch),
              "split": args.split, "limit": args.limit, "seconds": time.perf_counter() - start,
              "settings": {r.name: {"options": r.options, "data": {k: str(v) for k, v in r.data_sources.items()},
                                    "teacher": r.teacher.describe()} for r in risks},
              "risks": {name: m.to_dict() for name, m in results.items()}}
    path = atomic_write_json(out_dir / "results.json", record)
    if args.json:
        print(json.dumps(record["risks"], indent=2))
    else:
        print(format_results(results))
        print(f"\nwritten: {path}")
    return 0
