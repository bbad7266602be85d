"""What defines each strategy, checked on the tiny model: break replay, freezing, merging or concatenation and a
test here fails. (Shapes and files of every strategy's run are covered by tests/test_run.py.)"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from compose.artifact import load_patch, patch_matrix
from compose import context as context_mod
from compose.cli import run as run_mod
from compose.cli import main
from compose.cli.config import resolve, run_risks
from compose.context import RunContext
from compose.strategy import check_strategy_class, option_fields, options_from_config
from strategies import STRATEGIES, get_strategy

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("shared_cache")


@pytest.fixture()
def trained(monkeypatch):
    """Records the SFT examples and preference pairs of every training call, in order."""
    calls = []
    real = RunContext.train

    def spy(self, model, sft, pairs, *args, **kwargs):
        calls.append({"sft": list(sft), "pairs": list(pairs)})
        return real(self, model, sft, pairs, *args, **kwargs)

    monkeypatch.setattr(RunContext, "train", spy)
    return calls


def run(tiny, out, strategy, risks="tox,bias", **flags):
    cfg = resolve({}, risks=risks, strategy=strategy, model="tiny-random", preset="smoke", **flags)
    run_mod.execute(cfg, out, loaded=tiny)
    return out


def prompts_of(out, risk: str) -> set[str]:
    data = json.loads((out / "data" / f"{risk}.json").read_text())
    return {e["prompt"] for e in data["sft"]} | {p["prompt"] for p in data["pairs"]}


@pytest.mark.parametrize("strategy, replayed", [("sequential", False), ("sequential-replay", True)])
def test_replay_mixes_earlier_risks_into_later_stages(tiny, tmp_path, trained, strategy, replayed):
    out = run(tiny, tmp_path / strategy, strategy, **({"replay": 0.5} if replayed else {}))
    tox, bias = prompts_of(out, "toxicity"), prompts_of(out, "bias")
    first, second = ({e["prompt"] for e in call["sft"]} for call in trained)
    assert first <= tox and not first & bias
    from_tox = second & tox - bias
    assert bool(from_tox) == replayed
    if replayed:  # about half of stage 2 is replayed toxicity data
        assert 0.25 <= len(from_tox) / len(second) <= 0.75


def test_fresh_replay_adds_unseen_prompts_answered_by_each_risk_s_own_stage(tiny, tmp_path, trained):
    """replay_fresh: a later stage also learns earlier risks' training prompts that no stage trained on, each with the
    greedy answer of the patch that risk's own stage left (regenerated here from its saved weights: stage 3 answers
    toxicity's with stage 1's patch, not stage 2's); a resumed stage reads them back."""
    risks = "tox,bias,harm"
    out = run(tiny, tmp_path / "run", "sequential-replay", risks=risks, train={"replay_fresh": 3})
    by_name = run_risks(resolve({}, risks=risks, model="tiny-random", preset="smoke"))
    assert not any(e.get("fresh") for e in trained[0]["sft"])
    fresh = [e for e in trained[2]["sft"] if e.get("fresh")]
    assert fresh == json.loads((out / "data" / "fresh-03-harmfulness.json").read_text())["examples"]
    for risk, stage in (("toxicity", "01-toxicity"), ("bias", "02-bias")):
        mine = [e for e in fresh if e["replay_of"] == risk]
        assert 1 <= len(mine) <= 3 and all(e["source"] == "risk" for e in mine)
        assert {e["prompt"] for e in mine} <= set(by_name[risk].prompts("train")) - prompts_of(out, risk)
        model = load_patch(tiny, out / "stages" / stage / "patch")
        again = by_name[risk].respond(model, tiny.tokenizer, [e["prompt"] for e in mine])
        assert [e["completion"] for e in mine] == [a for a in again if a.strip()]
    (out / "data" / "fresh-03-harmfulness.json").write_text(json.dumps({"examples": fresh[:1]}))
    shutil.rmtree(out / "stages" / "03-harmfulness")
    (out / "results.json").unlink()
    trained.clear()
    run(tiny, out, "sequential-replay", risks=risks, train={"replay_fresh": 3})
    assert [e for e in trained[0]["sft"] if e.get("fresh")] == fresh[:1]


def test_fresh_replay_of_a_balanced_risk_carries_its_equalizing_loss(tiny, tmp_path, monkeypatch):
    """A fresh replayed bias example joins the bias risk's group of the equalizing loss, as its replayed examples do;
    the held-back examples the decision probe watches are never fresh ones."""
    tagged, held = [], []
    real_balanced, real_held = RunContext.balanced, context_mod.held_back

    def balanced(self, sft):
        out, groups = real_balanced(self, sft)
        tagged.append(out)
        return out, groups

    def held_back(sft, n, source="risk"):
        held.append(real_held(sft, n, source))
        return held[-1]

    monkeypatch.setattr(RunContext, "balanced", balanced)
    monkeypatch.setattr(context_mod, "held_back", held_back)
    run(tiny, tmp_path, "sequential-replay", risks="bias,tox", train={"replay_fresh": 2, "balance_weight": 1.0})
    fresh = [e for e in tagged[-1] if e.get("fresh")]
    assert fresh and all(e["replay_of"] == "bias" and e["balance"] == 0 for e in fresh)
    assert not any(e.get("fresh") for examples in held for e in examples)


def test_joint_trains_once_on_every_risk(tiny, tmp_path, trained):
    out = run(tiny, tmp_path, "joint")
    (call,) = trained
    seen = {e["prompt"] for e in call["sft"]}
    assert seen & prompts_of(out, "toxicity") and seen & prompts_of(out, "bias")


@pytest.mark.parametrize("activation", ["subsets", "all"])
def test_modular_trains_a_block_per_risk_at_once(tiny, tmp_path, trained, activation):
    """One training call on every risk; with subsets each risk example names its own risk's block and a retain
    example none (with all, no example names one); the patch holds one block per risk, each from its risk's
    initialisation text; the attention hook is gone afterwards."""
    out = run(tiny, tmp_path, "modular", tokens="tox=3,bias=5", options={"--option": {"activation": activation}})
    (call,) = trained
    if activation == "subsets":
        own = {"toxicity": 0, "bias": 1}
        for risk in own:
            data = json.loads((out / "data" / f"{risk}.json").read_text())["sft"]
            tagged = {e["prompt"]: e["block"] for e in call["sft"] if e["prompt"] in {d["prompt"] for d in data}}
            sources = {d["prompt"]: d.get("source") for d in data}
            assert tagged and all(b == (own[risk] if sources[p] == "risk" else -1) for p, b in tagged.items())
    else:
        assert not any("block" in e for e in call["sft"])
    final, manifest = patch_matrix(out / "patch")
    assert final.shape[0] == 8
    assert [(s["risk"], s["start"], s["tokens"]) for s in manifest["risks"]] == [("toxicity", 0, 3), ("bias", 3, 5)]
    assert not tiny.model._forward_pre_hooks


def specialists(out, risks=("toxicity", "bias")) -> list[torch.Tensor]:
    return [patch_matrix(out / "specialists" / r / "patch")[0] for r in risks]


def test_concatenated_is_the_specialists_end_to_end(tiny, tmp_path):
    out = run(tiny, tmp_path, "concatenated", tokens="tox=3,bias=5")
    final, _ = patch_matrix(out / "patch")
    assert torch.equal(final, torch.cat(specialists(out)))


@pytest.mark.parametrize("weights, share", [(None, 0.5), ({"toxicity": 3.0, "bias": 1.0}, 0.75)])
def test_merged_average_is_the_weighted_mean_of_the_specialists(tiny, tmp_path, weights, share):
    out = run(tiny, tmp_path, "merged", tokens="4", merge={"method": "average", "weights": weights, "density": 0.5})
    final, _ = patch_matrix(out / "patch")
    tox, bias = specialists(out)
    assert not torch.allclose(tox, bias)
    assert torch.allclose(final, share * tox + (1 - share) * bias, atol=1e-6)


def test_every_registered_strategy_is_covered_here():
    covered = {"sequential", "sequential-replay", "joint", "concatenated", "merged", "stacked", "modular"}
    assert set(STRATEGIES) == covered, "a new strategy needs a test of its defining property (stacked: test_run.py)"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_contract(name):
    """Every registered strategy: a complete class, options that are a dataclass with a help text per field and
    defaults that validate, read back from a resolved run config, and listed by `compose strategies`."""
    cls = STRATEGIES[name]
    assert check_strategy_class(cls) == [] and cls.name == name and cls.description
    assert all(f.metadata.get("help") for f in option_fields(cls))
    cfg = resolve({}, risks="tox,bias", strategy=name, model="tiny-random", preset="smoke")
    assert options_from_config(cls, cfg.to_dict()) == cls.Options()
    assert isinstance(get_strategy(name, cfg.to_dict()).options, cls.Options)


def test_strategies_command_lists_every_strategy_and_its_options(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in STRATEGIES) and "replay (default 0.25)" in out and "density" in out
    assert main(["strategies", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["merged"]["section"] == "merge" and set(rows["merged"]["options"]) == {"method", "weights", "density"}


def test_options_reach_the_strategy():
    cfg = resolve({}, risks="tox,bias", strategy="merged", model="tiny-random", preset="smoke",
                             options={"--option": {"method": "ties", "density": 0.3}})
    assert cfg.merge == {"method": "ties", "weights": None, "density": 0.3}
    assert get_strategy("merged", cfg.to_dict()).options.density == 0.3
    cfg = resolve({}, risks="tox,bias", strategy="stacked", model="tiny-random", preset="smoke",
                             options={"--option": {"replay": 0}})
    assert get_strategy("stacked", cfg.to_dict()).options.replay == 0.0


@pytest.fixture()
def plugin_strategy():
    """The example plugin's strategy, unregistered again afterwards."""
    yield ROOT / "experiments" / "examples" / "my_strategy.py"
    STRATEGIES.pop("cumulative", None)


def test_a_new_strategy_is_one_module_plus_one_line(tmp_path, plugin_strategy, trained, capsys):
    """experiments/examples/my_strategy.py, loaded with --plugin: listed, run through the stage loop (stage 2
    trains on both risks), resumed without training again."""
    assert main(["--plugin", str(plugin_strategy), "strategies"]) == 0
    assert "cumulative" in capsys.readouterr().out
    out = tmp_path / "run"
    args = ["--plugin", str(plugin_strategy), "run", "--strategy", "cumulative", "--risks", "tox,bias", "--model",
            "tiny-random", "--preset", "smoke", "--out", str(out)]
    assert main(args) == 0
    matrix = json.loads((out / "forgetting.json").read_text())
    assert [r["name"] for r in matrix["rows"]] == ["base", "toxicity", "bias"]
    first, second = ({e["prompt"] for e in call["sft"]} for call in trained)
    tox, bias = prompts_of(out, "toxicity"), prompts_of(out, "bias")
    assert first <= tox and second & tox and second & bias
    assert main(args) == 0 and len(trained) == 2  # finished: nothing trained again
