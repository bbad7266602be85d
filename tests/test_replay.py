"""ReplayBuffer: share of replayed items, balance across risks, reproducibility, tagging, save/load."""

import json
from collections import Counter

import pytest

from compose.errors import ComposeError
from compose.replay import ReplayBuffer, replay_count


def sft(risk, n):
    return [{"prompt": f"{risk} prompt {i}", "completion": f"{risk} answer {i}"} for i in range(n)]


def pairs(risk, n):
    return [{"prompt": f"{risk} p{i}", "chosen": "safe", "rejected": "unsafe"} for i in range(n)]


def buffer(**sizes):
    b = ReplayBuffer()
    for risk, (n_sft, n_pairs) in sizes.items():
        b.add(risk, sft(risk, n_sft), pairs(risk, n_pairs))
    return b


def test_add_len_risks():
    b = buffer(tox=(10, 6), bias=(4, 2))
    assert len(b) == 22 and b.risks == ["tox", "bias"]
    b.add("tox", sft("tox", 3), [])  # re-adding replaces (a resumed stage adds again) and moves to the end
    assert len(b) == 9 and b.risks == ["bias", "tox"]
    assert ReplayBuffer().risks == [] and len(ReplayBuffer()) == 0


def test_add_copies_its_input():
    data = sft("tox", 2)
    b = ReplayBuffer()
    b.add("tox", data, [])
    data[0]["prompt"] = "changed"
    assert b.items("tox", "sft")[0]["prompt"] == "tox prompt 0"


def test_mix_share_balance_and_tags():
    b = buffer(tox=(100, 100), bias=(100, 100))
    new_sft, new_pairs = sft("harm", 60), pairs("harm", 30)
    mixed_sft, mixed_pairs = b.mix(new_sft, new_pairs, share=0.25, seed=0)
    for mixed, new in ((mixed_sft, new_sft), (mixed_pairs, new_pairs)):
        replayed = [x for x in mixed if "replay_of" in x]
        assert len(replayed) == replay_count(len(new), 0.25) == round(len(new) / 3)
        assert len(replayed) / len(mixed) == pytest.approx(0.25, abs=0.01)
        counts = Counter(x["replay_of"] for x in replayed)
        assert set(counts) == {"tox", "bias"} and abs(counts["tox"] - counts["bias"]) <= 1
        assert all(x["prompt"].startswith(x["replay_of"]) for x in replayed)  # tag names the item's own risk
        assert min(i for i, x in enumerate(mixed) if "replay_of" in x) < len(new)  # shuffled in, not appended
        assert sorted(x["prompt"] for x in mixed if "replay_of" not in x) == sorted(x["prompt"] for x in new)
        assert len({x["prompt"] for x in replayed}) == len(replayed)  # no item drawn twice
    assert all("replay_of" not in x for x in new_sft + new_pairs)  # inputs untouched


def test_mix_is_reproducible_and_seed_dependent():
    b = buffer(tox=(50, 50), bias=(50, 50))
    args = (sft("harm", 40), pairs("harm", 40))
    assert b.mix(*args, seed=3) == b.mix(*args, seed=3)
    assert b.mix(*args, seed=3) != b.mix(*args, seed=4)
    assert buffer(tox=(50, 50), bias=(50, 50)).mix(*args, seed=3) == b.mix(*args, seed=3)


def test_mix_caps_at_what_the_buffer_holds_and_rebalances():
    b = buffer(tox=(2, 0), bias=(50, 0))
    mixed, mixed_pairs = b.mix(sft("harm", 60), pairs("harm", 5), share=0.5)
    counts = Counter(x["replay_of"] for x in mixed if "replay_of" in x)
    assert counts == {"tox": 2, "bias": 50}  # wanted 60 (30 each); tox has only 2, bias gives the rest it has
    assert len(mixed_pairs) == 5 and all("replay_of" not in x for x in mixed_pairs)  # no pairs stored


def test_uneven_quota_split_is_balanced():
    b = buffer(a=(20, 0), b=(20, 0), c=(20, 0))
    mixed, _ = b.mix(sft("d", 21), [], share=0.25)  # 7 replayed over 3 risks
    counts = Counter(x["replay_of"] for x in mixed if "replay_of" in x)
    assert sorted(counts.values()) == [2, 2, 3] and sum(counts.values()) == 7


def test_share_zero_and_empty_buffer():
    new = sft("harm", 10)
    assert buffer(tox=(10, 10)).mix(new, [], share=0.0) == (new, [])
    assert ReplayBuffer().mix(new, pairs("harm", 2)) == (new, pairs("harm", 2))


@pytest.mark.parametrize("share", [1.0, -0.1, 1.5, "0.2", None, True])
def test_share_outside_range_is_a_clear_error(share):
    with pytest.raises(ValueError, match=r"replay share must be a number in \[0, 1\)"):
        buffer(tox=(5, 5)).mix(sft("harm", 5), [], share=share)


def test_add_validation():
    with pytest.raises(ValueError, match="non-empty name"):
        ReplayBuffer().add("", [], [])
    with pytest.raises(ValueError, match="must be dicts"):
        ReplayBuffer().add("tox", ["text"], [])
    with pytest.raises(KeyError, match="no examples stored"):
        ReplayBuffer().items("tox", "sft")
    with pytest.raises(ValueError, match="kind must be one of"):
        buffer(tox=(1, 1)).items("tox", "dpo")


def test_save_load_round_trip(tmp_path):
    b = buffer(tox=(5, 3), bias=(2, 4))
    b.add("harm", [{"prompt": "ünïcode ✓", "completion": "ok"}], [])
    path = b.save(tmp_path / "run" / "replay.json")
    loaded = ReplayBuffer.load(path)
    assert loaded.risks == ["tox", "bias", "harm"] and len(loaded) == len(b)
    assert loaded.to_dict() == b.to_dict()
    assert loaded.mix(sft("x", 12), pairs("x", 12), seed=1) == b.mix(sft("x", 12), pairs("x", 12), seed=1)
    assert [p.name for p in path.parent.iterdir()] == ["replay.json"]


def test_save_is_atomic(tmp_path, monkeypatch):
    path = buffer(tox=(1, 1)).save(tmp_path / "replay.json")
    before = path.read_text()
    monkeypatch.setattr("compose.io.os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        buffer(tox=(9, 9)).save(path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["replay.json"]


def test_load_errors(tmp_path):
    with pytest.raises(ComposeError, match="does not exist"):
        ReplayBuffer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    for text in ("{not json", json.dumps({"format": 99, "risks": {}}), json.dumps({"format": 1})):
        bad.write_text(text)
        with pytest.raises(ComposeError, match="malformed"):
            ReplayBuffer.load(bad)
