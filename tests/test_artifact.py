"""A patch on disk: plain PEFT loads it, the manifest is complete, and bad patches are refused."""

import json

import pytest
import torch
from peft import PeftModel

from compose.artifact import MANIFEST, load_patch, read_manifest, save_patch, verify_patch
from compose.errors import ComposeError
from compose.models import build_tiny_random, load_model, model_fingerprint
from compose.patch import attach_patch, segments_for


@pytest.fixture()
def tiny():
    return load_model("tiny-random", dtype="fp32")


@pytest.fixture()
def patch_dir(tiny, tmp_path):
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=6)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.add_(0.5)
    out = save_patch(model, tmp_path / "tox-patch", name="tox-patch", segments=segments_for([("toxicity", 4),
                     ("bias", 2)]), base_model=tiny.name, fingerprint=tiny.fingerprint,
                     training={"sft_epochs": 3}, after=["bias"])
    return out


def test_manifest_fields(patch_dir, tiny):
    m = read_manifest(patch_dir)
    assert m["name"] == "tox-patch" and m["version"] == "1.0.0" and m["num_virtual_tokens"] == 6
    assert m["risks"] == [{"risk": "toxicity", "start": 0, "tokens": 4}, {"risk": "bias", "start": 4, "tokens": 2}]
    assert m["base_model"] == {"name": "tiny-random", "fingerprint": tiny.fingerprint}
    assert m["after"] == ["bias"] and m["requires"] == [] and m["training"] == {"sft_epochs": 3}
    assert set(m["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert verify_patch(patch_dir, tiny.fingerprint)["name"] == "tox-patch"


def test_plain_peft_gives_the_same_logits(patch_dir, tiny):
    ids = tiny.tokenizer("hello there, how are you", return_tensors="pt")
    ours = load_patch(tiny, patch_dir)
    ours_logits = ours(**ids).logits
    fresh, _ = build_tiny_random()
    plain = PeftModel.from_pretrained(fresh.float(), str(patch_dir))
    assert torch.allclose(plain(**ids).logits, ours_logits, atol=1e-5)
    with ours.disable_adapter():
        assert not torch.allclose(ours(**ids).logits[:, -1], ours_logits[:, -1], atol=1e-3)


def test_tampered_weights_are_refused(patch_dir, tiny):
    weights = patch_dir / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ComposeError, match="checksum mismatch"):
        load_patch(tiny, patch_dir)


def test_a_bare_model_takes_a_patch(patch_dir, tiny):
    """A plain causal LM (not a ``LoadedModel``) is patched itself, not the decoder it holds as ``.model``."""
    fresh, tok = build_tiny_random()
    bare = load_patch(fresh.float(), patch_dir, tokenizer=tok)
    ids = tiny.tokenizer("hello there, how are you", return_tensors="pt")
    assert torch.allclose(bare(**ids).logits, load_patch(tiny, patch_dir)(**ids).logits, atol=1e-5)


def test_other_base_model_is_refused(patch_dir):
    other, tok = build_tiny_random(seed=1)
    with pytest.raises(ComposeError, match="built for base model tiny-random"):
        load_patch(other, patch_dir, tokenizer=tok)
    assert model_fingerprint(other) != read_manifest(patch_dir)["base_model"]["fingerprint"]


def test_missing_and_malformed_manifest(patch_dir, tiny):
    (patch_dir / MANIFEST).write_text("{not json")
    with pytest.raises(ComposeError, match="malformed manifest"):
        load_patch(tiny, patch_dir)
    (patch_dir / MANIFEST).write_text(json.dumps({"name": "x"}))
    with pytest.raises(ComposeError, match="missing field"):
        verify_patch(patch_dir)
    (patch_dir / MANIFEST).unlink()
    with pytest.raises(ComposeError, match="patch.json is missing"):
        load_patch(tiny, patch_dir)


def test_pickle_payload_is_refused(patch_dir):
    (patch_dir / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ComposeError, match="safetensors"):
        verify_patch(patch_dir)


def test_interrupted_save_keeps_the_old_patch(patch_dir, tiny, monkeypatch):
    before = (patch_dir / "adapter_model.safetensors").read_bytes()
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=6)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(model), "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        save_patch(model, patch_dir, name="tox-patch", segments=segments_for([("toxicity", 6)]),
                   base_model=tiny.name, fingerprint=tiny.fingerprint)
    assert (patch_dir / "adapter_model.safetensors").read_bytes() == before
    assert verify_patch(patch_dir)
    assert [p.name for p in patch_dir.parent.iterdir() if p.name.startswith(".")] == []


def test_segments_must_cover_the_patch(tiny, tmp_path):
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=6)
    with pytest.raises(ValueError, match="segments cover 5"):
        save_patch(model, tmp_path / "p", name="p", segments=segments_for([("toxicity", 5)]), base_model="tiny-random",
                   fingerprint=tiny.fingerprint)
