"""``compose risks``: the registered risks, and a check of their data (``--check-data``)."""

from __future__ import annotations

import argparse
import json

from compose.cli.config import DATA_HELP, build_risks, parse_data_args, parse_option_args
from compose.errors import ComposeError
from compose.models import DEFAULT_MODEL
from compose.cli.eval import DEFAULT_RISKS
from risks import list_risks
from risks.data import overlaps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the full info of every risk as JSON")
    p.add_argument("--check-data", action="store_true",
                   help="check that no prompt is in two splits (exact or near duplicates of normalised text): list "
                        "what was removed from given data and what is left; exit status 1 when any is left")
    p.add_argument("--risks", default=DEFAULT_RISKS, help="risks to check with --check-data")
    p.add_argument("--data", action="append", default=[], metavar="RISK[:SPLIT]=PATH", help=DATA_HELP)
    p.add_argument("--opt", action="append", default=[], metavar="RISK:KEY=VALUE",
                   help="a risk option for --check-data and --teacher-gain, e.g. bias:teacher_score=story")
    p.add_argument("--teacher-gain", action="store_true",
                   help="measure each teacher's safety gain over the base model by the risk's own score, on the "
                        "first --limit training prompts (generates with --model)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model for --teacher-gain (default: %(default)s)")
    p.add_argument("--limit", type=int, default=32, help="training prompts per risk for --teacher-gain")


def check_data(risks: list) -> int:
    """Print every risk's split sizes and cross-split duplicates; the number of duplicates left."""
    left_total = 0
    for risk in risks:
        risk.data_sizes()  # loads every split
        splits = dict(risk.raw_splits)  # compared before the risk's prompt template
        left = overlaps(splits)
        left_total += len(left)
        sizes = ", ".join(f"{s} {len(p)}" for s, p in splits.items())
        print(f"{risk.name}: {sizes}; {len(risk.removed_overlaps)} cross-split duplicates removed from the given "
              f"data, {len(left)} left")
        for sa, pa, sb, pb in (risk.removed_overlaps[:3] + left[:3]):
            print(f"  {sa}: {pa[:70]!r}  ~  {sb}: {pb[:70]!r}")
    return left_total


def teacher_gains(risks: list, model: str, limit: int) -> None:
    """Print each risk's teacher safety against the base model's on the same training prompts (paired bootstrap)."""
    from compose.data import teacher_gain
    from compose.models import load_model

    loaded = load_model(model)
    print(f"teacher safety gain over {model}, by each risk's score on its first {limit} training prompts "
          f"(mean safety; 95% interval of the paired difference):")
    for risk in risks:
        c = teacher_gain(risk, loaded.model, loaded.tokenizer, limit=limit)
        print(f"  {risk.name:<12} n={c.n:<4} base {c.a:.3f}  teacher {c.b:.3f}  gain {c.diff:+.3f} "
              f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]  p={c.p_value:.2g}  ({risk.teacher.describe()})")


def main(args) -> int:
    if args.limit < 1:
        raise ComposeError(f"--limit must be >= 1, got {args.limit}")
    if args.teacher_gain:
        teacher_gains(build_risks(args.risks, parse_data_args(args.data), parse_option_args(args.opt)), args.model,
                      args.limit)
        return 0
    if args.check_data:
        risks = build_risks(args.risks, parse_data_args(args.data), parse_option_args(args.opt))
        return 1 if check_data(risks) else 0

    rows = list_risks()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        sizes = ", ".join(f"{k} {v}" for k, v in r["data"].items())
        aliases = f" (aliases: {', '.join(r['aliases'])})" if r["aliases"] else ""
        print(f"{r['name']}{aliases}  [{r['origin']}]")
        print(f"  {r['description']}")
        print(f"  data     {sizes}")
        print(f"  teacher  {r['teacher']}")
        print(f"  metric   {r['metric']}")
        print(f"  patch    {r['default_tokens']} tokens, init '{r['init_text']}'")
        print(f"  options  {', '.join(f'{k}={v}' for k, v in r['options'].items())}")
        for key in ("after", "requires", "conflicts"):
            if r[key]:
                print(f"  {key:<8} {', '.join(r[key])}")
    return 0
