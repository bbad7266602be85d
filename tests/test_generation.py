"""Generation semantics: a patched model generates as it is trained, the patch prepended once to the sequence.

The oracle is ``greedy_reference``: one full forward pass of the patched model per new token, no cache. A
library upgrade that changes how generation treats the patch (as transformers 5.24 did for PEFT's own
prompt-tuning generate, which then re-inserted the patch at every step) fails here.
"""

import pytest
import torch

from transformers.cache_utils import DynamicCache, DynamicLayer

from compose.generation import (CACHE_KWARG, GenerationConfig, PrefixCache, ReservedLayer, generate, greedy_reference,
                                is_patched, perplexity, reserved, response_nll)
from compose.models import load_model
from compose.patch import attach_patch

PROMPTS = ["hello there", "What is the capital of France? Please explain how", "bread", "My friend is a nurse"]


@pytest.fixture(scope="module")
def patched():
    tiny = load_model("tiny-random", dtype="fp32")
    return tiny, attach_patch(tiny.model, tiny.tokenizer, 5, init_text="quick brown fox")


def test_patched_generation_equals_full_forward_argmax(patched):
    """Batched, left-padded generation with the cached patch = step-by-step argmax of the full forward pass."""
    tiny, model = patched
    cfg = GenerationConfig(max_new_tokens=12, batch_size=4)
    batched = generate(model, tiny.tokenizer, PROMPTS, cfg)
    reference = [[greedy_reference(model, tiny.tokenizer, p, 12)] for p in PROMPTS]
    assert batched == reference
    with model.disable_adapter():
        assert not is_patched(model)
        plain = generate(model, tiny.tokenizer, PROMPTS, cfg)
        assert plain == [[greedy_reference(model, tiny.tokenizer, p, 12)] for p in PROMPTS]
    assert plain != batched


def test_peft_generate_is_never_used_for_a_patched_model(patched, monkeypatch):
    tiny, model = patched

    def refuse(*args, **kwargs):
        raise AssertionError("PeftModel.generate re-inserts the patch at every step on current transformers")

    monkeypatch.setattr(model, "generate", refuse)
    out = generate(model, tiny.tokenizer, PROMPTS[:2], GenerationConfig(max_new_tokens=4, samples=2))
    assert [len(o) for o in out] == [2, 2]


def test_cached_prefix_logits_match(patched):
    tiny, model = patched
    enc = tiny.tokenizer(PROMPTS[1], return_tensors="pt")
    with torch.no_grad():
        uncached = model(**enc).logits[:, -1]
        prefix = PrefixCache(model)
        ids = torch.cat([torch.zeros(1, prefix.length, dtype=torch.long), enc["input_ids"]], 1)
        mask = torch.ones_like(ids)
        cached = prefix.base(input_ids=enc["input_ids"], attention_mask=mask, **{CACHE_KWARG: prefix.for_batch(1)}).logits[:, -1]
    assert torch.allclose(cached, uncached, atol=1e-4)


def test_samples_per_prompt_and_order(patched):
    tiny, model = patched
    out = generate(model, tiny.tokenizer, PROMPTS, GenerationConfig(max_new_tokens=6, samples=3, batch_size=2, seed=1))
    assert [len(o) for o in out] == [3, 3, 3, 3]
    again = generate(model, tiny.tokenizer, PROMPTS, GenerationConfig(max_new_tokens=6, samples=3, batch_size=2, seed=1))
    assert out == again  # seeded


def test_perplexity_is_finite(patched):
    tiny, model = patched
    ppl = perplexity(tiny.model, tiny.tokenizer, PROMPTS[:2], ["Paris is the capital.", "Mix flour and water."])
    assert 1.0 < ppl < 1e4


@torch.no_grad()
def _nll_one_by_one(model, tokenizer, prompt: str, response: str) -> float:
    """The definition: one unpadded forward pass of prompt + response, summed NLL of the response tokens."""
    from compose.generation import chat_texts

    p = tokenizer(chat_texts(tokenizer, [prompt])[0], add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([p + r])).logits[0, -len(p + r):].float()
    logp = torch.log_softmax(logits[len(p) - 1:-1], dim=-1)
    return float(-logp[torch.arange(len(r)), torch.tensor(r)].sum())


@pytest.mark.parametrize("with_patch", [False, True])
def test_response_nll_scores_only_the_response_tokens(patched, with_patch):
    """Batched, padded, logits at the scored positions only (or through the patch) = the one-by-one definition."""
    tiny, model = patched
    scorer = model if with_patch else tiny.model
    responses = ["Paris is the capital.", "Mix flour and water, then knead it for ten minutes.", "", "Yes"]
    nll = response_nll(scorer, tiny.tokenizer, PROMPTS, responses, batch_size=3)
    assert nll[2] == (0.0, 0)
    for (value, count), prompt, response in zip(nll, PROMPTS, responses):
        if response:
            assert count == len(tiny.tokenizer(response, add_special_tokens=False)["input_ids"])
            assert value == pytest.approx(_nll_one_by_one(scorer, tiny.tokenizer, prompt, response), rel=1e-4)


def test_sequences_per_call_are_bounded(monkeypatch):
    """k samples per prompt: fewer prompts per generate call, so a call never holds more than MAX_SEQUENCES."""
    import compose.generation as gen

    tiny = load_model("tiny-random")
    monkeypatch.setattr(gen, "MAX_SEQUENCES", 4)
    sizes = []
    original = tiny.model.generate

    def recording(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0] * kwargs.get("num_return_sequences", 1))
        return original(**kwargs)

    monkeypatch.setattr(tiny.model, "generate", recording)
    out = generate(tiny.model, tiny.tokenizer, [f"prompt {i}" for i in range(5)],
                   GenerationConfig(max_new_tokens=2, samples=2, batch_size=16))
    assert [len(o) for o in out] == [2] * 5
    assert sizes == [4, 4, 2]


def test_the_output_head_gets_a_contiguous_input_and_the_same_logits(tiny):
    """load_model makes the vocabulary projection's input contiguous (generation's last-position slice is a strided
    view, which torch.matmul would multiply by copying the head weight once per sequence); values are unchanged."""
    seen = []
    head = tiny.model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    try:
        ids = tiny.tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)["input_ids"]
        with torch.no_grad():
            last = tiny.model(input_ids=ids, logits_to_keep=1).logits
            full = tiny.model(input_ids=ids).logits
        generate(tiny.model, tiny.tokenizer, PROMPTS, GenerationConfig(max_new_tokens=3, batch_size=4))
    finally:
        handle.remove()
    assert seen and all(seen)
    torch.testing.assert_close(last, full[:, -1:])


def test_reserved_layer_returns_what_concatenation_returns(monkeypatch):
    """Growing into reserved room (and past it), after a batch repeat, a crop, a batch select and a reordering: the
    same keys and values, step by step, as the plain layer that concatenates."""
    monkeypatch.setattr(ReservedLayer, "ROOM", 3)
    plain, room = DynamicLayer(), ReservedLayer()
    gen = torch.Generator().manual_seed(0)

    def step(n: int, batch: int = 2):
        k, v = torch.randn(batch, 2, n, 4, generator=gen), torch.randn(batch, 2, n, 4, generator=gen)
        for a, b in zip(plain.update(k, v), room.update(k, v)):
            assert torch.equal(a, b)

    step(5)  # the prompt: 5 positions, room for 3 more
    for _ in range(7):  # past the room twice
        step(1)
    plain.batch_repeat_interleave(3), room.batch_repeat_interleave(3)
    step(1, batch=6)
    plain.crop(-2), room.crop(-2)
    step(2, batch=6)
    pick = torch.tensor([0, 4])
    plain.batch_select_indices(pick), room.batch_select_indices(pick)
    step(1)
    swap = torch.tensor([1, 0])  # same shape, new tensors: the room must not be written behind their back
    plain.reorder_cache(swap), room.reorder_cache(swap)
    step(1)
    assert plain.get_seq_length() == room.get_seq_length() == 15


@pytest.mark.parametrize("samples", [1, 2])
def test_generation_through_reserved_room_is_unchanged(patched, samples, monkeypatch):
    """Plain and patched generation (the cached prefix) give the same tokens with the reserved cache as with
    transformers' own, including more new tokens than the reserved room."""
    tiny, model = patched
    cfg = GenerationConfig(max_new_tokens=12, samples=samples, top_p=0.9 if samples > 1 else 1.0, batch_size=4)
    monkeypatch.setattr(ReservedLayer, "ROOM", 5)
    ours = generate(model, tiny.tokenizer, PROMPTS, cfg)
    with model.disable_adapter():
        ours_plain = generate(model, tiny.tokenizer, PROMPTS, cfg)
    monkeypatch.setattr("compose.generation.reserved", lambda cache: cache)  # transformers' concatenating layers
    assert generate(model, tiny.tokenizer, PROMPTS, cfg) == ours
    with model.disable_adapter():
        assert generate(model, tiny.tokenizer, PROMPTS, cfg) == ours_plain
    assert all(type(layer) is ReservedLayer for layer in reserved(DynamicCache(config=tiny.model.config)).layers)
