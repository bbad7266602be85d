"""Replay: a buffer of earlier risks' training examples mixed into each later stage (sequential-replay, stacked).

``Replay`` is the piece the stage loop (``compose.strategy``) uses for any strategy whose options have a
``replay`` share (``ReplayOptions``: a strategy with replay declares ``Options = ReplayOptions``);
``ReplayBuffer`` is the buffer itself.

The buffer keeps, per risk, the SFT examples and DPO preference pairs that risk was trained on. ``mix``
adds a reproducible sample of them to a new stage's data so that the replayed items make up about
``share`` of the result, balanced across the earlier risks; every replayed item carries ``replay_of: <risk>``.
SFT examples and pairs are mixed separately, each to the same share. The buffer is saved in the run folder
as JSON (atomically), so a resumed run replays exactly the same items.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from compose.errors import ComposeError
from compose.io import atomic_write_json

KINDS = ("sft", "pairs")
DEFAULT_SHARE = 0.25
FORMAT = 1


def _check_share(share) -> float:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
        raise ValueError(f"replay share must be a number in [0, 1), got {share!r}")
    return float(share)


def replay_count(n_current: int, share: float) -> int:
    """Items to add to ``n_current`` new ones so that they are ``share`` of the total: round(n * s / (1 - s))."""
    return int(round(n_current * _check_share(share) / (1.0 - share)))


def _quotas(total: int, available: dict[str, int]) -> dict[str, int]:
    """Split ``total`` as evenly as possible over risks (earlier risks get the remainder), capped by what each has."""
    quotas = {r: 0 for r in available}
    left = min(total, sum(available.values()))
    while left > 0:
        open_risks = [r for r in available if quotas[r] < available[r]]
        even, extra = divmod(left, len(open_risks))
        for i, r in enumerate(open_risks):
            take = min(even + (i < extra), available[r] - quotas[r])
            quotas[r] += take
            left -= take
    return quotas


class ReplayBuffer:
    """Training examples of the risks trained so far, in training order.

    ``add`` stores a risk's examples (adding a risk again replaces them, so a resumed stage is idempotent);
    ``len(buffer)`` counts all stored items (SFT examples + pairs); ``risks`` lists the stored risks in order.
    """

    def __init__(self):
        self._items: dict[str, dict[str, list[dict]]] = {}

    def add(self, risk: str, sft: list[dict], pairs: list[dict]) -> None:
        """Store ``risk``'s SFT examples and preference pairs (copied; an earlier entry for ``risk`` is replaced)."""
        if not isinstance(risk, str) or not risk:
            raise ValueError(f"risk must be a non-empty name, got {risk!r}")
        for kind, items in (("sft", sft), ("pairs", pairs)):
            if not all(isinstance(item, dict) for item in items):
                raise ValueError(f"{kind} examples of {risk!r} must be dicts")
        self._items.pop(risk, None)  # re-adding moves the risk to the end: the order is the training order
        self._items[risk] = {"sft": [dict(x) for x in sft], "pairs": [dict(x) for x in pairs]}

    @property
    def risks(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return sum(len(v["sft"]) + len(v["pairs"]) for v in self._items.values())

    def items(self, risk: str, kind: str) -> list[dict]:
        """A copy of the stored ``kind`` ("sft" or "pairs") examples of ``risk``."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if risk not in self._items:
            raise KeyError(f"no examples stored for risk {risk!r} (stored: {self.risks})")
        return [dict(x) for x in self._items[risk][kind]]

    def mix(self, sft: list[dict], pairs: list[dict], share: float = 0.25,
            seed: int = 0) -> tuple[list[dict], list[dict]]:
        """Return ``(sft_mixed, pairs_mixed)``: the new stage's data plus replayed items, shuffled reproducibly.

        For each kind, ``round(n * share / (1 - share))`` stored items are drawn without replacement (fewer when
        the buffer holds fewer), split evenly over the stored risks, and tagged ``replay_of``. The inputs are
        not modified. The same buffer, data, share and seed always give the same result.
        """
        share = _check_share(share)
        mixed = []
        for kind, current in (("sft", sft), ("pairs", pairs)):
            rng = random.Random(f"{seed}:{kind}")  # str seeds are hashed deterministically, unlike hash()
            available = {r: len(v[kind]) for r, v in self._items.items() if v[kind]}
            quotas = _quotas(replay_count(len(current), share), available) if available else {}
            replayed = []
            for risk, n in quotas.items():
                for item in rng.sample(self._items[risk][kind], n):
                    replayed.append({**item, "replay_of": risk})
            out = [dict(x) for x in current] + replayed
            if replayed:
                rng.shuffle(out)
            mixed.append(out)
        return mixed[0], mixed[1]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "risks": {r: {k: list(v[k]) for k in KINDS} for r, v in self._items.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> ReplayBuffer:
        buffer = cls()
        for risk, kinds in d["risks"].items():
            buffer.add(risk, kinds["sft"], kinds["pairs"])
        return buffer

    def save(self, path) -> Path:
        """Write JSON atomically (temp sibling, then rename)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> ReplayBuffer:
        """Read a buffer written by ``save``; a missing or malformed file is a ``ComposeError``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            return cls.from_dict(data)
        except FileNotFoundError:
            raise ComposeError(f"replay buffer '{path}' does not exist") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ComposeError(f"replay buffer '{path}' is malformed: {e}") from None


class Replay:
    """Replay in the stage loop: ``add`` each trained risk's data, ``mix`` a share of it into each later stage
    (seeded by the run seed plus the stage index, so a resumed run replays the same items), ``save`` the buffer
    into the run folder. A share of 0 turns all three into no-ops."""

    def __init__(self, share: float, seed: int = 0):
        self.share, self.seed = _check_share(share), seed
        self.buffer = ReplayBuffer()

    def mix(self, index: int, sft: list[dict], pairs: list[dict]) -> tuple[list[dict], list[dict]]:
        """Stage ``index``'s (0-based) data with the replayed items mixed in (unchanged while the buffer is empty)."""
        if self.share > 0 and len(self.buffer):
            return self.buffer.mix(sft, pairs, share=self.share, seed=self.seed + index)
        return sft, pairs

    @property
    def risks(self) -> list[str]:
        """The risks replayed so far, in training order (none without replay)."""
        return self.buffer.risks

    def add(self, risk: str, data) -> None:
        """Store ``data`` (``TrainingData``: ``sft`` and ``pairs``) of a trained risk."""
        if self.share > 0:
            self.buffer.add(risk, data.sft, data.pairs)

    def save(self, path) -> None:
        if self.share > 0:
            self.buffer.save(path)


@dataclass
class ReplayOptions:
    """The option of a strategy with replay (the run config's top-level ``replay``): the stage loop replays when
    a strategy's ``Options`` has it."""

    section: ClassVar[str | None] = None
    replay: float = field(default=DEFAULT_SHARE, metadata={"help": "share of each later stage's data replayed from "
                                                          "earlier risks, in [0, 1) (0: no replay)"})

    def __post_init__(self):
        if isinstance(self.replay, bool) or not isinstance(self.replay, (int, float)) or not 0 <= self.replay < 1:
            raise ComposeError(f"replay share must be in [0, 1), got {self.replay}")
        self.replay = float(self.replay)
