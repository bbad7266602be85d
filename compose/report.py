"""Human-readable reports of forgetting matrices: ``report.md`` + ``forgetting.png`` for one run, and
``comparison.md`` + ``comparison.png`` for several runs (which strategy keeps every risk safe).

Figures are drawn with matplotlib's Agg canvas directly (no pyplot global state, no display needed). Every
file is written atomically: to a temporary sibling first, then renamed into place with ``os.replace``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from compose.forgetting import ForgettingMatrix
from compose.io import atomic_write_json, atomic_write_with, save_figure
from compose.stats import holm, paired_bootstrap_groups, paired_test

ARROWS = {"lower": "↓", "higher": "↑"}
SUMMARY_ORDER = ("final_average_safety", "forgetting", "forgetting_avalanche", "bwt", "bwt_gem_code",
                 "bwt_avalanche", "fwt", "wall_seconds", "final_fluency")


def _write_text(path: Path, text: str) -> Path:
    return atomic_write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return save_figure(fig, path)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x, digits)}" for k, x in v.items()) or "n/a"
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in [header] + rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells[1:]])


def _row_label(row) -> str:
    return f"{row.name} ({row.trained})" if row.trained and row.trained not in row.name else row.name


def _half_width(interval: dict | None) -> float | None:
    if not interval or interval.get("ci_low") is None or interval.get("ci_high") is None:
        return None
    return (interval["ci_high"] - interval["ci_low"]) / 2


def _with_interval(value: float, interval: dict | None, digits: int = 3) -> str:
    """'0.812 ±0.048' (half-width of the 95% interval) or the bare value when there is none."""
    hw = _half_width(interval)
    return _fmt(value, digits) + (f" ±{hw:.{digits}f}" if hw is not None else "")


def _ns(m: ForgettingMatrix) -> str:
    ns = {k: (m.rows[-1].safety_interval(k) or {}).get("n") for k in m.risks}
    return ", ".join(f"{k} n={n}" for k, n in ns.items() if n)


def _matrix_section(m: ForgettingMatrix) -> str:
    header = ["row", "kind"] + m.risks + ["mean"]
    rows = [[r.name, r.kind + (f": {r.trained}" if r.trained else "")]
            + [_with_interval(r.scores[k], r.safety_interval(k)) for k in m.risks]
            + [_fmt(float(np.mean(list(r.scores.values()))))] for r in m.rows]
    ns = _ns(m)
    note = (f"± is the half-width of the 95% interval over prompts (Wilson for rates, bootstrap otherwise); {ns}."
            if ns else "")
    return "## Forgetting matrix: safety scores (higher is safer, in [0, 1])\n\n" + (note + "\n\n" if note else "") \
        + _table(header, rows)


def _raw_section(m: ForgettingMatrix) -> str:
    if not any(r.raw for r in m.rows):
        return ""

    def cell(row, risk):
        figures = row.raw.get(risk, {})
        arrows = {name: ARROWS.get(m.directions.get(risk, {}).get(name), "") for name in figures}
        intervals = row.intervals.get(risk, {})
        parts = (" ".join(filter(None, (name, arrows[name], _with_interval(v, intervals.get(name)))))
                 for name, v in figures.items())
        return "<br>".join(parts) or "n/a"

    legend = "↓ = lower is better, ↑ = higher is better."
    rows = [[r.name] + [cell(r, k) for k in m.risks] for r in m.rows]
    return f"## Raw metrics per cell\n\n{legend}\n\n" + _table(["row"] + m.risks, rows)


def _fluency_section(m: ForgettingMatrix) -> str:
    names = list(dict.fromkeys(n for r in m.rows for n in r.fluency))
    has_seconds = any(r.seconds is not None for r in m.rows)
    if not names and not has_seconds:
        return ""
    header = ["row"] + names + (["wall s"] if has_seconds else [])
    rows = [[r.name] + [_fmt(r.fluency.get(n)) for n in names] + ([_fmt(r.seconds, 1)] if has_seconds else [])
            for r in m.rows]
    note = "Perplexity is that of the patched model's generations under the unpatched model (lower is more fluent)."
    return "## Fluency and time per row\n\n" + (note + "\n\n" if "perplexity" in names else "") + _table(header, rows)


def _summary_section(summary: dict) -> str:
    rows = []
    for key in [k for k in SUMMARY_ORDER if k in summary] + [k for k in summary if k not in SUMMARY_ORDER]:
        fig = summary[key]
        if not isinstance(fig, dict) or "definition" not in fig:
            continue
        value = _fmt(fig["value"]) if key != "wall_seconds" else _fmt(fig["value"], 1)
        if fig.get("ci_low") is not None:
            value += f" [{fig['ci_low']:.3f}, {fig['ci_high']:.3f}]"
        if fig.get("per_risk"):
            value += f" ({_fmt(fig['per_risk'])})"
        definition = fig["definition"] + (f". {fig['note']}" if fig.get("note") else "")
        rows.append([key, value, definition])
    return "## Summary\n\nValues with their 95% interval in brackets (bootstrap over prompts, paired across rows).\n\n" \
        + _table(["figure", "value", "definition"], rows)


def _extra_section(extra: dict | None) -> str:
    if not extra:
        return ""
    rows = [[k, json.dumps(v, default=str) if isinstance(v, (list, tuple)) else _fmt(v)] for k, v in extra.items()]
    return "## Run\n\n" + _table(["setting", "value"], rows)


def forgetting_figure(m: ForgettingMatrix, title: str) -> Figure:
    """Heatmap of the safety scores: rows = stages (or specialists + composed), columns = risks, values annotated."""
    S = m.safety
    fig = Figure(figsize=(1.6 + 1.5 * len(m.risks), 1.2 + 0.55 * max(len(m.rows), 1)))
    ax = fig.add_subplot()
    image = ax.imshow(S, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(m.risks)), m.risks)
    ax.set_yticks(range(len(m.rows)), [_row_label(r) for r in m.rows])
    ax.xaxis.tick_top()
    for i, row in enumerate(m.rows):
        for j, risk in enumerate(m.risks):
            hw = _half_width(row.safety_interval(risk))
            ax.text(j, i, f"{S[i, j]:.2f}" + (f" ±{hw:.2f}" if hw is not None else ""), ha="center", va="center",
                    fontsize=9, color="black" if 0.25 < S[i, j] < 0.8 else "white")
    fig.colorbar(image, ax=ax, label="safety score (higher is safer)")
    ns = _ns(m)
    ax.set_title(title + (f"\n(± 95% interval; {ns})" if ns else ""), pad=24, fontsize=10)
    return fig


def write_report(matrix: ForgettingMatrix, out_dir, title: str, extra: dict | None = None) -> list[Path]:
    """Write ``report.md`` and ``forgetting.png`` for one run into ``out_dir``; returns their paths.

    ``extra`` holds run facts shown in a "Run" table (strategy, model, patch size, parameter count, ...).
    """
    if not matrix.rows:
        raise ValueError("the forgetting matrix has no rows: nothing to report")
    out_dir = Path(out_dir)
    summary = matrix.summary()
    rows_are = {"sequential": "base row, then one row per training stage",
                "composed": "base row, one specialist per risk, then the composed patch"}[summary["layout"]]
    sections = [
        f"# {title}",
        f"Risks (columns, in training order): {', '.join(matrix.risks)}. Layout: {summary['layout']} ({rows_are}). "
        f"Final row: {summary['final_row']}.",
        _extra_section(extra), _matrix_section(matrix), "![forgetting matrix](forgetting.png)",
        _raw_section(matrix), _fluency_section(matrix), _summary_section(summary),
    ]
    md = _write_text(out_dir / "report.md", "\n\n".join(s for s in sections if s) + "\n")
    png = _save_figure(forgetting_figure(matrix, title), out_dir / "forgetting.png")
    return [md, png]


def _final_scores(m: ForgettingMatrix) -> dict[str, float]:
    return dict(m.rows[-1].scores)


def progress(m: ForgettingMatrix) -> str | None:
    """None for a finished run; else what is missing ("in progress: 2/3 stages", "in progress: no composed row")."""
    kinds = [r.kind for r in m.rows]
    if m.layout == "composed":
        return None if "composed" in kinds else "in progress: no composed row"
    done = kinds.count("stage")
    return None if done == len(m.risks) else f"in progress: {done}/{len(m.risks)} stages"


def _label(name: str, m: ForgettingMatrix) -> str:
    status = progress(m)
    return f"{name} ({status})" if status else name


def comparison_figure(runs: dict[str, ForgettingMatrix], risks: list[str], title: str) -> Figure:
    """Grouped bars: for each risk (and the average), the final safety of every run."""
    groups = risks + ["average"]
    width = 0.8 / len(runs)
    fig = Figure(figsize=(max(6.0, 1.2 + len(groups) * (0.5 + 0.35 * len(runs))), 4.2))
    ax = fig.add_subplot()
    for n, (name, m) in enumerate(runs.items()):
        final = _final_scores(m)
        values = [final.get(r, np.nan) for r in risks] + [float(np.mean(list(final.values())))]
        bars = ax.bar(np.arange(len(groups)) + (n - (len(runs) - 1) / 2) * width, values, width,
                      label=_label(name, m))
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("final safety score (higher is safer)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(len(runs), 4), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return fig


def paired_comparisons(runs: dict[str, ForgettingMatrix], baseline: str | None = None,
                       alpha: float = 0.05) -> list[dict]:
    """Paired tests of every run's final row against its own base model row and against the ``baseline`` run's
    final row (default: the first run): per risk on the per-prompt safety values (exact McNemar for 0/1 verdicts,
    paired bootstrap otherwise) and for A (stratified paired bootstrap over the risks' prompts). One family:
    Holm-corrected across the whole table. Pairs whose prompts differ are not tested (listed with a reason).
    Each entry: run, against, figure, a (reference), b (run), diff = b - a, ci_low, ci_high, p_value, adjusted_p,
    significant, n, test; or run, against, figure, skipped."""
    if baseline is not None and baseline not in runs:
        raise ValueError(f"baseline '{baseline}' is not one of the runs: {', '.join(runs)}")
    baseline = baseline or next(iter(runs))
    tests, meta, skipped = [], [], []
    for name, m in runs.items():
        if not m.rows:
            continue
        final = m.rows[-1]
        targets = [("base model", m.rows[0])] if m.rows[0].kind == "base" and len(m.rows) > 1 else []
        if name != baseline and runs[baseline].rows:
            targets.append((baseline, runs[baseline].rows[-1]))
        for against, ref in targets:
            groups = []
            for risk in m.risks:
                a, b = ref.items.get(risk, {}).get("safety"), final.items.get(risk, {}).get("safety")
                da, db = ref.digests.get(risk), final.digests.get(risk)
                reason = ("no per-prompt values" if not a or not b else "different prompts"
                          if len(a) != len(b) or (da and db and da != db) else None)
                if reason:
                    skipped.append({"run": name, "against": against, "figure": risk, "skipped": reason})
                    continue
                tests.append(paired_test(a, b, name=f"{name} vs {against}: {risk}"))
                meta.append({"run": name, "against": against, "figure": risk})
                groups.append((a, b))
            if len(m.risks) > 1 and len(groups) == len(m.risks):
                tests.append(paired_bootstrap_groups([a for a, _ in groups], [b for _, b in groups],
                                                     name=f"{name} vs {against}: A"))
                meta.append({"run": name, "against": against, "figure": "A"})
    return [{**info, **c.to_dict()} for info, c in zip(meta, holm(tests, alpha))] + skipped


def verdict(c: dict) -> str:
    """'better' / 'worse' (significant after Holm, by the sign of diff = run - reference), else 'n.s.'."""
    if "skipped" in c:
        return f"not tested ({c['skipped']})"
    return ("better" if c["diff"] > 0 else "worse") if c["significant"] else "n.s."


def comparisons_table(comparisons: list[dict]) -> str:
    rows = [[c["run"], c["against"], c["figure"], _fmt(c.get("a")), _fmt(c.get("b")),
             "" if "skipped" in c else f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
             "" if "skipped" in c else f"{c['p_value']:.3g} / {c['adjusted_p']:.3g}",
             str(c.get("n", "")), c.get("test", ""), verdict(c)] for c in comparisons]
    return _table(["run", "vs", "safety of", "reference", "run", "diff [95% CI]", "p / Holm p", "n", "test",
                   "significant at 0.05"], rows)


def write_comparison(runs: dict[str, ForgettingMatrix], out_dir, title: str,
                     baseline: str | None = None) -> list[Path]:
    """Write ``comparison.md`` and ``comparison.png`` comparing several runs' final rows; returns their paths."""
    if not runs:
        raise ValueError("write_comparison needs at least one run")
    empty = [name for name, m in runs.items() if not m.rows]
    if empty:
        raise ValueError(f"runs without rows cannot be compared: {empty}")
    out_dir = Path(out_dir)
    risks = list(dict.fromkeys(r for m in runs.values() for r in m.risks))
    summaries = {name: m.summary() for name, m in runs.items()}
    rows = []
    for name, m in runs.items():
        s, final = summaries[name], _final_scores(m)
        rows.append([_label(name, m), s["layout"]]
                    + [_with_interval(final[r], m.rows[-1].safety_interval(r)) if r in final else "n/a" for r in risks]
                    + [_fmt(s["final_average_safety"]["value"]), _fmt(s["forgetting"]["value"]),
                       _fmt(s["bwt"]["value"]), _fmt(s["fwt"]["value"]), _fmt(s["wall_seconds"]["value"], 1)])
    header = ["run", "layout"] + risks + ["average A", "forgetting F", "BWT", "FWT", "wall s"]
    averages = {n: s["final_average_safety"]["value"] for n, s in summaries.items()
                if s["final_average_safety"]["value"] is not None and progress(runs[n]) is None}
    best = max(averages, key=averages.get) if averages else None
    definitions = [
        "- risk columns and A: safety scores of each run's final row (the last stage, or the composed patch); "
        "A is their mean.",
        "- F: sequential runs: max-based forgetting (Chaudhry), mean over the risks trained before the last "
        "stage (divisor k-1); composed runs: mean gap between each risk's specialist and the composed patch.",
        "- BWT = mean_{j<k} (S[k][j] - S[j][j]) (divisor k-1); FWT = mean_{j>1} (S[j-1][j] - S[0][j]) "
        "(divisor k-1); both n/a for composed runs. See each run's report.md for every definition.",
    ]
    comparisons = paired_comparisons(runs, baseline)
    reference = baseline or next(iter(runs))
    paired = ("## Paired comparisons\n\n"
              f"Each run's final row against its own base model and against **{reference}**, on the same prompts: "
              "diff = run - reference in safety (positive = safer); exact McNemar test for per-prompt 0/1 verdicts, "
              "paired bootstrap for continuous per-prompt scores, stratified paired bootstrap for A; p-values "
              f"Holm-corrected across the {sum('skipped' not in c for c in comparisons)} tests of this table.\n\n"
              + comparisons_table(comparisons)) if comparisons else ""
    text = "\n\n".join(part for part in [
        f"# {title}",
        "## Final safety per risk (higher is safer)\n\n± is the half-width of the 95% interval over prompts.\n\n"
        + _table(header, rows),
        "![comparison](comparison.png)",
        f"Highest final average safety among finished runs: **{best}** (A = {_fmt(averages[best])})."
        if best else "No finished run to rank yet.",
        paired,
        "## Definitions\n\n" + "\n".join(definitions),
    ] if part)
    atomic_write_json(out_dir / "comparison.json", {"baseline": reference, "comparisons": comparisons})
    md = _write_text(out_dir / "comparison.md", text + "\n")
    png = _save_figure(comparison_figure(runs, risks, title), out_dir / "comparison.png")
    return [md, png, out_dir / "comparison.json"]


def pooled_matrix(matrices: dict, name: str = "final") -> ForgettingMatrix:
    """A two-row matrix (base model, final patch) whose per-prompt safety values pool every seed's rows: the unit
    of a pooled paired test is (seed, prompt). Needs per-prompt values in every seed's base and final rows."""
    first = next(iter(matrices.values()))
    pooled = ForgettingMatrix(first.risks)
    for label, index, kind in (("base", 0, "base"), (name, -1, "composed")):
        items = {r: [x for m in matrices.values() for x in m.rows[index].items.get(r, {}).get("safety", [])]
                 for r in first.risks}
        if any(not v for v in items.values()):
            raise ValueError("pooling seeds needs per-prompt safety values in every run's rows")
        pooled.add_row(label, {r: float(np.mean(v)) for r, v in items.items()}, kind=kind,
                       items={r: {"safety": v} for r, v in items.items()})
    return pooled


def write_seed_summary(matrices: dict, out_dir, title: str) -> tuple[list[Path], str]:
    """``seeds.md`` / ``seeds.json`` / ``seeds.png`` for one configuration run with several seeds: per risk and
    for A, the final safety of every seed, mean and standard deviation over seeds, and the paired test of the
    final patch against the base model pooled over seeds (Holm across the table). Returns (paths, table text)."""
    out_dir = Path(out_dir)
    risks = next(iter(matrices.values())).risks
    finals = {seed: m.rows[-1].scores for seed, m in matrices.items()}
    per = {r: [finals[s][r] for s in matrices] for r in risks}
    per["A"] = [float(np.mean([finals[s][r] for r in risks])) for s in matrices]
    base = {r: [m.rows[0].scores[r] for m in matrices.values()] for r in risks}
    base["A"] = [float(np.mean([m.rows[0].scores[r] for r in risks])) for m in matrices.values()]
    try:
        tests = {c["figure"]: c for c in paired_comparisons({"pooled": pooled_matrix(matrices)})}
    except ValueError:
        tests = {}
    header = ["safety of", "base (mean)"] + [f"seed {s}" for s in matrices] + ["mean ± std", "pooled vs base",
                                                                               "significant at 0.05"]
    rows = []
    for fig in risks + ["A"]:
        c = tests.get(fig)
        rows.append([fig, _fmt(float(np.mean(base[fig])))] + [_fmt(v) for v in per[fig]]
                    + [f"{np.mean(per[fig]):.3f} ± {np.std(per[fig], ddof=1) if len(per[fig]) > 1 else 0:.3f}",
                       f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], p {c['adjusted_p']:.3g} "
                       f"(n={c['n']})" if c and "skipped" not in c else "n/a", verdict(c) if c else "n/a"])
    table = _table(header, rows)
    text = "\n\n".join([
        f"# {title}: {len(matrices)} seeds", table,
        "mean ± std: over seeds (sample standard deviation). Pooled vs base: final patch minus base model in safety, "
        "paired on (seed, prompt) units pooled over seeds (exact McNemar for 0/1 verdicts, paired bootstrap "
        "otherwise, stratified paired bootstrap for A), p Holm-corrected across the table.",
        "![seeds](seeds.png)"]) + "\n"
    atomic_write_json(out_dir / "seeds.json", {"seeds": list(matrices), "final": {str(s): f for s, f in finals.items()},
                                               "mean": {k: float(np.mean(v)) for k, v in per.items()},
                                               "std": {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                                                       for k, v in per.items()},
                                               "pooled_vs_base": list(tests.values())})
    md = _write_text(out_dir / "seeds.md", text)
    fig = Figure(figsize=(1.5 + 1.3 * (len(risks) + 1), 3.6))
    ax = fig.add_subplot()
    groups = risks + ["A"]
    for k, seed in enumerate(matrices):
        ax.scatter(np.arange(len(groups)) + (k - (len(matrices) - 1) / 2) * 0.08, [per[g][k] for g in groups],
                   label=f"seed {seed}", zorder=3)
    ax.bar(range(len(groups)), [np.mean(per[g]) for g in groups], 0.6, color="lightgray", label="mean over seeds")
    ax.scatter(range(len(groups)), [np.mean(base[g]) for g in groups], marker="_", s=600, color="black",
               label="base model", zorder=4)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("final safety (higher is safer)")
    ax.set_title(f"{title}: {len(matrices)} seeds", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=len(matrices) + 2)
    png = _save_figure(fig, out_dir / "seeds.png")
    return [md, out_dir / "seeds.json", png], table
