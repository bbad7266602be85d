"""Helpers of the fault-injection suite (test_faults_*.py): run the CLI in-process and check how it fails."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from compose.artifact import CHECKSUM_FIELD, MANIFEST, manifest_checksum
from compose.cli import main


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link under ``root`` (hidden ones too) with a hash of its content or its link target
    (folders are not listed: an empty folder left behind loses and changes nothing)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "link:" + str(path.readlink())
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def refused(capsys, argv: list[str], *needles: str, root: Path | None = None) -> str:
    """Run ``compose argv``; assert exit status 2, exactly one line on stderr (``compose: error: ...``) holding
    every needle, no traceback, and (with ``root``) no file under ``root`` created, changed or removed.
    Returns the line."""
    before = snapshot(root) if root is not None else None
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, (status, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("compose: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if root is not None:
        assert snapshot(root) == before, "files on disk changed"
    return lines[0]


def succeeds(capsys, argv: list[str]) -> str:
    """Run ``compose argv``; assert exit status 0 and no traceback; returns stdout."""
    capsys.readouterr()
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "Traceback" not in err
    return out


def copy_patch(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(patch_dir: Path, change, resign: bool = True) -> None:
    """Apply ``change(manifest)`` to a patch's manifest; ``resign`` recomputes its checksum, as an author who
    meant the change would (so the check under test is not the manifest checksum)."""
    path = patch_dir / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    if resign and CHECKSUM_FIELD in manifest:
        manifest[CHECKSUM_FIELD] = manifest_checksum(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
