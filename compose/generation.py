"""Batched chat generation and perplexity, for any model (with or without a patch).

Prompts are sorted by length and generated in batches with left padding, so little compute goes to
padding; ``k`` samples per prompt come from one call (``num_return_sequences``). Results come back in
the caller's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class GenerationConfig:
    """How responses are generated: greedy by default; ``samples`` > 1 implies sampling."""

    max_new_tokens: int = 48
    samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16
    seed: int = 0

    @property
    def do_sample(self) -> bool:
        return self.samples > 1 or self.temperature != 1.0 or self.top_p != 1.0


def chat_texts(tokenizer, prompts: list[str], chat: bool = True) -> list[str]:
    """The model inputs: the chat template with a generation prompt, or the raw text when ``chat=False``."""
    if not chat:
        return list(prompts)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts]


def _length_order(tokenizer, texts: list[str]) -> list[int]:
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return sorted(range(len(texts)), key=lambda i: -lengths[i])


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], config: GenerationConfig | None = None, chat: bool = True,
             desc: str | None = None) -> list[list[str]]:
    """Generate ``config.samples`` responses for every prompt; returns one list of responses per prompt."""
    config = config or GenerationConfig()
    if not prompts:
        return []
    texts = chat_texts(tokenizer, prompts, chat)
    order = _length_order(tokenizer, texts)
    out: list[list[str]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        for b, idx in enumerate(tqdm(batches, desc=desc or "generating", unit="batch", leave=False,
                                     disable=len(batches) < 2)):
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            kwargs = dict(max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, num_return_sequences=config.samples)
            if config.do_sample:
                torch.manual_seed(config.seed * 100003 + b)
                kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            ids = model.generate(**enc, **kwargs)
            decoded = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = [d.strip() for d in decoded[j * config.samples:(j + 1) * config.samples]]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


@torch.no_grad()
def response_nll(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16,
                 chat: bool = True) -> tuple[float, int]:
    """Total negative log-likelihood of ``responses`` given ``prompts`` under ``model``, and the token count."""
    texts = chat_texts(tokenizer, prompts, chat)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        rows = []
        for p, r in zip(texts[start:start + batch_size], responses[start:start + batch_size]):
            p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
            r_ids = tokenizer(r, add_special_tokens=False)["input_ids"]
            if r_ids:
                rows.append((p_ids, r_ids))
        if not rows:
            continue
        width = max(len(p) + len(r) for p, r in rows)
        pad = tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            seq = p + r
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
            labels[i, len(p):len(seq)] = torch.tensor(r)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits = logits[:, -width:][:, :-1].float()
        target = labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                ignore_index=-100, reduction="sum")
        total += nll.item()
        count += int((target != -100).sum())
    return total, count


def perplexity(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16,
               chat: bool = True) -> float:
    """Perplexity of ``responses`` (given their prompts) under ``model``: exp(mean token NLL)."""
    total, count = response_nll(model, tokenizer, prompts, responses, batch_size, chat)
    return math.exp(total / count) if count else float("nan")
