"""experiments/aggregate.py: runs matched across seed folders, mean and sample spread, goals counted per seed."""

import statistics
from pathlib import Path

import pytest

from compose.errors import ComposeError
from compose.forgetting import ForgettingMatrix

from conftest import experiment

RISKS = ["toxicity", "bias"]


@pytest.fixture(scope="module")
def aggregate():
    return experiment("aggregate")


def _matrix(path: Path, rows: list[tuple[str, str, list[float]]], ppl: float = 4.0, risks=RISKS) -> None:
    m = ForgettingMatrix(risks)
    for name, kind, scores in rows:
        trained = name.split()[0] if kind in ("stage", "specialist") else None
        m.add_row(name, dict(zip(risks, scores)), raw={"toxicity": {"toxic_rate": 1 - scores[0]}},
                  fluency={"perplexity": 8.0 if kind == "base" else ppl}, seconds=10.0, kind=kind, trained=trained)
    path.mkdir(parents=True)
    m.save(path / "forgetting.json")


def _seed(study: Path, seed: int, final: list[float], bias_specialist: float) -> None:
    base = ("base", "base", [0.5, 0.5])
    _matrix(study / f"seed{seed}" / "sequential", [base, ("toxicity", "stage", [0.8, 0.5]),
                                                   ("bias", "stage", final)])
    _matrix(study / f"seed{seed}" / "concatenated", [
        base, ("toxicity specialist", "specialist", [0.8, 0.5]),
        ("bias specialist", "specialist", [0.5, bias_specialist]), ("composed", "composed", [0.7, 0.8])])


def test_mean_and_spread_over_seeds(aggregate, tmp_path):
    _seed(tmp_path, 0, final=[0.6, 0.9], bias_specialist=0.9)
    _seed(tmp_path, 1, final=[0.75, 0.9], bias_specialist=0.95)
    agg = aggregate.aggregate(tmp_path)
    assert agg["seeds"] == [0, 1] and list(agg["runs"]) == ["sequential", "concatenated"]  # the study's order
    seq = agg["runs"]["sequential"]["figures"]
    assert seq["safety toxicity"]["mean"] == pytest.approx(0.675)
    assert seq["safety toxicity"]["std"] == pytest.approx(statistics.stdev([0.6, 0.75]))
    assert seq["F toxicity"]["values"] == pytest.approx([0.2, 0.05])  # max earlier row (0.8) minus final
    assert seq["toxic_rate"]["mean"] == pytest.approx(0.325)
    assert seq["perplexity / base"]["mean"] == pytest.approx(0.5)
    # goals: toxicity vs its specialist (0.8): -0.2 misses in seed 0, -0.05 passes in seed 1
    assert seq["gap toxicity"]["values"] == pytest.approx([-0.2, -0.05])
    assert seq["goals met"]["values"] == [0.0, 1.0]
    cells = agg["runs"]["concatenated"]["matrix"]
    assert [row for row, _ in cells] == ["base", "toxicity specialist", "bias specialist", "composed"]
    assert cells[2][1][1]["mean"] == pytest.approx(0.925)
    text = aggregate.markdown(agg, "study")
    assert "| sequential | 2 | 0.675 ± 0.106 | 0.900 ± 0.000 |" in text
    assert "1 of 2 seeds" in text
    aggregate.figure(agg, "study", tmp_path / "summary.png")
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_missing_in_one_seed_counts_the_seeds_it_has(aggregate, tmp_path):
    _seed(tmp_path, 0, final=[0.6, 0.9], bias_specialist=0.9)
    _matrix(tmp_path / "seed1" / "sequential", [("base", "base", [0.5, 0.5]), ("toxicity", "stage", [0.8, 0.5]),
                                                ("bias", "stage", [0.8, 0.9])])
    agg = aggregate.aggregate(tmp_path)
    assert agg["runs"]["concatenated"]["figures"]["A"]["n"] == 1
    assert agg["runs"]["sequential"]["figures"]["A"]["n"] == 2
    assert agg["runs"]["sequential"]["figures"]["goals met"]["n"] == 1  # seed 1 has no specialists to compare to


def test_seeds_that_trained_in_different_orders_get_no_mean_matrix(aggregate, tmp_path):
    base = ("base", "base", [0.5, 0.5])
    _matrix(tmp_path / "seed0" / "auto", [base, ("toxicity", "stage", [0.8, 0.5]), ("bias", "stage", [0.7, 0.9])])
    _matrix(tmp_path / "seed1" / "auto", [base, ("bias", "stage", [0.9, 0.5]), ("toxicity", "stage", [0.9, 0.6])],
            risks=["bias", "toxicity"])
    agg = aggregate.aggregate(tmp_path)
    auto = agg["runs"]["auto"]
    assert auto["matrix"] is None
    assert auto["figures"]["safety toxicity"]["values"] == pytest.approx([0.7, 0.6])  # matched by risk, not column
    assert "seed 1: bias -> toxicity" in aggregate.markdown(agg, "orders")


def test_a_folder_without_seeds_is_refused(aggregate, tmp_path):
    with pytest.raises(ComposeError, match="no seedN folders"):
        aggregate.aggregate(tmp_path)


def test_each_seeds_capacity_search_is_listed(aggregate, tmp_path):
    from compose.io import atomic_write_json

    _seed(tmp_path, 0, final=[0.6, 0.9], bias_specialist=0.9)
    atomic_write_json(tmp_path / "seed0" / "search" / "search.json", {
        "study": "s", "trials": 12, "completed": 7,
        "best": [{"trial": 2, "tokens": {"toxicity": 13, "bias": 11}, "values": [0.782],
                  "tokens_flag": "toxicity=13,bias=11"}],
        "equal_split": {"trial": 0, "tokens": {"toxicity": 12, "bias": 12}, "values": [0.762]}})
    agg = aggregate.aggregate(tmp_path)
    assert list(agg["searches"]) == [0] and "search" not in agg["runs"]
    assert "| 0 | 12 (7) | toxicity=13,bias=11 | 0.782 | toxicity=12,bias=12 | 0.762 |" in aggregate.markdown(agg, "c")
