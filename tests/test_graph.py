"""Dependency graph: order with ties, cycles, requirements, conflicts, auto order from interference, patch sets."""

import json
import random

import networkx as nx
import pytest

from compose.errors import ComposeError
from compose.graph import (Constraint, build_graph, check_patch_set, draw_graph, interference_graph,
                           interference_order, predicted_forgetting, resolve_order)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_no_constraints_keeps_the_users_order():
    assert resolve_order(["harm", "tox", "bias"], {}) == ["harm", "tox", "bias"]
    assert resolve_order(["b", "a"]) == ["b", "a"]


def test_topological_order_breaks_ties_by_user_order():
    constraints = {"tox": {"after": ["bias"]}, "harm": {"after": "bias"}}
    # bias must come first; tox and harm are then tied and keep the user's order
    assert resolve_order(["tox", "harm", "bias"], constraints) == ["bias", "tox", "harm"]
    assert resolve_order(["harm", "tox", "bias"], constraints) == ["bias", "harm", "tox"]
    assert resolve_order(["d", "c", "b", "a"], {"a": {"after": ["b"]}}) == ["d", "c", "b", "a"]
    assert resolve_order(["a", "b", "c"], {"a": {"after": ["c"]}}) == ["b", "c", "a"]


def test_graph_edges_and_attributes():
    g = build_graph(["tox", "bias", "harm"], {"harm": {"requires": ["tox"], "after": ["bias", "tox"]}})
    assert isinstance(g, nx.DiGraph)
    assert g.edges["tox", "harm"]["reason"] == "requires" and g.edges["bias", "harm"]["reason"] == "after"
    assert [g.nodes[n]["index"] for n in ("tox", "bias", "harm")] == [0, 1, 2]


def test_cycle_error_names_the_cycle():
    constraints = {"toxicity": {"after": ["harmfulness"]}, "harmfulness": {"after": ["toxicity"]}}
    with pytest.raises(ComposeError) as err:
        resolve_order(["harmfulness", "toxicity", "bias"], constraints)
    assert str(err.value) == "dependency cycle: harmfulness -> toxicity -> harmfulness"
    with pytest.raises(ComposeError, match=r"^dependency cycle: a -> b -> c -> a$"):
        resolve_order(["a", "b", "c"], {"b": {"after": "a"}, "c": {"requires": "b"}, "a": {"after": "c"}})
    with pytest.raises(ComposeError, match=r"^dependency cycle: a -> a$"):
        resolve_order(["a"], {"a": {"after": ["a"]}})


def test_requires_missing_names_both_sides_and_what_is_present():
    with pytest.raises(ComposeError) as err:
        resolve_order(["harm", "bias"], {"harm": {"requires": ["tox"]}})
    msg = str(err.value)
    assert "'harm' requires 'tox'" in msg and "present: harm, bias" in msg and "\n" not in msg


def test_requires_orders_the_requirement_first():
    assert resolve_order(["harm", "tox"], {"harm": {"requires": ["tox"]}}) == ["tox", "harm"]


def test_conflicts_name_both():
    with pytest.raises(ComposeError, match="'tox' conflicts with 'bias'"):
        resolve_order(["tox", "bias"], {"tox": {"conflicts": ["bias"]}})
    # a conflict with an absent node is fine
    assert resolve_order(["tox", "harm"], {"tox": {"conflicts": ["bias"]}}) == ["tox", "harm"]


def test_absent_nodes_in_constraints_are_ignored():
    constraints = {"tox": {"after": ["bias", "unselected"]}, "unselected": {"requires": ["nothing"], "after": ["tox"]}}
    assert resolve_order(["tox", "harm"], constraints) == ["tox", "harm"]


@pytest.mark.parametrize("constraints, match", [
    ({"tox": {"before": ["bias"]}}, "unknown key.*before.*valid keys: after, requires, conflicts"),
    ({"tox": ["bias"]}, "must be a mapping"),
    ({"tox": {"after": [3]}}, "must list names"),
])
def test_malformed_constraints(constraints, match):
    with pytest.raises(ComposeError, match=match):
        resolve_order(["tox", "bias"], constraints)


def test_duplicate_nodes():
    with pytest.raises(ComposeError, match="tox named more than once"):
        resolve_order(["tox", "bias", "tox"])


def test_constraint_parse():
    c = Constraint.parse("harm", {"after": "tox", "requires": ["bias"]})
    assert c == Constraint(after=("tox",), requires=("bias",), conflicts=())
    assert Constraint.parse("x", c) is c and Constraint.parse("x", None) == Constraint()
    assert resolve_order(["harm", "tox", "bias"], {"harm": c}) == ["tox", "bias", "harm"]  # Constraint objects work


# transfer[a][b] = change in safety of b after training a specialist on a (negative = interference).
# Training bias hurts tox a lot, harm hurts tox, tox hurts harm and bias a little.
TRANSFER = {
    "tox": {"tox": 0.6, "bias": -0.05, "harm": -0.10},
    "bias": {"tox": -0.30, "bias": 0.5, "harm": 0.02},
    "harm": {"tox": -0.20, "bias": -0.01, "harm": 0.7},
}
HAND_COSTS = {  # sum over pairs (earlier e, later l) of max(0, -transfer[l][e])
    ("tox", "bias", "harm"): 0.51, ("tox", "harm", "bias"): 0.50, ("bias", "tox", "harm"): 0.26,
    ("bias", "harm", "tox"): 0.16, ("harm", "tox", "bias"): 0.40, ("harm", "bias", "tox"): 0.15,
}


def test_interference_graph_and_cost():
    g = interference_graph(["tox", "bias", "harm"], TRANSFER)
    assert g.edges["bias", "tox"]["weight"] == pytest.approx(0.30)
    assert not g.has_edge("bias", "harm") and not g.has_edge("tox", "tox")  # helps / diagonal: no edge
    for order, cost in HAND_COSTS.items():
        assert predicted_forgetting(list(order), g) == pytest.approx(cost)


def test_interference_order_on_hand_made_matrix():
    order, why = interference_order(["tox", "bias", "harm"], TRANSFER)
    assert order == ["harm", "bias", "tox"]  # tox, the most harmed risk, is trained last
    assert why["chosen"]["predicted_forgetting"] == pytest.approx(0.15)
    assert why["default_order"] == {"order": ["tox", "bias", "harm"], "predicted_forgetting": pytest.approx(0.51)}
    assert why["method"].startswith("exhaustive: all 6 orders")
    assert [c["order"] for c in why["considered"]][:2] == [["harm", "bias", "tox"], ["bias", "harm", "tox"]]
    assert len(why["considered"]) == 5
    assert why["interference"][0] == {"from": "bias", "to": "tox", "harm": pytest.approx(0.30)}
    assert any(r.startswith("bias before tox: costs 0.050 (tox harms bias) instead of 0.300") for r in why["reasons"])
    json.dumps(why)  # recorded in the run folder


def test_interference_order_respects_constraints():
    order, why = interference_order(["tox", "bias", "harm"], TRANSFER, {"harm": {"after": ["bias"]}})
    assert order == ["bias", "harm", "tox"] and why["chosen"]["predicted_forgetting"] == pytest.approx(0.16)
    assert why["method"].startswith("exhaustive: all 3 orders")
    order, why = interference_order(["tox", "bias", "harm"], TRANSFER,
                                    {"bias": {"after": ["tox"]}, "harm": {"requires": ["tox"]}})
    assert order == ["tox", "harm", "bias"]
    assert any("(required by the constraints)" in r for r in why["reasons"])
    with pytest.raises(ComposeError, match="dependency cycle"):
        interference_order(["tox", "bias"], TRANSFER, {"tox": {"after": "bias"}, "bias": {"after": "tox"}})


def test_interference_order_ties_keep_the_users_order():
    neutral = {a: {b: 0.0 for b in "xyz"} for a in "xyz"}
    assert interference_order(["z", "x", "y"], neutral)[0] == ["z", "x", "y"]


def test_transfer_matrix_must_be_complete():
    with pytest.raises(ComposeError, match=r"lacks transfer\['bias'\]\['harm'\]"):
        interference_order(["tox", "bias", "harm"], {**TRANSFER, "bias": {"tox": -0.3}})


def test_greedy_on_small_case_finds_the_optimum():
    order, why = interference_order(["tox", "bias", "harm"], TRANSFER, max_brute_force=0)
    assert why["method"].startswith("greedy")
    assert order == ["harm", "bias", "tox"]


def test_greedy_beyond_seven_risks_respects_constraints_and_beats_the_default():
    rng = random.Random(0)
    risks = [f"r{i}" for i in range(9)]
    transfer = {a: {b: rng.uniform(-0.4, 0.2) for b in risks} for a in risks}
    constraints = {"r3": {"after": ["r7"]}, "r0": {"requires": ["r5"]}}
    order, why = interference_order(risks, transfer, constraints)
    assert why["method"].startswith("greedy") and sorted(order) == sorted(risks)
    assert order.index("r7") < order.index("r3") and order.index("r5") < order.index("r0")
    assert why["chosen"]["predicted_forgetting"] <= why["default_order"]["predicted_forgetting"]


def test_draw_graph(tmp_path):
    g = build_graph(["tox", "bias", "harm"], {"harm": {"requires": ["tox"], "after": ["bias"]}})
    path = draw_graph(g, tmp_path / "graph.png", title="order")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 3_000
    weighted = interference_graph(["tox", "bias", "harm"], TRANSFER)  # has cycles: circular layout
    assert draw_graph(weighted, tmp_path / "sub" / "interference.png").read_bytes().startswith(PNG_MAGIC)
    assert "layer" not in g.nodes["tox"]  # the caller's graph is left untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.png", "sub"]


def manifest(name, risks, version="1.0.0", **kw):
    return {"name": name, "version": version, "risks": risks, **kw}


def test_patch_set_order():
    tox = manifest("tox-patch", [{"risk": "tox", "start": 0, "tokens": 20}])  # segment dicts, as in patch.json
    bias = manifest("bias-patch", ["bias"], after=["tox"])  # a risk name stands for the patch covering it
    harm = manifest("harm-patch", ["harm"], requires=["tox-patch>=1.0"], after=["absent-patch"])
    ordered = check_patch_set([harm, bias, tox])
    assert [m["name"] for m in ordered] == ["tox-patch", "harm-patch", "bias-patch"]
    assert ordered[0] is tox


def test_patch_set_errors():
    tox = manifest("tox-patch", ["tox"], version="1.2.0")
    with pytest.raises(ComposeError, match=r"'harm-patch' requires 'bias-patch', which is not in the set "
                                           r"\(present: harm-patch 1.0.0, tox-patch 1.2.0\)"):
        check_patch_set([manifest("harm-patch", ["harm"], requires=["bias-patch"]), tox])
    with pytest.raises(ComposeError, match=r"requires 'tox-patch>=1.10' but 'tox-patch' is version 1.2.0"):
        check_patch_set([manifest("harm-patch", ["harm"], requires=["tox-patch>=1.10"]), tox])
    with pytest.raises(ComposeError, match="'merged' conflicts with 'tox-patch'"):
        check_patch_set([tox, manifest("merged", ["tox", "bias"], conflicts=["tox-patch"])])
    with pytest.raises(ComposeError, match="dependency cycle: a -> b -> a"):
        check_patch_set([manifest("a", ["x"], after=["b"]), manifest("b", ["y"], requires=["a"])])
    with pytest.raises(ComposeError, match="needs a name"):
        check_patch_set([{"version": "1.0.0", "risks": []}])
    with pytest.raises(ComposeError, match="more than once"):
        check_patch_set([tox, tox])
    with pytest.raises(ComposeError, match="not of the form"):
        check_patch_set([manifest("h", ["harm"], requires=["tox-patch>=1.x"]), tox])
