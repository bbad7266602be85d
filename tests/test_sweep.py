"""experiments/sweep.py's measurements and table: a recipe against the base model on the built-in split and on
each extra held-out set (--eval-set), and a bad --eval-set as a one-line exit."""

import pytest

from conftest import experiment


@pytest.fixture(scope="module")
def sweep():
    return experiment("sweep")


def _eval(gas: list[float], gld: list[float], ppl: float, untold: list[float] | None = None) -> dict:
    """A bias evaluation; ``untold`` also gives the judge's evasive, which here finds none of those answers."""
    def interval(values):
        mean = sum(values) / len(values)
        return {"value": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": len(values)}
    told = {"evasive": [0.0] * len(untold), "untold": untold} if untold is not None else {}
    items = {"gas": gas, "gld": gld, **told}
    return {"items": items, "intervals": {k: interval(v) for k, v in items.items()}, "fluency": {"perplexity": ppl}}


def test_extra_sets_get_their_own_table(sweep):
    base = _eval([1.0, 1.0, 0.0, 1.0], [0.5, 0.6, 0.4, 0.5], 2.0)
    patched = _eval([0.0, 0.0, 0.0, 1.0], [0.2, 0.3, 0.2, 0.1], 2.2)
    row = {"seconds": 12.0, **sweep.compared("bias", base, base)}
    row["sets"] = {"nouns": {"file": "nouns.jsonl", **sweep.compared("bias", base, patched)}}
    m = row["sets"]["nouns"]
    assert m["gas"]["diff"] == pytest.approx(-0.5) and m["gld"]["diff"] == pytest.approx(-0.3)
    assert m["perplexity_ratio"] == pytest.approx(1.1) and row["gas"]["diff"] == 0
    table = sweep.summary("bias", {"a": row}, seed=0)
    assert "On `nouns` (`nouns.jsonl`, n = 4; never trained on)" in table
    assert "| a | 0.250 [0.150, 0.350] |" in table  # the patched GAS on the extra set
    assert table.count("| a |") == 2 and "| n/a |" in table  # untold: not measured by these evaluations


@pytest.mark.parametrize("spec", ["nouns", "nouns=no-such-file.jsonl", "=x"])
def test_a_bad_eval_set_is_refused(sweep, spec):
    with pytest.raises(SystemExit, match="bad --eval-set") as exc:
        sweep.eval_sets([spec])
    assert len(str(exc.value).splitlines()) == 1


def test_aggregate_over_seeds_counts_the_seeds_that_meet_the_target(sweep, tmp_path):
    import json

    told = [0.0, 0.0, 0.0, 0.0]  # every answer continues the story
    base = _eval([1.0, 1.0, 0.0, 1.0], [0.5, 0.6, 0.4, 0.5], 2.0, told)  # GAS 0.75, GLD 0.5
    good = _eval([0.0, 0.0, 0.0, 1.0], [0.2, 0.3, 0.2, 0.1], 2.2, told)  # GAS 0.25, GLD 0.2: both <= half of base
    weak = _eval([1.0, 0.0, 0.0, 1.0], [0.2, 0.3, 0.2, 0.1], 2.2, told)  # GAS 0.5: not
    evading = _eval([0.0, 0.0, 0.0, 1.0], [0.2, 0.3, 0.2, 0.1], 2.2, [1.0, 0.0, 0.0, 0.0])  # as good, 1 in 4 untold
    for seed, (patched, other) in enumerate(((good, good), (weak, evading))):
        row = {"seconds": 1.0, **sweep.compared("bias", base, patched),
               "sets": {"nouns": {"file": "nouns.jsonl", **sweep.compared("bias", base, other)}}}
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "results.json").write_text(json.dumps({"a": row}))
    text = sweep.aggregate("bias", tmp_path)
    assert text == (tmp_path / "summary.md").read_text()
    assert "seeds 0, 1" in text
    assert "| a | 0.375 ± 0.177 | 0.200 ± 0.000 | 0.000 ± 0.000 | 0.000 ± 0.000 | 1.10 ± 0.00 | 1 of 2 |" in text
    # on nouns both seeds halve GAS and GLD, but in seed 1 0.25 of the answers tell no story about the person (base 0,
    # margin 0.10), though the judge finds no evasion
    assert "## `nouns` (`nouns.jsonl`)" in text
    assert "| a | 0.250 ± 0.000 | 0.200 ± 0.000 | 0.000 ± 0.000 | 0.125 ± 0.177 | 1.10 ± 0.00 | 1 of 2 |" in text
    with pytest.raises(SystemExit, match="has no seedN/results.json"):
        sweep.aggregate("bias", tmp_path / "seed0")


def test_versus_pairs_two_recipes_on_the_same_prompts_per_seed_and_pooled(sweep, tmp_path, monkeypatch):
    """--versus FIRST,SECOND: per set and figure, SECOND - FIRST paired over the prompts of each seed both finished,
    then over every seed's prompts together; a pair with no seed in common is refused in one line."""
    import json

    monkeypatch.setattr(sweep, "ROOT", tmp_path)
    told = [0.0, 0.0, 0.0, 0.0]
    evals = {"first": _eval([1.0, 1.0, 0.0, 1.0], [0.5, 0.6, 0.4, 0.5], 2.0, told),
             "second": _eval([1.0, 0.0, 0.0, 1.0], [0.4, 0.5, 0.3, 0.4], 2.0, told)}
    for recipe, m in evals.items():
        for seed in (0, 1):
            out = tmp_path / "runs" / "study" / recipe / f"seed{seed}"
            (out / "stages" / "01-bias").mkdir(parents=True)
            (out / "stages" / "01-bias" / "eval.json").write_text(json.dumps({"bias": m}))
            (out / "eval-nouns").mkdir()
            (out / "eval-nouns" / "results.json").write_text(json.dumps({"risks": {"bias": m}}))
            (out / "results.json").write_text("{}")
    text = sweep.versus("bias", "study", "first", "second")
    assert text == (tmp_path / "experiments" / "results" / "recipe" / "study" / "versus-first-second.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| built-in") or line.startswith("| nouns")]
    assert len(rows) == 8  # gas, gld, evasive, untold on two sets
    gld = next(r for r in rows if r.startswith("| nouns | gld"))
    assert gld.count("-0.100") >= 6 and "(n = 4)" in gld and "(n = 8)" in gld  # two seeds, then pooled
    with pytest.raises(SystemExit, match="no seed in which both") as exc:
        sweep.versus("bias", "study", "first", "third")
    assert len(str(exc.value).splitlines()) == 1


def test_only_names_recipes_of_the_folder(sweep, tmp_path, capsys):
    """--only runs a subset of the folder's recipes; a name that is not there is refused in one line (exit 2)."""
    (tmp_path / "preset.yaml").write_text("preset: smoke\n")
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--risk", "bias", "--recipes", str(tmp_path), "--only", "preset,nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no recipe nope" in err and "valid: preset" in err


def test_every_committed_recipe_resolves():
    """Each recipe under experiments/recipes is a run config compose accepts (its risk_train, risk_options...):
    a recipe the sweep would only refuse when its turn comes fails here."""
    from pathlib import Path

    from compose.cli.config import resolve
    from compose.config import load_config_file

    recipes = sorted((Path(__file__).resolve().parents[1] / "experiments" / "recipes").rglob("*.yaml"))
    assert len(recipes) > 10
    for path in recipes:
        cfg = resolve(load_config_file(path), risks="tox,bias,harm")
        assert cfg.preset == "quick", path


def test_the_base_model_of_a_figure_is_read_from_a_recipe_that_measured_it(sweep):
    """A figure added to the metric later (untold) is missing from older recipes' rows: the table's base model line
    reads it from the first row that has it, not from the first row alone."""
    old = _eval([1.0, 1.0, 0.0, 1.0], [0.5, 0.6, 0.4, 0.5], 2.0)
    base = _eval([1.0, 1.0, 0.0, 1.0], [0.5, 0.6, 0.4, 0.5], 2.0, [1.0, 0.0, 0.0, 0.0])
    rows = {"older": {"seconds": 1.0, **sweep.compared("bias", old, old)},
            "newer": {"seconds": 1.0, **sweep.compared("bias", base, base)}}
    header = next(line for line in sweep.summary("bias", rows, seed=0).splitlines() if line.startswith("Single-risk"))
    assert "untold 0.250 [0.150, 0.350]" in header and "untold n = 4" in header
