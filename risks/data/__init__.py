"""Built-in prompt sets, written by this project (templated; no third-party sentences).

Each module exposes ``SPLITS``: split name -> list of prompts (``train``, ``eval``, ``retain``, ``retain_eval``),
built deterministically, with no prompt in two splits. Real benchmark sets are not copied here; they are
read from ../shared/data by the benchmark scripts.
"""

from __future__ import annotations

import random


def fill(templates: list[str], **slots: list[str]) -> list[str]:
    """Every template filled with every combination of the slot values it uses (order kept, duplicates dropped)."""
    out: list[str] = []
    for template in templates:
        rows = [{}]
        for key, values in slots.items():
            if "{" + key + "}" in template:
                rows = [{**r, key: v} for r in rows for v in values]
        out.extend(template.format(**r) for r in rows)
    return list(dict.fromkeys(out))


def a(word: str) -> str:
    """``word`` with its indefinite article: 'an engineer', 'a nurse'."""
    return ("an " if word[0].lower() in "aeio" else "a ") + word


def split(prompts: list[str], sizes: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Shuffle ``prompts`` (seeded) and cut consecutive, disjoint splits of the given sizes (-1: the rest)."""
    pool = list(dict.fromkeys(prompts))
    random.Random(seed).shuffle(pool)
    out, start = {}, 0
    for name, size in sizes.items():
        end = len(pool) if size < 0 else start + size
        if end > len(pool):
            raise ValueError(f"split '{name}' wants {size} prompts, only {len(pool) - start} left")
        out[name] = pool[start:end]
        start = end
    return out


def sample(prompts: list[str], n: int, seed: int) -> list[str]:
    """``n`` prompts drawn without replacement (seeded), in a stable shuffled order."""
    pool = list(dict.fromkeys(prompts))
    random.Random(seed).shuffle(pool)
    return pool[:n]
