"""Capacity search with Optuna on the tiny model: budgets, storage, resuming, two processes on one study."""

import dataclasses
import subprocess
import sys

import optuna
import pytest

from compose import config as config_mod
from compose.cli.config import resolve
from compose.cli.search import allocate, open_study, replay_setting, search, storage_url
from compose.errors import ComposeError
from compose.models import load_model


pytestmark = pytest.mark.usefixtures("shared_cache")


@pytest.mark.parametrize("total", [3, 7, 20, 61])
def test_allocations_respect_the_budget(total):
    for weights in ({"a": 0.0, "b": 0.0, "c": 0.0}, {"a": 1.0, "b": 0.0, "c": 0.0}, {"a": 0.3, "b": 0.3, "c": 0.9}):
        tokens = allocate(weights, total)
        assert sum(tokens.values()) == total and min(tokens.values()) >= 1


def test_impossible_budget_and_storage_errors(tmp_path):
    with pytest.raises(ComposeError, match="budget 2 is smaller than 3 risks"):
        allocate({"a": 1, "b": 1, "c": 1}, 2)
    with pytest.raises(ComposeError, match="unknown storage URL 'redis://x'"):
        storage_url("redis://x", tmp_path)
    assert storage_url(None, tmp_path).startswith("sqlite:///")


def test_search_resumes_and_refuses_other_risks(tmp_path):
    tiny = load_model("tiny-random")
    base = resolve({}, risks="tox,bias", strategy="stacked", model="tiny-random", preset="smoke")
    first = search(base, budget=6, trials=3, out_dir=tmp_path, loaded=tiny)
    assert first["trials"] == 3 and first["completed"] >= 1
    assert first["equal_split"]["trial"] == 0 and first["equal_split"]["tokens"] == {"toxicity": 3, "bias": 3}
    best = first["best"][0]["tokens"]
    assert sum(best.values()) == 6
    study = optuna.load_study(study_name=first["study"], storage=storage_url(None, tmp_path))
    study.enqueue_trial({"w_toxicity": 0.5, "w_bias": 0.5})  # the equal split again: reused, not rerun
    again = search(base, budget=6, trials=1, out_dir=tmp_path, loaded=tiny)
    assert again["trials"] == 4
    last = optuna.load_study(study_name=first["study"], storage=storage_url(None, tmp_path)).trials[-1]
    assert last.user_attrs["same_as"] == 0 and last.value == study.trials[0].value
    assert not (tmp_path / "trials" / f"{first['study']}-0003").exists()
    for name in ("trials.md", "best.yaml", "optimization_history.png", "study.db"):
        assert (tmp_path / name).is_file(), name
    assert config_mod.load_config_file(tmp_path / "best.yaml")["tokens"] == best
    other = resolve({}, risks="tox,harm", strategy="stacked", model="tiny-random", preset="smoke")
    with pytest.raises(ComposeError, match="created for other settings"):
        search(other, budget=6, trials=1, out_dir=tmp_path, study_name=first["study"], loaded=tiny)
    with pytest.raises(ComposeError, match=r"other settings \(seed: 0\)"):  # another seed scores differently
        search(dataclasses.replace(base, seed=1), budget=6, trials=1, out_dir=tmp_path, loaded=tiny)


def test_searched_replay_goes_through_the_strategy_s_options(tmp_path):
    stacked = resolve({}, risks="tox,bias", strategy="stacked", model="tiny-random", preset="smoke")
    assert replay_setting(stacked, 0.3) == {"replay": 0.3}
    merged = resolve({}, risks="tox,bias", strategy="merged", model="tiny-random", preset="smoke")
    with pytest.raises(ComposeError, match="--space replay: unknown option 'replay' of strategy 'merged'; valid: "
                                           "method, weights, density"):
        search(merged, budget=8, trials=1, out_dir=tmp_path, space=("replay",))
    assert not (tmp_path / "study.db").exists()  # refused before the study opened


def test_a_seeded_study_proposes_the_same_allocations(tmp_path):
    def proposals(folder, seed):
        study = open_study(storage_url(None, folder), "s", {"risks": ["a", "b"]}, multi=False, seed=seed)
        return [study.ask().suggest_float("w_a", 0.0, 1.0) for _ in range(4)]

    assert proposals(tmp_path / "one", 3) == proposals(tmp_path / "two", 3) != proposals(tmp_path / "three", 4)


def test_pruning_can_be_turned_off(tmp_path):
    settings = {"risks": ["a", "b"]}
    assert isinstance(open_study(storage_url(None, tmp_path), "p", settings, multi=False).pruner,
                      optuna.pruners.MedianPruner)
    assert isinstance(open_study(storage_url(None, tmp_path), "p", settings, multi=False, prune=False).pruner,
                      optuna.pruners.NopPruner)


def test_total_trials_counts_earlier_runs(tmp_path):
    tiny = load_model("tiny-random")
    base = resolve({}, risks="tox,bias", strategy="stacked", model="tiny-random", preset="smoke")
    assert search(base, budget=4, trials=1, out_dir=tmp_path, loaded=tiny)["trials"] == 1  # an interrupted search
    assert search(base, budget=4, trials=99, out_dir=tmp_path, loaded=tiny, total_trials=2)["trials"] == 2
    assert search(base, budget=4, trials=99, out_dir=tmp_path, loaded=tiny, total_trials=2)["trials"] == 2


def test_two_processes_share_one_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "compose.cli", "search", "--risks", "tox,bias", "--strategy", "sequential",
           "--model", "tiny-random", "--preset", "smoke", "--budget", "4", "--trials", "1", "--storage", url,
           "--study", "shared"]
    procs = [subprocess.Popen(cmd + ["--out", str(tmp_path / f"p{i}")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    study = optuna.load_study(study_name="shared", storage=url)
    assert len(study.trials) == 2
    assert all(sum(t.user_attrs["tokens"].values()) == 4 for t in study.trials if "tokens" in t.user_attrs)


def test_pruner_sees_intermediate_rows_only():
    from compose.forgetting import ForgettingMatrix
    from compose.cli.search import intermediate_value

    def matrix(*rows):
        m = ForgettingMatrix(["toxicity", "bias"])
        for name, kind, trained, scores in rows:
            m.add_row(name, dict(zip(m.risks, scores)), kind=kind, trained=trained)
        return m

    base = ("base", "base", None, (0.5, 0.5))
    assert intermediate_value(matrix(base)) is None
    assert intermediate_value(matrix(base, ("toxicity", "stage", "toxicity", (0.8, 0.4)))) == 0.8
    assert intermediate_value(matrix(base, ("toxicity", "stage", "toxicity", (0.8, 0.4)),
                                     ("bias", "stage", "bias", (0.7, 0.9)))) is None  # finished: not pruned
    specialists = (base, ("toxicity specialist", "specialist", "toxicity", (0.8, 0.4)),
                   ("bias specialist", "specialist", "bias", (0.6, 0.9)))
    assert intermediate_value(matrix(*specialists)) == pytest.approx(0.85)
    assert intermediate_value(matrix(*specialists, ("composed", "composed", None, (0.7, 0.8)))) is None
