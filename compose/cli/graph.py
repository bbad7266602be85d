"""``compose graph RUN_OR_CONFIG``: print the patch order of a run (or a run config) and draw its graph."""

from __future__ import annotations

import argparse
from pathlib import Path

from compose import config as config_mod
from compose.cli.config import resolve, resolve_order, risk_constraints
from compose.errors import ComposeError
from compose.graph import build_graph, draw_graph
from compose.io import check_output_file, png_written_by_compose
from compose.schema import Field, check_fields, read_checked


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_OR_CONFIG", help="a run folder or a run config (YAML)")
    p.add_argument("--out", help="PNG to write (default: graph.png in the run folder or beside the config)")
    p.add_argument("--force", action="store_true", help="replace an --out file that compose did not write")


def main(args) -> int:
    target = Path(args.target)
    path = target / "config.yaml" if target.is_dir() else target
    if not path.is_file():
        raise ComposeError(f"'{target}' is neither a run folder (with config.yaml) nor a config file")
    out = check_output_file(args.out or path.parent / "graph.png", "--out", force=args.force, inputs=[path],
                            owned=png_written_by_compose)
    cfg = resolve(config_mod.load_config_file(path))
    constraints = risk_constraints(cfg)
    order = resolve_order(cfg)
    auto = target / "order.json" if target.is_dir() else None
    if auto is not None and auto.is_file():
        explanation = read_checked(auto, {"chosen": Field("dict"), "reasons": Field("str-list", required=False)},
                                   "auto-order record", "delete it to choose the order again on resume")
        check_fields(explanation["chosen"], {"order": Field("str-list")}, f"auto-order record {auto}, chosen")
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
    graph = build_graph(cfg.risks, constraints)
    draw_graph(graph, out, title=f"dependency graph: {' -> '.join(order)}")
    print(f"wrote {out}")
    return 0
