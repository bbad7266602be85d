"""Batched chat generation and perplexity, for any model (with or without a patch).

Prompts are sorted by length and generated in batches with left padding, so little compute goes to
padding; ``k`` samples per prompt come from one batched call (at most ``MAX_SEQUENCES`` sequences per call,
which bounds memory). Results come back in the caller's order.

A patched model (PEFT prompt tuning) generates through a *cached patch prefix*: the patch's virtual tokens
are the same for every request and come first, so their keys/values in every layer are computed once per
patch (``PrefixCache``) and reused as ``past_key_values`` for every batch, instead of running the patch
through the model for every prompt. Positions follow the attention mask, so left padding does not shift
them: each prompt sees the patch exactly as when it is run alone.

This is the only generation path for a patched model. Its semantics are those of training: the patch is
prepended once to the whole sequence, and every new token is the argmax (or a sample) of the full forward pass
``model(prompt + generated so far)`` (``greedy_reference`` computes exactly that, slowly, as the test oracle).
PEFT's own ``generate`` for prompt tuning re-prepends the patch at every decoding step under transformers
>= 5.24 (it looks for ``past_key_values``, which generate now calls ``cache``), so it is never used here.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.generation import utils as _generation_utils

from compose import distributed
from compose.errors import ComposeError

log = logging.getLogger("compose.generation")


# the keyword under which generate takes a key/value cache: ``cache`` from transformers 5.24 (the old name is
# deprecated there), ``past_key_values`` before
CACHE_KWARG = "cache" if "cache" in getattr(_generation_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"
MAX_SEQUENCES = 32  # sequences per generate call: memory grows ~50 MB per sequence on the embedded model
MAX_SAMPLES = 64  # responses per prompt a user may ask for (compose generate --samples, a risk's samples option)
LONG_PROMPT_TOKENS = 1024  # a prompt this long (or half the context) is announced: it takes a while on a CPU


@dataclass
class GenerationConfig:
    """How responses are generated: greedy by default; ``samples`` > 1 implies sampling."""

    max_new_tokens: int = 48
    min_new_tokens: int = 0  # > 0 forces that many tokens (benchmarks: equal work in every variant)
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


def _lengths(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def context_length(model) -> int | None:
    """The most positions ``model`` (a base model or a PeftModel) was built for, or None when it does not say."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lengths(model, lengths: list[int], max_new_tokens: int) -> None:
    """Refuse a generation that cannot fit the model's context (patch + prompt + new tokens); warn about a very
    long prompt, which takes a while."""
    context = context_length(model)
    if context is None or not lengths:
        return
    patch = model.active_peft_config.num_virtual_tokens if is_patched(model) else 0
    longest = max(lengths)
    room = context - patch - longest
    used = f"the longest prompt takes {longest} tokens" + (f" and the patch {patch}" if patch else "")
    if room < 1:
        raise ComposeError(f"prompt of {longest} tokens is too long: the model's context is {context} tokens and "
                           f"{used}; shorten the prompt")
    if not 1 <= max_new_tokens <= room:
        raise ComposeError(f"max new tokens {max_new_tokens} does not fit: the model's context is {context} tokens "
                           f"and {used}; valid: 1 to {room}")
    if longest > min(LONG_PROMPT_TOKENS, context // 2):
        log.warning(f"warning: a prompt of {longest} tokens; generating for it may take a while")


def is_patched(model) -> bool:
    """True for a PEFT prompt-learning model whose patch is active (not inside ``disable_adapter()``)."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning and not getattr(model, "_adapters_disabled", False))


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` that writes each new position into room reserved ahead instead of concatenating the
    whole cache at every decoding step (that copy grows with every token; greedy generation ~9% faster). The keys and
    values it returns are views of the reserved buffer holding the same values, so attention computes the same
    numbers. Whatever replaces its tensors (batch repeat or select, reordering) is copied into a new buffer at the
    next update."""

    ROOM = 64  # positions reserved ahead; the buffer grows by this much again when they are used up

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self.get_seq_length(), key_states.shape[-2]
        room = getattr(self, "_room", None)
        if (room is None or n + m > room[0].shape[-2] or room[0].shape[:-2] != key_states.shape[:-2]
                or (n and self.keys.data_ptr() != room[0].data_ptr())):
            shape = (*key_states.shape[:-2], n + m + self.ROOM, key_states.shape[-1])
            room = (key_states.new_empty(shape), value_states.new_empty(shape))
            if n:
                room[0][..., :n, :] = self.keys
                room[1][..., :n, :] = self.values
            self._room = room
        room[0][..., n:n + m, :] = key_states
        room[1][..., n:n + m, :] = value_states
        self.keys, self.values = room[0][..., :n + m, :], room[1][..., :n + m, :]
        return self.keys, self.values


def reserved(cache):
    """``cache`` (a ``DynamicCache``) with its plain dynamic layers growing into reserved room (``ReservedLayer``)."""
    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layer.__class__ = ReservedLayer
    return cache


class PrefixCache:
    """Keys/values of a patch's virtual tokens in every layer, computed once and copied per batch."""

    def __init__(self, model):
        self.base = model.get_base_model()
        prompt = model.get_prompt(batch_size=1).to(self.base.get_input_embeddings().weight.dtype)
        self.length = prompt.shape[1]
        with torch.no_grad():
            self.cache = self.base(inputs_embeds=prompt, use_cache=True).past_key_values
        if self.cache is None:
            raise RuntimeError("the base model returned no key/value cache; it cannot use a cached patch prefix")

    def for_batch(self, batch_size: int):
        cache = copy.deepcopy(self.cache)
        if batch_size > 1:
            cache.batch_repeat_interleave(batch_size)
        return reserved(cache)

    def generate(self, input_ids, attention_mask, pad_token_id: int, **kwargs):
        """``base.generate`` after the cached patch; returns only the new tokens."""
        batch = input_ids.shape[0]
        dummy = torch.full((batch, self.length), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
        ids = torch.cat([dummy, input_ids], dim=1)  # placeholders for the cached positions (never embedded)
        mask = torch.cat([attention_mask.new_ones(batch, self.length), attention_mask], dim=1)
        kwargs[CACHE_KWARG] = self.for_batch(batch)
        out = self.base.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad_token_id, **kwargs)
        return out[:, ids.shape[1]:]


@torch.inference_mode()  # no autograd bookkeeping at all: the same outputs, a few % faster than no_grad on a CPU
def generate(model, tokenizer, prompts: list[str], config: GenerationConfig | None = None, chat: bool = True,
             desc: str | None = None) -> list[list[str]]:
    """Generate ``config.samples`` responses for every prompt; returns one list of responses per prompt.

    A patched model generates through its cached patch prefix (see the module's docstring).
    """
    config = config or GenerationConfig()
    if not prompts:
        return []
    texts = chat_texts(tokenizer, prompts, chat)
    lengths = _lengths(tokenizer, texts)
    check_lengths(model, lengths, config.max_new_tokens)
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out: list[list[str]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    prefix = PrefixCache(model) if is_patched(model) else None
    k = config.samples
    try:
        per_call = min(config.batch_size, max(1, MAX_SEQUENCES // k))  # k samples per prompt: fewer prompts
        batches = [order[i:i + per_call] for i in range(0, len(order), per_call)]
        mine = distributed.shard(len(batches))  # several processes: each its share, seeded by the global index
        for b in tqdm(mine, desc=desc or "generating", unit="batch", leave=False,
                      disable=len(mine) < 2 or not distributed.is_main()):
            idx = batches[b]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {key: v.to(device) for key, v in enc.items()}
            kwargs = dict(max_new_tokens=config.max_new_tokens, eos_token_id=tokenizer.eos_token_id)
            if config.min_new_tokens:
                kwargs["min_new_tokens"] = config.min_new_tokens
            if config.do_sample:
                torch.manual_seed(config.seed * 100003 + b)
                kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if prefix is not None:
                ids, mask = enc["input_ids"], enc["attention_mask"]
                if k > 1:  # k samples per prompt: expand the batch (the cache is expanded to match)
                    ids, mask = ids.repeat_interleave(k, dim=0), mask.repeat_interleave(k, dim=0)
                new = prefix.generate(ids, mask, tokenizer.pad_token_id, **kwargs)
            else:
                kwargs[CACHE_KWARG] = reserved(DynamicCache(config=model.config))
                ids = model.generate(**enc, **kwargs, pad_token_id=tokenizer.pad_token_id, num_return_sequences=k)
                new = ids[:, enc["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = [d.strip() for d in decoded[j * k:(j + 1) * k]]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return _gathered(out, [i for b in mine for i in batches[b]])


def _gathered(out: list, done: list[int]) -> list:
    """``out`` with the entries other processes computed filled in (``done``: those this one computed)."""
    if not distributed.active():
        return out
    for i, value in distributed.gather({i: out[i] for i in done}).items():
        out[i] = value
    return out


@torch.no_grad()
def greedy_reference(model, tokenizer, prompt: str, max_new_tokens: int, chat: bool = True) -> str:
    """Greedy decoding by definition: one full forward pass of ``model`` (patch included, prepended once) over the
    prompt and the tokens so far per new token, no cache, no padding. Slow; the oracle that ``generate`` must match."""
    ids = tokenizer(chat_texts(tokenizer, [prompt], chat)[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = ids.to(next(model.parameters()).device)
    start = ids.shape[1]
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        if tokenizer.eos_token_id is not None and token.item() == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()


@torch.no_grad()
def response_nll(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16,
                 chat: bool = True, desc: str | None = None) -> list[tuple[float, int]]:
    """(negative log-likelihood, token count) of each response given its prompt under ``model``, in order.

    An empty response is (0.0, 0). Batches are sorted by length (little padding); a bar shows progress on long sets.
    """
    texts = chat_texts(tokenizer, prompts, chat)
    device = next(model.parameters()).device
    pairs = [(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(r, add_special_tokens=False)["input_ids"])
             for p, r in zip(texts, responses)]
    order = sorted((i for i, (_, r) in enumerate(pairs) if r), key=lambda i: -sum(map(len, pairs[i])))
    out = [(0.0, 0)] * len(pairs)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mine = distributed.shard(len(batches))
    for b in tqdm(mine, desc=desc or "perplexity", unit="batch", leave=False,
                  disable=len(mine) < 4 or not distributed.is_main()):
        idx = batches[b]
        rows = [pairs[i] for i in idx]
        width = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        scored = torch.zeros((len(rows), width), dtype=torch.bool)  # positions whose next token is a response token
        for j, (p, r) in enumerate(rows):
            ids[j, :len(p) + len(r)] = torch.tensor(p + r)
            mask[j, :len(p) + len(r)] = 1
            scored[j, len(p) - 1:len(p) + len(r) - 1] = True
        target = ids[:, 1:][scored[:, :-1]].to(device)
        logits = _scored_logits(model, ids.to(device), mask.to(device), scored.to(device))
        nll = torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")
        for j, piece in zip(idx, nll.split([len(r) for _, r in rows])):
            out[j] = (float(piece.sum()), len(pairs[j][1]))
    return _gathered(out, [i for b in mine for i in batches[b]])


def _scored_logits(model, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Logits at the ``scored`` positions only, flattened row by row: (number scored, vocabulary).

    The vocabulary projection is most of a short sequence's cost, so it is asked for only where a response token is
    predicted (``logits_to_keep`` as a boolean mask). A patched model (virtual tokens shift every position) or a
    model without ``logits_to_keep`` computes all logits and is indexed afterwards: the same values.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes the keyword on
    if not is_patched(model) and "logits_to_keep" in inspect.signature(inner.forward).parameters:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=scored).logits
        return logits.reshape(-1, logits.shape[-1])
    logits = model(input_ids=ids, attention_mask=mask).logits
    return logits[:, -ids.shape[1]:][scored]


def perplexity_of(nll: list[tuple[float, int]]) -> float:
    """exp(total NLL / total tokens) of per-response (NLL, token count) pairs; nan when there are no tokens."""
    total, count = sum(n for n, _ in nll), sum(c for _, c in nll)
    return math.exp(total / count) if count else float("nan")


def perplexity(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16,
               chat: bool = True) -> float:
    """Perplexity of ``responses`` (given their prompts) under ``model``: exp(mean token NLL)."""
    return perplexity_of(response_nll(model, tokenizer, prompts, responses, batch_size, chat))
