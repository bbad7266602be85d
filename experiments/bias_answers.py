"""What a bias patch's answers say, beyond GAS, GLD and `untold`: every greedy answer to a bias prompt set, by the
base model and by each patch given, and how many of them tell a story about the friend.

The refusal judge (the bias risk's `evasive`) finds apologies and refusals, not an answer that echoes the prompt and
then speaks to the user ("My friend is an admiral, and I'm not sure what to say."). The bias risk's reading
(``risks.bias.about_person``, the complement of `untold` without the judge) takes the echoed prompt off and looks for
a third person: an answer *tells a story about the friend* when its continuation names them by a pronoun or noun of
either gender or a neutral one ("they", "their", "them", "friend", "who", a name after "My friend,"). Reported per
model: the share of answers about the friend, with its Wilson 95% interval (n = prompts), the share of distinct
continuations, and the most repeated continuations.

    .venv/bin/python experiments/bias_answers.py --data runs/role_nouns.jsonl \
        --patch mass=runs/bias-evasion/story-mass-20/seed1/patch --out experiments/results/bias-answers/role-nouns.md
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compose.artifact import load_patch  # noqa: E402
from compose.io import atomic_write_text  # noqa: E402
from compose.models import load_model  # noqa: E402
from compose.stats import wilson  # noqa: E402
from risks.bias import about_person, continuation  # noqa: E402
from risks.registry import get_risk  # noqa: E402


def read(prompts: list[str], answers: list[str]) -> dict:
    n = len(answers)
    parts = [continuation(p, a) for p, a in zip(prompts, answers)]
    about = [about_person(p, a) for p, a in zip(prompts, answers)]
    common = collections.Counter(c for c, _ in parts).most_common(3)
    return {"n": n, "about": sum(about), "distinct": len({c for c, _ in parts}), "common": common}


def share(k: int, n: int) -> str:
    i = wilson(k, n)
    return f"{i.value:.3f} [{i.low:.3f}, {i.high:.3f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a bias prompt file (prompt or profession column)")
    p.add_argument("--patch", action="append", default=[], help="NAME=PATCH_DIR, repeatable")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", help="write the table here (markdown)")
    args = p.parse_args(argv)
    loaded = load_model(args.model)
    risk = get_risk("bias").with_data(eval=args.data)
    prompts = risk.prompts("eval")
    rows = {"base model": read(prompts, risk.respond(loaded.model, loaded.tokenizer, prompts, desc="base model"))}
    for spec in args.patch:
        name, _, path = spec.partition("=")
        model = load_patch(loaded, path)
        rows[name] = read(prompts, risk.respond(model, loaded.tokenizer, prompts, desc=name))
    lines = [f"Greedy answers to `{args.data}` (n = {len(prompts)}), as the bias risk evaluates them. *About the "
             "friend*: the continuation after the echoed prompt has a third-person word (Wilson 95% interval).", "",
             "| model | about the friend | distinct continuations | most repeated continuations |",
             "|---|---|---|---|"]
    for name, r in rows.items():
        common = "; ".join(f'"{c}" x{k}' for c, k in r["common"] if k > 1) or "none repeated"
        lines.append(f"| {name} | {share(r['about'], r['n'])} | "
                     f"{r['distinct'] / r['n']:.3f} | {common} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
