"""Benchmark: the risk metrics of the unpatched base model on real third-party sets, and the refusal judge's
accuracy on human labels.

    .venv/bin/python experiments/bench/risk_metrics.py --limit 32

Sets (from ../shared/data, see its README): RealToxicityPrompts challenging prefixes (toxicity), AdvBench
(harm ASR) with the benign over-refusal set (harm over-refusal), the 20 most gender-skewed professions
(bias, protocol template "My friend is a {occupation}, and"). ``--limit N`` takes N prompts spread evenly
over each file (the files are grouped by subset). With ``--builtin`` the project's own eval sets are
measured too. Writes experiments/results/risk_metrics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from compose.evaluate import evaluate_risks, format_results  # noqa: E402
from compose.io import atomic_write_json  # noqa: E402
from compose.models import load_model  # noqa: E402
from risks import get_risk  # noqa: E402
from risks.judges import RefusalJudge, judge_accuracy, refusal_phrase  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def spread(path: Path, limit: int | None) -> list[dict]:
    """``limit`` rows taken at even intervals over the file (all rows when ``limit`` is None)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if limit is None or limit >= len(rows):
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


class PhraseOnlyJudge:
    """The baseline: refusal phrases only, no relevance check."""

    def refused(self, prompts, responses):
        return [bool(refusal_phrase(r)) for r in responses]


def real_risks(data: Path, limit: int | None, samples: int) -> list:
    return [
        get_risk("toxicity", samples=samples, data={"eval": spread(data / "toxicity_rtp.jsonl", limit)}),
        get_risk("bias", data={"eval": spread(data / "bias_gendered_professions.jsonl", limit)}),
        get_risk("harmfulness", data={"eval": spread(data / "harm_advbench.jsonl", limit),
                                      "retain_eval": spread(data / "benign_overrefusal.jsonl", limit)}),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, default=32, help="prompts per set (spread over each file)")
    p.add_argument("--samples", type=int, default=4, help="toxicity samples per prompt (k)")
    p.add_argument("--data", type=Path, default=DATA, help="folder of the real sets")
    p.add_argument("--builtin", action="store_true", help="also evaluate the built-in eval sets")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "risk_metrics.json")
    args = p.parse_args(argv)

    start = time.perf_counter()
    labelled = args.data / "judge_refusal_labeled.jsonl"
    judge = judge_accuracy(RefusalJudge(), labelled)
    baseline = judge_accuracy(PhraseOnlyJudge(), labelled)
    print(f"refusal judge accuracy on {labelled.name}: {judge['accuracy']:.3f} (n={judge['n']}, "
          f"false refusal {judge['false_refusal']}, false complied {judge['false_complied']}); "
          f"phrase-only baseline {baseline['accuracy']:.3f}")

    loaded = load_model(args.model)
    record = {"model": args.model, "fingerprint": loaded.fingerprint, "limit": args.limit,
              "toxicity_samples": args.samples, "judge_accuracy": judge, "phrase_only_accuracy": baseline, "sets": {}}
    sets = {"real": real_risks(args.data, args.limit, args.samples)}
    if args.builtin:
        sets["built-in"] = [get_risk(n, samples=args.samples) for n in ("toxicity", "bias", "harmfulness")]
    for name, risks in sets.items():
        limit = None if name == "real" else args.limit
        results = evaluate_risks(loaded.model, loaded.tokenizer, risks, limit=limit)
        print(f"\n{name} sets ({args.model}, unpatched)\n{format_results(results)}")
        record["sets"][name] = {r: m.to_dict() for r, m in results.items()}
    record["seconds"] = time.perf_counter() - start
    atomic_write_json(args.out, record)
    print(f"\nwritten: {args.out} ({record['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
