"""The dependency graph of risks and patches: training / stacking order, requirements, conflicts.

Nodes are risk (or patch) names; an edge ``a -> b`` means "a comes before b". Each node may declare:

- ``after``: nodes it comes after (ignored when such a node is not in the set: it only orders present ones);
- ``requires``: nodes that must be present; they also come before it (a stacked block trained on top of them);
- ``conflicts``: nodes it must never be composed with.

``resolve_order`` gives a topological order with ties broken by the user's order. ``interference_order``
chooses, among the orders the constraints allow, the one that minimises the forgetting predicted from a
measured cross-risk transfer matrix. ``check_patch_set`` resolves several patch manifests like a package
manager. Every user-caused problem is a one-line ``ComposeError``.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from compose.errors import ComposeError
from compose.io import save_figure

FIELDS = ("after", "requires", "conflicts")
MAX_BRUTE_FORCE = 7  # 7! = 5040 orders; beyond that the order is built greedily


@dataclass(frozen=True)
class Constraint:
    """Ordering constraints of one node (names of other nodes)."""

    after: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, node: str, spec) -> Constraint:
        """From a ``Constraint`` or a dict with keys among ``after``/``requires``/``conflicts`` (str or list)."""
        if isinstance(spec, Constraint):
            return spec
        if spec is None:
            return cls()
        if not isinstance(spec, dict):
            raise ComposeError(f"constraints of '{node}' must be a mapping with keys {', '.join(FIELDS)}, got {spec!r}")
        unknown = [k for k in spec if k not in FIELDS]
        if unknown:
            raise ComposeError(f"constraints of '{node}' have unknown key(s) {', '.join(map(str, unknown))}; "
                               f"valid keys: {', '.join(FIELDS)}")
        values = {}
        for key in FIELDS:
            names = spec.get(key) or ()
            names = (names,) if isinstance(names, str) else tuple(names)
            if not all(isinstance(n, str) and n for n in names):
                raise ComposeError(f"'{key}' of '{node}' must list names, got {spec.get(key)!r}")
            values[key] = names
        return cls(**values)


def _present(names) -> str:
    return ", ".join(names) or "none"


def build_graph(nodes: list[str], constraints: dict[str, dict] | None = None) -> nx.DiGraph:
    """The constraint graph of ``nodes`` (edge ``a -> b``: a before b); checks requirements and conflicts.

    Constraints of nodes not in ``nodes`` are ignored. Node attribute ``index`` is the node's position in
    ``nodes``; edge attribute ``reason`` is "after" or "requires".
    """
    nodes = list(nodes)
    twice = sorted({n for n in nodes if nodes.count(n) > 1})
    if twice:
        raise ComposeError(f"{', '.join(twice)} named more than once in {', '.join(nodes)}")
    graph = nx.DiGraph()
    for i, node in enumerate(nodes):
        graph.add_node(node, index=i)
    for node in nodes:
        c = Constraint.parse(node, (constraints or {}).get(node))
        for req in c.requires:
            if req not in graph:
                raise ComposeError(f"'{node}' requires '{req}', which is not in the set (present: {_present(nodes)})")
            graph.add_edge(req, node, reason="requires")
        for other in c.after:
            if other in graph and not graph.has_edge(other, node):
                graph.add_edge(other, node, reason="after")
        for other in c.conflicts:
            if other in graph and other != node:
                raise ComposeError(f"'{node}' conflicts with '{other}': they cannot be composed together "
                                   f"(present: {_present(nodes)})")
    return graph


def _check_acyclic(graph: nx.DiGraph) -> None:
    try:
        cycle = [u for u, _ in nx.find_cycle(graph)]
    except nx.NetworkXNoCycle:
        return
    start = min(range(len(cycle)), key=lambda i: graph.nodes[cycle[i]].get("index", 0))
    cycle = cycle[start:] + cycle[:start]
    raise ComposeError(f"dependency cycle: {' -> '.join(cycle + [cycle[0]])}")


def _topological(graph: nx.DiGraph) -> list[str]:
    _check_acyclic(graph)
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: graph.nodes[n]["index"]))


def resolve_order(nodes: list[str], constraints: dict[str, dict] | None = None) -> list[str]:
    """A topological order of ``nodes`` under ``constraints``, ties broken by the order of ``nodes``."""
    return _topological(build_graph(nodes, constraints))


# ---------------------------------------------------------------------------------------------- interference

def interference_graph(risks: list[str], transfer: dict[str, dict[str, float]]) -> nx.DiGraph:
    """Edge ``a -> b`` with ``weight`` = how much training a lowers the safety of b (``max(0, -transfer[a][b])``).

    Only positive weights become edges. ``transfer[a][b]`` is the change in safety of risk b caused by
    training a specialist on a (negative = interference); the diagonal is ignored.
    """
    missing = [f"transfer['{a}']['{b}']" for a in risks for b in risks
               if a != b and b not in (transfer.get(a) or {})]
    if missing:
        raise ComposeError(f"the transfer matrix lacks {', '.join(missing)} (risks: {', '.join(risks)})")
    graph = nx.DiGraph()
    graph.add_nodes_from((r, {"index": i}) for i, r in enumerate(risks))
    for a, b in itertools.permutations(risks, 2):
        harm = max(0.0, -float(transfer[a][b]))
        if harm > 0:
            graph.add_edge(a, b, weight=harm)
    return graph


def _harm(interference: nx.DiGraph, a: str, b: str) -> float:
    """How much training a lowers the safety of b (0 without an edge)."""
    return interference.get_edge_data(a, b, {"weight": 0.0})["weight"]


def predicted_forgetting(order: list[str], interference: nx.DiGraph) -> float:
    """Sum over pairs (i before j) of the harm training the later risk j does to the earlier risk i."""
    return float(sum(_harm(interference, later, earlier) for i, earlier in enumerate(order) for later in order[i + 1:]))


def _greedy(constraint: nx.DiGraph, harm: nx.DiGraph) -> list[str]:
    """Place next the available node that suffers least from the rest and harms them most; then adjacent swaps."""
    def w(a, b):
        return _harm(harm, a, b)

    g, order = constraint.copy(), []
    while g:
        rest = list(g)
        ready = [n for n in rest if g.in_degree(n) == 0]
        order.append(min(ready, key=lambda n: (sum(w(r, n) - w(n, r) for r in rest if r != n), g.nodes[n]["index"])))
        g.remove_node(order[-1])
    improved = True
    while improved:  # swap neighbours when the constraints allow it and the predicted forgetting drops
        improved = False
        for i in range(len(order) - 1):
            a, b = order[i], order[i + 1]
            if not constraint.has_edge(a, b) and w(b, a) > w(a, b):  # a before b pays w(b, a)
                order[i], order[i + 1] = b, a
                improved = True
    return order


def interference_order(risks: list[str], transfer: dict[str, dict[str, float]],
                       constraints: dict[str, dict] | None = None, top: int = 5,
                       max_brute_force: int = MAX_BRUTE_FORCE) -> tuple[list[str], dict]:
    """The constraint-respecting order of ``risks`` with the least predicted forgetting, and why.

    Predicted forgetting of an order = sum over pairs (i before j) of ``max(0, -transfer[j][i])``: training the
    later risk j harms the earlier risk i. Up to ``max_brute_force`` risks every order the constraints allow
    is scored; beyond, a greedy order improved by adjacent swaps is used. Ties go to the order closest to the
    user's. The explanation (JSON-able) records the objective, the method, the interference edges, the
    ``top`` best orders considered with their cost, the default order's cost, and one reason per risk pair.
    """
    constraint = build_graph(risks, constraints)
    default = _topological(constraint)
    harm = interference_graph(risks, transfer)
    index = {r: i for i, r in enumerate(risks)}

    def cost(order):
        return predicted_forgetting(order, harm)

    if len(risks) <= max_brute_force:
        candidates = sorted(nx.all_topological_sorts(constraint), key=lambda o: (cost(o), [index[r] for r in o]))
        method = f"exhaustive: all {len(candidates)} orders the constraints allow"
    else:
        greedy = _greedy(constraint, harm)
        candidates = sorted({tuple(default), tuple(greedy)}, key=lambda o: (cost(o), [index[r] for r in o]))
        method = (f"greedy ({len(risks)} risks > {max_brute_force}): repeatedly place the ready risk least harmed "
                  f"by and most harmful to the remaining ones, then swap neighbours while that lowers the cost")
    best = list(candidates[0])
    reasons = []
    for i, first in enumerate(best):
        for second in best[i + 1:]:
            paid, avoided = _harm(harm, second, first), _harm(harm, first, second)
            if paid or avoided:
                forced = " (required by the constraints)" if nx.has_path(constraint, first, second) else ""
                reasons.append(f"{first} before {second}{forced}: costs {paid:.3f} ({second} harms {first}) "
                               f"instead of {avoided:.3f} the other way round")
    explanation = {
        "objective": "predicted forgetting = sum over pairs (i before j) of max(0, -transfer[j][i])",
        "method": method,
        "interference": [{"from": a, "to": b, "harm": d["weight"]}
                         for a, b, d in sorted(harm.edges(data=True), key=lambda e: -e[2]["weight"])],
        "considered": [{"order": list(o), "predicted_forgetting": cost(o)} for o in candidates[:top]],
        "default_order": {"order": default, "predicted_forgetting": cost(default)},
        "chosen": {"order": best, "predicted_forgetting": cost(best)},
        "reasons": reasons,
    }
    return best, explanation


# ---------------------------------------------------------------------------------------------- drawing

def draw_graph(graph: nx.DiGraph, path, title: str | None = None) -> Path:
    """Write a PNG picture of ``graph`` (edge labels: ``weight`` or ``reason``) atomically; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if nx.is_directed_acyclic_graph(graph) and graph.number_of_nodes():
        layered = nx.DiGraph(graph.edges)  # a copy: the caller's graph keeps its attributes
        layered.add_nodes_from(graph)
        for layer, names in enumerate(nx.topological_generations(layered)):
            for name in names:
                layered.nodes[name]["layer"] = layer
        pos = nx.multipartite_layout(layered, subset_key="layer")
    else:
        pos = nx.circular_layout(graph)
    fig = Figure(figsize=(max(4.0, 1.6 * graph.number_of_nodes()), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    nx.draw_networkx(graph, pos, ax=ax, node_color="#cde3f7", node_size=1800, font_size=9,
                     arrowsize=18, connectionstyle="arc3,rad=0.12", edge_color="#555555")
    labels = {(a, b): f"{d['weight']:.2f}" if "weight" in d else d.get("reason", "")
              for a, b, d in graph.edges(data=True)}
    if any(labels.values()):
        nx.draw_networkx_edge_labels(graph, pos, edge_labels=labels, ax=ax, font_size=8,
                                     connectionstyle="arc3,rad=0.12")
    ax.margins(0.18)  # room for the node circles at the edges
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- patch sets

_SPEC = re.compile(r"^\s*([^\s<>=!]+)\s*(?:(==|!=|>=|<=|>|<)\s*(\S+))?\s*$")
_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def _version(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(v).split("."))
    except ValueError:
        raise ComposeError(f"version '{v}' is not of the form N.N.N (digits and dots)") from None


def check_patch_set(manifests: list[dict], canonical: Callable[[str], str] = str) -> list[dict]:
    """Order several patch manifests for composition, like a package manager resolving packages.

    Each manifest has ``name``, ``version``, ``risks`` (names, or segment dicts with a ``risk`` key) and optional
    ``requires`` / ``after`` / ``conflicts``. A reference is a patch name, or a risk name standing for the
    patches that cover it; a requirement may pin a version (``tox-patch>=1.2``). Returns the manifests in
    order; a missing requirement, a version mismatch, a conflict or a cycle is a ``ComposeError``. ``canonical``
    maps a risk name or alias to the name risks are compared by (the application passes the risk registry's, so
    ``after: [tox]`` means toxicity).
    """
    names = [m.get("name") for m in manifests]
    if not all(isinstance(n, str) and n for n in names):
        raise ComposeError(f"every patch manifest needs a name; got {names}")
    shown = [f"{m['name']} {m.get('version', '?')}" for m in manifests]
    by_name = {m["name"]: m for m in manifests}
    risk_names = {m["name"]: {canonical(r["risk"] if isinstance(r, dict) else r) for r in m.get("risks", [])}
                  for m in manifests}

    def resolve(ref: str, owner: str) -> tuple[list[str], str | None, str | None]:
        match = _SPEC.match(str(ref))
        if not match:
            raise ComposeError(f"patch '{owner}': cannot parse reference '{ref}' (use NAME or NAME>=VERSION)")
        target, op, version = match.groups()
        hits = [target] if target in by_name else [m["name"] for m in manifests
                                                    if canonical(target) in risk_names[m["name"]]]
        return [h for h in hits if h != owner], op, version

    constraints = {}
    for m in manifests:
        owner, c = m["name"], {"after": [], "requires": [], "conflicts": []}
        for ref in m.get("requires") or []:
            hits, op, version = resolve(ref, owner)
            if not hits:
                raise ComposeError(f"patch '{owner}' requires '{ref}', which is not in the set "
                                   f"(present: {', '.join(shown)})")
            for hit in hits:
                have = by_name[hit].get("version", "0")
                if op and not _OPS[op](_version(have), _version(version)):
                    raise ComposeError(f"patch '{owner}' requires '{ref}' but '{hit}' is version {have}")
            c["requires"] += hits
        for key in ("after", "conflicts"):
            for ref in m.get(key) or []:
                c[key] += resolve(ref, owner)[0]
        constraints[owner] = c
    order = resolve_order(names, constraints)
    return [by_name[n] for n in order]
