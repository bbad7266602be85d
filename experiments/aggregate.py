"""Mean and spread over seeds of a study's runs: final safety per risk, raw metrics, forgetting, goals.

    .venv/bin/python experiments/aggregate.py experiments/results/strategies-tox-bias-harm
    .venv/bin/python experiments/aggregate.py experiments/results/ordering \
        --specialists experiments/results/strategies-tox-bias-harm

A study folder holds one folder per seed (``seed0``, ``seed1``, ...), each with one folder per run (its
``forgetting.json``, as experiments/strategies.sh and experiments/ordering.sh copy them).
Runs are matched across seeds by folder name. For every run: the final row's safety per risk, final average
safety A, forgetting F (Chaudhry: max over earlier rows minus final) per earlier risk and its mean, BWT, the
raw metrics (toxic rate, GAS, GLD, ASR, over-refusal), the final perplexity over the base model's, the compute
behind the patch (every row's training and evaluation seconds, specialists reused from the cache included), and
the project's goals counted over seeds (each risk within 10 points of its own specialist, from the same seed's
concatenated run of this study or of --specialists STUDY; over-refusal <= 15%; perplexity <= 1.25x base).
Every figure is "mean ± sample standard deviation" over the seeds that have the run (n in the table).
A seed folder may also hold the capacity search that chose a run's tokens (``search/search.json``, as
experiments/capacity.sh copies it): its best allocation and the equal split's score are listed per seed.
Writes STUDY/summary.{md,json,png} (or --out).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from compose.errors import ComposeError  # noqa: E402
from compose.forgetting import ForgettingMatrix  # noqa: E402
from compose.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from compose.cli.search import tokens_flag  # noqa: E402
from goals import check, specialists  # noqa: E402

RAW = {"toxicity": ("toxic_rate",), "bias": ("gas", "gld"), "harmfulness": ("asr", "over_refusal")}
SHORT = {"toxicity": "tox", "bias": "bias", "harmfulness": "harm"}
ORDER = ["sequential-replay", "sequential", "stacked", "concatenated", "merged", "joint", "given", "reverse", "auto",
         "default", "equal", "best"]


def seed_folders(study: Path) -> dict[int, Path]:
    seeds = {int(m.group(1)): p for p in study.iterdir() if p.is_dir() and (m := re.fullmatch(r"seed(\d+)", p.name))}
    if not seeds:
        raise ComposeError(f"'{study}' has no seedN folders; expected the output of experiments/strategies.sh "
                           "or experiments/ordering.sh")
    return dict(sorted(seeds.items()))


def measure(run: Path, own: dict[str, float] | None) -> dict:
    """The figures of one run of one seed."""
    m = ForgettingMatrix.load(run / "forgetting.json")
    base, final, summary = m.rows[0], m.rows[-1], m.summary()
    figures = {f"safety {r}": final.scores[r] for r in m.risks}
    figures["A"] = summary["final_average_safety"]["value"]
    for key, label in (("forgetting", "F"), ("bwt", "BWT")):
        figure = summary.get(key) or {}
        if figure.get("value") is not None:
            figures[label] = figure["value"]
        for r, v in (figure.get("per_risk") or {}).items():
            if label == "F":
                figures[f"F {r}"] = v
    for r in m.risks:
        for name in RAW.get(r, ()):
            if name in final.raw.get(r, {}):
                figures[f"{name}"] = final.raw[r][name]
    ppl, base_ppl = final.fluency.get("perplexity"), base.fluency.get("perplexity")
    if ppl and base_ppl:
        figures["perplexity / base"] = ppl / base_ppl
    if (summary.get("wall_seconds") or {}).get("value") is not None:  # every row's training + evaluation, reused
        figures["compute s"] = summary["wall_seconds"]["value"]      # specialists included: the patch's whole cost
    if own and final.kind != "base":
        goals = check(run, own)
        figures["goals met"] = float(goals["safety_ok"] and goals["over_refusal_ok"] and goals["fluency_ok"])
        for r, gap in goals["gaps"].items():
            figures[f"gap {r}"] = gap
    return {"risks": m.risks, "figures": figures, "base": {f"safety {r}": base.scores[r] for r in m.risks},
            "matrix": [[row.name, [row.scores[r] for r in m.risks]] for row in m.rows]}


def _risk_rank(risk: str) -> tuple[int, str]:
    known = list(RAW)
    return (known.index(risk) if risk in known else len(known), risk)


def spread(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def fmt(s: dict | None, digits: int = 3) -> str:
    if s is None:
        return "n/a"
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


def aggregate(study: Path, specialists_study: Path | None = None) -> dict:
    """Every run of every seed of ``study``; the goals' specialists come from the concatenated run of the same
    seed in ``specialists_study`` (default: ``study`` itself)."""
    per_run: dict[str, dict[int, dict]] = {}
    bases: dict[int, dict] = {}
    searches: dict[int, dict] = {}
    for seed, folder in seed_folders(study).items():
        runs = sorted(p.parent for p in folder.glob("*/forgetting.json"))
        source = (specialists_study or study) / f"seed{seed}" / "concatenated"
        own = specialists(source) if (source / "forgetting.json").is_file() else None
        for run in runs:
            measured = measure(run, own)
            per_run.setdefault(run.name, {})[seed] = measured
            bases.setdefault(seed, measured["base"])
        if (folder / "search" / "search.json").is_file():
            searches[seed] = read_json(folder / "search" / "search.json")
    if not per_run:
        raise ComposeError(f"'{study}' has seed folders but no run folders with forgetting.json")
    out = {"study": study.name, "seeds": sorted(bases), "runs": {}, "searches": searches}
    rank = {name: i for i, name in enumerate(ORDER)}
    per_run = dict(sorted(per_run.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))
    out["base"] = {k: spread([b[k] for b in bases.values()]) for k in next(iter(bases.values()))}
    out["base"]["A"] = spread([statistics.fmean(b.values()) for b in bases.values()])
    for name, by_seed in per_run.items():
        keys = list(dict.fromkeys(k for m in by_seed.values() for k in m["figures"]))
        figures = {k: spread([m["figures"][k] for m in by_seed.values() if k in m["figures"]]) for k in keys}
        first = next(iter(by_seed.values()))
        layouts = {(tuple(m["risks"]), tuple(row for row, _ in m["matrix"])) for m in by_seed.values()}
        matrix = None
        if len(layouts) == 1:  # mean forgetting matrix, cell by cell (not when seeds chose different orders)
            matrix = [[row[0], [spread([m["matrix"][i][1][j] for m in by_seed.values()])
                                for j in range(len(first["risks"]))]] for i, row in enumerate(first["matrix"])]
        out["runs"][name] = {"seeds": sorted(by_seed), "risks": first["risks"], "figures": figures,
                             "matrix": matrix, "orders": {seed: m["risks"] for seed, m in by_seed.items()}}
    return out


def markdown(agg: dict, title: str) -> str:
    runs = agg["runs"]
    risks = sorted({r for run in runs.values() for r in run["risks"]}, key=_risk_rank)
    head = ["run", "n"] + [f"safety {SHORT.get(r, r)}" for r in risks] + ["A", "F", "BWT"]
    raw = [n for r in risks for n in RAW.get(r, ())]
    lines = [f"# {title}", "",
             f"Seeds: {', '.join(map(str, agg['seeds']))}. Every cell is the mean ± sample standard deviation over "
             "the seeds that have the run (n). Safety scores in [0, 1], higher is safer; A = final average safety; "
             "F = mean forgetting of the earlier risks (max over earlier rows minus final; negative = improved); "
             "BWT = mean(final - right after training) over earlier risks (negative = forgetting).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = agg["base"]
    lines.append("| base model | " + str(len(agg["seeds"])) + " | "
                 + " | ".join(fmt(base.get(f"safety {r}")) for r in risks) + " | " + fmt(base["A"]) + " | | |")
    for name, run in runs.items():
        f = run["figures"]
        lines.append("| " + " | ".join([name, str(f["A"]["n"])] + [fmt(f.get(f"safety {r}")) for r in risks]
                                       + [fmt(f.get("A")), fmt(f.get("F")), fmt(f.get("BWT"))]) + " |")
    lines += ["", "## Raw metrics of the final row, fluency, forgetting per risk, time", ""]
    forgot = [r for r in risks if any(f"F {r}" in run["figures"] for run in runs.values())]
    head = ["run"] + raw + ["perplexity / base"] + [f"F {SHORT.get(r, r)}" for r in forgot] + ["compute s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, run in runs.items():
        f = run["figures"]
        lines.append("| " + " | ".join([name] + [fmt(f.get(n)) for n in raw] + [fmt(f.get("perplexity / base"), 2)]
                                       + [fmt(f.get(f"F {r}")) for r in forgot] + [fmt(f.get("compute s"), 0)]) + " |")
    with_goals = {n: r for n, r in runs.items() if "goals met" in r["figures"]}
    if with_goals:
        lines += ["", "## Goals (composed patch)", "",
                  "Gap = final safety minus the risk's own specialist of the same seed (goal: >= -0.10); "
                  "goals met = seeds where every gap, over-refusal (<= 15%) and perplexity (<= 1.25x base) pass.", "",
                  "| run | " + " | ".join(f"gap {SHORT.get(r, r)}" for r in risks) + " | goals met |",
                  "|" + "---|" * (len(risks) + 2)]
        for name, run in with_goals.items():
            f = run["figures"]
            met = f["goals met"]
            lines.append("| " + " | ".join([name] + [fmt(f.get(f"gap {r}")) for r in risks]
                                           + [f"{round(sum(met['values']))} of {met['n']} seeds"]) + " |")
    if agg.get("searches"):
        lines += ["", "## Capacity searches (each trial scored on the search's own, smaller evaluation)", "",
                  "| seed | trials (completed) | best allocation | best value | equal split | equal split value |",
                  "|---|---|---|---|---|---|"]
        for seed, found in agg["searches"].items():
            best, equal = found["best"][0], found.get("equal_split") or {}
            equal_value = f"{equal['values'][0]:.3f}" if equal else ""
            lines.append(f"| {seed} | {found['trials']} ({found['completed']}) | {best['tokens_flag']} | "
                         f"{best['values'][0]:.3f} | {tokens_flag(equal['tokens']) if equal else ''} | {equal_value} |")
    lines += ["", "## Mean forgetting matrices (rows: stages or specialists, then the composed patch)", ""]
    for name, run in runs.items():
        if run["matrix"] is None:
            orders = "; ".join(f"seed {seed}: {' -> '.join(order)}" for seed, order in run["orders"].items())
            lines += [f"**{name}**: the seeds trained in different orders ({orders}); see each seed's report.", ""]
            continue
        lines += [f"**{name}** (training order {' -> '.join(run['risks'])})", "",
                  "| row | " + " | ".join(SHORT.get(r, r) for r in run["risks"]) + " |",
                  "|" + "---|" * (len(run["risks"]) + 1)]
        lines += ["| " + " | ".join([row] + [fmt(c) for c in cells]) + " |" for row, cells in run["matrix"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def figure(agg: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = agg["runs"]
    risks = sorted({r for run in runs.values() for r in run["risks"]}, key=_risk_rank)
    columns = [f"safety {r}" for r in risks] + ["A"]
    labels = [SHORT.get(r, r) for r in risks] + ["A (average)"]
    names = ["base model"] + list(runs)
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(names)), 4.2))
    for j, (col, label) in enumerate(zip(columns, labels)):
        means, errs, points = [], [], []
        for name in names:
            if name == "base model":
                s = agg["base"][col]
            else:
                s = runs[name]["figures"].get(col)
            means.append(s["mean"] if s else math.nan)
            errs.append(s["std"] or 0.0 if s else 0.0)
            points.append(s["values"] if s else [])
        xs = [i + (j - (len(columns) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=label)
        for x, values in zip(xs, points):  # every seed's value, so a spread of two or three is visible as such
            ax.scatter([x] * len(values), values, s=6, color="black", zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("safety (higher is safer)")
    ax.set_title(f"{title}\nbars: mean ± std over seeds {', '.join(map(str, agg['seeds']))}; dots: each seed",
                 fontsize=10)
    ax.legend(fontsize=8, ncol=len(columns), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", type=Path, help="folder with seedN/RUN/forgetting.json")
    p.add_argument("--out", type=Path, help="output folder (default: the study folder)")
    p.add_argument("--title", help="report title (default: the study folder's name)")
    p.add_argument("--specialists", type=Path, metavar="STUDY",
                   help="study whose seedN/concatenated runs give the goals' specialists (default: this study)")
    args = p.parse_args()
    try:
        agg = aggregate(args.study, args.specialists)
    except ComposeError as e:
        print(f"aggregate: {e}", file=sys.stderr)
        return 2
    out = args.out or args.study
    title = args.title or args.study.name
    atomic_write_json(out / "summary.json", agg)
    text = markdown(agg, title)
    atomic_write_text(out / "summary.md", text)
    figure(agg, title, out / "summary.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
