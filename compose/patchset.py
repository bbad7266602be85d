"""Applying several patch directories at once, resolved like packages by the dependency graph.

Each patch is verified (checksums, base model), the set is ordered by the patches' ``after`` / ``requires``
(conflicts refused), and their soft prompts are concatenated in that order into one prompt-tuning adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from compose.artifact import patch_matrix, verify_patch
from compose.errors import ComposeError
from compose.graph import check_patch_set
from compose.patch import Segment, attach_patch


def resolve_patch_set(patch_dirs: list[str], fingerprint: str | None = None,
                      canonical: Callable[[str], str] = str) -> list[dict]:
    """Verified manifests of ``patch_dirs`` in composition order (each with its ``path``); ``canonical`` names
    risks as ``compose.graph.check_patch_set`` compares them."""
    manifests = []
    for d in patch_dirs:
        m = dict(verify_patch(d, fingerprint))
        m["path"] = str(Path(d))
        manifests.append(m)
    names = [m["name"] for m in manifests]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ComposeError(f"patch '{dupes[0]}' is given twice; give each patch once")
    return check_patch_set(manifests, canonical)


def compose_matrices(manifests: list[dict]) -> tuple[torch.Tensor, list[Segment]]:
    """Concatenate the soft prompts of ordered manifests; segments are shifted to their new positions."""
    parts, segments, offset = [], [], 0
    for m in manifests:
        weights, _ = patch_matrix(m["path"])
        parts.append(weights)
        segments += [Segment(s["risk"], offset + s["start"], s["tokens"]) for s in m["risks"]]
        offset += weights.shape[0]
    return torch.cat(parts), segments


def load_patch_set(loaded, patch_dirs: list[str], canonical: Callable[[str], str] = str):
    """``loaded`` (a LoadedModel) with all ``patch_dirs`` applied as one patch, in dependency order."""
    manifests = resolve_patch_set(patch_dirs, loaded.fingerprint, canonical)
    weights, _ = compose_matrices(manifests)
    model = attach_patch(loaded.model, loaded.tokenizer, num_tokens=weights.shape[0], init=weights)
    model.requires_grad_(False)
    model.eval()
    return model


def describe_patch_set(manifests: list[dict]) -> str:
    return " -> ".join(f"{m['name']} {m['version']} ({m['num_virtual_tokens']} tokens)" for m in manifests)
