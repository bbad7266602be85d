"""Generation: the cached patch prefix gives the same outputs as running the patch for every prompt."""

import pytest
import torch

from compose.generation import GenerationConfig, PrefixCache, generate, is_patched, perplexity
from compose.models import load_model
from compose.patch import attach_patch

PROMPTS = ["hello there", "What is the capital of France? Please explain how", "bread", "My friend is a nurse"]


@pytest.fixture(scope="module")
def patched():
    tiny = load_model("tiny-random", dtype="fp32")
    return tiny, attach_patch(tiny.model, tiny.tokenizer, 5, init_text="quick brown fox")


def test_cached_prefix_equals_uncached_greedy(patched):
    tiny, model = patched
    cfg = GenerationConfig(max_new_tokens=12, batch_size=4)
    cached = generate(model, tiny.tokenizer, PROMPTS, cfg)
    # uncached reference: PEFT's own path, one prompt at a time (no padding)
    alone = [generate(model, tiny.tokenizer, [p], cfg, cached=False)[0] for p in PROMPTS]
    assert cached == alone
    with model.disable_adapter():
        assert not is_patched(model)
        plain = generate(model, tiny.tokenizer, PROMPTS, cfg)
    assert plain != cached


def test_cached_prefix_logits_match(patched):
    tiny, model = patched
    enc = tiny.tokenizer(PROMPTS[1], return_tensors="pt")
    with torch.no_grad():
        uncached = model(**enc).logits[:, -1]
        prefix = PrefixCache(model)
        ids = torch.cat([torch.zeros(1, prefix.length, dtype=torch.long), enc["input_ids"]], 1)
        mask = torch.ones_like(ids)
        cached = prefix.base(input_ids=enc["input_ids"], attention_mask=mask, past_key_values=prefix.for_batch(1)).logits[:, -1]
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
