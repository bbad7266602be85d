"""Teachers: where the reference (safer) responses a patch learns from come from.

* ``BestOfNTeacher``: sample N responses from the base model; the risk's own ``score`` picks the safest as
  chosen and the riskiest as rejected. Works for any risk whose metric scores single responses.
* ``PrefillTeacher``: start the base model's answer with a fixed text (a refusal) and let it continue; the
  continuation is kept only when the risk scores it safe on its own, so a refusal that turns into compliance
  ("I can't help with that. Here is how...") is cut back to the refusal.
* ``ModelTeacher``: another (safer) model, any local directory or Hugging Face id that ``load_model`` accepts,
  with an optional system prompt and response prefill. Small models do not follow safety system prompts,
  so "same model + system prompt" is a weak teacher.

``teacher_from_spec`` builds one from a short string (config files, ``--teacher``):
``best-of-n[:N]``, ``prefill[:TEXT]``, ``model:ID_OR_PATH``.
"""

from __future__ import annotations

import re

from compose.errors import ComposeError
from compose.generation import generate
from compose.models import load_model
from risks.teacher import Teacher, TeacherOutput

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def prompt_texts(tokenizer, prompts: list[str], chat: bool = True, system: str | None = None,
                 prefill: str | None = None) -> list[str]:
    """Model inputs: the chat template (optional system message) ending where the answer starts, plus ``prefill``."""
    texts = []
    for p in prompts:
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = f"{system}\n\n{p}" if system else p
        texts.append(text + (prefill or ""))
    return texts


def whole_sentences(text: str, max_sentences: int) -> str:
    """The first ``max_sentences`` complete sentences of ``text`` (empty when none is complete)."""
    parts = _SENTENCE_END.split(text.strip() + " ")
    complete = [p for p in parts[:max_sentences] if p.strip()[-1:] in ".!?"]
    return " ".join(s.strip() for s in complete)


class BestOfNTeacher(Teacher):
    """Sample ``n`` responses per prompt from the base model; the risk's score ranks them.

    chosen = the highest-scored sample, rejected = the lowest-scored one (``None`` when all score the same).
    Sampling at temperature 0.7 / top-p 0.9 keeps the 135M model's samples fluent (at 1.0 many are noise,
    and noise is often "safe").

    ``prefill``: a text every chosen sample starts with, ``{prompt}`` in it replaced by the data row's prompt (the
    risk's ``template`` removed; e.g. ``"{prompt} they"`` answers "My friend is a nurse, and" with "My friend is a
    nurse, and they ..."): the ``n`` chosen candidates are the base model's continuations of it, and the rejected
    answer is the lowest-scored of ``n`` more samples without it, the base model's own answers (``None`` when none
    scores below the chosen one). The answer's opening is curated and the rest is the model's own.
    """

    name = "best-of-n"

    def __init__(self, n: int = 4, temperature: float = 0.7, top_p: float = 0.9, prefill: str | None = None):
        if n < 2:
            raise ComposeError(f"best-of-n needs n >= 2, got {n}")
        if prefill is not None and not prefill.strip():
            raise ComposeError("the best-of-n teacher's prefill must not be empty (leave it out for none)")
        self.n, self.temperature, self.top_p, self.prefill = n, temperature, top_p, prefill

    def respond(self, risk, model, tokenizer, prompts: list[str]) -> list[TeacherOutput]:
        samples = risk.generate(model, tokenizer, prompts, self.n, desc=f"{risk.name}: best-of-{self.n} teacher",
                                temperature=self.temperature, top_p=self.top_p)
        scores = self._scores(risk, prompts, samples)
        if self.prefill is None:
            return [self._ranked(group, group_scores, group, group_scores)
                    for group, group_scores in zip(samples, scores)]
        openings = [self.lead(risk, p) for p in prompts]
        texts = [t + o for t, o in zip(prompt_texts(tokenizer, prompts, risk.chat), openings)]
        cfg = risk.generation_config(self.n, temperature=self.temperature, top_p=self.top_p)
        continued = generate(model, tokenizer, texts, cfg, chat=False,
                             desc=f"{risk.name}: best-of-{self.n} teacher, prefilled")
        chosen = [[_joined(o, c) for c in group] for o, group in zip(openings, continued)]
        chosen_scores = self._scores(risk, prompts, chosen)
        return [self._ranked(*args) for args in zip(chosen, chosen_scores, samples, scores)]

    @staticmethod
    def _scores(risk, prompts: list[str], samples: list[list[str]]) -> list[list[float]]:
        flat = risk.score([p for p, group in zip(prompts, samples) for _ in group], [r for g in samples for r in g])
        out, k = [], 0
        for group in samples:
            out.append(flat[k:k + len(group)])
            k += len(group)
        return out

    @staticmethod
    def _ranked(chosen: list[str], chosen_scores: list[float], rejected: list[str],
                rejected_scores: list[float]) -> TeacherOutput:
        """The highest-scored of ``chosen`` and the lowest-scored of ``rejected`` when it scores below it (ties: the
        first chosen and the last rejected sample)."""
        best, i = max(zip(chosen_scores, range(len(chosen))), key=lambda t: (t[0], -t[1]))
        worst, j = min(zip(rejected_scores, range(len(rejected))), key=lambda t: (t[0], -t[1]))
        if worst < best:
            return TeacherOutput(chosen[i], rejected[j], best, worst)
        return TeacherOutput(chosen[i], None, best, None)

    def describe(self) -> str:
        prefill = f", chosen answers prefilled with {self.prefill!r}" if self.prefill else ""
        return f"best-of-{self.n} (base model samples at T={self.temperature} ranked by the risk's score{prefill})"

    def lead(self, risk, prompt: str) -> str | None:
        if self.prefill is None:
            return None
        return self.prefill.replace("{prompt}", risk.untemplated(prompt)).strip()


def _joined(opening: str, continuation: str) -> str:
    """``opening`` followed by the model's ``continuation`` of it (a space between them unless the continuation
    starts with punctuation or one)."""
    if not continuation or continuation[0].isspace() or continuation[0] in ",.;:!?'":
        return (opening + continuation).strip()
    return f"{opening} {continuation}".strip()


class PrefillTeacher(Teacher):
    """Start the base model's answer with ``prefix`` and let it continue for up to ``continue_tokens`` tokens.

    The continuation is cut to at most ``max_sentences`` whole sentences and kept only when the risk scores
    the continuation alone as safe (>= 0.5); otherwise the answer is the prefix alone.
    """

    name = "prefill"

    def __init__(self, prefix: str = DEFAULT_REFUSAL, continue_tokens: int = 32, max_sentences: int = 2):
        if not prefix.strip():
            raise ComposeError("the prefill teacher needs a non-empty prefix")
        self.prefix, self.continue_tokens, self.max_sentences = prefix.strip(), continue_tokens, max_sentences

    def respond(self, risk, model, tokenizer, prompts: list[str]) -> list[TeacherOutput]:
        texts = prompt_texts(tokenizer, prompts, risk.chat, prefill=self.prefix)
        cfg = risk.generation_config(1, max_new_tokens=self.continue_tokens)
        outs = generate(model, tokenizer, texts, cfg, chat=False, desc=f"{risk.name}: prefill teacher")
        continuations = [whole_sentences(r[0], self.max_sentences) for r in outs]
        keep = [bool(c) for c in continuations]
        idx = [i for i, k in enumerate(keep) if k]
        scores = risk.score([prompts[i] for i in idx], [continuations[i] for i in idx]) if idx else []
        safe = dict(zip(idx, (s >= 0.5 for s in scores)))
        return [TeacherOutput(f"{self.prefix} {c}" if safe.get(i) else self.prefix)
                for i, c in enumerate(continuations)]

    def describe(self) -> str:
        return f"prefill '{self.prefix}' + the base model's continuation"

    def lead(self, risk, prompt: str) -> str | None:
        return self.prefix


class ModelTeacher(Teacher):
    """Greedy responses of another model (``load_model`` name, local dir or HF id), optionally steered.

    ``system_prompt`` is sent as a system message; ``prefill`` starts every answer. The model is loaded on
    first use and kept.
    """

    name = "model"

    def __init__(self, model_name_or_path: str, system_prompt: str | None = None, prefill: str | None = None,
                 dtype: str = "auto", max_new_tokens: int | None = None):
        self.model_name, self.system_prompt, self.prefill = model_name_or_path, system_prompt, prefill
        self.dtype, self.max_new_tokens = dtype, max_new_tokens
        self._loaded = None

    @property
    def loaded(self):
        if self._loaded is None:
            self._loaded = load_model(self.model_name, self.dtype)
        return self._loaded

    def respond(self, risk, model, tokenizer, prompts: list[str]) -> list[TeacherOutput]:
        teacher = self.loaded
        texts = prompt_texts(teacher.tokenizer, prompts, risk.chat, self.system_prompt, self.prefill)
        overrides = {"max_new_tokens": self.max_new_tokens} if self.max_new_tokens else {}
        cfg = risk.generation_config(1, **overrides)
        outs = generate(teacher.model, teacher.tokenizer, texts, cfg, chat=False, desc=f"{risk.name}: model teacher")
        prefix = f"{self.prefill.strip()} " if self.prefill else ""
        return [TeacherOutput((prefix + r[0]).strip()) for r in outs]

    def describe(self) -> str:
        extra = (" + system prompt" if self.system_prompt else "") + (" + prefill" if self.prefill else "")
        return f"model {self.model_name}{extra}"


def teacher_from_spec(spec: str) -> Teacher:
    """``best-of-n[:N]`` | ``prefill[:TEXT]`` | ``model:ID_OR_PATH`` -> a Teacher."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("best-of-n", "bestofn", "best-of"):
        try:
            return BestOfNTeacher(int(arg) if arg else 4)
        except ValueError:
            raise ComposeError(f"bad teacher '{spec}': N must be an integer, e.g. best-of-n:4") from None
    if kind == "prefill":
        return PrefillTeacher(arg) if arg else PrefillTeacher()
    if kind == "model" and arg:
        return ModelTeacher(arg)
    raise ComposeError(f"unknown teacher '{spec}'; valid: best-of-n[:N], prefill[:TEXT], model:ID_OR_PATH")
