"""``compose strategies``: the registered strategies, how their forgetting matrix reads, and their options."""

from __future__ import annotations

import argparse
import dataclasses
import json

from compose.strategy import describe_options, option_fields
from strategies import STRATEGIES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print every strategy with its options as JSON")


def main(args) -> int:
    if args.json:
        rows = [{"name": name, "description": cls.description, "layout": cls.layout,
                 "section": cls.Options.section,
                 "options": {f.name: {"default": _default(f), "help": f.metadata.get("help", "")}
                             for f in option_fields(cls)}} for name, cls in STRATEGIES.items()]
        print(json.dumps(rows, indent=2))
        return 0
    for name, cls in STRATEGIES.items():
        print(f"{name}  [{cls.layout}]")
        print(f"  {cls.description}")
        where = f" (in the config file under '{cls.Options.section}:')" if cls.Options.section else ""
        options = describe_options(cls)
        print(f"  options{where}:" + ("" if options else " none"))
        for line in options:
            print(f"    {line}")
    return 0


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
