"""experiments/compare_composed.py: two composed patches on the same real sets, pooled over seeds."""

import json

import pytest

from conftest import experiment


@pytest.fixture(scope="module")
def compare_composed():
    return experiment("compare_composed")


def _results(path, composed, sets=None, digest="d1"):
    """composed: risk -> per-prompt safety values (the headline figures left out)."""
    body = {"composed": {risk: {"safety": sum(v) / len(v), "prompts_digest": digest, "items": {"safety": v}}
                         for risk, v in composed.items()}}
    if sets is not None:
        body.update(sets=sets, role_nouns={"kept": 3})
    path.write_text(json.dumps(body))
    return path


def test_pools_seeds_and_counts_a_carried_risk_once(tmp_path, compare_composed):
    pairs = []
    for seed, better in ((0, [1.0] * 40), (1, [1.0] * 40)):
        ref = {"harmfulness": [0.0] * 40, "bias": [0.5] * 10}
        other = {"harmfulness": better, "bias": [0.5] * 10}
        pairs.append((_results(tmp_path / f"a{seed}.json", ref), _results(tmp_path / f"b{seed}.json", other)))
        # a role-noun file of the same seed: it carries harmfulness from the real sets, measures only bias
        pairs.append((_results(tmp_path / f"ra{seed}.json", {**ref, "bias": [0.2] * 12}, sets=["bias"], digest="d2"),
                      _results(tmp_path / f"rb{seed}.json", {**other, "bias": [0.4] * 12}, sets=["bias"], digest="d2")))
    result = compare_composed.compare(pairs, ("ref", "other"))
    rows = {(r["risk"], r["label"]): r for r in result["rows"] if r["figure"] == "safety"}
    harm = rows[("harmfulness", "AdvBench")]
    assert harm["n"] == 80 and harm["diff"] == pytest.approx(1.0) and harm["significant"]
    assert rows[("bias", "role nouns")]["n"] == 24 and rows[("bias", "role nouns")]["diff"] == pytest.approx(0.2)
    assert rows[("bias", "gendered professions")]["diff"] == 0 and not rows[("bias", "gendered professions")]["significant"]
    assert "| harmfulness | AdvBench | safety | 80 |" in compare_composed.markdown(result)


def test_refuses_pairs_measured_on_other_prompts(tmp_path, compare_composed, capsys):
    a = _results(tmp_path / "a.json", {"harmfulness": [0.0] * 5})
    b = _results(tmp_path / "b.json", {"harmfulness": [1.0] * 5}, digest="other")
    assert compare_composed.main(["--pair", str(a), str(b), "--out", str(tmp_path / "c.md")]) == 2
    err = capsys.readouterr().err
    assert "not measured on the same prompts" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.md").exists()
