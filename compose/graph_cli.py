"""``compose graph RUN_OR_CONFIG``: print the patch order of a run (or a run config) and draw its graph."""

from __future__ import annotations

import argparse
from pathlib import Path

from compose.errors import ComposeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_OR_CONFIG", help="a run folder or a run config (YAML)")
    p.add_argument("--out", help="PNG to write (default: graph.png in the run folder or beside the config)")


def main(args) -> int:
    from compose import config as config_mod
    from compose.graph import build_graph, draw_graph
    from compose.io import read_json
    from compose.run import resolve_order, risk_constraints

    target = Path(args.target)
    path = target / "config.yaml" if target.is_dir() else target
    if not path.is_file():
        raise ComposeError(f"'{target}' is neither a run folder (with config.yaml) nor a config file")
    cfg = config_mod.resolve(config_mod.load_config_file(path))
    constraints = risk_constraints(cfg)
    order = resolve_order(cfg)
    auto = target / "order.json" if target.is_dir() else None
    if auto is not None and auto.is_file():
        explanation = read_json(auto)
        order = explanation["chosen"]["order"]
        print(f"order (auto, from measured interference): {' -> '.join(order)}")
        for reason in explanation.get("reasons", []):
            print(f"  {reason}")
    else:
        print(f"order: {' -> '.join(order)}")
    for risk in cfg.risks:
        c = {k: v for k, v in constraints[risk].items() if v}
        if c:
            print(f"  {risk}: " + "; ".join(f"{k} {', '.join(v)}" for k, v in c.items()))
    out = Path(args.out) if args.out else path.parent / "graph.png"
    graph = build_graph(cfg.risks, constraints)
    draw_graph(graph, out, title=f"dependency graph: {' -> '.join(order)}")
    print(f"wrote {out}")
    return 0
