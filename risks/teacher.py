"""The teacher interface: what produces the reference (safer) responses a patch learns from.

It lives apart from ``risks.base`` (the risk interface) and from ``risks.teachers`` (the built-in teachers), so
that the arrows point one way: ``risks.base`` -> ``risks.teachers`` -> ``risks.teacher``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass
class TeacherOutput:
    """The reference response for a prompt; ``rejected`` when the teacher also knows a worse one (best-of-N).

    ``chosen_safety`` / ``rejected_safety`` are the risk's scores when the teacher already computed them.
    """

    chosen: str
    rejected: str | None = None
    chosen_safety: float | None = None
    rejected_safety: float | None = None


class Teacher(abc.ABC):
    """Produces reference responses. ``model``/``tokenizer`` are the frozen base model (patch disabled)."""

    name = "teacher"

    @abc.abstractmethod
    def respond(self, risk, model, tokenizer, prompts: list[str]) -> list[TeacherOutput]:
        """One ``TeacherOutput`` (reference response, optionally a worse one) per prompt for ``risk`` (a Risk)."""

    def describe(self) -> str:
        return self.name

    def lead(self, risk, prompt: str) -> str | None:
        """The opening this teacher writes itself at the start of its answer to ``prompt`` before the model
        continues it (a prefilled teacher's), or None: what ``TrainConfig.lead_weight`` weighs."""
        return None
