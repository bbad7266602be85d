"""A patch on disk: plain PEFT adapter files plus ``patch.json``, a manifest with checksums.

    my-patch/
      adapter_config.json            PEFT prompt-tuning config   } loadable with
      adapter_model.safetensors      the soft prompt (l x d)     } PeftModel.from_pretrained(base, dir)
      patch.json                     name, version, risks + token segments, base model fingerprint,
                                     training settings, metrics, requires/after/conflicts, sha256 of files,
                                     and the sha256 of the manifest itself (``manifest_sha256``)

Saving is atomic: files are written to a temporary sibling directory that is renamed into place, so an
interrupted save never leaves a half-written patch that looks valid. Verifying (and so loading) runs named
checks and refuses (``ComposeError`` naming the failed check) a missing or malformed manifest, a manifest
edited after the patch was built, a file list that points outside the folder (``../``, absolute paths,
symbolic links), a checksum mismatch, weights that are not a real safetensors file, and a different base model.
Patches of format 1 (before the manifest had its own checksum) still load, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from compose.errors import ComposeError
from compose.io import read_json
from compose.models import LoadedModel, model_fingerprint
from compose.patch import Segment, attach_patch, check_segments
from compose.schema import Field, check_fields, check_value

log = logging.getLogger("compose.artifact")

MANIFEST = "patch.json"
FORMAT = 2  # 2: the manifest carries its own checksum
READABLE_FORMATS = (1, 2)
CHECKSUM_FIELD = "manifest_sha256"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header
MANIFEST_FIELDS = {
    "format": Field("int", choices=READABLE_FORMATS), "name": Field("str"), "version": Field("str"),
    "num_virtual_tokens": Field("int", minimum=1), "risks": Field("list"), "base_model": Field("dict"),
    "files": Field("dict"), "requires": Field("str-list", required=False), "after": Field("str-list", required=False),
    "conflicts": Field("str-list", required=False), "training": Field("dict", required=False),
    "metrics": Field("dict", required=False), CHECKSUM_FIELD: Field("str", required=False),
}
SEGMENT_FIELDS = {"risk": Field("str"), "start": Field("int", minimum=0), "tokens": Field("int", minimum=1)}
BASE_FIELDS = {"name": Field("str", nullable=True), "fingerprint": Field("str", nullable=True)}
SHA256 = re.compile(r"[0-9a-f]{64}")
_warned_unchecked: set[str] = set()


class PatchCheckFailed(ComposeError):
    """A patch failed one named check of ``verify_patch``."""

    def __init__(self, patch_dir, check: str, detail: str):
        super().__init__(f"patch '{patch_dir}' failed the {check} check: {detail}")
        self.check = check


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
    problem = check_segments([s.to_dict() for s in segments], tokens)
    if problem:
        raise ValueError(problem)
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
        manifest[CHECKSUM_FIELD] = manifest_checksum(manifest)
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


def manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest without its own checksum field (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(patch_dir) -> dict:
    """The manifest of ``patch_dir``, checked against the manifest schema (no checksums: see verify_patch)."""
    patch_dir = Path(patch_dir)
    if not patch_dir.is_dir():
        raise ComposeError(f"patch directory '{patch_dir}' does not exist")
    path = patch_dir / MANIFEST
    if not path.is_file():
        raise ComposeError(f"'{patch_dir}' is not a compose patch: {MANIFEST} is missing")
    manifest = read_json(path, "manifest")
    where = f"malformed manifest {path}"
    check_fields(manifest, {"format": Field("int")}, where)
    if manifest["format"] not in READABLE_FORMATS:
        raise ComposeError(f"manifest {path} has format {manifest['format']!r}; this compose reads formats "
                           f"{', '.join(map(str, READABLE_FORMATS))}")
    check_fields(manifest, MANIFEST_FIELDS, where)
    check_fields(manifest["base_model"], BASE_FIELDS, f"{where}, base_model")
    for name, digest in manifest["files"].items():
        check_value(digest, Field("str"), f"files.{name}", where)
        if not SHA256.fullmatch(digest):
            raise ComposeError(f"{where}: field 'files.{name}' is '{digest[:20]}'; expected a sha256 (64 hex digits)")
    for i, segment in enumerate(manifest["risks"]):
        check_fields(segment, SEGMENT_FIELDS, f"{where}, risks[{i}]")
    problem = check_segments(manifest["risks"], manifest["num_virtual_tokens"])
    if problem:
        raise ComposeError(f"{where}: field 'risks': {problem}")
    return manifest


def verify_patch(patch_dir, fingerprint: str | None = None) -> dict:
    """Check a patch directory; returns its manifest or raises ``PatchCheckFailed`` naming the failed check.

    Checks, in order: the manifest (present, well-formed, and unchanged since the patch was built: its own
    checksum), file paths (every listed file a plain file inside the folder, no pickles), checksums of the
    listed files, the safetensors header of the weights (a real safetensors file holding the soft prompt of
    the manifest's size) and, when ``fingerprint`` is given, the base model.
    """
    patch_dir = Path(patch_dir)
    manifest = read_manifest(patch_dir)
    _check_manifest_checksum(patch_dir, manifest)
    _check_file_paths(patch_dir, manifest)
    for name, digest in manifest["files"].items():
        if sha256_file(patch_dir / name) != digest:
            raise PatchCheckFailed(patch_dir, "checksum",
                                   f"checksum mismatch for {name}: the file was changed after the patch was built")
    header = read_safetensors_header(patch_dir / WEIGHTS, patch_dir)
    shape = header.get("prompt_embeddings", {}).get("shape")
    if not isinstance(shape, list) or len(shape) != 2 or shape[0] != manifest["num_virtual_tokens"]:
        raise PatchCheckFailed(patch_dir, "safetensors header",
                               f"{WEIGHTS} holds no prompt_embeddings tensor of {manifest['num_virtual_tokens']} rows "
                               f"(found shape {shape})")
    if fingerprint is not None and manifest["base_model"].get("fingerprint") != fingerprint:
        base = manifest["base_model"]
        raise PatchCheckFailed(patch_dir, "base model",
                               f"patch '{manifest['name']}' was built for base model {base.get('name')} "
                               f"({base.get('fingerprint')}), not this model ({fingerprint}); load it on "
                               f"{base.get('name')}")
    return manifest


def _check_manifest_checksum(patch_dir: Path, manifest: dict) -> None:
    recorded = manifest.get(CHECKSUM_FIELD)
    if recorded is None and manifest["format"] == 1:
        if str(patch_dir) not in _warned_unchecked:
            _warned_unchecked.add(str(patch_dir))
            log.warning(f"warning: patch '{patch_dir}' (format 1) has no manifest checksum, so edits of its "
                        f"{MANIFEST} cannot be detected; `compose patch apply {patch_dir} --output NEW_DIR` "
                        f"re-saves it with one")
        return
    if recorded is None:
        raise PatchCheckFailed(patch_dir, "manifest checksum", f"{MANIFEST} has no {CHECKSUM_FIELD} field; "
                                                               f"format {manifest['format']} manifests must carry one")
    if recorded != manifest_checksum(manifest):
        raise PatchCheckFailed(patch_dir, "manifest checksum",
                               f"{MANIFEST} was edited after the patch was built (its {CHECKSUM_FIELD} does not match "
                               f"its content); rebuild the patch or restore the original {MANIFEST}")


def _check_file_paths(patch_dir: Path, manifest: dict) -> None:
    """Every listed file (and the manifest) is a regular file directly inside ``patch_dir``; no pickles."""
    root = patch_dir.resolve()
    for name in [MANIFEST, *manifest["files"]]:
        candidate = Path(name)
        if candidate.is_absolute() or len(candidate.parts) != 1 or name in (".", ".."):
            raise PatchCheckFailed(patch_dir, "file paths",
                                   f"'{name}' is not a file name inside the patch folder (paths with '/' or '..' "
                                   f"and absolute paths are refused)")
        path = patch_dir / name
        if path.is_symlink() or path.resolve().parent != root:
            raise PatchCheckFailed(patch_dir, "file paths", f"{name} is a symbolic link; a patch holds plain files")
        if not path.is_file():
            raise PatchCheckFailed(patch_dir, "file paths", f"the patch is incomplete: {name} is missing")
    pickles = sorted(p.name for p in patch_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles or WEIGHTS not in manifest["files"]:
        found = ", ".join(pickles) or "no weights file"
        raise PatchCheckFailed(patch_dir, "file paths", f"a patch carries its weights as {WEIGHTS}; found {found}")


def read_safetensors_header(path: Path, patch_dir=None) -> dict:
    """The JSON header of a safetensors file, checked to be one (a pickle or other file renamed is refused)."""
    patch_dir = patch_dir or path.parent

    def fail(detail: str):
        raise PatchCheckFailed(patch_dir, "safetensors header", f"{path.name} is not a safetensors file: {detail}")

    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            fail(f"{size} bytes, too short for a header")
        length = int.from_bytes(prefix, "little")
        if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
            fail(f"the header length field reads {length}, which does not fit the file's {size} bytes")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        fail("its header is not JSON")
    if not isinstance(header, dict):
        fail("its header is not a JSON object")
    payload = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= payload and isinstance(entry.get("shape"), list)):
            fail(f"tensor '{name}' has no valid dtype, shape and data offsets")
    return header


def load_patch(base, patch_dir, tokenizer=None, trainable: bool = False):
    """Verify ``patch_dir`` and apply it to ``base`` (a ``LoadedModel`` or a bare model); returns a PeftModel.

    The soft prompt is loaded into a fresh prompt-tuning adapter (float32), exactly what
    ``PeftModel.from_pretrained(base, patch_dir)`` does, after the manifest's checks.
    """
    loaded = base if isinstance(base, LoadedModel) else None  # a bare causal LM has a ``model`` attribute of its own
    model = loaded.model if loaded else base
    tokenizer = tokenizer or (loaded.tokenizer if loaded else None)
    fingerprint = loaded.fingerprint if loaded else model_fingerprint(model)
    manifest = verify_patch(patch_dir, fingerprint)
    weights = load_file(str(Path(patch_dir) / WEIGHTS)).get("prompt_embeddings")
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
    manifest = verify_patch(patch_dir)
    return load_file(str(Path(patch_dir) / WEIGHTS))["prompt_embeddings"].float(), manifest
