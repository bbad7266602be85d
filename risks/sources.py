"""Reading a user's prompt data: a file (.jsonl, .json, .csv, .parquet, .txt), a list of prompts, or a Hugging
Face ``datasets`` id (``owner/name`` or ``owner/name:split``; a local dataset folder works the same way).

Every problem a user can cause (no such file, unreadable format, no rows, no ``prompt`` column) is a
``ComposeError`` of one line naming the file and the problem.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from compose.errors import ComposeError

FORMATS = (".jsonl", ".json", ".csv", ".parquet", ".txt")


def read_rows(source) -> list[dict]:
    """The rows of ``source``: a path, a ``datasets`` id, or an in-memory list of prompts / row dicts."""
    if isinstance(source, (list, tuple)):
        rows = [r if isinstance(r, dict) else {"prompt": str(r)} for r in source]
        if not rows:
            raise ComposeError("the prompt list given as data is empty")
        return rows
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_dataset(str(path), "train")
    if path.exists():
        rows = _read_file(path)
    elif path.suffix.lower() in FORMATS or "/" not in source or source.startswith((".", "/", "~")):
        raise ComposeError(f"data file '{source}' does not exist")
    else:
        name, _, split = source.partition(":")
        rows = _read_dataset(name, split or "train")
    if not rows:
        raise ComposeError(f"data file '{source}' has no rows")
    return rows


def column(rows: list[dict], name: str, source: str) -> list[str]:
    """The non-empty string values of column ``name``; an error naming ``source`` when the column is missing."""
    if name not in rows[0]:
        cols = ", ".join(map(str, rows[0])) or "none"
        raise ComposeError(f"data file '{source}' has no '{name}' column (columns: {cols})")
    values = [str(r[name]).strip() for r in rows if r.get(name) is not None and str(r[name]).strip()]
    if not values:
        raise ComposeError(f"data file '{source}' has no non-empty '{name}' values")
    return values


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet, ".txt": _txt}
    if suffix not in readers:
        raise ComposeError(f"data file '{path}' has unsupported format '{suffix or path.name}'; "
                           f"use {', '.join(FORMATS)} or a Hugging Face dataset id")
    try:
        return readers[suffix](path)
    except ComposeError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ComposeError(f"data file '{path}' is not readable as {suffix[1:]}: {first}") from exc


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ComposeError(f"data file '{path}' line {i} is not valid JSON: {exc.msg}") from exc
        rows.append(_as_row(row, path, f"line {i}"))
    return rows


def _json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ComposeError(f"data file '{path}' is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(data, list):
        raise ComposeError(f"data file '{path}' must hold a JSON list of rows or prompts")
    return [_as_row(r, path, f"item {i}") for i, r in enumerate(data)]


def _as_row(row, path: Path, where: str) -> dict:
    if isinstance(row, str):
        return {"prompt": row}
    if not isinstance(row, dict):
        raise ComposeError(f"data file '{path}' {where} is not an object with a 'prompt' field")
    return row


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise ComposeError(f"data file '{path}' is not a readable parquet file: {str(exc).splitlines()[0]}") from exc


def _txt(path: Path) -> list[dict]:
    return [{"prompt": line.strip()} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_dataset(name: str, split: str) -> list[dict]:
    """Rows of a Hugging Face dataset (hub id or local folder) split, through the ``datasets`` library."""
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types (network, missing split, bad files)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ComposeError(f"cannot load Hugging Face dataset '{name}' (split '{split}'): {first}") from exc
    return ds.to_list()
