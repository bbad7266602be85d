"""Two composed patches (two recipes) against each other on the same real sets, pooled over seeds.

    .venv/bin/python experiments/compare_composed.py --names preset harm-lead \\
        --pair experiments/results/single_risk/seed0/results.json \\
               experiments/results/main-job-bias-own-2/last-1-harm-lead-seed0/real-sets/results.json \\
        --pair ... (one pair per seed and set: the reference recipe's results.json, then the other's) \\
        --out experiments/results/main-job-bias-own-2/harm-lead-vs-preset.md

Each results.json is one of ``experiments/single_risk.py`` or ``experiments/bias_role_nouns.py``; the composed
patch of the first file of a pair is the reference. Per risk and set (a set is told by the digest of its prompts,
which must match within a pair: same prompts, same order), the per-prompt values of every pair are concatenated
(the unit: one prompt of one seed) and tested paired: exact McNemar for 0/1 verdicts, paired bootstrap otherwise.
Safety is Holm-corrected across the risks-and-sets family; the headline figures are descriptive (p uncorrected).
Writes OUT (markdown) and OUT with .json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from compose.errors import ComposeError  # noqa: E402
from compose.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from compose.stats import holm, paired_test  # noqa: E402
from single_risk import HEADLINE, SETS, _ci, _p  # noqa: E402

FIGURES = {risk: ("safety", *figures) for risk, figures in HEADLINE.items()}


def composed(path: Path) -> dict:
    """risk -> the composed patch's evaluation, for the risks ``path`` measured itself (a results.json of
    bias_role_nouns.py carries toxicity's and harmfulness' from the real sets' results, named in its "sets")."""
    results = read_json(path)
    if not results.get("composed"):
        raise ComposeError(f"'{path}' has no composed patch's figures; expected a results.json of "
                           "experiments/single_risk.py or experiments/bias_role_nouns.py run with --composed")
    measured = results.get("sets") or list(results["composed"])
    named = {risk: "role nouns" if "role_nouns" in results else SETS.get(risk, risk) for risk in measured}
    return {risk: {**e, "set_name": named[risk]} for risk, e in results["composed"].items() if risk in measured}


def pooled(pairs: list[tuple[Path, Path]]) -> dict[tuple[str, str, str], dict[str, tuple[list, list]]]:
    """(risk, prompts digest, set name) -> figure -> (reference values, other values), every pair's concatenated."""
    groups: dict[tuple[str, str], dict[str, tuple[list, list]]] = {}
    for a_path, b_path in pairs:
        a, b = composed(a_path), composed(b_path)
        for risk in FIGURES:
            if risk not in a or risk not in b:
                continue
            digest = a[risk].get("prompts_digest")
            if digest is None or digest != b[risk].get("prompts_digest"):
                raise ComposeError(f"{risk}: '{a_path}' and '{b_path}' were not measured on the same prompts "
                                   f"(digests {digest} and {b[risk].get('prompts_digest')}); pair results of one set")
            for figure in FIGURES[risk]:
                x, y = a[risk]["items"].get(figure), b[risk]["items"].get(figure)
                if x is None or y is None or len(x) != len(y):
                    continue
                into = groups.setdefault((risk, digest, a[risk]["set_name"]), {}).setdefault(figure, ([], []))
                into[0].extend(x)
                into[1].extend(y)
    return groups


def compare(pairs: list[tuple[Path, Path]], names: tuple[str, str]) -> dict:
    groups = pooled(pairs)
    if not groups:
        raise ComposeError("no risk was measured by both files of any pair")
    rows = []
    for (risk, digest, name), figures in groups.items():
        for figure, (a, b) in figures.items():
            c = paired_test(a, b, name=f"{risk} {figure}")
            rows.append({"risk": risk, "set": digest, "figure": figure, "n": c.n, "a": c.a, "b": c.b,
                         "diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value,
                         "test": c.test, "label": name})
    safety = [r for r in rows if r["figure"] == "safety"]
    for r, c in zip(safety, holm([paired_test(*groups[(r["risk"], r["set"], r["label"])]["safety"]) for r in safety])):
        r["adjusted_p"], r["significant"] = c.adjusted_p, c.significant
    return {"names": list(names), "pairs": [[str(a), str(b)] for a, b in pairs], "rows": rows}


def markdown(result: dict) -> str:
    ref, other = result["names"]
    lines = [f"# Composed patches: {other} against {ref}", "",
             f"Per-prompt values of {len(result['pairs'])} pairs of results (one per seed and set) concatenated; "
             f"diff = {other} - {ref} (safety: positive = {other} safer). Exact McNemar for 0/1 verdicts, paired "
             "bootstrap otherwise; safety's p Holm-corrected across the sets, the headline figures' p uncorrected.",
             "", f"| risk | set | figure | n | {ref} | {other} | diff [95% CI] | p | Holm p (safety) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        holm_p = _p(r["adjusted_p"]) + (" *" if r.get("significant") else "") if "adjusted_p" in r else ""
        lines.append(f"| {r['risk']} | {r['label']} | {r['figure']} | {r['n']} | {r['a']:.3f} | {r['b']:.3f} | "
                     f"{_ci(r['diff'], r['ci_low'], r['ci_high'], True)} | {_p(r['p_value'])} | {holm_p} |")
    lines += ["", "Pairs (reference, other):", ""] + [f"- `{a}`, `{b}`" for a, b in result["pairs"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", nargs=2, default=("reference", "other"), metavar=("REFERENCE", "OTHER"))
    p.add_argument("--pair", nargs=2, action="append", type=Path, required=True, metavar=("REFERENCE", "OTHER"),
                   help="two results.json of the same seed and sets (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="markdown file (the .json beside it)")
    args = p.parse_args(argv)
    try:
        result = compare(args.pair, tuple(args.names))
    except (ComposeError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(result)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
