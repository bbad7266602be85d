"""Fault injection on input: bad flags, config files, data and plugin files for every command end in one line
on stderr with exit status 2 (no traceback, nothing written); options that would hang or be ignored are refused."""

from __future__ import annotations

import logging

import pytest

from compose.errors import ComposeError
from compose.io import MARKER
from faultlib import refused, succeeds

RUN = ["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox,bias"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


# --- compose run: flags --------------------------------------------------------------------------------------

RUN_FLAGS = {
    "tokens overflow": (["--tokens", "99999999999999999999"], "up to 4096"),
    "tokens beyond the context": (["--tokens", "300"], "context"),
    "tokens not a number": (["--tokens", "tox=many"], "bad --tokens entry"),
    "replay with sequential": (["--strategy", "sequential", "--replay", "0.3"], "--replay is not used"),
    "replay with joint": (["--strategy", "joint", "--replay", "0.3"], "strategies that use it: sequential-replay"),
    "merge with stacked": (["--strategy", "stacked", "--merge", "ties"], "--merge is not used"),
    "unknown strategy option": (["--strategy", "merged", "--option", "densty=0.3"],
                                "unknown option 'densty' of strategy 'merged' (did you mean 'density'?); valid: "
                                "method, weights, density"),
    "option of a strategy without options": (["--strategy", "joint", "--option", "replay=0.3"],
                                             "valid: none (it has no options)"),
    "bad option value": (["--strategy", "merged", "--option", "method=best"], "unknown merge method 'best'"),
    "bad option syntax": (["--option", "replay"], "bad --option 'replay'; expected KEY=VALUE"),
    "unknown train setting": (["--train", "sft_epoch=2"], "unknown setting 'sft_epoch' in --train"),
    "bad train value": (["--train", "sft_lr=fast"], "--train: field 'sft_lr' is 'fast'"),
    "a folder as model": (["--model", "/etc"], "not a saved model"),
    "a file as model": (["--model", "/etc/hostname"], "not a saved model"),
    "resume of nothing": (["--resume"], "--resume needs --out"),
    "seed and seeds": (["--seed", "1", "--seeds", "0,1"], "either --seed or --seeds"),
    "seeds not numbers": (["--seeds", "a,b"], "bad --seeds"),
    "a folder as data": (["--data", "tox=/etc"], "/etc"),
    "a data file of no known format": (["--data", "tox:train=/etc/hostname"], "unsupported format"),
}


@pytest.mark.parametrize("case", RUN_FLAGS)
def test_run_refuses_bad_flags(tmp_path, capsys, case):
    args, message = RUN_FLAGS[case]
    refused(capsys, RUN + args + ["--out", str(tmp_path / "r")], message)
    assert not (tmp_path / "r" / "config.yaml").exists()


# --- run configs (YAML): wrong types name the field, the value and what is valid -----------------------------

CONFIGS = {
    "replay as text": ("replay: lots\n", "field 'replay' is 'lots'; expected a number"),
    "replay out of range": ("replay: 3\n", "field 'replay' is 3"),
    "limit as a fraction": ("train_limit: 1.5\n", "field 'train_limit' is 1.5; expected an integer"),
    "limit below one": ("eval_limit: 0\n", "field 'eval_limit' is 0"),
    "seed as text": ("seed: one\n", "field 'seed'"),
    "train not a mapping": ("train: 5\n", "field 'train' is 5; expected a mapping"),
    "train setting as text": ("train:\n  sft_lr: fast\n", "train: field 'sft_lr' is 'fast'"),
    "unknown train setting": ("train:\n  sft_lrr: 0.1\n", "unknown setting 'sft_lrr'"),
    "risks as a number": ("risks: 7\n", "field 'risks' is 7"),
    "tokens as a list": ("tokens: [1, 2]\n", "field 'tokens'"),
    "tokens overflow": ("tokens: 100000000000\n", "up to 4096"),
    "merge density out of range": ("merge:\n  density: 2\n", "merge: field 'density' is 2"),
    "constraint not a list": ("constraints:\n  tox:\n    after: bias\n", "field 'after' is 'bias'; expected a list"),
    "unknown constraint": ("constraints:\n  tox:\n    before: [bias]\n", "unknown setting 'before'"),
    "constraint on an unknown risk": ("constraints:\n  tox:\n    after: [biass]\n", "unknown risk 'biass'"),
    "cycle written with aliases": ("constraints:\n  tox:\n    after: [bias]\n  bias:\n    after: [tox]\n",
                                   "dependency cycle"),
    "unknown setting": ("replays: 0.1\n", "unknown setting 'replays'"),
    "not YAML": ("risks: [tox\n", "malformed config file"),
    "a list, not settings": ("- tox\n- bias\n", "expected a mapping"),
    "binary garbage": ("\x00\x01\x02", "malformed config file"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_run_refuses_bad_config_files(tmp_path, capsys, case):
    text, message = CONFIGS[case]
    (tmp_path / "bad.yaml").write_text(text)
    refused(capsys, RUN + ["--config", "bad.yaml", "--out", "r"], message, root=tmp_path)


@pytest.mark.parametrize("case", ["cycle written with aliases", "constraint not a list", "replay as text"])
def test_graph_refuses_bad_config_files(tmp_path, capsys, case):
    text, message = CONFIGS[case]
    (tmp_path / "bad.yaml").write_text("risks: [tox, bias]\n" + text)
    refused(capsys, ["graph", "bad.yaml"], message, root=tmp_path)


def test_config_settings_the_strategy_ignores_are_refused(tmp_path, capsys, monkeypatch):
    from compose.cli import run as run_mod

    def stop(*args, **kwargs):
        raise ComposeError("stopped before the run: only the settings are checked here")

    monkeypatch.setattr(run_mod, "execute", stop)
    (tmp_path / "c.yaml").write_text("strategy: sequential\nreplay: 0.5\n")
    refused(capsys, RUN + ["--config", "c.yaml"], "the config file sets 'replay', which strategy 'sequential' does "
                                                  "not use; strategies that use it: sequential-replay, stacked")
    (tmp_path / "c.yaml").write_text("strategy: sequential-replay\nreplay: 0.5\n")
    refused(capsys, RUN + ["--config", "c.yaml"], "stopped before the run")
    (tmp_path / "c.yaml").write_text("strategy: sequential\nreplay: 0.25\n")  # a saved config: every default
    refused(capsys, RUN + ["--config", "c.yaml"], "stopped before the run")
    (tmp_path / "c.yaml").write_text("strategy: joint\nactivation: all\n")  # another strategy's top-level option
    refused(capsys, RUN + ["--config", "c.yaml"], "the config file sets 'activation', which strategy 'joint' does "
                                                  "not use; strategies that use it: modular")
    (tmp_path / "c.yaml").write_text("strategy: modular\nactivation: all\n")
    refused(capsys, RUN + ["--config", "c.yaml"], "stopped before the run")


def test_run_refuses_an_output_folder_it_did_not_create(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    refused(capsys, RUN + ["--out", "mine"], "not empty", "--force", root=tmp_path)
    (tmp_path / "file").write_text("x")
    refused(capsys, RUN + ["--out", "file"], "is a file", root=tmp_path)


# --- compose generate: nothing hangs ---------------------------------------------------------------------------

GENERATE = {
    "max new tokens beyond the context": (["--max-new-tokens", "99999999"], "does not fit"),
    "max new tokens zero": (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    "negative temperature": (["--temperature", "-1"], "--temperature must be a positive number"),
    "zero temperature": (["--temperature", "0"], "--temperature must be a positive number"),
    "infinite temperature": (["--temperature", "inf"], "--temperature"),
    "no samples": (["--samples", "0"], "--samples must be from 1 to 64"),
    "too many samples": (["--samples", "100000"], "--samples must be from 1 to 64"),
    "prompt longer than the context": (["--raw", "word " * 600], "too long"),
    "a folder as model": (["--model", "/etc"], "not a saved model"),
    "missing patch": (["--patch", "no-such-patch"], "does not exist"),
}


@pytest.mark.parametrize("case", GENERATE)
def test_generate_refuses(tmp_path, capsys, case):
    args, message = GENERATE[case]
    argv = ["generate", "--model", "tiny-random", *args]
    refused(capsys, argv if "--raw" in args else argv + ["hello"], message, root=tmp_path)


def test_a_long_prompt_gets_a_warning(capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="compose.generation"):
        succeeds(capsys, ["generate", "--model", "tiny-random", "--raw", "--max-new-tokens", "2", "word " * 130])
    assert "may take a while" in caplog.text


# --- compose eval ----------------------------------------------------------------------------------------------

EVAL = {
    "option value of the wrong type": (["--opt", "tox:samples=abc"], "field 'samples' is 'abc'; expected an integer"),
    "samples zero": (["--opt", "tox:samples=0"], "field 'samples' is 0"),
    "negative temperature": (["--opt", "tox:temperature=-1"], "field 'temperature'"),
    "top_p above one": (["--opt", "tox:top_p=2"], "field 'top_p' is 2"),
    "overflowing max_new_tokens": (["--opt", "tox:max_new_tokens=99999999"], "does not fit"),
    "template as a number": (["--opt", "tox:template=5"], "field 'template' is 5"),
    "unknown option": (["--opt", "tox:sample=2"], "unknown option 'sample'"),
    "option without a risk": (["--opt", "samples=2"], "bad --opt"),
    "option for a risk not evaluated": (["--opt", "harm:samples=2"], "not evaluated"),
    "limit zero": (["--limit", "0"], "--limit must be >= 1"),
    "missing data file": (["--data", "tox:eval=nothing.jsonl"], "nothing.jsonl"),
    "bad data split": (["--data", "tox:test=a.jsonl"], "bad --data"),
}


@pytest.mark.parametrize("case", EVAL)
def test_eval_refuses(tmp_path, capsys, case):
    args, message = EVAL[case]
    refused(capsys, ["eval", "--model", "tiny-random", "--risks", "tox", "--limit", "2", *args, "--out", "e"],
            message, root=tmp_path)


def test_eval_writes_only_its_own_folder(tmp_path, capsys):
    argv = ["eval", "--model", "tiny-random", "--risks", "tox", "--limit", "2", "--out", "e"]
    succeeds(capsys, argv)
    succeeds(capsys, argv)  # its own folder again: allowed
    assert (tmp_path / "e" / MARKER).is_file() and (tmp_path / "e" / "results.json").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.json").write_text("my results")
    refused(capsys, argv[:-1] + ["mine"], "not empty", root=tmp_path)


# --- plugins -----------------------------------------------------------------------------------------------------

PLUGINS = {
    "a data file": ("data.csv", "prompt\nhi\n", "is not a Python file"),
    "missing file": ("gone.py", None, "does not exist"),
    "binary garbage": ("junk.py", "\x00\x01\x02", "failed to load"),
    "python without risks": ("empty.py", "x = 1\n", "defines no subclass"),
    "a module that does not exist": ("no_such_plugin_module", None, "cannot import plugin"),
}


@pytest.mark.parametrize("case", PLUGINS)
def test_plugin_refused(tmp_path, capsys, case):
    name, text, message = PLUGINS[case]
    if text is not None:
        (tmp_path / name).write_text(text)
    refused(capsys, ["--plugin", name, "risks"], message, root=tmp_path)


# --- compose search ------------------------------------------------------------------------------------------------

SEARCH = ["search", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox", "--budget", "4", "--trials", "1"]


def test_search_refuses_a_garbage_study_database(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.db").write_bytes(b"not a database" * 100)
    refused(capsys, SEARCH + ["--out", "s"], "file is not a database")
    assert (tmp_path / "s" / "study.db").read_bytes() == b"not a database" * 100
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["study.db", "study.db.lock"]  # the creation lock
    (tmp_path / "garbage.db").write_bytes(b"\x00garbage" * 100)
    refused(capsys, SEARCH + ["--out", "s2", "--storage", f"sqlite:///{tmp_path / 'garbage.db'}"],
            "cannot open study storage")


@pytest.mark.parametrize("storage, message", [("nosuch://x", "unknown storage URL"),
                                              ("postgresql://nobody@127.0.0.1:1/db", "cannot open study storage"),
                                              ("sqlite", "unknown storage URL")])
def test_search_refuses_unusable_storage(tmp_path, capsys, storage, message):
    refused(capsys, SEARCH + ["--out", "s", "--storage", storage], message)


@pytest.mark.parametrize("args, message", [(["--budget", "99999999999999"], "up to 4096"),
                                           (["--budget", "300"], "context"),
                                           (["--min-tokens", "0"], "--min-tokens must be >= 1"),
                                           (["--fluency-bound", "nan"], "--fluency-bound must be a positive number"),
                                           (["--trials", "0"], "--trials must be >= 1")])
def test_search_refuses_bad_numbers(tmp_path, capsys, args, message):
    refused(capsys, SEARCH + args + ["--out", "s"], message)
    assert not (tmp_path / "s" / "trials.md").exists()


def test_search_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused(capsys, SEARCH + ["--out", "mine"], "not empty", root=tmp_path)


# --- compose graph -----------------------------------------------------------------------------------------------

def test_graph_never_writes_over_its_input_or_a_foreign_file(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("risks: [tox, bias]\n")
    refused(capsys, ["graph", "c.yaml", "--out", "c.yaml"], "is the input", root=tmp_path)
    refused(capsys, ["graph", "c.yaml", "--out", "c.yaml", "--force"], "is the input", root=tmp_path)
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\nmy holiday")
    refused(capsys, ["graph", "c.yaml", "--out", "photo.png"], "not written by compose", root=tmp_path)
    succeeds(capsys, ["graph", "c.yaml", "--out", "g.png"])
    succeeds(capsys, ["graph", "c.yaml", "--out", "g.png"])  # its own picture: replaced
