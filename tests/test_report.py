"""report.md / forgetting.png for one run and comparison.md / comparison.png for several."""

import pytest

from compose.forgetting import ForgettingMatrix
from compose.report import paired_comparisons, progress, verdict, write_comparison, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RISKS = ["tox", "bias", "harm"]
SEQ = [[0.20, 0.30, 0.40], [0.90, 0.35, 0.45], [0.95, 0.80, 0.50], [0.70, 0.50, 0.90]]  # as in test_forgetting


def sequential(n_stages=3):
    m = ForgettingMatrix(RISKS)
    for i, scores in enumerate(SEQ[: n_stages + 1]):
        m.add_row("base" if i == 0 else f"stage{i}-{RISKS[i - 1]}", dict(zip(RISKS, scores)),
                  kind="base" if i == 0 else "stage", trained=None if i == 0 else RISKS[i - 1],
                  raw={r: {"rate": 1 - s} for r, s in zip(RISKS, scores)},
                  directions={r: {"rate": "lower"} for r in RISKS}, fluency={"perplexity": 10.0 + i}, seconds=2.0)
    return m


def composed():
    m = ForgettingMatrix(RISKS)
    m.add_row("base", dict(zip(RISKS, [0.2, 0.3, 0.4])), kind="base")
    for risk, scores in zip(RISKS, [[0.9, 0.3, 0.4], [0.2, 0.85, 0.4], [0.25, 0.3, 0.8]]):
        m.add_row(f"spec-{risk}", dict(zip(RISKS, scores)), kind="specialist", trained=risk)
    m.add_row("merged", dict(zip(RISKS, [0.6, 0.7, 0.8])), kind="composed")
    return m


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000


def test_write_report(tmp_path):
    paths = write_report(sequential(), tmp_path / "run", "toxicity, bias, harm: sequential",
                         extra={"strategy": "sequential-replay", "parameters": 0.2e6, "tokens": {"tox": 20}})
    assert [p.name for p in paths] == ["report.md", "forgetting.png"]
    assert_png(paths[1])
    md = paths[0].read_text()
    assert md.startswith("# toxicity, bias, harm: sequential")
    # matrix with row names, raw figures with direction arrows, fluency, summary with definitions
    assert "| stage2-bias | stage: bias | 0.950 | 0.800 | 0.500 | 0.750 |" in md
    assert "rate ↓ 0.050" in md and "↓ = lower is better" in md
    assert "| stage3-harm | 13.000 | 2.0 |" in md
    assert "| forgetting | 0.275 (tox: 0.250, bias: 0.300) | F_j = max_" in md
    assert "| bwt_gem_code | -0.167 |" in md and "divisor k = 3" in md
    assert "| fwt | 0.075" in md and "| sequential-replay |" in md and "tox: 20" in md
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["forgetting.png", "report.md"]  # no temp files


def test_report_of_composed_and_in_progress_runs(tmp_path):
    md = write_report(composed(), tmp_path / "merged", "merged")[0].read_text()
    assert "| merged | composed | 0.600 | 0.700 | 0.800 | 0.700 |" in md
    assert "| forgetting | 0.150 (tox: 0.300, bias: 0.150, harm: 0.000) |" in md
    assert "| bwt | n/a | BWT. not defined" in md
    md = write_report(sequential(n_stages=1), tmp_path / "partial", "partial")[0].read_text()
    assert "| forgetting | n/a |" in md and "needs at least two training stages" in md


def test_report_overwrites_atomically(tmp_path):
    write_report(sequential(n_stages=1), tmp_path, "first")
    md, _ = write_report(sequential(), tmp_path, "second")
    assert md.read_text().startswith("# second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forgetting.png", "report.md"]


def test_report_of_empty_matrix_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_report(ForgettingMatrix(["a"]), tmp_path, "empty")


def test_write_comparison(tmp_path):
    runs = {"sequential": sequential(), "merged": composed(), "partial": sequential(n_stages=2)}
    paths = write_comparison(runs, tmp_path, "three risks")
    assert [p.name for p in paths] == ["comparison.md", "comparison.png", "comparison.json"]
    assert_png(paths[1])
    md = paths[0].read_text()
    assert "| sequential | sequential | 0.700 | 0.500 | 0.900 | 0.700 | 0.275 | -0.250 | 0.075 | 8.0 |" in md
    assert "| merged | composed | 0.600 | 0.700 | 0.800 | 0.700 | 0.150 | n/a | n/a | n/a |" in md
    assert "| partial (in progress: 2/3 stages) |" in md
    # the unfinished run has the higher average but is not ranked
    assert "finished runs: **sequential** (A = 0.700)" in md


def test_comparison_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        write_comparison({}, tmp_path, "none")
    with pytest.raises(ValueError, match="without rows"):
        write_comparison({"empty": ForgettingMatrix(["a"])}, tmp_path, "x")


def test_progress():
    assert progress(sequential()) is None and progress(composed()) is None
    assert progress(sequential(n_stages=0)) == "in progress: 0/3 stages"


def with_items(safety_items: list[dict[str, list[float]]], risks=("tox", "bias")) -> ForgettingMatrix:
    """A sequential matrix whose rows keep per-prompt safety values (one dict risk -> values per row)."""
    risks = list(risks)
    m = ForgettingMatrix(risks)
    for i, items in enumerate(safety_items):
        scores = {r: sum(v) / len(v) for r, v in items.items()}
        m.add_row("base" if i == 0 else f"stage{i}", scores, kind="base" if i == 0 else "stage",
                  trained=None if i == 0 else risks[i - 1], items={r: {"safety": v} for r, v in items.items()},
                  digests={r: "same-prompts" for r in risks})
    return m


def test_paired_comparisons_find_a_known_difference_and_not_a_non_difference(tmp_path):
    import random

    rng = random.Random(0)
    n = 200
    base = {"tox": [float(rng.random() < 0.5) for _ in range(n)], "bias": [rng.random() for _ in range(n)]}
    # the baseline run: tox safety 0.5 -> ~0.6; the other run: 40 more prompts made safe (a real difference on
    # tox) and exactly the baseline's per-prompt bias scores (no difference on bias)
    first = {"tox": [1.0 if i % 10 == 0 else v for i, v in enumerate(base["tox"])], "bias": base["bias"]}
    unsafe = [i for i, v in enumerate(first["tox"]) if v == 0.0][:40]
    second = {"tox": [1.0 if i in unsafe else v for i, v in enumerate(first["tox"])], "bias": list(base["bias"])}
    runs = {"sequential": with_items([base, first, first]), "stacked": with_items([base, second, second])}
    table = {(c["run"], c["against"], c["figure"]): c for c in paired_comparisons(runs, baseline="sequential")}
    tox = table[("stacked", "sequential", "tox")]
    assert tox["test"] == "mcnemar-exact" and tox["diff"] == pytest.approx(40 / n) and tox["adjusted_p"] < 1e-6
    assert verdict(tox) == "better"
    bias = table[("stacked", "sequential", "bias")]
    assert bias["test"] == "paired-bootstrap" and bias["diff"] == 0 and verdict(bias) == "n.s."
    assert verdict(table[("stacked", "sequential", "A")]) == "better"
    assert verdict(table[("stacked", "base model", "bias")]) == "n.s."  # bias never moved from the base model
    md = write_comparison(runs, tmp_path, "two runs", baseline="sequential")[0].read_text()
    assert "## Paired comparisons" in md and "| stacked | sequential | tox |" in md


def test_runs_on_different_prompts_are_not_paired():
    a = with_items([{"tox": [0.0, 1.0], "bias": [0.2, 0.3]}] * 3)
    b = with_items([{"tox": [0.0, 1.0, 1.0], "bias": [0.2, 0.3]}] * 3)
    table = {(c["run"], c["against"], c["figure"]): c for c in paired_comparisons({"a": a, "b": b})}
    assert table[("b", "a", "tox")]["skipped"] == "different prompts"
    assert ("b", "a", "A") not in table  # A needs every risk paired
    with pytest.raises(ValueError, match="baseline 'c'"):
        paired_comparisons({"a": a, "b": b}, baseline="c")


def test_intervals_reach_the_summary_and_the_report(tmp_path):
    m = with_items([{"tox": [0.0] * 50 + [1.0] * 50, "bias": [0.5] * 100}, {"tox": [1.0] * 100, "bias": [0.5] * 100},
                    {"tox": [1.0] * 80 + [0.0] * 20, "bias": [0.9] * 100}])
    s = m.summary()
    a = s["final_average_safety"]
    assert a["ci_low"] < a["value"] < a["ci_high"] and a["n"] == 200
    assert s["bwt"]["ci_low"] <= s["bwt"]["value"] <= s["bwt"]["ci_high"] < 0  # tox forgot 0.2: a real loss
    md = write_report(m, tmp_path, "with intervals")[0].read_text()
    assert "[" in md.split("final_average_safety")[1].split("\n")[0]
