"""ForgettingMatrix: summary figures on hand-made matrices, layouts, validation, save/load."""

import json

import pytest

from compose.forgetting import ForgettingMatrix

RISKS = ["tox", "bias", "harm"]
# S[i][j]: rows = base, after stage 1 (tox), 2 (bias), 3 (harm). tox peaks AFTER its own stage (0.95 at
# stage 2), so the max-based (Chaudhry) and the right-after-training (Avalanche) forgetting differ.
SEQ = [
    ("base", [0.20, 0.30, 0.40]),
    ("stage1-tox", [0.90, 0.35, 0.45]),
    ("stage2-bias", [0.95, 0.80, 0.50]),
    ("stage3-harm", [0.70, 0.50, 0.90]),
]


def sequential(n_stages=3, with_base=True):
    m = ForgettingMatrix(RISKS)
    rows = SEQ[: n_stages + 1] if with_base else SEQ[1: n_stages + 1]
    for name, scores in rows:
        kind = "base" if name == "base" else "stage"
        trained = None if kind == "base" else RISKS[int(name[5]) - 1]
        m.add_row(name, dict(zip(RISKS, scores)), kind=kind, trained=trained,
                  raw={r: {"rate": 1 - s} for r, s in zip(RISKS, scores)},
                  directions={r: {"rate": "lower"} for r in RISKS},
                  fluency={"perplexity": 10.0 + len(m.rows)}, seconds=2.0)
    return m


def value(summary, key):
    return summary[key]["value"]


def test_sequential_figures_match_hand_computation():
    s = sequential().summary()
    assert s["layout"] == "sequential" and s["final_row"] == "stage3-harm"
    assert value(s, "final_average_safety") == pytest.approx((0.70 + 0.50 + 0.90) / 3)
    # Chaudhry: max over earlier rows minus final
    assert s["forgetting"]["per_risk"] == pytest.approx({"tox": 0.95 - 0.70, "bias": 0.80 - 0.50})
    assert value(s, "forgetting") == pytest.approx((0.25 + 0.30) / 2)
    # Avalanche: right after training minus final
    assert s["forgetting_avalanche"]["per_risk"] == pytest.approx({"tox": 0.90 - 0.70, "bias": 0.30})
    assert value(s, "forgetting_avalanche") == pytest.approx(0.25)
    # BWT (divisor k-1 = 2), GEM code (divisor k = 3), Avalanche BWT = -forgetting_avalanche
    assert value(s, "bwt") == pytest.approx(((0.70 - 0.90) + (0.50 - 0.80)) / 2)
    assert value(s, "bwt_gem_code") == pytest.approx(((0.70 - 0.90) + (0.50 - 0.80)) / 3)
    assert value(s, "bwt_avalanche") == pytest.approx(-0.25)
    # FWT: safety of risk j just before training it minus the base model's
    assert s["fwt"]["per_risk"] == pytest.approx({"bias": 0.35 - 0.30, "harm": 0.50 - 0.40})
    assert value(s, "fwt") == pytest.approx(0.075)
    assert value(s, "wall_seconds") == pytest.approx(8.0)
    assert value(s, "final_fluency") == {"perplexity": 13.0}


def test_definitions_name_their_divisors():
    s = sequential().summary()
    assert "divisor k-1 = 2" in s["forgetting"]["definition"]
    assert "Avalanche" in s["forgetting_avalanche"]["definition"]
    assert "divisor k-1 = 2" in s["bwt"]["definition"]
    assert "divisor k = 3" in s["bwt_gem_code"]["definition"]
    assert "divisor k-1 = 2" in s["fwt"]["definition"]


def test_max_based_forgetting_counts_the_base_row():
    m = ForgettingMatrix(["a", "b"])
    m.add_row("base", {"a": 0.9, "b": 0.1}, kind="base")
    m.add_row("s1", {"a": 0.6, "b": 0.1}, trained="a")  # training a made it worse than the base model
    m.add_row("s2", {"a": 0.5, "b": 0.9}, trained="b")
    s = m.summary()
    assert value(s, "forgetting") == pytest.approx(0.4)
    assert value(s, "forgetting_avalanche") == pytest.approx(0.1)


def test_in_progress_matrices():
    two = sequential(n_stages=2).summary()  # stage 3 not run yet
    assert two["final_row"] == "stage2-bias"
    assert two["forgetting"]["per_risk"] == pytest.approx({"tox": 0.90 - 0.95})
    assert value(two, "bwt") == pytest.approx(0.05)
    assert value(two, "bwt_gem_code") == pytest.approx(0.05 / 2)
    assert two["fwt"]["per_risk"] == pytest.approx({"bias": 0.05})
    assert value(two, "final_average_safety") == pytest.approx((0.95 + 0.80 + 0.50) / 3)

    one = sequential(n_stages=1).summary()
    for key in ("forgetting", "forgetting_avalanche", "bwt", "bwt_gem_code", "bwt_avalanche", "fwt"):
        assert value(one, key) is None and "two training stages" in one[key]["note"]
    assert value(one, "final_average_safety") == pytest.approx((0.90 + 0.35 + 0.45) / 3)

    base_only = sequential(n_stages=0).summary()
    assert base_only["final_row"] == "base" and value(base_only, "forgetting") is None


def test_without_base_row_fwt_is_undefined():
    s = sequential(with_base=False).summary()
    assert value(s, "forgetting") == pytest.approx(0.275)  # max over stage rows only here
    assert value(s, "fwt") is None and "base" in s["fwt"]["note"]


def composed():
    m = ForgettingMatrix(RISKS)
    m.add_row("base", dict(zip(RISKS, [0.2, 0.3, 0.4])), kind="base")
    m.add_row("spec-tox", dict(zip(RISKS, [0.9, 0.3, 0.4])), kind="specialist", trained="tox")
    m.add_row("spec-bias", dict(zip(RISKS, [0.2, 0.85, 0.4])), kind="specialist", trained="bias")
    m.add_row("spec-harm", dict(zip(RISKS, [0.25, 0.3, 0.8])), kind="specialist", trained="harm")
    m.add_row("merged", dict(zip(RISKS, [0.6, 0.7, 0.8])), kind="composed")
    return m


def test_composed_layout():
    s = composed().summary()
    assert s["layout"] == "composed" and s["final_row"] == "merged"
    assert value(s, "final_average_safety") == pytest.approx(0.7)
    assert s["forgetting"]["per_risk"] == pytest.approx({"tox": 0.3, "bias": 0.15, "harm": 0.0})
    assert value(s, "forgetting") == pytest.approx(0.15)
    assert value(s, "bwt") is None and "not defined" in s["bwt"]["note"]
    assert value(s, "fwt") is None


def test_composed_in_progress_and_joint():
    m = ForgettingMatrix(["a", "b"])
    m.add_row("base", {"a": 0.1, "b": 0.2}, kind="base")
    m.add_row("spec-a", {"a": 0.8, "b": 0.2}, kind="specialist", trained="a")
    s = m.summary()
    assert value(s, "final_average_safety") is None and s["forgetting"]["note"] == "no composed row yet"
    joint = ForgettingMatrix(["a", "b"])
    joint.add_row("base", {"a": 0.1, "b": 0.2}, kind="base")
    joint.add_row("joint", {"a": 0.7, "b": 0.6}, kind="composed")
    s = joint.summary()
    assert value(s, "final_average_safety") == pytest.approx(0.65)
    assert value(s, "forgetting") is None and s["forgetting"]["note"] == "no specialist rows"


@pytest.mark.parametrize("risks", [[], ["a", "a"]])
def test_bad_risk_lists(risks):
    with pytest.raises(ValueError, match="distinct"):
        ForgettingMatrix(risks)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores={"a": 0.5}), "missing"),
    (dict(scores={"a": 0.5, "b": 0.5, "c": 0.5}), "unknown"),
    (dict(scores={"a": 1.5, "b": 0.5}), r"in \[0, 1\]"),
    (dict(scores={"a": float("nan"), "b": 0.5}), r"in \[0, 1\]"),
    (dict(kind="final"), "kind must be one of"),
    (dict(kind="stage", trained=None), "needs the risk it trained"),
    (dict(trained="c"), "not one of"),
    (dict(directions={"a": {"rate": "down"}}), "direction"),
    (dict(directions={"c": {"rate": "lower"}}), "unknown risk"),
])
def test_add_row_validation(kwargs, match):
    m = ForgettingMatrix(["a", "b"])
    args = dict(scores={"a": 0.5, "b": 0.5}, kind="stage", trained="a") | kwargs
    with pytest.raises(ValueError, match=match):
        m.add_row("r", **args)
    assert m.rows == []


def test_summary_rejects_inconsistent_layouts():
    with pytest.raises(ValueError, match="no rows"):
        ForgettingMatrix(["a"]).summary()
    out_of_order = ForgettingMatrix(["a", "b"])
    out_of_order.add_row("s1", {"a": 0.5, "b": 0.5}, trained="b")
    with pytest.raises(ValueError, match="one stage per risk in order"):
        out_of_order.summary()
    not_last = composed()
    not_last.add_row("spec-again", dict(zip(RISKS, [0.5, 0.5, 0.5])), kind="specialist", trained="tox")
    with pytest.raises(ValueError, match="composed row"):
        not_last.summary()
    twice = ForgettingMatrix(["a", "b"])
    for name in ("s1", "s2"):
        twice.add_row(name, {"a": 0.5, "b": 0.5}, kind="specialist", trained="a")
    with pytest.raises(ValueError, match="one specialist row per risk"):
        twice.summary()


def test_save_load_round_trip(tmp_path):
    m = sequential()
    path = m.save(tmp_path / "run" / "forgetting.json")
    loaded = ForgettingMatrix.load(path)
    assert loaded.to_dict() == m.to_dict()
    assert loaded.directions == {r: {"rate": "lower"} for r in RISKS}
    assert loaded.rows[2].raw["tox"]["rate"] == pytest.approx(0.05)
    on_disk = json.loads(path.read_text())
    assert on_disk["summary"]["bwt"]["value"] == pytest.approx(-0.25)
    assert [p.name for p in path.parent.iterdir()] == ["forgetting.json"]  # no temp file left


def test_save_is_atomic(tmp_path, monkeypatch):
    path = composed().save(tmp_path / "forgetting.json")
    before = path.read_text()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("compose.io.os.replace", fail)
    with pytest.raises(OSError):
        sequential().save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["forgetting.json"]


def test_empty_matrix_round_trip(tmp_path):
    m = ForgettingMatrix(["a", "b"])
    assert ForgettingMatrix.load(m.save(tmp_path / "f.json")).to_dict() == m.to_dict()


def test_avalanche_standalone_metrics_agree():
    """Avalanche's standalone Forgetting / BWT, fed the way its plugins feed them, give our Avalanche variant."""
    metrics = pytest.importorskip("avalanche.evaluation.metrics")
    m = sequential()
    forgetting, bwt = metrics.Forgetting(), metrics.BWT()
    for row in m.rows[1:]:  # Avalanche has no row for the untrained model
        trained = RISKS.index(row.trained)
        for metric in (forgetting, bwt):
            metric.reset_last()  # what its plugins do before each evaluation pass
            for j, risk in enumerate(RISKS):
                metric.update(j, row.scores[risk], initial=(j == trained))
    ours = m.summary()
    got_f, got_b = forgetting.result(), bwt.result()
    assert got_f == pytest.approx({RISKS.index(r): v for r, v in ours["forgetting_avalanche"]["per_risk"].items()})
    assert sum(got_f.values()) / len(got_f) == pytest.approx(value(ours, "forgetting_avalanche"))
    assert sum(got_b.values()) / len(got_b) == pytest.approx(value(ours, "bwt_avalanche"))
