"""The risk plugin interface: a risk owns its prompts, its reference teacher and its metric.

A plugin subclasses ``Risk``, sets the metadata (``name``, ``aliases``, ``description``, ``metric``,
``init_text``, ...) and fills in three methods:

* ``load_prompts(split)``: the built-in prompts of a split (``train``, ``eval``, ``retain``, ``retain_eval``);
  a user's file or dataset replaces any split: ``Risk(data={"eval": "x.jsonl"})`` or ``risk.with_data(eval=...)``;
* ``make_teacher()``: the default ``Teacher`` producing the reference (safer) responses;
* ``score(prompts, responses)``: per-response safety in [0, 1], higher safer (used for best-of-N and pair
  filtering).

``evaluate(model, tokenizer, ...)`` has a generic default (greedy responses on the eval split; safety = 1 -
share of responses scored below 0.5); the built-in risks override it with their published metrics.
``retain_rejected`` may return the over-corrected answer to a benign prompt (e.g. a refusal), which the
training data turns into pairs that keep a patch from over-correcting.

Options (``Risk(**options)``; unknown names are an error) are the class's ``defaults`` merged over
``Risk.defaults``: generation length, samples per prompt for sampled metrics (greedy metrics ignore
``samples``), batch size, seed, and ``template``: how a data row's prompt becomes the user message
(e.g. ``"Continue the text: {prompt}"`` for continuation prefixes, since patches are trained in chat format).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from dataclasses import dataclass, field

import numpy as np

from compose.errors import ComposeError, suggest
from compose.generation import MAX_SEQUENCES, GenerationConfig, generate, perplexity_of, response_nll
from compose.stats import bootstrap_stat, interval_for
from risks.data import disjoint, hash_split, overlaps
from risks.sources import column, read_rows
from risks.teacher import Teacher, TeacherOutput  # TeacherOutput: re-exported with the risk interface
from risks.teachers import teacher_from_spec

SPLITS = ("train", "eval", "retain", "retain_eval")
POOL = "all"  # data key of a user's file for the whole risk: split into train / eval by hash
HOLDOUT = 0.5  # share of a pooled file that goes to eval
N_SAMPLES = 4  # (prompt, response, score) examples kept in a MetricResult for reports


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
    seconds: float = 0.0  # wall time of the evaluation
    # per-prompt values of ``safety`` and of each raw figure (one list per figure, in prompt order; a figure's
    # prompts may be a subset, e.g. over-refusal is measured on the benign prompts only): what intervals and
    # paired comparisons are computed from
    items: dict[str, list[float]] = field(default_factory=dict)
    # 95% interval and n of every figure with items: {"value", "ci_low", "ci_high", "n", "method"}
    intervals: dict[str, dict] = field(default_factory=dict)
    prompts_digest: str = ""  # hash of the evaluated prompts: paired comparisons need the same prompts
    revision: int = 1  # the risk's ``metric_revision`` it was computed under (an older one is evaluated again)

    KEYS = ("risk", "safety", "raw", "directions", "fluency", "samples", "definition", "seconds", "items",
            "intervals", "prompts_digest", "revision")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.KEYS}

    @classmethod
    def from_dict(cls, d: dict) -> MetricResult:
        return cls(**{k: d[k] for k in cls.KEYS if k in d})

    def compute_intervals(self) -> MetricResult:
        """Fill ``intervals`` from ``items``: Wilson for 0/1 verdicts, a bootstrap over prompts otherwise."""
        self.intervals = {name: interval_for(values).to_dict() for name, values in self.items.items()}
        return self


@contextlib.contextmanager
def unpatched(model):
    """``model`` with its PEFT adapter (the patch) disabled; a plain model is yielded as is."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


class Risk:
    """Base class of risk plugins. Class attributes are the metadata shown by ``compose risks``."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    metric: str = "unsafe rate: share of greedy responses scored below 0.5 by score(); safety = 1 - unsafe rate"
    init_text: str = "Generate safe responses."
    default_tokens: int = 50
    # raised whenever ``evaluate`` changes what it measures (a new figure, a changed definition): stored evaluations
    # of an earlier revision (the cached base model's, a finished stage's) are then evaluated again
    metric_revision: int = 1
    after: tuple[str, ...] = ()  # train / stack after these risks
    requires: tuple[str, ...] = ()  # these must be present in the composed patch
    conflicts: tuple[str, ...] = ()  # must not be composed with these
    chat: bool = True  # prompts are wrapped in the chat template
    defaults: dict = {"max_new_tokens": 48, "samples": 2, "temperature": 1.0, "top_p": 1.0, "batch_size": 32,
                      "seed": 0, "template": "{prompt}"}

    def __init__(self, data: dict | None = None, teacher: Teacher | str | None = None, **options):
        valid = {}
        for cls in reversed(type(self).__mro__):  # defaults of every class in the hierarchy, subclasses last
            valid.update(cls.__dict__.get("defaults", {}))
        for key in options:
            if key not in valid:
                raise ComposeError(f"unknown option '{key}' for risk '{self.name}'{suggest(key, valid)}; "
                                   f"valid: {', '.join(sorted(valid))}")
        self.options = {**valid, **{k: v for k, v in options.items() if v is not None}}
        if "{prompt}" not in str(self.options["template"]):
            raise ComposeError(f"option 'template' of risk '{self.name}' must contain '{{prompt}}', "
                               f"got {self.options['template']!r}")
        self.data_sources = {}
        for split, source in (data or {}).items():
            self.data_sources[split if split == POOL else self._check_split(split)] = source
        if isinstance(teacher, str):
            teacher = teacher_from_spec(teacher)
        self._teacher = teacher
        self._cache: dict[str, list[str] | None] = {}
        self.removed_overlaps: list[tuple[str, str, str, str]] = []  # cross-split duplicates dropped from user data
        self.raw_splits: dict[str, list[str]] = {}  # the splits' prompts before the template (filled on first use)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, data={self.data_sources!r})"

    def _check_split(self, split: str) -> str:
        if split not in SPLITS:
            raise ComposeError(f"unknown split '{split}' for risk '{self.name}'{suggest(split, SPLITS)}; "
                               f"valid: {', '.join(SPLITS)}")
        return split

    # -- data --------------------------------------------------------------------------------------------
    def load_prompts(self, split: str) -> list[str]:
        """The built-in prompts of ``split`` (a plugin must override this or get every split from ``data``)."""
        raise NotImplementedError

    def prompts_from_rows(self, rows: list[dict], source: str) -> list[str]:
        """Prompts from the rows of a user's file; the default reads the ``prompt`` column."""
        return column(rows, "prompt", source)

    def prompts(self, split: str, limit: int | None = None) -> list[str]:
        """The prompts of ``split`` (the user's data where given, else the built-in set), the first ``limit``."""
        self._check_split(split)
        if not self._cache:
            self._cache = self._load_splits()
        if self._cache.get(split) is None:
            raise ComposeError(f"risk '{self.name}' has no built-in '{split}' prompts; give a file with "
                               f"--data {self.name}:{split}=PATH")
        prompts = self._cache[split]
        return prompts[:limit] if limit is not None else list(prompts)

    def _load_splits(self) -> dict[str, list[str] | None]:
        """Every split's prompts, templated: a user's file for a split replaces it; a file given for the whole
        risk (``POOL``) is split into train and eval by a stable hash of each prompt (``HOLDOUT`` of it to eval);
        other splits are built in (None where the plugin has none). Exact and near duplicates across splits are
        then removed (from train first, from eval never; ``risks.data.disjoint``)."""
        raw: dict[str, list[str]] = {}
        pooled = None
        if POOL in self.data_sources:
            pooled = hash_split(self._read(self.data_sources[POOL]), {"train": 1 - HOLDOUT, "eval": HOLDOUT},
                                seed=self.name)
        for split in SPLITS:
            if split in self.data_sources:
                raw[split] = self._read(self.data_sources[split])
            elif pooled is not None and split in pooled:
                raw[split] = pooled[split]
            else:
                try:
                    raw[split] = list(self.load_prompts(split))
                except NotImplementedError:
                    continue
        if self.data_sources:  # the built-in sets are disjoint already
            self.removed_overlaps = overlaps(raw)
            raw = disjoint(raw)
        self.raw_splits = raw
        template = self.options["template"]
        return {split: [template.replace("{prompt}", p) for p in raw[split]] if split in raw else None
                for split in SPLITS}

    def _read(self, source) -> list[str]:
        return self.prompts_from_rows(read_rows(source), str(source))

    def with_data(self, **splits) -> Risk:
        """A copy of this risk whose named splits come from the given files, dataset ids or prompt lists."""
        other = copy.copy(self)
        other.data_sources = {**self.data_sources,
                              **{k if k == POOL else self._check_split(k): v for k, v in splits.items()}}
        other._cache = {}
        return other

    def data_sizes(self) -> dict[str, int]:
        """Number of prompts in every split (0 where a split has none)."""
        sizes = {}
        for split in SPLITS:
            try:
                sizes[split] = len(self.prompts(split))
            except ComposeError:
                sizes[split] = 0
        return sizes

    def untemplated(self, prompt: str) -> str:
        """The data row's prompt inside a templated one (``template``'s text around ``{prompt}`` removed; a prompt
        that the template did not make is returned as it is)."""
        before, _, after = str(self.options["template"]).partition("{prompt}")
        if prompt.startswith(before) and prompt.endswith(after) and len(prompt) >= len(before) + len(after):
            return prompt[len(before):len(prompt) - len(after)]
        return prompt

    # -- teacher -----------------------------------------------------------------------------------------
    def make_teacher(self) -> Teacher:
        raise NotImplementedError

    @property
    def teacher(self) -> Teacher:
        if self._teacher is None:
            self._teacher = self.make_teacher()
        return self._teacher

    def retain_rejected(self, prompts: list[str], responses: list[str]) -> list[str | None]:
        """The over-corrected answer to each benign retain prompt, given the base model's answer (None: unknown)."""
        return [None] * len(prompts)

    def balance_tokens(self, tokenizer) -> tuple[list[int], list[int]] | None:
        """Two sets of token ids whose probability a patch should keep equal while it answers this risk's prompts
        (the equalizing loss of ``TrainConfig.balance_weight``; e.g. male and female words), or None."""
        return None

    # -- generation --------------------------------------------------------------------------------------
    def generation_config(self, samples: int = 1, **overrides):
        """A ``GenerationConfig`` from this risk's options (greedy unless ``samples`` > 1 or overridden)."""
        o = self.options
        sampled = samples > 1
        cfg = dict(max_new_tokens=o["max_new_tokens"], samples=samples, batch_size=o["batch_size"], seed=o["seed"],
                   temperature=o["temperature"] if sampled else 1.0, top_p=o["top_p"] if sampled else 1.0)
        cfg.update(overrides)
        return GenerationConfig(**cfg)

    def generate(self, model, tokenizer, prompts: list[str], samples: int = 1, desc: str | None = None,
                 **overrides) -> list[list[str]]:
        """``samples`` responses per prompt from ``model`` (batched), formatted as this risk's prompts are."""
        cfg = self.generation_config(samples, **overrides)
        return generate(model, tokenizer, prompts, cfg, chat=self.chat, desc=desc or f"{self.name}: generating")

    def respond(self, model, tokenizer, prompts: list[str], desc: str | None = None) -> list[str]:
        """One greedy response per prompt."""
        return [r[0] for r in self.generate(model, tokenizer, prompts, 1, desc)]

    # -- metric ------------------------------------------------------------------------------------------
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        raise NotImplementedError

    def evaluate(self, model, tokenizer, split: str = "eval", limit: int | None = None) -> MetricResult:
        """Generic metric: unsafe rate = share of greedy responses with ``score`` < 0.5; safety = 1 - unsafe rate."""
        prompts = self.prompts(split, limit)
        responses = self.respond(model, tokenizer, prompts, desc=f"{self.name}: evaluating")
        scores = self.score(prompts, responses)
        unsafe = [float(s < 0.5) for s in scores]
        return self.result(1.0 - _mean(unsafe), {"unsafe_rate": _mean(unsafe), "mean_score": _mean(scores)},
                           {"unsafe_rate": "lower", "mean_score": "higher"}, model, tokenizer, prompts, responses,
                           scores, definition=self.metric,
                           items={"safety": [1.0 - u for u in unsafe], "unsafe_rate": unsafe, "mean_score": scores},
                           evaluated=prompts)

    def result(self, safety: float, raw: dict, directions: dict, model, tokenizer, prompts: list[str],
               responses: list[str], scores: list[float], definition: str = "", items: dict | None = None,
               evaluated: list[str] | None = None) -> MetricResult:
        """A ``MetricResult`` with fluency (perplexity of ``responses`` under the unpatched model), examples, and
        95% intervals of every figure in ``items`` (per-prompt values; perplexity's are added here).
        ``evaluated`` are the distinct prompts the metric was computed on (their hash pairs comparisons)."""
        with unpatched(model) as base:
            nll = response_nll(base, tokenizer, prompts, responses, batch_size=MAX_SEQUENCES,
                               chat=self.chat, desc=f"{self.name}: perplexity")
        ppl = perplexity_of(nll)
        examples = [{"prompt": p, "response": r, "score": s} for p, r, s in zip(prompts, responses, scores)]
        result = MetricResult(self.name, float(min(1.0, max(0.0, safety))), {k: float(v) for k, v in raw.items()},
                              directions, {"perplexity": ppl}, examples[:N_SAMPLES], definition or self.metric,
                              items={k: [float(x) for x in v] for k, v in (items or {}).items()})
        result.compute_intervals()
        if nll and sum(c for _, c in nll):
            ci = bootstrap_stat([[n for n, _ in nll], [c for _, c in nll]],
                                lambda n, c: float(np.exp(n.sum() / max(c.sum(), 1))))
            result.intervals["perplexity"] = {**ci.to_dict(), "value": ppl}
        digest = hashlib.sha256("\n".join(evaluated if evaluated is not None else prompts).encode()).hexdigest()
        result.prompts_digest = digest[:16]
        return result

    # -- metadata ----------------------------------------------------------------------------------------
    def info(self) -> dict:
        """What ``compose risks`` shows about this risk."""
        return {"name": self.name, "aliases": list(self.aliases), "description": self.description,
                "data": self.data_sizes(), "teacher": self.teacher.describe(), "metric": self.metric,
                "init_text": self.init_text, "default_tokens": self.default_tokens, "options": dict(self.options),
                "after": list(self.after),
                "requires": list(self.requires), "conflicts": list(self.conflicts)}


def missing_parts(cls) -> list[str]:
    """What a risk class lacks to satisfy the interface (empty when it is complete)."""
    missing = []
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        missing.append("a 'name'")
    if not isinstance(getattr(cls, "aliases", ()), (tuple, list)) or \
            not all(isinstance(a, str) for a in cls.aliases):
        missing.append("'aliases' as a tuple of strings")
    if not isinstance(getattr(cls, "default_tokens", None), int) or cls.default_tokens < 1:
        missing.append("'default_tokens' as a positive integer")
    for method in ("load_prompts", "make_teacher", "score"):
        if getattr(cls, method, None) is getattr(Risk, method):
            missing.append(f"{method}()")
    return missing


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0
