"""Fault injection on runs: a run killed at any point resumes and rebuilds every missing output without
retraining, corrupt run-folder and cache files are named in one line, a failed start does not block the
corrected command, the run-folder lock, and a full disk or a read-only folder."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from compose.artifact import verify_patch
from compose.cli import run as run_mod
from compose.cli import main
from compose.cli.config import resolve
from compose.context import RunContext
from compose.errors import ComposeError
from compose.io import LOCK
from faultlib import refused, snapshot, succeeds

OUTPUTS = ["patch", "forgetting.json", "report.md", "forgetting.png", "results.json"]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished smoke run (sequential-replay, toxicity then bias) and the cache it filled."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPOSE_CACHE", str(root / "cache"))
        cfg = resolve({}, risks="tox,bias", strategy="sequential-replay", model="tiny-random",
                                 preset="smoke")
        run_mod.execute(cfg, root / "run", loaded=tiny)
    return root


@pytest.fixture()
def run(finished, tmp_path, monkeypatch):
    """A copy of the finished run (and of its cache, in use), in a folder of its own."""
    shutil.copytree(finished / "cache", tmp_path / "cache")
    monkeypatch.setenv("COMPOSE_CACHE", str(tmp_path / "cache"))
    return Path(shutil.copytree(finished / "run", tmp_path / "run"))


def resume(run: Path) -> list[str]:
    return ["run", "--resume", "--out", str(run)]


def no_training(monkeypatch) -> None:
    def retrain(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(RunContext, "train", retrain)


def remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def assert_complete(run: Path) -> None:
    for name in OUTPUTS:
        assert (run / name).exists(), name
    assert verify_patch(run / "patch")
    assert (run / "forgetting.png").read_bytes()[:4] == b"\x89PNG"
    assert not (run / LOCK).exists()


def kill_when_renaming(monkeypatch, name: str, exc: BaseException) -> None:
    """Make the rename that puts ``name`` in place raise ``exc`` (every write of compose ends in that rename)."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise exc
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


# --- killed and resumed --------------------------------------------------------------------------------------

@pytest.mark.parametrize("killed_at", OUTPUTS)
def test_killed_while_writing_an_output_resumes_with_every_output(run, capsys, monkeypatch, killed_at):
    for name in OUTPUTS:  # the stages are finished, the outputs not yet written
        remove(run / name)
    no_training(monkeypatch)
    with monkeypatch.context() as m:
        kill_when_renaming(m, killed_at, KeyboardInterrupt())
        assert main(resume(run)) == 130  # KeyboardInterrupt: finished stages are kept
    assert not (run / "results.json").exists() and not (run / LOCK).exists()
    succeeds(capsys, resume(run))
    assert_complete(run)


@pytest.mark.parametrize("lost", OUTPUTS + ["config.yaml", "data", "replay.json"])
def test_a_lost_output_is_rebuilt_on_resume(run, capsys, monkeypatch, lost):
    results = (run / "results.json").read_bytes()
    remove(run / lost)
    no_training(monkeypatch)
    argv = resume(run) if lost != "config.yaml" else \
        ["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox,bias", "--out", str(run)]
    succeeds(capsys, argv)
    assert_complete(run)
    if lost in ("report.md", "forgetting.png", "config.yaml", "data", "replay.json"):
        assert (run / "results.json").read_bytes() == results  # a finished run's results are kept


def test_killed_in_the_middle_of_a_stage_redoes_only_that_stage(run, capsys, monkeypatch):
    for name in OUTPUTS:
        remove(run / name)
    remove(run / "stages" / "02-bias" / "stage.json")  # killed before the stage's marker was written
    (run / "stages" / "02-bias" / "eval.json").write_text('{"half": ')
    trained = []
    real = RunContext.train
    monkeypatch.setattr(RunContext, "train", lambda self, *a, **kw: trained.append(kw["desc"])
                        or real(self, *a, **kw))
    succeeds(capsys, resume(run))
    assert len(trained) == 1 and "bias" in trained[0]
    assert_complete(run)


# --- corrupt files: one line naming the file (and how to recover), nothing changed ---------------------------

def _garbage(text: str):
    return lambda path: path.write_text(text)


def _json(data):
    return lambda path: path.write_text(json.dumps(data))


CORRUPT = {
    "results.json truncated": ("results.json", _garbage('{"run": "ru'), [], "malformed run results"),
    "results.json of the wrong shape": ("results.json", _json({"run": 1}), [], "run results"),
    "stage marker truncated": ("stages/01-toxicity/stage.json", _garbage("{"), ["results.json"], "stage marker"),
    "stage marker a list": ("stages/01-toxicity/stage.json", _json([1]), ["results.json"], "stage marker"),
    "stage evaluation of the wrong type": ("stages/01-toxicity/eval.json",
                                           _json({"toxicity": {"safety": "high", "raw": {}}}), ["results.json"],
                                           "field 'safety' is 'high'"),
    "stage patch manifest edited": ("stages/01-toxicity/patch/patch.json",
                                    lambda p: p.write_text(p.read_text().replace('"1.0.0"', '"2.0.0"')),
                                    ["results.json"], "manifest checksum"),
    "training data truncated": ("data/toxicity.json", _garbage('{"risk": "tox'), ["results.json"],
                                "malformed training data"),
    "forgetting matrix of the wrong shape": ("forgetting.json", _json({"rows": 5}), ["report.md"],
                                             "malformed forgetting matrix"),
    "saved config of the wrong type": ("config.yaml", _garbage("risks: [toxicity, bias]\nseed: one\n"), [],
                                       "field 'seed' is 'one'"),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_run_folder_files_are_named(run, tmp_path, capsys, case):
    name, corrupt, also_removed, message = CORRUPT[case]
    for other in also_removed:
        remove(run / other)
    corrupt(run / name)
    refused(capsys, resume(run), message, root=tmp_path)


@pytest.mark.parametrize("content, message", [("[1, 2", "malformed cached evaluation"),
                                              ('{"toxicity": {"raw": {}}}', "missing field(s) safety")])
def test_corrupt_cache_is_named_with_its_remedy(run, tmp_path, capsys, content, message):
    for cached in (tmp_path / "cache" / "evals").glob("*.json"):
        cached.write_text(content)
    remove(run / "results.json")
    line = refused(capsys, resume(run), message, root=tmp_path)
    assert "delete it to rebuild the cache" in line


# --- a failed start does not block the corrected command -----------------------------------------------------

def _fail_data(monkeypatch):
    def data(self, name):
        raise ComposeError(f"bad data for {name}")

    monkeypatch.setattr(RunContext, "data", data)


def test_a_refused_run_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COMPOSE_CACHE", str(tmp_path / "cache"))
    _fail_data(monkeypatch)
    args = ["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox", "--out", str(tmp_path / "r")]
    refused(capsys, args, "bad data for toxicity")
    assert not (tmp_path / "r").exists()


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COMPOSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r"
    out.mkdir()  # the user's empty folder: it stays, with the failed start's settings in it
    base = ["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox", "--strategy", "sequential",
            "--out", str(out)]
    with monkeypatch.context() as m:
        _fail_data(m)
        refused(capsys, base + ["--tokens", "3"], "bad data")
    assert (out / "config.yaml").is_file()
    succeeds(capsys, base + ["--tokens", "2"])
    assert_complete(out)


# --- the run-folder lock ---------------------------------------------------------------------------------------

def _write_lock(run: Path, pid, host: str | None = None) -> None:
    (run / LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "earlier"}))


def test_a_run_folder_in_use_is_refused(run, tmp_path, capsys):
    other = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(run, other.pid)
        refused(capsys, resume(run), f"in use by process {other.pid}", "delete", root=tmp_path)
    finally:
        other.kill()
        other.wait()


def test_a_lock_of_another_machine_is_respected(run, tmp_path, capsys):
    _write_lock(run, 1, host="elsewhere.example")
    refused(capsys, resume(run), "in use by process 1 on elsewhere.example", root=tmp_path)


@pytest.mark.parametrize("content", ["dead process", "garbage", "empty"])
def test_a_stale_lock_is_taken_over(run, capsys, caplog, content):
    if content == "dead process":
        gone = subprocess.Popen(["true"])
        gone.wait()
        _write_lock(run, gone.pid)
    else:
        (run / LOCK).write_text("" if content == "empty" else "\x00\x01 not json")
    with caplog.at_level(logging.WARNING, logger="compose.io"):
        succeeds(capsys, resume(run))
    assert "stale lock" in caplog.text
    assert_complete(run)


def test_the_lock_is_held_while_the_run_works(run, monkeypatch):
    remove(run / "results.json")
    seen = []
    real = run_mod._run

    def inside(cfg, out_dir, *args):
        seen.append(json.loads((out_dir / LOCK).read_text())["pid"])
        with pytest.raises(ComposeError, match="in use by process"):  # a second run on the folder is refused
            run_mod.execute(cfg, out_dir)
        return real(cfg, out_dir, *args)

    monkeypatch.setattr(run_mod, "_run", inside)
    assert main(resume(run)) == 0
    assert seen == [os.getpid()] and not (run / LOCK).exists()


# --- full disk, read-only and forbidden folders ----------------------------------------------------------------

ERRORS = {errno.ENOSPC: "no space left", errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}


def _commands(run: Path, tmp_path: Path) -> dict:
    return {
        "eval": ["eval", "--model", "tiny-random", "--risks", "tox", "--limit", "2", "--out", str(tmp_path / "e")],
        "patch apply": ["patch", "apply", str(run / "patch"), "--model", "tiny-random", "--output",
                        str(tmp_path / "combined")],
        "report": ["report", str(run), str(run), "--out", str(tmp_path / "cmp")],
        "run": ["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox,bias", "--out",
                str(tmp_path / "r2")],
    }


@pytest.mark.parametrize("command", ["eval", "patch apply", "report", "run"])
@pytest.mark.parametrize("code", ERRORS)
def test_disk_errors_end_in_one_line(run, tmp_path, capsys, monkeypatch, command, code):
    argv = _commands(run, tmp_path)[command]
    target = {"eval": "results.json", "patch apply": "combined", "report": "report.md", "run": ".compose"}[command]
    kill_when_renaming(monkeypatch, target, OSError(code, os.strerror(code), str(tmp_path / target)))
    refused(capsys, argv, ERRORS[code], root=run)
    assert not (tmp_path / "combined").exists()


# --- compose report ----------------------------------------------------------------------------------------------

def test_report_refuses_to_write_over_inputs_or_foreign_folders(run, tmp_path, capsys):
    other = shutil.copytree(run, tmp_path / "other")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused(capsys, ["report", str(run), str(other), "--out", str(run)], "is the input", root=tmp_path)
    refused(capsys, ["report", str(run), str(other), "--out", str(tmp_path / "mine")], "not empty", root=tmp_path)
    (tmp_path / "nothing").mkdir()
    refused(capsys, ["report", str(tmp_path / "nothing")], "not a finished run folder", root=tmp_path)
    out = succeeds(capsys, ["report", str(run), str(other), "--out", str(tmp_path / "cmp")])
    assert "comparison.md" in out
    succeeds(capsys, ["report", str(run), str(other), "--out", str(tmp_path / "cmp")])  # its own folder again
    before = snapshot(tmp_path / "mine")
    succeeds(capsys, ["report", str(run), str(other), "--out", str(tmp_path / "mine"), "--force"])
    assert snapshot(tmp_path / "mine").items() >= before.items()
