"""experiments/builtin_targets.py: the composed target on the built-in sets from a seed's run files."""

import pytest

from compose.forgetting import ForgettingMatrix

from conftest import experiment

RISKS = ["toxicity", "bias", "harmfulness"]


@pytest.fixture(scope="module")
def builtin_targets():
    return experiment("builtin_targets")


def _matrix(path, risks, rows):
    """rows: (name, kind, trained, {risk: per-prompt safety values})."""
    m = ForgettingMatrix(risks)
    for name, kind, trained, values in rows:
        m.add_row(name, {r: sum(v) / len(v) for r, v in values.items()}, kind=kind, trained=trained,
                  items={r: {"safety": v} for r, v in values.items()}, digests={r: "same" for r in values})
    path.parent.mkdir(parents=True, exist_ok=True)
    m.save(path)


def _seed(root, composed_bias):
    base = {"toxicity": [0.0] * 30, "bias": [0.2] * 30, "harmfulness": [0.0] * 30}
    _matrix(root / "main" / "seed0" / "forgetting.json", RISKS, [
        ("base", "base", None, base),
        ("toxicity", "stage", "toxicity", {**base, "toxicity": [1.0] * 30}),
        ("bias", "stage", "bias", {**base, "toxicity": [1.0] * 30, "bias": [0.9] * 30}),
        ("harmfulness", "stage", "harmfulness", {"toxicity": [1.0] * 28 + [0.0] * 2, "bias": [composed_bias] * 30,
                                                 "harmfulness": [1.0] * 30})])
    _matrix(root / "single" / "seed0" / "builtin-bias" / "forgetting.json", ["bias"],
            [("base", "base", None, {"bias": base["bias"]}), ("bias", "stage", "bias", {"bias": [0.9] * 30})])
    _matrix(root / "single" / "seed0" / "builtin-harmfulness" / "forgetting.json", ["harmfulness"],
            [("base", "base", None, {"harmfulness": [0.0] * 30}),
             ("harmfulness", "stage", "harmfulness", {"harmfulness": [1.0] * 15 + [0.0] * 15})])


@pytest.mark.parametrize("composed_bias, met", [(0.85, True), (0.6, False)])
def test_the_composed_target_per_seed(builtin_targets, tmp_path, capsys, composed_bias, met):
    _seed(tmp_path, composed_bias)
    out = tmp_path / "targets.md"
    assert builtin_targets.main([str(tmp_path / "main"), str(tmp_path / "single"), "--out", str(out)]) == 0
    text = out.read_text()
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| 0 |")}
    assert rows["toxicity"].split(" | ")[3:7] == ["0.000", "1.000", "0.933", "+0.067"]  # base, own, composed, gap
    harm = rows["harmfulness"].split(" | ")
    assert harm[7] == "yes" and harm[-1] == "yes |"  # better than its specialist, far safer than base
    assert rows["bias"].split(" | ")[7] == ("yes" if met else "no")
    assert f"Composed target met in {int(met)} of 1 seeds" in text


def test_a_missing_run_is_a_one_line_error(builtin_targets, tmp_path, capsys):
    _seed(tmp_path, 0.85)
    (tmp_path / "single" / "seed0" / "builtin-bias" / "forgetting.json").unlink()
    assert builtin_targets.main([str(tmp_path / "main"), str(tmp_path / "single")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no forgetting matrix at" in err[0] and "builtin-bias" in err[0]
