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
    """

    name = "best-of-n"

    def __init__(self, n: int = 4, temperature: float = 0.7, top_p: float = 0.9):
        if n < 2:
            raise ComposeError(f"best-of-n needs n >= 2, got {n}")
        self.n, self.temperature, self.top_p = n, temperature, top_p

    def respond(self, risk, model, tokenizer, prompts: list[str]) -> list[TeacherOutput]:
        samples = risk.generate(model, tokenizer, prompts, self.n, desc=f"{risk.name}: best-of-{self.n} teacher",
                                temperature=self.temperature, top_p=self.top_p)
        flat_prompts = [p for p, s in zip(prompts, samples) for _ in s]
        scores = risk.score(flat_prompts, [r for s in samples for r in s])
        out, k = [], 0
        for group in samples:
            ranked = sorted(zip(scores[k:k + len(group)], range(len(group))), key=lambda t: (-t[0], t[1]))
            k += len(group)
            (best, i), (worst, j) = ranked[0], ranked[-1]
            if best > worst:
                out.append(TeacherOutput(group[i], group[j], best, worst))
            else:
                out.append(TeacherOutput(group[i], None, best, None))
        return out

    def describe(self) -> str:
        return f"best-of-{self.n} (base model samples at T={self.temperature} ranked by the risk's score)"


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
