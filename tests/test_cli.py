"""The command line: help for every command, one-line errors with exit status 2, patch tools, generate."""

import pytest
import torch

from compose.artifact import save_patch
from compose.cli import COMMANDS, main, make_parser
from compose.models import load_model
from compose.patch import attach_patch, segments_for


def test_help_for_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    parser = make_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"generate", "patch"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name
    assert set(commands) <= set(COMMANDS)


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["generate", "--model", "no-such-model", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["compose: error: unknown model 'no-such-model'; valid: smollm2-135m, tiny-random, a local "
                   "directory or a Hugging Face id"]
    assert main(["patch", "inspect", "/no/such/patch"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture()
def saved_patch(tmp_path):
    tiny = load_model("tiny-random")
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.mul_(3)
    return save_patch(model, tmp_path / "p", name="demo", segments=segments_for([("toxicity", 4)]),
                      base_model="tiny-random", fingerprint=tiny.fingerprint)


def test_patch_inspect_verify_and_generate(saved_patch, capsys):
    assert main(["patch", "inspect", str(saved_patch)]) == 0
    out = capsys.readouterr().out
    assert "demo 1.0.0" in out and "toxicity" in out and "tiny-random" in out
    assert main(["patch", "verify", str(saved_patch), "--model", "tiny-random"]) == 0
    assert "ok: patch 'demo'" in capsys.readouterr().out
    args = ["generate", "--model", "tiny-random", "--max-new-tokens", "8", "hello there"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args[:1] + ["--patch", str(saved_patch)] + args[1:]) == 0
    patched = capsys.readouterr().out
    assert plain.startswith(">>> hello there") and patched.startswith(">>> hello there")
    assert plain != patched


def test_verify_refuses_tampering(saved_patch, capsys):
    (saved_patch / "adapter_config.json").write_text("{}")
    assert main(["patch", "verify", str(saved_patch)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch" in err
