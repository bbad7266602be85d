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


def check_settings_used(name: str, given: dict[str, str]) -> None:
    """Refuse settings the strategy ``name`` would ignore; ``given`` maps each setting the user set to how they
    set it (e.g. ``{"replay": "--replay"}``)."""
    strategy = get_strategy(name)
    for setting, how in given.items():
        if setting not in strategy.settings:
            users = [s for s in STRATEGIES if setting in get_strategy(s).settings]
            raise ComposeError(f"{how} is not used by strategy '{name}'; strategies that use it: {', '.join(users)}")


__all__ = ["STRATEGIES", "Strategy", "check_settings_used", "get_strategy"]
