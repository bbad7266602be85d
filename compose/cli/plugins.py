"""``compose --plugin PATH_OR_MODULE``: a file or module that adds risks, strategies or both.

Risk subclasses it defines are registered on load; a strategy registers itself with one
``register_strategy(MyStrategy)`` line in the plugin (experiments/examples/my_strategy.py).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from compose.errors import ComposeError
from compose.plugins import import_plugin
from compose.strategy import Strategy
from risks.registry import register_risks_in
from strategies import STRATEGIES


def check_plugin(spec: str) -> str:
    """A ``--plugin`` value that names a file must name a Python source file (a data file is refused)."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix != ".py":
        raise ComposeError(f"--plugin '{spec}' is not a Python file; give a .py file or an importable module name")
    return spec


def load_plugin(spec: str) -> None:
    """Import the plugin ``spec`` and register what it defines; a plugin that adds nothing is refused."""
    module = import_plugin(check_plugin(spec))
    risks = register_risks_in(module, spec)
    strategies = [obj for obj in vars(module).values()
                  if inspect.isclass(obj) and issubclass(obj, Strategy) and obj.__module__ == module.__name__]
    for cls in strategies:
        if STRATEGIES.get(cls.name) is not cls:
            raise ComposeError(f"plugin '{spec}' defines strategy class {cls.__name__} but does not register it; "
                               f"add the line register_strategy({cls.__name__})")
    if not risks and not strategies:
        raise ComposeError(f"plugin '{spec}' defines no subclass of risks.Risk or compose.strategy.Strategy")
