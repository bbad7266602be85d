"""Composition strategies: how per-risk patches become one patch (see docs/architecture.md, "The stage loop").

A strategy is one module with a ``compose.strategy.Strategy`` subclass (its hooks and its ``Options``
dataclass); adding one is that module plus one ``register_strategy`` line: below for a built-in, in the plugin
file for one loaded with ``compose --plugin`` (experiments/examples/my_strategy.py).
"""

from __future__ import annotations

from compose.errors import ComposeError, suggest
from compose.strategy import Strategy, check_strategy_class, options_from_config
from strategies.concatenated import Concatenated
from strategies.joint import Joint
from strategies.merged import Merged
from strategies.modular import Modular
from strategies.sequential import Sequential, SequentialReplay
from strategies.stacked import Stacked

STRATEGIES: dict[str, type[Strategy]] = {}  # name -> class, in registration order


def register_strategy(cls: type[Strategy], origin: str = "built-in") -> type[Strategy]:
    """Register ``cls`` under its name (usable as a class decorator); what the class lacks is named in the error."""
    missing = check_strategy_class(cls)
    if missing:
        raise ComposeError(f"{origin}: strategy class {getattr(cls, '__name__', cls)!r} is missing "
                           f"{', '.join(missing)}")
    owner = STRATEGIES.get(cls.name)
    if owner is not None and f"{owner.__module__}.{owner.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
        raise ComposeError(f"{origin}: strategy name '{cls.name}' of {cls.__name__} is already taken by "
                           f"{owner.__name__}")
    STRATEGIES[cls.name] = cls
    return cls


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as ``name``; unknown names get the list of valid ones."""
    if name not in STRATEGIES:
        raise ComposeError(f"unknown strategy '{name}'{suggest(name, STRATEGIES)}; valid: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def get_strategy(name: str, config: dict | None = None) -> Strategy:
    """The strategy ``name`` with its options read from ``config`` (a run config as a dict; default options
    without)."""
    cls = strategy_class(name)
    return cls(options_from_config(cls, config or {}))


# The built-in strategies: one line each.
register_strategy(Sequential)
register_strategy(SequentialReplay)
register_strategy(Stacked)
register_strategy(Concatenated)
register_strategy(Merged)
register_strategy(Joint)
register_strategy(Modular)

__all__ = ["STRATEGIES", "Strategy", "get_strategy", "register_strategy", "strategy_class"]
