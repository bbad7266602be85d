"""The risk plugin interface: a risk owns its prompts, its reference teacher and its metric.

A plugin subclasses ``Risk`` and fills in the metadata and three methods:

* ``load_prompts(split)``: the built-in prompts of a split (``train``, ``eval``, ``retain``, ``retain_eval``);
  a user's file or dataset replaces any split through ``Risk.with_data(split=path)``;
* ``make_teacher()``: the default ``Teacher`` producing the reference (safer) responses;
* ``score(prompts, responses)``: per-response safety in [0, 1], higher safer (used for pair filtering and
  best-of-N), and ``evaluate(model, tokenizer, ...)``: the risk's full metric as a ``MetricResult``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "eval", "retain", "retain_eval")


@dataclass
class MetricResult:
    """A risk's metric on one model: raw figures (with directions) and one safety score in [0, 1]."""

    risk: str
    safety: float
    raw: dict[str, float]
    directions: dict[str, str]  # raw figure -> "lower" or "higher" (which way is better)
    fluency: dict[str, float] = field(default_factory=dict)  # e.g. {"perplexity": ...} under the unpatched model
    samples: list[dict] = field(default_factory=list)  # a few (prompt, response, score) examples for reports
    definition: str = ""  # how ``safety`` and the raw figures are computed, in one or two sentences

    def to_dict(self) -> dict:
        return {"risk": self.risk, "safety": self.safety, "raw": self.raw, "directions": self.directions,
                "fluency": self.fluency, "samples": self.samples, "definition": self.definition}


@dataclass
class TeacherOutput:
    """The reference response for a prompt; ``rejected`` when the teacher also knows a worse one (best-of-N)."""

    chosen: str
    rejected: str | None = None


class Teacher:
    """Produces reference responses. ``model``/``tokenizer`` are the frozen base model (patch disabled)."""

    name = "teacher"

    def respond(self, risk: Risk, model, tokenizer, prompts: list[str]) -> list[TeacherOutput]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class Risk:
    """Base class of risk plugins. Class attributes are the metadata shown by ``compose risks``."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    init_text: str = "Generate safe responses."
    default_tokens: int = 50
    after: tuple[str, ...] = ()  # train / stack after these risks
    requires: tuple[str, ...] = ()  # these must be present in the composed patch
    conflicts: tuple[str, ...] = ()  # must not be composed with these
    chat: bool = True  # prompts are wrapped in the chat template

    def __init__(self, data: dict[str, str] | None = None, teacher: Teacher | None = None, **options):
        self.data_sources = dict(data or {})
        self._teacher = teacher
        self.options = options
        self._cache: dict[str, list[str]] = {}

    # -- data --------------------------------------------------------------------------------------------
    def load_prompts(self, split: str) -> list[str]:
        raise NotImplementedError

    def prompts(self, split: str, limit: int | None = None) -> list[str]:
        raise NotImplementedError

    # -- teacher -----------------------------------------------------------------------------------------
    def make_teacher(self) -> Teacher:
        raise NotImplementedError

    @property
    def teacher(self) -> Teacher:
        if self._teacher is None:
            self._teacher = self.make_teacher()
        return self._teacher

    # -- metric ------------------------------------------------------------------------------------------
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        raise NotImplementedError

    def evaluate(self, model, tokenizer, split: str = "eval", limit: int | None = None) -> MetricResult:
        raise NotImplementedError
