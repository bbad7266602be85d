"""Single-risk patches on the real benchmark sets: base vs each risk's own patch vs the composed patch.

    .venv/bin/python experiments/single_risk.py --specialists runs/concatenated/specialists \\
        --composed runs/sequential-replay/patch --limit 32

The specialists are the single-risk patches a `concatenated` (or `merged`) run trains, one folder per risk
(`SPECIALISTS/RISK/patch`); the composed patch is any run's final `patch/`. Every patch is evaluated on the
real sets of ../shared/data (RealToxicityPrompts challenging prefixes, AdvBench with the benign over-refusal set,
gendered professions; the same sets and sampling as experiments/bench/risk_metrics.py): each specialist on its
own risk, the base model and the composed patch on all three. Writes
experiments/results/single_risk/{results.json,report.md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments" / "bench"))

from compose.artifact import load_patch, read_manifest  # noqa: E402
from compose.evaluate import evaluate_risks  # noqa: E402
from compose.io import atomic_write_json, atomic_write_text  # noqa: E402
from compose.models import load_model  # noqa: E402
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specialists", type=Path, required=True, help="folder with RISK/patch for each risk")
    p.add_argument("--composed", type=Path, required=True, help="a composed patch directory")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--samples", type=int, default=4, help="toxicity samples per prompt")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "single_risk")
    args = p.parse_args()

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
