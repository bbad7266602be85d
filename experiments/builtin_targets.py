"""The composed target on the built-in held-out sets, seed by seed, from the runs of experiments/targets.sh.

    .venv/bin/python experiments/builtin_targets.py experiments/results/main-job experiments/results/single_risk \\
        --out experiments/results/single_risk/builtin-targets.md

For every seed S with MAIN/seedS (the main job's run files) and SINGLE/seedS/builtin-{bias,harmfulness} (the
single-risk runs' files): the composed patch (the main job's final row) against each risk's own specialist (the
toxicity specialist is the main job's first stage, trained from the base model on toxicity alone; the bias and
harm specialists are the single-risk runs' stages) and against the base model, on the same prompts (each row's
prompt digest is checked), per risk on the per-prompt safety values: exact McNemar for 0/1 verdicts, paired
bootstrap otherwise. The target: every risk's safety within 0.10 of its specialist, and significantly above the
base model's (Holm over the three risks of the seed). Writes the table (--out) and prints it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from compose.errors import ComposeError  # noqa: E402
from compose.forgetting import ForgettingMatrix, Row  # noqa: E402
from compose.io import atomic_write_text  # noqa: E402
from compose.stats import holm, paired_test  # noqa: E402
from goals import SAFETY_GAP  # noqa: E402

RISKS = ("toxicity", "bias", "harmfulness")


def _row(path: Path, trained: str | None = None) -> tuple[Row, Row]:
    """(base row, the row of the stage that trained ``trained``; default: the last row) of a run's matrix."""
    if not path.is_file():
        raise ComposeError(f"no forgetting matrix at '{path}'")
    m = ForgettingMatrix.load(path)
    rows = [r for r in m.rows if r.kind != "base" and (trained is None or r.trained == trained)]
    if m.rows[0].kind != "base" or not rows:
        raise ComposeError(f"'{path}' has no base row or no row trained on {trained or 'anything'}")
    return m.rows[0], rows[0] if trained else rows[-1]


def _safety(row: Row, risk: str, where: str) -> list[float]:
    values = row.items.get(risk, {}).get("safety")
    if not values:
        raise ComposeError(f"{where}: no per-prompt safety values for {risk}")
    return values


def seed_targets(main: Path, single: Path) -> list[dict]:
    """One seed: per risk, composed vs specialist and composed vs base, with whether the target is met."""
    base, composed = _row(main / "forgetting.json")
    first = ForgettingMatrix.load(main / "forgetting.json").rows[1]
    if first.trained != "toxicity":
        raise ComposeError(f"{main}: the first stage trained {first.trained}, not toxicity (its first stage is the "
                           "toxicity specialist: train toxicity first)")
    own = {"toxicity": _row(main / "forgetting.json", "toxicity")[1],
           "bias": _row(single / "builtin-bias" / "forgetting.json", "bias")[1],
           "harmfulness": _row(single / "builtin-harmfulness" / "forgetting.json", "harmfulness")[1]}
    out, safer = [], []
    for risk in RISKS:
        digests = {d for d in (base.digests.get(risk), composed.digests.get(risk), own[risk].digests.get(risk)) if d}
        if len(digests) > 1:
            raise ComposeError(f"{main}: {risk} was evaluated on other prompts in the specialist's run")
        c = _safety(composed, risk, str(main))
        gap = paired_test(c, _safety(own[risk], risk, f"{risk} specialist"), name=risk)
        safer.append(paired_test(_safety(base, risk, str(main)), c, name=risk))
        out.append({"risk": risk, "n": len(c), "base": safer[-1].a, "specialist": gap.b, "composed": gap.a,
                    "gap": gap.diff, "gap_p": gap.p_value, "within": gap.diff <= SAFETY_GAP})
    for row, c in zip(out, holm(safer)):
        row.update(diff=c.diff, ci=(c.ci_low, c.ci_high), holm_p=c.adjusted_p, safer=c.significant and c.diff > 0)
    return out


def table(seeds: dict[int, list[dict]]) -> str:
    head = ["seed", "risk", "n", "base", "specialist", "composed", "specialist - composed", "within 0.10",
            "composed - base [95% CI]", "Holm p", "significantly safer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed, rows in seeds.items():
        for r in rows:
            lines.append(f"| {seed} | {r['risk']} | {r['n']} | {r['base']:.3f} | {r['specialist']:.3f} | "
                         f"{r['composed']:.3f} | {r['gap']:+.3f} | {'yes' if r['within'] else 'no'} | "
                         f"{r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | {r['holm_p']:.2g} | "
                         f"{'yes' if r['safer'] else 'no'} |")
    met = [s for s, rows in seeds.items() if all(r["within"] and r["safer"] for r in rows)]
    return "\n".join(["# The composed target on the built-in held-out sets", "",
                      "Safety scores in [0, 1] (higher is safer) of the composed patch (the main job's final row), "
                      "each risk's own specialist and the base model, on the same held-out prompts of each risk. "
                      f"Target: every risk within {SAFETY_GAP:.2f} of its specialist and significantly safer than "
                      "the base model (Holm over the seed's three risks). `python experiments/builtin_targets.py`.",
                      "", *lines, "", f"Composed target met in {len(met)} of {len(seeds)} seeds"
                      + (f" ({', '.join(map(str, met))})." if met else "."), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("main", type=Path, help="folder of the main job's seedS run files")
    p.add_argument("single", type=Path, help="folder of seedS/builtin-{bias,harmfulness}")
    p.add_argument("--out", type=Path, help="write the table here too")
    args = p.parse_args(argv)
    try:
        seeds = sorted(int(m.group(1)) for d in args.main.iterdir() if (m := re.fullmatch(r"seed(\d+)", d.name)))
        seeds = [s for s in seeds if (args.single / f"seed{s}").is_dir()]
        if not seeds:
            raise ComposeError(f"no seedS folder in both '{args.main}' and '{args.single}'")
        text = table({s: seed_targets(args.main / f"seed{s}", args.single / f"seed{s}") for s in seeds})
    except (ComposeError, FileNotFoundError) as exc:
        print(f"builtin_targets: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
