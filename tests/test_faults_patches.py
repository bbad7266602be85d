"""Fault injection on patches: tampered patches fail the named check (verify and load), every patch of a
sequential run can be applied, and `patch apply` never writes over anything it was not asked to."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from compose.artifact import CHECKSUM_FIELD, CONFIG, MANIFEST, WEIGHTS, load_patch, read_manifest, save_patch, verify_patch
from compose.cli import run as run_mod
from compose.cli.config import resolve
from compose.errors import ComposeError
from compose.models import load_model
from compose.patch import attach_patch, segments_for
from faultlib import copy_patch, edit_manifest, refused, sha256_bytes, snapshot, succeeds

TOKENS = 4


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A patch of format 2 (with its manifest checksum) for the tiny model."""
    own = load_model("tiny-random")
    model = attach_patch(own.model, own.tokenizer, num_tokens=TOKENS)
    return save_patch(model, tmp_path_factory.mktemp("patch") / "p", name="demo",
                      segments=segments_for([("toxicity", 2), ("bias", 2)]), base_model=own.name,
                      fingerprint=own.fingerprint)


@pytest.fixture()
def patch_dir(original, tmp_path):
    return copy_patch(original, tmp_path / "p")


# --- tampering: (what is done to the patch, the check that must fail) ---------------------------------------

def _outside(tmp_path) -> tuple:
    path = tmp_path / "outside.txt"
    path.write_text("secret")
    return path, sha256_bytes(b"secret")


def _list_file(name_of):
    def tamper(p, tmp_path):
        path, digest = _outside(tmp_path)
        edit_manifest(p, lambda m: m["files"].__setitem__(name_of(p, path), digest))
    return tamper


def _symlink_listed(p, tmp_path):
    path, digest = _outside(tmp_path)
    (p / "notes.txt").symlink_to(path)
    edit_manifest(p, lambda m: m["files"].__setitem__("notes.txt", digest))


def _symlink_weights(p, tmp_path):
    moved = tmp_path / "weights.safetensors"
    shutil.move(p / WEIGHTS, moved)
    (p / WEIGHTS).symlink_to(moved)


def _replace_weights(data: bytes):
    def tamper(p, tmp_path):
        (p / WEIGHTS).write_bytes(data)
        edit_manifest(p, lambda m: m["files"].__setitem__(WEIGHTS, sha256_bytes(data)))
    return tamper


def _flip_byte(name):
    def tamper(p, tmp_path):
        data = bytearray((p / name).read_bytes())
        data[-1] ^= 0xFF
        (p / name).write_bytes(bytes(data))
    return tamper


def _write_manifest(text):
    def tamper(p, tmp_path):
        (p / MANIFEST).write_text(text)
    return tamper


def _resigned(change):
    return lambda p, tmp_path: edit_manifest(p, change)


def _hand_edit(change):
    return lambda p, tmp_path: edit_manifest(p, change, resign=False)


PICKLE = pickle.dumps({"prompt_embeddings": torch.zeros(TOKENS, 64)})
TAMPERS = {
    "manifest edited by hand": (_hand_edit(lambda m: m.update(version="9.9.9")), "manifest checksum"),
    "manifest checksum removed": (_hand_edit(lambda m: m.pop(CHECKSUM_FIELD)), "manifest checksum"),
    "manifest checksum garbage": (_hand_edit(lambda m: m.update({CHECKSUM_FIELD: "0" * 64})), "manifest checksum"),
    "file list with ../": (_list_file(lambda p, path: "../outside.txt"), "file paths"),
    "file list with an absolute path": (_list_file(lambda p, path: str(path)), "file paths"),
    "file list with a sub-folder": (_list_file(lambda p, path: "sub/outside.txt"), "file paths"),
    "listed symlink out of the folder": (_symlink_listed, "file paths"),
    "weights are a symlink": (_symlink_weights, "file paths"),
    "pickle renamed .safetensors": (_replace_weights(PICKLE), "safetensors header"),
    "weights truncated": (_replace_weights(b"\x01\x02\x03"), "safetensors header"),
    "header length lies": (_replace_weights((10 ** 12).to_bytes(8, "little") + b"{}"), "safetensors header"),
    "header not JSON": (_replace_weights((4).to_bytes(8, "little") + b"\xff\xfe\x00\x01"), "safetensors header"),
    "weights changed": (_flip_byte(WEIGHTS), "checksum mismatch"),
    "adapter config changed": (_flip_byte(CONFIG), "checksum mismatch"),
    "pickle payload beside": (lambda p, t: (p / "adapter_model.bin").write_bytes(PICKLE), "file paths"),
    "weights deleted": (lambda p, t: (p / WEIGHTS).unlink(), "missing"),
    "manifest deleted": (lambda p, t: (p / MANIFEST).unlink(), "patch.json is missing"),
    "manifest not JSON": (_write_manifest("{not json"), "malformed manifest"),
    "manifest is a list": (_write_manifest("[1, 2]"), "malformed manifest"),
    "manifest of a future format": (_resigned(lambda m: m.update(format=3)), "format 3"),
    "token count as text": (_resigned(lambda m: m.update(num_virtual_tokens="4")), "num_virtual_tokens"),
    "segments overlap": (_resigned(lambda m: m["risks"][1].update(start=1)), "risks"),
    "segments too short": (_resigned(lambda m: m["risks"].pop()), "segments cover 2 rows"),
    "segment risk not a name": (_resigned(lambda m: m["risks"][0].update(risk=7)), "'risk'"),
    "file digest not a sha256": (_resigned(lambda m: m["files"].__setitem__(CONFIG, "abc")), "sha256"),
    "rows differ from the weights": (_resigned(lambda m: (m.update(num_virtual_tokens=6),
                                                          m["risks"][1].update(tokens=4))), "safetensors header"),
    "other base model": (_resigned(lambda m: m["base_model"].update(fingerprint="sha256:0")), "base model"),
}


@pytest.mark.parametrize("case", TAMPERS)
def test_verify_names_the_failed_check(patch_dir, tmp_path, capsys, case):
    tamper, check = TAMPERS[case]
    tamper(patch_dir, tmp_path)
    refused(capsys, ["patch", "verify", str(patch_dir), "--model", "tiny-random"], check, root=tmp_path)


@pytest.mark.parametrize("case", TAMPERS)
def test_loading_runs_the_same_checks(patch_dir, tmp_path, tiny, case):
    tamper, check = TAMPERS[case]
    tamper(patch_dir, tmp_path)
    with pytest.raises(ComposeError, match=check.replace("(", r"\(")):
        load_patch(tiny, patch_dir)


@pytest.mark.parametrize("case", ["manifest edited by hand", "pickle renamed .safetensors", "file list with ../"])
def test_generate_and_apply_refuse_a_tampered_patch(patch_dir, tmp_path, capsys, case):
    tamper, check = TAMPERS[case]
    tamper(patch_dir, tmp_path)
    refused(capsys, ["generate", "--model", "tiny-random", "--patch", str(patch_dir), "hi"], check, root=tmp_path)
    refused(capsys, ["patch", "apply", str(patch_dir), "--model", "tiny-random", "--output", str(tmp_path / "o")],
            check, root=tmp_path)


def test_the_installed_command_prints_one_line(patch_dir, tmp_path):
    """The real entry point in a fresh process: exit status 2, one line on stderr, no traceback."""
    TAMPERS["pickle renamed .safetensors"][0](patch_dir, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "compose.cli", "patch", "verify", str(patch_dir)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"compose: error: patch '{patch_dir}' failed the safetensors header check: "
                                        f"{WEIGHTS} is not a safetensors file: the header length field reads "
                                        f"{int.from_bytes(PICKLE[:8], 'little')}, which does not fit the file's "
                                        f"{len(PICKLE)} bytes"]


def test_patch_of_format_1_still_loads_with_a_warning(patch_dir, tiny, capsys, caplog):
    edit_manifest(patch_dir, lambda m: (m.pop(CHECKSUM_FIELD), m.update(format=1)), resign=False)
    with caplog.at_level(logging.WARNING, logger="compose.artifact"):
        assert "ok: patch 'demo'" in succeeds(capsys, ["patch", "verify", str(patch_dir)])
    assert "no manifest checksum" in caplog.text
    assert load_patch(tiny, patch_dir).prompt_encoder["default"].embedding.weight.shape[0] == TOKENS


def test_inspect_refuses_a_malformed_manifest_in_one_line(patch_dir, tmp_path, capsys):
    edit_manifest(patch_dir, lambda m: m.update(risks="toxicity"))
    refused(capsys, ["patch", "inspect", str(patch_dir)], "field 'risks'", root=tmp_path)


def _risk_patch(tmp_path, name: str, risk: str, after: list[str]):
    own = load_model("tiny-random")
    model = attach_patch(own.model, own.tokenizer, num_tokens=2)
    return save_patch(model, tmp_path / name, name=name, segments=segments_for([(risk, 2)]), base_model=own.name,
                      fingerprint=own.fingerprint, after=after)


def test_patch_constraints_written_with_aliases_are_resolved(tmp_path, capsys):
    tox = _risk_patch(tmp_path, "tox-patch", "toxicity", after=["bias"])
    bias = _risk_patch(tmp_path, "bias-patch", "bias", after=[])
    out = succeeds(capsys, ["patch", "apply", str(tox), str(bias), "--model", "tiny-random", "--output",
                            str(tmp_path / "ok")])
    assert "order: bias-patch 1.0.0 (2 tokens) -> tox-patch" in out
    shutil.rmtree(bias)
    bias = _risk_patch(tmp_path, "bias-patch", "bias", after=["tox"])  # 'tox' is toxicity's alias: a cycle
    refused(capsys, ["patch", "apply", str(tox), str(bias), "--model", "tiny-random", "--output",
                     str(tmp_path / "cycle")], "dependency cycle")


# --- every patch of a sequential run can be applied ---------------------------------------------------------

@pytest.fixture(scope="module")
def sequential_runs(tiny, tmp_path_factory):
    """Finished smoke runs of sequential and sequential-replay (toxicity then bias)."""
    root = tmp_path_factory.mktemp("seq")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPOSE_CACHE", str(tmp_path_factory.getbasetemp() / "compose-cache"))
        for strategy in ("sequential", "sequential-replay"):
            cfg = resolve({}, risks="tox,bias", strategy=strategy, model="tiny-random", preset="smoke")
            run_mod.execute(cfg, root / strategy, loaded=tiny)
    return root


SETS = {"final": ["patch"], "stage 1": ["stages/01-toxicity/patch"], "stage 2": ["stages/02-bias/patch"],
        "final and stage 1": ["patch", "stages/01-toxicity/patch"],
        "both stages": ["stages/02-bias/patch", "stages/01-toxicity/patch"]}


@pytest.mark.parametrize("strategy", ["sequential", "sequential-replay"])
@pytest.mark.parametrize("which", SETS)
def test_every_patch_of_a_sequential_run_applies(sequential_runs, tmp_path, capsys, strategy, which):
    run = sequential_runs / strategy
    dirs = [str(run / d) for d in SETS[which]]
    before = snapshot(run)
    out = tmp_path / "combined"
    assert "wrote" in succeeds(capsys, ["patch", "apply", *dirs, "--model", "tiny-random", "--output", str(out)])
    manifest = verify_patch(out)
    assert manifest["num_virtual_tokens"] == sum(json.loads((run / d / MANIFEST).read_text())["num_virtual_tokens"]
                                                 for d in SETS[which])
    assert snapshot(run) == before
    succeeds(capsys, ["generate", "--model", "tiny-random", "--patch", str(out), "--max-new-tokens", "2", "hi"])


def test_apply_takes_the_base_model_from_the_manifests(sequential_runs, tmp_path, capsys):
    run = sequential_runs / "sequential"
    out = tmp_path / "combined"
    assert "wrote" in succeeds(capsys, ["patch", "apply", str(run / "patch"), "--output", str(out)])
    assert read_manifest(out)["base_model"]["name"] == "tiny-random"


# --- patch apply never writes over what it was not asked to --------------------------------------------------

OUTPUTS = {
    "the input itself": (lambda run: run / "patch", [], "is the input"),
    "inside the input": (lambda run: run / "patch" / "sub", [], "is inside the input"),
    "the run folder holding the input": (lambda run: run, [], "contains the input"),
    "the input, with --force": (lambda run: run / "patch", ["--force"], "is the input"),
    "another patch of the run": (lambda run: run / "stages" / "02-bias" / "patch", [], "not empty"),
    "a folder of the user": (lambda run: run.parent / "mine", [], "not empty"),
    "a file": (lambda run: run.parent / "mine" / "notes.txt", [], "is a file"),
}


@pytest.mark.parametrize("case", OUTPUTS)
def test_apply_refuses_outputs_it_does_not_own(sequential_runs, tmp_path, capsys, case):
    run = shutil.copytree(sequential_runs / "sequential", tmp_path / "run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    where, extra, message = OUTPUTS[case]
    refused(capsys, ["patch", "apply", str(run / "patch"), "--model", "tiny-random", "--output", str(where(run)),
                     *extra], message, root=tmp_path)


def test_apply_replaces_its_own_output_and_a_forced_folder(sequential_runs, tmp_path, capsys):
    src = str(sequential_runs / "sequential" / "patch")
    out = tmp_path / "out"
    for _ in range(2):  # an earlier `patch apply` output is replaced without --force
        succeeds(capsys, ["patch", "apply", src, "--model", "tiny-random", "--output", str(out)])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("replace me")
    succeeds(capsys, ["patch", "apply", src, "--model", "tiny-random", "--output", str(mine), "--force"])
    assert verify_patch(mine) and not (mine / "notes.txt").exists()
