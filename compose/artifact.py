"""A patch on disk: plain PEFT adapter files plus ``patch.json``, a manifest with checksums.

    my-patch/
      adapter_config.json            PEFT prompt-tuning config   } loadable with
      adapter_model.safetensors      the soft prompt (l x d)     } PeftModel.from_pretrained(base, dir)
      patch.json                     name, version, risks + token segments, base model fingerprint,
                                     training settings, metrics, requires/after/conflicts, sha256 of files

Saving is atomic: files are written to a temporary sibling directory that is renamed into place, so an
interrupted save never leaves a half-written patch that looks valid. Loading refuses (``ComposeError``)
a missing or malformed manifest, a checksum mismatch, a non-safetensors payload and a different base model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from compose.errors import ComposeError
from compose.patch import Segment, attach_patch

MANIFEST = "patch.json"
FORMAT = 1
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
REQUIRED_FIELDS = ("format", "name", "version", "num_virtual_tokens", "risks", "base_model", "files")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _compose_version() -> str:
    try:
        from importlib.metadata import version

        return version("compose-patches")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


def save_patch(model, out_dir, *, name: str, segments: list[Segment], base_model: str, fingerprint: str,
               version: str = "1.0.0", training: dict | None = None, metrics: dict | None = None,
               requires: list[str] | None = None, after: list[str] | None = None,
               conflicts: list[str] | None = None, extra: dict | None = None) -> Path:
    """Write ``model``'s patch (a PeftModel with one prompt-tuning adapter) and its manifest to ``out_dir``."""
    out_dir = Path(out_dir)
    tokens = int(model.peft_config["default"].num_virtual_tokens)
    shared = all(s.start == 0 and s.tokens == tokens for s in segments)  # one patch trained on several risks
    if not segments or not (shared or sum(s.tokens for s in segments) == tokens):
        raise ValueError(f"segments cover {sum(s.tokens for s in segments)} tokens, the patch has {tokens}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub says nothing about the patch
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "format": FORMAT, "name": name, "version": version, "num_virtual_tokens": tokens,
            "risks": [s.to_dict() for s in segments],
            "base_model": {"name": base_model, "fingerprint": fingerprint},
            "training": training or {}, "metrics": metrics or {},
            "requires": list(requires or []), "after": list(after or []), "conflicts": list(conflicts or []),
            "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "compose_version": _compose_version(), **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing patch there is replaced only once the new one is complete."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(patch_dir) -> dict:
    """The manifest of ``patch_dir``, checked for the required fields (no checksum check: see verify_patch)."""
    patch_dir = Path(patch_dir)
    if not patch_dir.is_dir():
        raise ComposeError(f"patch directory '{patch_dir}' does not exist")
    path = patch_dir / MANIFEST
    if not path.is_file():
        raise ComposeError(f"'{patch_dir}' is not a compose patch: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ComposeError(f"malformed manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ComposeError(f"malformed manifest {path}: expected a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise ComposeError(f"malformed manifest {path}: missing field(s) {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise ComposeError(f"manifest {path} has format {manifest['format']!r}; this compose reads format {FORMAT}")
    return manifest


def verify_patch(patch_dir, fingerprint: str | None = None) -> dict:
    """Check a patch directory; returns its manifest or raises ``ComposeError`` naming the problem.

    Checks: manifest present and well-formed, weights stored as safetensors (never pickles), every listed file
    present with its recorded sha256, no unlisted payload, and (when given) the base model's fingerprint.
    """
    patch_dir = Path(patch_dir)
    manifest = read_manifest(patch_dir)
    pickles = sorted(p.name for p in patch_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
    if pickles or WEIGHTS not in manifest["files"]:
        found = ", ".join(pickles) or "no weights file"
        raise ComposeError(f"patch '{patch_dir}' must carry its weights as {WEIGHTS}; found {found}")
    for name, digest in manifest["files"].items():
        path = patch_dir / name
        if not path.is_file():
            raise ComposeError(f"patch '{patch_dir}' is incomplete: {name} is missing")
        if sha256_file(path) != digest:
            raise ComposeError(f"checksum mismatch for {path}: the file was changed after the patch was built")
    if fingerprint is not None and manifest["base_model"].get("fingerprint") != fingerprint:
        base = manifest["base_model"]
        raise ComposeError(
            f"patch '{manifest['name']}' was built for base model {base.get('name')} ({base.get('fingerprint')}), "
            f"not this model ({fingerprint}); load it on {base.get('name')}")
    return manifest


def load_patch(base, patch_dir, tokenizer=None, trainable: bool = False):
    """Verify ``patch_dir`` and apply it to ``base`` (a ``LoadedModel`` or a bare model); returns a PeftModel.

    The soft prompt is loaded into a fresh prompt-tuning adapter (float32), exactly what
    ``PeftModel.from_pretrained(base, patch_dir)`` does, after the manifest's checks.
    """
    from safetensors.torch import load_file

    from compose.models import model_fingerprint

    model = getattr(base, "model", base)
    tokenizer = tokenizer or getattr(base, "tokenizer", None)
    fingerprint = getattr(base, "fingerprint", None) or model_fingerprint(model)
    manifest = verify_patch(patch_dir, fingerprint)
    try:
        state = load_file(str(Path(patch_dir) / WEIGHTS))
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise ComposeError(f"cannot read {Path(patch_dir) / WEIGHTS}: {exc}") from exc
    weights = state.get("prompt_embeddings")
    tokens = manifest["num_virtual_tokens"]
    width = model.get_input_embeddings().weight.shape[1]
    if weights is None or tuple(weights.shape) != (tokens, width):
        raise ComposeError(f"patch '{patch_dir}' holds no {tokens} x {width} prompt_embeddings tensor")
    peft_model = attach_patch(model, tokenizer, num_tokens=tokens, init=weights)
    peft_model.requires_grad_(False)
    if trainable:
        peft_model.prompt_encoder["default"].embedding.weight.requires_grad_(True)
    peft_model.eval()
    return peft_model


def patch_matrix(patch_dir) -> tuple[torch.Tensor, dict]:
    """The verified soft-prompt matrix (float32) and manifest of a patch, without a base model."""
    from safetensors.torch import load_file

    manifest = verify_patch(patch_dir)
    return load_file(str(Path(patch_dir) / WEIGHTS))["prompt_embeddings"].float(), manifest
