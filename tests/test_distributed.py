"""``compose run`` over two CPU processes (torchrun, gloo) gives the results of one process.

Why 2-process training is not bit-identical to 1-process training (measured on the tiny model, 2 CPU processes):

* not the order: every step trains on the same examples (Accelerate's seeded sampler draws one permutation of the
  whole stage; the one-process batch [4, 0, 7, 3] is rank 0's [4, 0] plus rank 1's [7, 3]);
* not the loss normalisation: transformers sums the scored tokens over the processes
  (``average_tokens_across_devices``), so each process divides by the global count (102 on both) and DDP's mean
  gives the one-process gradient (equal to 2e-8 in float32);
* not dropout (none is active): a stage of 8 examples in batches of 4 gives the same float32 patch to 3e-8;
* not an uneven last batch: when a stage's examples are not a multiple of the global batch, Accelerate
  (``even_batches``) fills the last step with examples from the start of the epoch's order; the trainers give
  those repeats no weight (``distributed.padded_last_step``), so the step's gradient is one process's on its real
  examples (``test_an_uneven_last_step_trains_as_in_one_process``: 9 examples in batches of 4);
* bfloat16 (``--dtype auto`` on a CPU that computes it): each process runs its half-batch with its own padding
  width, which rounds differently in bfloat16: gradients differ by ~0.3% from the second step on, and Adam turns
  that into up to ~2 learning-rate steps on coordinates whose gradient is near 0.

So the tests run in float32: the same patch to within float rounding.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compose import distributed
from compose.cli import main
from compose.errors import ComposeError

RUN = ["run", "--model", "tiny-random", "--dtype", "fp32", "--preset", "smoke", "--risks", "tox", "--train",
       "probe_examples=0"]


def gloo_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


def patch_of(folder: Path) -> torch.Tensor:
    return load_file(folder / "patch" / "adapter_model.safetensors")["prompt_embeddings"]


def without_timings(obj):
    """A results file without its wall-clock figures (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


@pytest.mark.skipif(not gloo_available(), reason="torch.distributed with gloo is not available")
def test_two_processes_give_the_results_of_one(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOSE_CACHE", str(tmp_path / "cache-one"))
    assert main(RUN + ["--out", str(tmp_path / "one")]) == 0

    env = {**os.environ, "COMPOSE_CACHE": str(tmp_path / "cache-two"), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "compose", "--threads", "1", *RUN, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert done.stdout.count("run folder:") == 1  # the main process reports; the other is quiet

    # generation (teacher and base responses, preference pairs) and evaluation are shared out and gathered: the
    # same as in one process, to the byte
    for name in ("data/toxicity.json", "stages/00-base.json"):
        assert without_timings(json.loads((one / name).read_text())) == \
               without_timings(json.loads((two / name).read_text())), name
    rows = [json.loads((run / "forgetting.json").read_text())["rows"] for run in (one, two)]
    assert [r["name"] for r in rows[0]] == [r["name"] for r in rows[1]]
    assert rows[0][0]["scores"] == rows[1][0]["scores"]
    # training is data-parallel with the global batch split in two: the same patch to within float rounding
    # (see the module docstring for what makes it differ more in bfloat16; an uneven last batch is tested below)
    assert len(json.loads((one / "data/toxicity.json").read_text())["sft"]) % 4 == 0
    for stage in (one / "stages" / "01-toxicity", one):
        twin = two / stage.relative_to(one)
        assert torch.allclose(patch_of(stage), patch_of(twin), rtol=0, atol=1e-5), stage
    assert not (two / ".lock").exists()  # the main process held the lock and let it go


# examples of different lengths (an error in the token count shows) and a few retain ones (the KL retain loss)
UNEVEN_SFT = [{"prompt": f"Tell me about item {i}." + " Please." * (i % 3),
               "completion": "I cannot help with that." if i % 3 else f"Item {i} is a small blue box.",
               "source": "retain" if i % 3 == 0 else "risk"} for i in range(9)]
UNEVEN_PAIRS = [{"prompt": f"Describe thing {i}." + " Now." * (i % 2), "chosen": "I cannot help with that.",
                 "rejected": "The quick brown fox jumps over the lazy dog." * (1 + i % 2)} for i in range(9)]
PROMPTS = [f"Say something about {word}." for word in ("cats", "the sea", "a red door", "numbers", "rain")]


def train_uneven(out: Path) -> None:
    """One patch on the tiny model in float32, in this process or as one of several (torchrun): generation and
    response NLL of 5 prompts in batches of 2 (3 batches: rank 0 takes two), then SFT with TRL's loss, SFT with the
    weighted KL retain loss (``compose.train`` computes it) and DPO, each over 9 examples (pairs) in global batches
    of 4 for 2 epochs: the last step of an epoch holds one real example (two processes: rank 0 has it and a
    repeat, rank 1 two repeats). The main process saves the outputs, and the losses and patch after each stage, to
    ``out``."""
    from dataclasses import replace

    from compose.generation import GenerationConfig, generate, response_nll
    from compose.models import load_model
    from compose.patch import attach_patch, get_prompt
    from compose.train import TrainConfig, train_dpo, train_sft

    distributed.start()
    loaded = load_model("tiny-random", dtype="fp32")
    model = attach_patch(loaded.model, loaded.tokenizer, num_tokens=4, init_text="quick brown fox")
    responses = generate(model, loaded.tokenizer, PROMPTS, GenerationConfig(max_new_tokens=6, samples=2,
                                                                            batch_size=2))
    firsts = [r[0] for r in responses]
    found = {"responses": responses,
             "nll": response_nll(model, loaded.tokenizer, PROMPTS, firsts[:2] + [""] + firsts[3:], batch_size=2)}
    cfg = TrainConfig(sft_epochs=2, dpo_epochs=2, batch_size=4, sft_lr=3e-2, dpo_lr=3e-2, probe_examples=0)
    for name, stage in (("sft", lambda: train_sft(model, loaded.tokenizer, UNEVEN_SFT, cfg)),
                        ("kl", lambda: train_sft(model, loaded.tokenizer, UNEVEN_SFT,
                                                 replace(cfg, retain_objective="kl", retain_weight=0.5))),
                        ("dpo", lambda: train_dpo(model, loaded.tokenizer, UNEVEN_PAIRS, cfg))):
        found[name] = {"losses": stage().losses, "patch": get_prompt(model).detach().clone()}
    if distributed.is_main():
        torch.save(found, out)


@pytest.mark.skipif(not gloo_available(), reason="torch.distributed with gloo is not available")
def test_an_uneven_last_step_trains_as_in_one_process(tmp_path):
    """The examples Accelerate repeats to fill the last step weigh nothing: the same losses and patch as in one
    process, after SFT (both losses) and DPO; and sharded generation and NLL over an uneven number of batches
    give every item once, as in one process."""
    train_uneven(tmp_path / "one.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               str(tmp_path / "two.pt")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (torch.load(tmp_path / f"{n}.pt") for n in ("one", "two"))
    assert one["responses"] == two["responses"] and one["nll"] == two["nll"]
    assert one["nll"][2] == (0.0, 0) and all(count for _, count in one["nll"][:2] + one["nll"][3:])
    # measured: patches equal to 2e-6 and losses to 3e-6 (relative; DPO's, from which the repeats' log 2 is taken
    # out), where training on the repeats made them differ by 3e-2 (SFT) and 1e-1 (DPO)
    for stage in ("sft", "kl", "dpo"):
        assert len(one[stage]["losses"]) == 6, stage  # 3 steps an epoch in both
        assert one[stage]["losses"] == pytest.approx(two[stage]["losses"], rel=1e-4), stage
        assert torch.allclose(one[stage]["patch"], two[stage]["patch"], rtol=0, atol=5e-5), stage


def test_the_repeats_are_where_accelerate_puts_them(monkeypatch):
    """``padded_last_step`` against Accelerate's own sharding (``even_batches``): the earlier steps and the real
    examples of the last one hold every example exactly once."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    for world in (2, 3):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        for per_process in (1, 2, 3):
            for n in range(1, 14):
                shards = [list(BatchSamplerShard(BatchSampler(range(n), per_process, drop_last=False), world, r))
                          for r in range(world)]
                trained = [i for shard in shards for batch in shard[:-1] for i in batch]
                for r, shard in enumerate(shards):
                    monkeypatch.setenv("RANK", str(r))
                    padded = distributed.padded_last_step(per_process, n)
                    real = per_process if padded is None else padded[0]
                    trained += shard[-1][:real]
                    assert padded is None or padded[1] == n % (per_process * world)
                assert sorted(trained) == list(range(n)), (world, per_process, n)
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.padded_last_step(4, 9) is None  # one process: its last batch is short, nothing repeated


def test_the_shards_of_an_uneven_count_hold_every_item_once(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    for world in (2, 3):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        for n in range(8):
            items = []
            for r in range(world):
                monkeypatch.setenv("RANK", str(r))
                items += distributed.shard(n)
            assert sorted(items) == list(range(n)), (world, n)


def test_a_half_finished_stage_is_removed_by_the_main_process_alone(tmp_path, monkeypatch):
    """``Stage.restore`` of a stage killed before its marker: rank 0 removes its folder, between two barriers that
    every process reaches (so none looks at it while it goes); the others leave it."""
    from types import SimpleNamespace

    from compose.context import Stage

    waits = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "barrier", lambda: waits.append(distributed.rank()))
    stage = Stage(SimpleNamespace(out_dir=tmp_path, run_name="run"), 1, "toxicity")
    for rank, kept in (("1", True), ("0", False)):
        monkeypatch.setenv("RANK", rank)
        (stage.dir / "patch").mkdir(parents=True, exist_ok=True)
        assert not stage.restore(model=None)
        assert stage.dir.is_dir() == kept, rank
    assert waits == [1, 1, 0, 0]


def test_a_batch_that_does_not_split_across_the_processes_is_refused(tmp_path, monkeypatch):
    from compose.cli import run as run_mod
    from compose.cli.config import resolve

    monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = resolve({}, risks="tox", model="tiny-random", preset="smoke")  # train.batch_size 4
    with pytest.raises(ComposeError, match="train.batch_size 4 cannot be split across 3 processes; valid: a "
                                           "multiple of 3"):
        run_mod.execute(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_risk_s_own_batch_that_does_not_split_is_refused_too(tmp_path, monkeypatch):
    from compose.cli import run as run_mod
    from compose.cli.config import resolve

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = resolve({"risk_train": {"tox": {"batch_size": 3}}}, risks="tox", model="tiny-random", preset="smoke")
    with pytest.raises(ComposeError, match="risk_train.toxicity.batch_size 3 cannot be split across 2 processes"):
        run_mod.execute(cfg, tmp_path / "r")


def test_the_trainer_splits_the_global_batch_of_a_stage(monkeypatch):
    """The training arguments of a stage take each process's share of its batch (a risk's own batch too)."""
    from trl import SFTConfig

    from compose.train import TrainConfig, _training_args

    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.per_process_batch(8) == 2
    with pytest.raises(ComposeError, match="batch_size 6 cannot be split across 4 processes; valid: a multiple of 4"):
        _training_args(SFTConfig, TrainConfig(batch_size=6), 1.0, 1e-3, "unused")
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.per_process_batch(6) == 6


def test_the_main_process_alone_copies_a_specialist_into_the_run_folder(tmp_path, monkeypatch):
    """A specialist trained now, and one reused from the cache: both copies go through ``on_main`` (the others
    wait at its barriers)."""
    copied = []

    def on_main(fn, *args, **kwargs):
        if fn is shutil.copytree:
            copied.append(args[1].relative_to(args[1].parents[1]))
        return fn(*args, **kwargs)

    monkeypatch.setenv("COMPOSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(distributed, "on_main", on_main)
    args = ["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox", "--strategy", "concatenated",
            "--train", "probe_examples=0"]
    for out in ("one", "two"):
        assert main(args + ["--out", str(tmp_path / out)]) == 0
    assert copied == [Path("specialists/toxicity")] * 2
    assert (tmp_path / "two" / "specialists" / "toxicity" / "stage.json").is_file()


def test_in_one_process_the_helpers_do_nothing():
    assert not distributed.launched() and not distributed.active() and distributed.is_main()
    assert distributed.shard(5) == range(5) and distributed.gather({1: "a"}) == {1: "a"}
    assert distributed.on_main(lambda: 7) == 7


if __name__ == "__main__":  # one of the processes of test_an_uneven_last_step_trains_as_in_one_process
    train_uneven(Path(sys.argv[1]))


def test_the_device_follows_compose_device_and_a_process_without_a_gpu_is_refused(monkeypatch):
    """COMPOSE_DEVICE=cpu keeps a GPU machine's work on its CPU; a launched process whose LOCAL_RANK has no GPU
    (more processes than GPUs) is a one-line error naming the way out, not a CUDA 'invalid device ordinal'."""
    from compose.models import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("COMPOSE_DEVICE", "cpu")
    assert not distributed.use_gpu() and default_device() == "cpu"
    monkeypatch.setenv("COMPOSE_DEVICE", "auto")
    assert default_device() == "cuda"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ComposeError, match=r"no GPU of its own \(1 here\).*--nproc_per_node 1.*COMPOSE_DEVICE=cpu"):
        default_device()
    monkeypatch.setenv("COMPOSE_DEVICE", "tpu")
    with pytest.raises(ComposeError, match="unknown COMPOSE_DEVICE 'tpu'; valid: auto, cpu, cuda"):
        default_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COMPOSE_DEVICE", "cuda")
    with pytest.raises(ComposeError, match="torch sees no GPU"):
        default_device()
