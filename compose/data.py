"""Training data of one risk's patch, built from the frozen base model and the risk's teacher.

Risk prompts (``train`` split):
  * SFT: the teacher's response as the target, when the risk scores it acceptable (>= ``min_chosen_safety``);
  * DPO: chosen = the teacher's response, rejected = the teacher's own worse response (best-of-N) or else the
    base model's greedy response; both scored by ``risk.score`` and filtered by ``compose.train.filter_pairs``
    (chosen safe enough on its own AND safer than rejected by ``margin``).
Retain prompts (benign, ``retain`` split):
  * SFT: the base model's own greedy answer (the patch must not change it);
  * DPO, where the risk knows the over-corrected answer (``risk.retain_rejected``, e.g. a refusal for harm):
    chosen = the base answer, rejected = the over-corrected one. This keeps a refusal patch from refusing
    everything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from compose.io import atomic_write_json
from compose.schema import Field, read_checked
from compose.stats import paired_bootstrap
from compose.train import filter_pairs


@dataclass
class TrainingData:
    """SFT examples {prompt, completion, source} and DPO pairs {prompt, chosen, rejected, chosen_safety,
    rejected_safety, source} of one risk; ``source`` is "risk" or "retain"."""

    risk: str
    sft: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"risk": self.risk, "sft": self.sft, "pairs": self.pairs, "stats": self.stats}

    def save(self, path) -> Path:
        """Write as JSON atomically (a temporary sibling renamed into place)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> TrainingData:
        remedy = "delete it to build the data again"
        d = read_checked(path, {"risk": Field("str"), "sft": Field("list"), "pairs": Field("list"),
                                "stats": Field("dict", required=False)}, "training data", remedy)
        return cls(d["risk"], d["sft"], d["pairs"], dict(d.get("stats", {})))

    def summary(self) -> str:
        s = self.stats
        return (f"{self.risk}: {len(self.sft)} SFT examples ({s.get('sft_risk', 0)} risk, {s.get('sft_retain', 0)} "
                f"retain), {len(self.pairs)} pairs ({s.get('pairs_kept', 0)} risk, {s.get('pairs_retain', 0)} retain)")


def build_training_data(risk, model, tokenizer, split: str = "train", limit: int | None = None,
                        retain_limit: int | None = None, margin: float = 0.2, min_chosen_safety: float = 0.5,
                        desc: str | None = None) -> TrainingData:
    """Teacher responses, base responses and preference pairs for ``risk`` (a Risk).

    ``model`` is the frozen base model without a patch. ``limit`` / ``retain_limit`` cap the risk and retain
    prompts (the first ones of each split).
    """
    start = time.perf_counter()
    label = desc or f"{risk.name} data"
    prompts = risk.prompts(split, limit)
    retain = risk.prompts("retain", retain_limit) if retain_limit != 0 else []

    outputs = risk.teacher.respond(risk, model, tokenizer, prompts)
    if len(outputs) != len(prompts):
        raise RuntimeError(f"teacher {risk.teacher.describe()} returned {len(outputs)} responses "
                           f"for {len(prompts)} prompts")
    need_base = [i for i, o in enumerate(outputs) if o.rejected is None]
    base = risk.respond(model, tokenizer, [prompts[i] for i in need_base] + retain, desc=f"{label}: base answers")
    base_risk, base_retain = dict(zip(need_base, base[:len(need_base)])), base[len(need_base):]

    chosen = [o.chosen for o in outputs]
    rejected = [o.rejected if o.rejected is not None else base_risk[i] for i, o in enumerate(outputs)]
    chosen_safety = _scores(risk, prompts, chosen, [o.chosen_safety for o in outputs])
    rejected_safety = _scores(risk, prompts, rejected,
                              [o.rejected_safety if o.rejected is not None else None for o in outputs])

    sft = [{"prompt": p, "completion": c, "source": "risk"}
           for p, c, s in zip(prompts, chosen, chosen_safety) if c.strip() and s >= min_chosen_safety]
    candidates = [{"prompt": p, "chosen": c, "rejected": r, "chosen_safety": cs, "rejected_safety": rs,
                   "source": "risk"}
                  for p, c, r, cs, rs in zip(prompts, chosen, rejected, chosen_safety, rejected_safety)
                  if c.strip() and c.strip() != r.strip()]
    pairs, filter_stats = filter_pairs(candidates, margin, min_chosen_safety)

    retain_sft = [{"prompt": p, "completion": r, "source": "retain"} for p, r in zip(retain, base_retain) if r.strip()]
    over = risk.retain_rejected(retain, base_retain) if retain else []
    retain_pairs = [{"prompt": p, "chosen": r, "rejected": o, "source": "retain"}
                    for p, r, o in zip(retain, base_retain, over) if o and r.strip() and o.strip() != r.strip()]

    stats = {"prompts": len(prompts), "retain_prompts": len(retain), "sft_risk": len(sft),
             "sft_dropped_unsafe": len(prompts) - len(sft), "sft_retain": len(retain_sft),
             "pairs_candidates": len(candidates), "pairs_kept": len(pairs),
             "pairs_dropped_margin": filter_stats["dropped_margin"],
             "pairs_dropped_unsafe_chosen": filter_stats["dropped_unsafe_chosen"], "pairs_retain": len(retain_pairs),
             "mean_chosen_safety": _mean(chosen_safety), "mean_rejected_safety": _mean(rejected_safety),
             "teacher": risk.teacher.describe(), "margin": margin, "min_chosen_safety": min_chosen_safety,
             "seconds": time.perf_counter() - start}
    return TrainingData(risk.name, sft + retain_sft, pairs + retain_pairs, stats)


def _scores(risk, prompts: list[str], responses: list[str], known: list[float | None]) -> list[float]:
    """``known`` scores, with the missing ones computed by ``risk.score`` in one batch."""
    todo = [i for i, k in enumerate(known) if k is None]
    fresh = risk.score([prompts[i] for i in todo], [responses[i] for i in todo]) if todo else []
    out = list(known)
    for i, s in zip(todo, fresh):
        out[i] = s
    return [float(s) for s in out]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def teacher_gain(risk, model, tokenizer, split: str = "train", limit: int | None = 32):
    """How much safer the risk's teacher is than the base model, by the risk's own score, on the same prompts of
    ``split`` (the first ``limit``): the teacher's chosen responses against the base model's greedy ones.

    Returns a paired bootstrap ``Comparison`` (a = base model, b = teacher; diff > 0: the teacher is safer), the
    thing to check before training on a teacher: a patch cannot learn to be safer than the responses it imitates.
    """
    prompts = risk.prompts(split, limit)
    outputs = risk.teacher.respond(risk, model, tokenizer, prompts)
    base = risk.respond(model, tokenizer, prompts, desc=f"{risk.name}: base answers")
    teacher = _scores(risk, prompts, [o.chosen for o in outputs], [o.chosen_safety for o in outputs])
    return paired_bootstrap(risk.score(prompts, base), teacher, name=f"{risk.name}: teacher vs base model")
