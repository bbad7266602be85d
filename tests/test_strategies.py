"""What defines each strategy, checked on the tiny model: break replay, freezing, merging or concatenation and a
test here fails. (Shapes and files of every strategy's run are covered by tests/test_run.py.)"""

import json

import pytest
import torch

from compose import config as config_mod
from compose import run as run_mod
from compose.artifact import patch_matrix
from strategies import STRATEGIES


pytestmark = pytest.mark.usefixtures("shared_cache")


@pytest.fixture()
def trained(monkeypatch):
    """Records the SFT examples and preference pairs of every training call, in order."""
    calls = []
    real = run_mod.RunContext.train

    def spy(self, model, sft, pairs, *args, **kwargs):
        calls.append({"sft": list(sft), "pairs": list(pairs)})
        return real(self, model, sft, pairs, *args, **kwargs)

    monkeypatch.setattr(run_mod.RunContext, "train", spy)
    return calls


def run(tiny, out, strategy, risks="tox,bias", **flags):
    cfg = config_mod.resolve({}, risks=risks, strategy=strategy, model="tiny-random", preset="smoke", **flags)
    run_mod.execute(cfg, out, loaded=tiny)
    return out


def prompts_of(out, risk: str) -> set[str]:
    data = json.loads((out / "data" / f"{risk}.json").read_text())
    return {e["prompt"] for e in data["sft"]} | {p["prompt"] for p in data["pairs"]}


@pytest.mark.parametrize("strategy, replayed", [("sequential", False), ("sequential-replay", True)])
def test_replay_mixes_earlier_risks_into_later_stages(tiny, tmp_path, trained, strategy, replayed):
    out = run(tiny, tmp_path / strategy, strategy, replay=0.5)
    tox, bias = prompts_of(out, "toxicity"), prompts_of(out, "bias")
    first, second = ({e["prompt"] for e in call["sft"]} for call in trained)
    assert first <= tox and not first & bias
    from_tox = second & tox - bias
    assert bool(from_tox) == replayed
    if replayed:  # about half of stage 2 is replayed toxicity data
        assert 0.25 <= len(from_tox) / len(second) <= 0.75


def test_joint_trains_once_on_every_risk(tiny, tmp_path, trained):
    out = run(tiny, tmp_path, "joint")
    (call,) = trained
    seen = {e["prompt"] for e in call["sft"]}
    assert seen & prompts_of(out, "toxicity") and seen & prompts_of(out, "bias")


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
    covered = {"sequential", "sequential-replay", "joint", "concatenated", "merged", "stacked"}
    assert set(STRATEGIES) == covered, "a new strategy needs a test of its defining property (stacked: test_run.py)"
