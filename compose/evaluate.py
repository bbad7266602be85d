"""Evaluating a model (a base model or a patched one) on several risks, and the results as a table."""

from __future__ import annotations

import time


def evaluate_risks(model, tokenizer, risks: list, limit: int | None = None, split: str = "eval") -> dict:
    """``{risk name: MetricResult}`` of ``model`` (a base model or a PeftModel) on each risk's ``split``."""
    results = {}
    for risk in risks:
        start = time.perf_counter()
        result = risk.evaluate(model, tokenizer, split=split, limit=limit)
        result.seconds = time.perf_counter() - start
        result.revision = getattr(risk, "metric_revision", 1)
        results[risk.name] = result
    return results


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
