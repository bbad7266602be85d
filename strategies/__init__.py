"""Composition strategies: how per-risk patches become one patch (see DESIGN.md, section 3).

A strategy is one module with a ``Strategy`` subclass; adding one is that module plus one line below.
"""

from __future__ import annotations

import importlib

from compose.errors import ComposeError, suggest
from strategies.base import Strategy

STRATEGIES = {
    "sequential": "strategies.sequential:Sequential",
    "sequential-replay": "strategies.sequential:SequentialReplay",
    "stacked": "strategies.stacked:Stacked",
    "concatenated": "strategies.concatenated:Concatenated",
    "merged": "strategies.merged:Merged",
    "joint": "strategies.joint:Joint",
}


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; unknown names get the list of valid ones."""
    if name not in STRATEGIES:
        raise ComposeError(f"unknown strategy '{name}'{suggest(name, STRATEGIES)}; valid: {', '.join(STRATEGIES)}")
    module, cls = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
