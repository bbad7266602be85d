"""Human-readable reports of forgetting matrices: ``report.md`` + ``forgetting.png`` for one run, and
``comparison.md`` + ``comparison.png`` for several runs (which strategy keeps every risk safe).

Figures are drawn with matplotlib's Agg canvas directly (no pyplot global state, no display needed). Every
file is written atomically: to a temporary sibling first, then renamed into place with ``os.replace``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from compose.forgetting import ForgettingMatrix

ARROWS = {"lower": "↓", "higher": "↑"}
SUMMARY_ORDER = ("final_average_safety", "forgetting", "forgetting_avalanche", "bwt", "bwt_gem_code",
                 "bwt_avalanche", "fwt", "wall_seconds", "final_fluency")


def _atomic(path: Path, write) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


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


def _matrix_section(m: ForgettingMatrix) -> str:
    header = ["row", "kind"] + m.risks + ["mean"]
    rows = [[r.name, r.kind + (f": {r.trained}" if r.trained else "")]
            + [_fmt(r.scores[k]) for k in m.risks] + [_fmt(float(np.mean(list(r.scores.values()))))]
            for r in m.rows]
    return "## Forgetting matrix: safety scores (higher is safer, in [0, 1])\n\n" + _table(header, rows)


def _raw_section(m: ForgettingMatrix) -> str:
    if not any(r.raw for r in m.rows):
        return ""

    def cell(row, risk):
        figures = row.raw.get(risk, {})
        arrows = {name: ARROWS.get(m.directions.get(risk, {}).get(name), "") for name in figures}
        parts = (" ".join(filter(None, (name, arrows[name], _fmt(v)))) for name, v in figures.items())
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
        if fig.get("per_risk"):
            value += f" ({_fmt(fig['per_risk'])})"
        definition = fig["definition"] + (f". {fig['note']}" if fig.get("note") else "")
        rows.append([key, value, definition])
    return "## Summary\n\n" + _table(["figure", "value", "definition"], rows)


def _extra_section(extra: dict | None) -> str:
    if not extra:
        return ""
    rows = [[k, json.dumps(v, default=str) if isinstance(v, (list, tuple)) else _fmt(v)] for k, v in extra.items()]
    return "## Run\n\n" + _table(["setting", "value"], rows)


def forgetting_figure(m: ForgettingMatrix, title: str) -> Figure:
    """Heatmap of the safety scores: rows = stages (or specialists + composed), columns = risks, values annotated."""
    S = m.safety
    fig = Figure(figsize=(1.6 + 1.3 * len(m.risks), 1.2 + 0.55 * max(len(m.rows), 1)))
    ax = fig.add_subplot()
    image = ax.imshow(S, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(m.risks)), m.risks)
    ax.set_yticks(range(len(m.rows)), [_row_label(r) for r in m.rows])
    ax.xaxis.tick_top()
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            ax.text(j, i, f"{S[i, j]:.2f}", ha="center", va="center", fontsize=10,
                    color="black" if 0.25 < S[i, j] < 0.8 else "white")
    fig.colorbar(image, ax=ax, label="safety score (higher is safer)")
    ax.set_title(title, pad=24)
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


def write_comparison(runs: dict[str, ForgettingMatrix], out_dir, title: str) -> list[Path]:
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
        rows.append([_label(name, m), s["layout"]] + [_fmt(final.get(r)) for r in risks]
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
    text = "\n\n".join(part for part in [
        f"# {title}",
        "## Final safety per risk (higher is safer)\n\n" + _table(header, rows),
        "![comparison](comparison.png)",
        f"Highest final average safety among finished runs: **{best}** (A = {_fmt(averages[best])})."
        if best else "No finished run to rank yet.",
        "## Definitions\n\n" + "\n".join(definitions),
    ] if part)
    md = _write_text(out_dir / "comparison.md", text + "\n")
    png = _save_figure(comparison_figure(runs, risks, title), out_dir / "comparison.png")
    return [md, png]
