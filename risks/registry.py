"""The risk registry: names and aliases -> Risk classes.

Risks come from three places: the built-ins (listed in ``risks/__init__.py``), installed packages that
declare an entry point in the group ``compose.risks`` (``name = "package.module:RiskClass"``, loaded on first
lookup), and files or modules given to ``load_plugin`` (``compose --plugin path/to/my_risk.py``). Every class is
checked against the interface when it is registered; what is missing is named in the error.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from importlib import metadata

from compose.errors import ComposeError
from compose.plugins import import_plugin
from risks.base import Risk, missing_parts

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "compose.risks"

_classes: dict[str, type[Risk]] = {}  # canonical name -> class
_names: dict[str, str] = {}  # name or alias -> canonical name
_origins: dict[str, str] = {}  # canonical name -> where it came from
_entry_points_loaded = False


def register_risk(cls: type[Risk], origin: str = "built-in") -> type[Risk]:
    """Register ``cls`` under its name and aliases (usable as a class decorator). Re-registering the same
    class (or a reloaded copy of it) replaces it; another class claiming a taken name is an error."""
    if not (inspect.isclass(cls) and issubclass(cls, Risk)):
        raise ComposeError(f"{origin}: {cls!r} is not a subclass of risks.Risk")
    missing = missing_parts(cls)
    if missing:
        raise ComposeError(f"{origin}: risk class '{cls.__name__}' is missing {', '.join(missing)}")
    for key in (cls.name, *cls.aliases):
        owner = _names.get(key)
        if owner and _qualname(_classes[owner]) != _qualname(cls):
            raise ComposeError(f"{origin}: risk name '{key}' of {cls.__name__} is already taken by "
                               f"{_classes[owner].__name__} ({_origins[owner]})")
    _classes[cls.name] = cls
    _origins[cls.name] = origin
    for key in (cls.name, *cls.aliases):
        _names[key] = cls.name
    return cls


def _qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def risk_class(name: str) -> type[Risk]:
    """The class registered under ``name`` (a name or an alias)."""
    load_entry_points()
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _names:
        close = difflib.get_close_matches(str(key), list(_names), n=1, cutoff=0.5)
        hint = f" did you mean '{_names[close[0]]}'?" if close else ""
        raise ComposeError(f"unknown risk '{name}';{hint} available: {', '.join(sorted(_classes))}")
    return _classes[_names[key]]


def get_risk(name: str, **options) -> Risk:
    """A new instance of the risk ``name`` (or alias); ``options`` go to its constructor (``data=``, ``teacher=``,
    generation and metric options)."""
    return risk_class(name)(**options)


def list_risks() -> list[dict]:
    """One info row per registered risk (name, aliases, data sizes, teacher, metric, ...), sorted by name."""
    load_entry_points()
    rows = []
    for name in sorted(_classes):
        info = _classes[name]().info()
        info["origin"] = _origins[name]
        rows.append(info)
    return rows


def load_plugin(spec: str) -> list[type[Risk]]:
    """Import a plugin (a ``.py`` file or an importable module name) and register the Risk subclasses it defines."""
    classes = register_risks_in(import_plugin(spec), spec)
    if not classes:
        raise ComposeError(f"plugin '{spec}' defines no subclass of risks.Risk")
    return classes


def register_risks_in(module, spec: str) -> list[type[Risk]]:
    """Register the Risk subclasses that ``module`` (the plugin ``spec``) defines; returns them."""
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, Risk) and obj.__module__ == module.__name__]
    for cls in classes:
        register_risk(cls, origin=f"plugin {spec}")
    return classes


def _entry_points():
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


def load_entry_points(force: bool = False) -> None:
    """Register the risks that installed packages declare in the ``compose.risks`` entry point group.

    A broken entry point is skipped with a warning naming it, so one bad package does not disable the CLI.
    """
    global _entry_points_loaded
    if _entry_points_loaded and not force:
        return
    _entry_points_loaded = True
    for ep in _entry_points():
        try:
            obj = ep.load()
            classes = [obj] if inspect.isclass(obj) else [
                c for c in vars(obj).values()
                if inspect.isclass(c) and issubclass(c, Risk) and c.__module__ == obj.__name__]
            for cls in classes:
                register_risk(cls, origin=f"entry point {ep.name} ({ep.value})")
        except ComposeError as exc:
            log.warning(f"skipping risk entry point '{ep.name}': {exc}")
        except Exception as exc:  # a broken third-party package
            log.warning(f"skipping risk entry point '{ep.name}' ({ep.value}): {type(exc).__name__}: {exc}")


def canonical_name(name: str) -> str:
    """The canonical name of a registered risk or alias; other names (risks not installed here, patch names)
    unchanged. Constraints compare canonical names, so ``after: [tox]`` means toxicity."""
    try:
        return risk_class(name).name
    except ComposeError:
        return name
