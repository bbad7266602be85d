"""Built-in prompt sets, written by this project (templated; no third-party sentences).

Each module exposes ``SPLITS``: split name -> list of prompts:

* ``train``: prompts the patch is trained on;
* ``eval``: held-out prompts of the same risk, written apart from ``train`` (other acts, frames or targets), so
  the score measures generalisation to unseen requests rather than memorised surface forms;
* ``retain`` / ``retain_eval``: benign prompts whose answers the patch must not change (trained / measured).

Splits are deterministic and overlap-free: units (acts, frames, occupations) are assigned by a stable hash
(``hash_split``), and ``disjoint`` then removes any remaining exact or near duplicate across splits from the
less protected split (train first, never eval). Real benchmark sets are not copied here; they are read from
../shared/data by the benchmark scripts.

Near duplicates (``near_duplicate``): two prompts whose normalised texts (``normalise``: lowercase, apostrophes
dropped, other punctuation as spaces, articles a/an/the dropped) are equal, or whose token sets have a Jaccard
similarity >= threshold, or whose difflib ratio is >= threshold (default 0.9).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter, defaultdict
from difflib import SequenceMatcher

ARTICLES = frozenset({"a", "an", "the"})
PRIORITY = ("eval", "retain_eval", "retain", "train")  # who keeps a prompt two splits share: earlier wins
_APOSTROPHE = re.compile(r"['\u2019`]")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


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


# --- stable hashing, splits and near duplicates ----------------------------------------------------------------

def normalise(text: str) -> str:
    """Lowercase, apostrophes dropped, other punctuation as spaces, articles dropped, whitespace collapsed."""
    text = _PUNCTUATION.sub(" ", _APOSTROPHE.sub("", text.lower()))
    return " ".join(w for w in text.split() if w not in ARTICLES)


def _unit(normalised: str, seed: object) -> float:
    """A number in [0, 1) fixed by ``seed`` and the (normalised) text alone."""
    digest = hashlib.sha256(f"{seed}\x00{normalised}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _ranked(prompts: list[str], seed: object) -> list[tuple[float, str]]:
    """``(hash, prompt)`` sorted, one per normalised text (of duplicates the lexicographically smallest spelling)."""
    best: dict[str, str] = {}
    for p in prompts:
        key = normalise(p)
        best[key] = min(best.get(key, p), p)
    return sorted((_unit(key, seed), p) for key, p in best.items())


def stable_order(prompts: list[str], seed: object) -> list[str]:
    """``prompts`` without exact normalised duplicates, in an order fixed by each text's hash (not by the input
    order)."""
    return [p for _, p in _ranked(prompts, seed)]


def choose(values: list[str], k: int, key: str, seed: object = 0) -> list[str]:
    """``k`` of ``values`` picked by a stable hash of ``key`` and each value (independent of the list's order)."""
    return stable_order(values, f"{seed}\x00{normalise(key)}")[:k]


def hash_split(prompts: list[str], shares: dict[str, float], seed: object) -> dict[str, list[str]]:
    """Assign every prompt to a split by a stable hash of ``seed`` and its normalised text: a prompt's split does
    not depend on the other prompts or on their order. ``shares`` are relative weights (normalised to sum 1).
    Exact normalised duplicates fall in the same split and are kept once; each split is in ``stable_order``."""
    total = sum(shares.values())
    if not shares or total <= 0 or any(s < 0 for s in shares.values()):
        raise ValueError(f"shares must be non-negative with a positive sum, got {shares}")
    bounds, acc = [], 0.0
    for name, share in shares.items():
        acc += share / total
        bounds.append((acc, name))
    out: dict[str, list[str]] = {name: [] for name in shares}
    for u, p in _ranked(prompts, seed):
        out[next((name for bound, name in bounds if u < bound), bounds[-1][1])].append(p)
    return out


def _similar(na: str, nb: str, ta: set[str], tb: set[str], threshold: float,
             matcher: SequenceMatcher | None = None) -> bool:
    """``near_duplicate`` on normalised texts and their token sets (``matcher``: one whose second text is ``nb``)."""
    if na == nb:
        return True
    if ta and tb and len(ta & tb) >= threshold * len(ta | tb):
        return True
    if 2 * min(len(na), len(nb)) < threshold * (len(na) + len(nb)):  # the ratio's upper bound from the lengths
        return False
    if matcher is None:
        matcher = SequenceMatcher(None, na, nb, autojunk=False)
    else:
        matcher.set_seq1(na)
    return matcher.quick_ratio() >= threshold and matcher.ratio() >= threshold


def near_duplicate(a: str, b: str, threshold: float = 0.9) -> bool:
    """Whether ``a`` and ``b`` are the same prompt up to case, punctuation, articles or a small edit: normalised
    texts equal, token-set Jaccard >= ``threshold``, or difflib ratio of the normalised texts >= ``threshold``."""
    na, nb = normalise(a), normalise(b)
    return _similar(na, nb, set(na.split()), set(nb.split()), threshold)


def overlaps(splits: dict[str, list[str]], threshold: float = 0.9) -> list[tuple[str, str, str, str]]:
    """``(split_a, prompt_a, split_b, prompt_b)`` for every pair of prompts in different splits that are exact
    normalised or near duplicates. Candidates are pairs sharing one of the rarer tokens of either prompt (its
    rarest third, at least two), which every pair of realistic near duplicates does; only they are compared."""
    items = [(name, p, normalise(p)) for name, prompts in splits.items() for p in prompts]
    tokens = [set(n.split()) for _, _, n in items]
    freq = Counter(t for ts in tokens for t in ts)
    index: dict[str, list[int]] = defaultdict(list)
    exact: dict[str, list[int]] = defaultdict(list)
    for i, ts in enumerate(tokens):
        exact[items[i][2]].append(i)
        for t in ts:
            index[t].append(i)
    pairs: set[tuple[int, int]] = set()
    for group in exact.values():
        pairs.update((i, j) for i in group for j in group if i < j and items[i][0] != items[j][0])
    checked: set[tuple[int, int]] = set()
    for i, ts in enumerate(tokens):
        probe = sorted(ts, key=lambda t: (freq[t], t))[:max(2, math.ceil(len(ts) / 3))]
        matcher = SequenceMatcher(None, "", items[i][2], autojunk=False)  # the second text's index is built once
        for j in sorted({j for t in probe for j in index[t]}):
            pair = (min(i, j), max(i, j))
            if items[i][0] == items[j][0] or pair in checked or pair in pairs:
                continue
            checked.add(pair)
            if _similar(items[j][2], items[i][2], tokens[j], ts, threshold, matcher):
                pairs.add(pair)
    return [(items[i][0], items[i][1], items[j][0], items[j][1]) for i, j in sorted(pairs)]


def disjoint(splits: dict[str, list[str]], priority: tuple[str, ...] = PRIORITY,
             threshold: float = 0.9) -> dict[str, list[str]]:
    """``splits`` without cross-split duplicates (``overlaps``): of each pair, the prompt in the split that comes
    later in ``priority`` is removed (train first, eval never). Order within each split is kept."""
    rank = {name: priority.index(name) if name in priority else len(priority) for name in splits}
    drop: set[tuple[str, str]] = set()
    for sa, pa, sb, pb in overlaps(splits, threshold):
        drop.add((sb, pb) if rank[sb] >= rank[sa] else (sa, pa))
    return {name: [p for p in prompts if (name, p) not in drop] for name, prompts in splits.items()}
