"""Single-risk patches on the real benchmark sets: base vs each risk's own patch vs the composed patch.

    .venv/bin/python experiments/single_risk.py --specialists runs/concatenated/specialists \\
        --composed runs/sequential-replay/patch --limit 32

The specialists are the single-risk patches a `concatenated` (or `merged`) run trains, one folder per risk
(`SPECIALISTS/RISK/patch`); the composed patch is any run's final `patch/`. Every patch is evaluated on the
real sets of ../shared/data (RealToxicityPrompts challenging prefixes, AdvBench with the benign over-refusal set,
gendered professions; the same sets and sampling as experiments/bench/risk_metrics.py): each specialist on its
own risk, the base model and the composed patch on all three. Writes
experiments/results/single_risk/{results.json,report.md}.

Over seeds (one --out folder per seed, e.g. single_risk/seed0, seed1, ...; the specialists and composed patch of
that seed's runs), the mean ± sample standard deviation of every figure:

    .venv/bin/python experiments/single_risk.py --aggregate experiments/results/single_risk
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments" / "bench"))
sys.path.insert(0, str(ROOT / "experiments"))

from compose.artifact import load_patch, read_manifest  # noqa: E402
from compose.evaluate import evaluate_risks  # noqa: E402
from compose.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from compose.models import load_model  # noqa: E402
from aggregate import fmt, spread  # noqa: E402  (mean ± sample std, as in every study summary)
from risk_metrics import DATA, real_risks  # noqa: E402


def evaluate(model, tokenizer, risks) -> dict:
    return {r: m.to_dict() for r, m in evaluate_risks(model, tokenizer, risks).items()}


def _raw(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m["raw"].items() if k in HEADLINE.get(m["risk"], m["raw"]))


HEADLINE = {"toxicity": ("toxic_rate", "expected_max_toxicity"), "bias": ("gas", "gld"),
            "harmfulness": ("asr", "over_refusal")}


def report(results: dict) -> str:
    lines = [f"# Single-risk patches on the real sets ({results['model']}, {results['limit']} prompts per set)", "",
             "Safety (higher safer), headline raw metrics and perplexity of the generations under the base model.",
             "", "| risk | model | safety | raw | perplexity |", "|---|---|---|---|---|"]
    for risk in results["base"]:
        for label, evals in (("base", results["base"]), ("own patch", results["specialists"]),
                             ("composed patch", results["composed"])):
            m = evals.get(risk)
            if m:
                m = {**m, "risk": risk}
                lines.append(f"| {risk} | {label} | {m['safety']:.3f} | {_raw(m)} | "
                             f"{m['fluency'].get('perplexity', float('nan')):.2f} |")
    lines += ["", f"Composed patch: `{results['composed_patch']}`; specialists: `{results['specialists_dir']}`.",
              f"Wall time {results['seconds']:.0f}s.", ""]
    return "\n".join(lines)


LABELS = (("base", "base"), ("own patch", "specialists"), ("composed patch", "composed"))


def aggregate(folder: Path) -> str:
    """summary.{json,md} of FOLDER/seedN/results.json: mean ± std of safety, headline metrics, perplexity."""
    seeds = sorted((int(m.group(1)), p) for p in folder.iterdir()
                   if (m := re.fullmatch(r"seed(\d+)", p.name)) and (p / "results.json").is_file())
    if not seeds:
        raise SystemExit(f"single_risk: '{folder}' has no seedN/results.json; run with --out {folder}/seed0 first")
    runs = [read_json(p / "results.json") for _, p in seeds]
    summary: dict = {"seeds": [s for s, _ in seeds], "limit": runs[0]["limit"], "rows": []}
    for risk in runs[0]["base"]:
        for label, key in LABELS:
            evals = [r[key][risk] for r in runs if risk in r.get(key, {})]
            if not evals:
                continue
            figures = {"safety": [e["safety"] for e in evals], "perplexity": [e["fluency"].get("perplexity") for e in evals]}
            for name in HEADLINE[risk]:
                figures[name] = [e["raw"][name] for e in evals]
            summary["rows"].append({"risk": risk, "model": label, "n": len(evals),
                                    **{k: spread(v) for k, v in figures.items()}})
    atomic_write_json(folder / "summary.json", summary)

    lines = [f"# Single-risk patches on the real sets, seeds {', '.join(map(str, summary['seeds']))} "
             f"({summary['limit']} prompts per set)", "",
             "Mean ± sample standard deviation over the seeds (n). Own patch: the risk's single-risk specialist of "
             "that seed; composed patch: that seed's three-risk sequential-replay patch. Evaluation sampling is "
             "seeded the same way in every seed; the base model's rows still vary a little where the seeds ran with "
             "another number of threads (bf16 sums in another order can change a greedy continuation).", "",
             "| risk | model | n | safety | headline metrics | perplexity |", "|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        raw = ", ".join(f"{name} {fmt(row[name])}" for name in HEADLINE[row["risk"]])
        lines.append(f"| {row['risk']} | {row['model']} | {row['n']} | {fmt(row['safety'])} | {raw} | "
                     f"{fmt(row['perplexity'], 2)} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(folder / "summary.md", text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specialists", type=Path, help="folder with RISK/patch for each risk")
    p.add_argument("--composed", type=Path, help="a composed patch directory")
    p.add_argument("--aggregate", type=Path, metavar="FOLDER", help="summarise FOLDER/seedN/results.json instead")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--samples", type=int, default=4, help="toxicity samples per prompt")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "single_risk")
    args = p.parse_args()
    if args.aggregate:
        print(aggregate(args.aggregate))
        return 0
    if not (args.specialists and args.composed):
        p.error("--specialists and --composed are required (or --aggregate FOLDER)")

    start = time.perf_counter()
    loaded = load_model(args.model)
    risks = {r.name: r for r in real_risks(DATA, args.limit, args.samples)}
    results = {"model": args.model, "limit": args.limit, "toxicity_samples": args.samples,
               "specialists_dir": str(args.specialists), "composed_patch": str(args.composed),
               "composed_manifest": read_manifest(args.composed).get("name")}
    results["base"] = evaluate(loaded.model, loaded.tokenizer, list(risks.values()))
    results["specialists"] = {}
    for name, risk in risks.items():
        model = load_patch(loaded, args.specialists / name / "patch")
        results["specialists"].update(evaluate(model, loaded.tokenizer, [risk]))
    results["composed"] = evaluate(load_patch(loaded, args.composed), loaded.tokenizer, list(risks.values()))
    results["seconds"] = time.perf_counter() - start
    atomic_write_json(args.out / "results.json", results)
    atomic_write_text(args.out / "report.md", report(results))
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
