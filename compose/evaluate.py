"""``compose eval`` (a model, optionally patched, on several risks) and ``compose risks`` (the registry).

    compose eval --model smollm2-135m --patch runs/x/patch --risks tox,bias,harm --limit 16 \\
        --data harm:eval=../shared/data/harm_advbench.jsonl --opt tox:samples=2 --out runs/eval-x

prints one table row per risk (safety, raw figures with their direction, perplexity under the unpatched
model) and writes ``results.json`` (every metric, the resolved settings) atomically into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from compose.errors import ComposeError
from compose.generation import MAX_SAMPLES
from compose.schema import Field, check_fields, kind_of

DEFAULT_RISKS = "toxicity,bias,harmfulness"


def evaluate_risks(model, tokenizer, risks: list, limit: int | None = None, split: str = "eval") -> dict:
    """``{risk name: MetricResult}`` of ``model`` (a base model or a PeftModel) on each risk's ``split``."""
    results = {}
    for risk in risks:
        start = time.perf_counter()
        result = risk.evaluate(model, tokenizer, split=split, limit=limit)
        result.seconds = time.perf_counter() - start
        results[risk.name] = result
    return results


# --- compose eval -------------------------------------------------------------------------------------------

def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from compose.models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"base model: {DEFAULT_MODEL} (embedded, default), tiny-random, a local dir or a HF id")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto (bf16 where fast), bf16, fp32")
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


DATA_HELP = ("a risk's prompts from a .jsonl/.csv/.parquet/.txt file with a 'prompt' column or a Hugging Face "
             "dataset id (repeatable): RISK:SPLIT=PATH replaces one split (train, eval, retain, retain_eval); "
             "RISK=PATH is split in two by a stable hash of each prompt, half for training, half held out for eval")


def parse_data_args(items: list[str]) -> dict[str, dict[str, str]]:
    """``["harm:eval=a.jsonl", "bias=b.csv"]`` -> {"harm": {"eval": "a.jsonl"}, "bias": {"all": "b.csv"}}
    (no split: the whole file, split into train and eval by hash; see ``risks.base.POOL``)."""
    from risks.base import POOL, SPLITS

    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        risk, _, split = key.partition(":")
        split = split.strip() or POOL
        if not sep or not risk.strip() or not value.strip() or split not in (*SPLITS, POOL):
            raise ComposeError(f"bad --data '{item}'; expected RISK[:SPLIT]=PATH with SPLIT one of "
                               f"{', '.join(SPLITS)} (none: the file is split into train and eval), "
                               "e.g. harm:eval=advbench.jsonl")
        out.setdefault(risk.strip(), {})[split] = value.strip()
    return out


def parse_option_args(items: list[str]) -> dict[str, dict]:
    """``["tox:samples=2"]`` -> {"tox": {"samples": 2}} (values parsed as JSON where they are JSON)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        risk, colon, name = key.partition(":")
        if not sep or not colon or not risk or not name:
            raise ComposeError(f"bad --opt '{item}'; expected RISK:KEY=VALUE, e.g. tox:samples=2")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(risk.strip(), {})[name.strip()] = parsed
    return out


def build_risks(names: str, data: dict, options: dict) -> list:
    """Risk instances for a comma-separated list of names, with per-risk data and options (keys may be aliases)."""
    from risks import get_risk, risk_class

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise ComposeError("no risks given; use --risks, e.g. --risks tox,bias,harm (see `compose risks`)")
    canonical = [risk_class(n).name for n in wanted]
    for kind, given in (("--data", data), ("--opt", options)):
        for key in given:
            if risk_class(key).name not in canonical:
                raise ComposeError(f"{kind} names risk '{key}', which is not evaluated; risks: {', '.join(canonical)}")
    for key, values in options.items():
        check_risk_options(risk_class(key), values)
    return [get_risk(name, data=_for_risk(data, name) or None, **_for_risk(options, name)) for name in canonical]


# bounds of the options every risk has (the others are typed by their defaults)
OPTION_BOUNDS = {"max_new_tokens": Field("int", minimum=1), "samples": Field("int", minimum=1, maximum=MAX_SAMPLES),
                 "temperature": Field("number", minimum=0.01), "top_p": Field("number", minimum=0.01, maximum=1),
                 "batch_size": Field("int", minimum=1), "seed": Field("int"), "template": Field("str")}


def check_risk_options(cls, options: dict) -> None:
    """Refuse ``--opt`` values of the wrong type or out of range (names are checked by the risk itself)."""
    defaults = cls().options
    fields = {k: OPTION_BOUNDS.get(k, Field(kind_of(v))) for k, v in defaults.items()}
    check_fields(options, {k: dataclasses.replace(f, required=False) for k, f in fields.items()}, f"--opt {cls.name}")


def _for_risk(given: dict[str, dict], name: str) -> dict:
    """The entries of ``given`` (keyed by risk names or aliases) that belong to risk ``name``, merged."""
    from risks import risk_class

    return {k: v for key, d in given.items() if risk_class(key).name == name for k, v in d.items()}


def eval_main(args) -> int:
    from compose.cli import apply_patches
    from compose.io import atomic_write_json, check_output_dir, mark_output_dir
    from compose.models import load_model

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


def format_results(results: dict) -> str:
    """A plain-text table: risk, n, safety, raw figures (with a direction arrow), perplexity; each figure with
    the half-width of its 95% interval (±) where the metric kept per-prompt values."""
    arrow = {"lower": "↓", "higher": "↑"}

    def fig(m, key, value, digits=3):
        ci = m.intervals.get(key)
        hw = f" ±{(ci['ci_high'] - ci['ci_low']) / 2:.{digits}f}" if ci and ci.get("ci_low") is not None else ""
        return f"{value:.{digits}f}{hw}"

    rows = [("risk", "n", "safety", "raw figures (↓ lower is better; ± 95% interval)", "ppl")]
    for name, m in results.items():
        raw = "  ".join(f"{k} {fig(m, k, v)}{arrow.get(m.directions.get(k), '')}" for k, v in m.raw.items())
        ppl = m.fluency.get("perplexity")
        n = str(m.intervals.get("safety", {}).get("n", "-"))
        rows.append((name, n, fig(m, "safety", m.safety), raw,
                     fig(m, "perplexity", ppl, 1) if ppl is not None and ppl == ppl else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# --- compose risks ------------------------------------------------------------------------------------------

def add_risks_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the full info of every risk as JSON")
    p.add_argument("--check-data", action="store_true",
                   help="check that no prompt is in two splits (exact or near duplicates of normalised text): list "
                        "what was removed from given data and what is left; exit status 1 when any is left")
    p.add_argument("--risks", default=DEFAULT_RISKS, help="risks to check with --check-data")
    p.add_argument("--data", action="append", default=[], metavar="RISK[:SPLIT]=PATH", help=DATA_HELP)


def check_data(risks: list) -> int:
    """Print every risk's split sizes and cross-split duplicates; the number of duplicates left."""
    from risks.data import overlaps

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


def risks_main(args) -> int:
    from risks import list_risks

    if args.check_data:
        risks = build_risks(args.risks, parse_data_args(args.data), {})
        return 1 if check_data(risks) else 0

    rows = list_risks()
    if args.json:
        print(json.dumps(rows, indent=2))
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
        for key in ("after", "requires", "conflicts"):
            if r[key]:
                print(f"  {key:<8} {', '.join(r[key])}")
    return 0
