"""report.md / forgetting.png for one run and comparison.md / comparison.png for several."""

import pytest

from compose.forgetting import ForgettingMatrix
from compose.report import progress, write_comparison, write_report

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
    assert [p.name for p in paths] == ["comparison.md", "comparison.png"]
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
