"""Importing a plugin: a ``.py`` file or an importable module, with one-line errors for what goes wrong.

What a plugin registers (risks, strategies) is up to the registries that use this (``risks.registry``,
``compose.cli.plugins``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from compose.errors import ComposeError


def import_plugin(spec: str) -> ModuleType:
    """Import ``spec``: a ``.py`` file (as module ``compose_plugin_STEM``) or an importable module name."""
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ComposeError(f"plugin file '{spec}' does not exist")
        module_name = f"compose_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ComposeError(f"plugin '{spec}' failed to load: {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        raise ComposeError(f"cannot import plugin '{spec}': {exc}; give a .py file or an importable module") from exc
    except Exception as exc:
        raise ComposeError(f"plugin '{spec}' failed to load: {type(exc).__name__}: {exc}") from exc
