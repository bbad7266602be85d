"""Small schemas for what compose reads from disk (run configs, patch manifests, cached and run-folder JSON).

Input is checked where it enters, so a wrong type is reported as one line naming the file, the field, the
value found and what is valid (``ComposeError``), instead of failing later deep inside training::

    check_fields(data, {"seconds": Field("number", required=False, minimum=0)}, where="stage.json")
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from compose.errors import ComposeError
from compose.io import read_json


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# kind -> (test, what the user is told is valid)
KINDS = {
    "int": (_is_int, "an integer"),
    "number": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "str-list": (_is_str_list, "a list of strings"),
    "str-or-list": (lambda v: isinstance(v, str) or _is_str_list(v), "a list of names or one comma-separated string"),
    "tokens": (lambda v: _is_int(v) or isinstance(v, str) or (isinstance(v, dict) and all(map(_is_int, v.values()))),
               "a number, RISK=N,... or a mapping of risk to number"),
    "any": (lambda v: True, "anything"),
}


@dataclass(frozen=True)
class Field:
    """One field of a JSON/YAML mapping: its kind (a key of ``KINDS``), bounds and allowed values."""

    kind: str
    required: bool = True
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    nullable: bool = False

    def describe(self) -> str:
        text = KINDS[self.kind][1]
        if self.minimum is not None and self.maximum is not None:
            text += f" from {self.minimum:g} to {self.maximum:g}"
        elif self.minimum is not None:
            text += f" >= {self.minimum:g}"
        elif self.maximum is not None:
            text += f" <= {self.maximum:g}"
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        return text + (" or null" if self.nullable else "")

    def accepts(self, value) -> bool:
        if value is None:
            return self.nullable or self.kind == "any"
        if not KINDS[self.kind][0](value):
            return False
        if self.choices and value not in self.choices:
            return False
        if self.minimum is not None and _is_number(value) and value < self.minimum:
            return False
        return not (self.maximum is not None and _is_number(value) and value > self.maximum)


def shown(value, limit: int = 60) -> str:
    """``value`` as the user would write it, shortened to one line of at most ``limit`` characters."""
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_value(value, spec: Field, field: str, where: str) -> None:
    """Raise a one-line ``ComposeError`` unless ``value`` fits ``spec``."""
    if not spec.accepts(value):
        raise ComposeError(f"{where}: field '{field}' is {shown(value)}; expected {spec.describe()}")


def check_fields(data, fields: dict[str, Field], where: str) -> dict:
    """Check that ``data`` is a mapping whose ``fields`` are present (when required) and valid; returns ``data``.

    Keys not in ``fields`` are left alone (callers that refuse unknown keys check them with a suggestion).
    """
    if not isinstance(data, dict):
        raise ComposeError(f"{where}: expected a JSON/YAML mapping, found {type(data).__name__} {shown(data)}")
    missing = [name for name, spec in fields.items() if spec.required and name not in data]
    if missing:
        raise ComposeError(f"{where}: missing field(s) {', '.join(missing)}")
    for name, spec in fields.items():
        if name in data:
            check_value(data[name], spec, name, where)
    return data


def kind_of(default) -> str:
    """The schema kind of a setting with this default value (``any`` when the default says nothing)."""
    for kind, cls in (("bool", bool), ("int", int), ("number", float), ("str", str), ("list", list), ("dict", dict)):
        if isinstance(default, cls):  # bool first: a bool is an int too
            return kind
    return "any"


def read_checked(path, fields: dict[str, Field], what: str, remedy: str = "", each: bool = False) -> dict:
    """``compose.io.read_json`` then ``check_fields``: the mapping in ``path`` with ``fields`` valid (with ``each``:
    a mapping whose every value has those ``fields``). A problem is one line naming the file, then ``remedy``."""
    data = read_json(path, what, remedy)
    where = f"{what} {path}"
    try:
        check_fields(data, {} if each else fields, where)
        for key, value in data.items() if each else ():
            check_fields(value, fields, f"{where}, '{key}'")
    except ComposeError as exc:
        raise ComposeError(f"{exc}; {remedy}" if remedy else str(exc)) from None
    return data


# --- the schemas of compose's own files --------------------------------------------------------------------

METRICS = {"safety": Field("number", minimum=0.0, maximum=1.0), "raw": Field("dict"),
           "directions": Field("dict", required=False), "fluency": Field("dict", required=False),
           "intervals": Field("dict", required=False), "items": Field("dict", required=False)}
STAGE = {"seconds": Field("number", required=False, nullable=True), "training": Field("dict", required=False)}
RESULTS = {"run": Field("str"), "strategy": Field("str"), "order": Field("str-list"), "tokens": Field("dict"),
           "model": Field("str"), "parameters": Field("dict"), "summary": Field("dict"),
           "wall_seconds": Field("number"), "peak_rss_mb": Field("number", required=False),
           "config": Field("dict", required=False)}


def read_evals(path, what: str, remedy: str = "") -> dict:
    """A ``{risk: metrics}`` evaluation file, every risk's metrics checked."""
    return read_checked(path, METRICS, what, remedy, each=True)
