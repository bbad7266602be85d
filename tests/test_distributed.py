"""``compose run`` over two CPU processes (torchrun, gloo) gives the results of one process.

Why 2-process training is not bit-identical to 1-process training (measured on the tiny model, 2 CPU processes):

* not the order: every step trains on the same examples (Accelerate's seeded sampler draws one permutation of the
  whole stage; the one-process batch [4, 0, 7, 3] is rank 0's [4, 0] plus rank 1's [7, 3]);
* not the loss normalisation: transformers sums the scored tokens over the processes
  (``average_tokens_across_devices``), so each process divides by the global count (102 on both) and DDP's mean
  gives the one-process gradient (equal to 2e-8 in float32);
* not dropout (none is active): a stage of 8 examples in batches of 4 gives the same float32 patch to 3e-8;
* bfloat16 (``--dtype auto`` on a CPU that computes it): each process runs its half-batch with its own padding
  width, which rounds differently in bfloat16: gradients differ by ~0.3% from the second step on, and Adam turns
  that into up to ~2 learning-rate steps on coordinates whose gradient is near 0;
* an uneven last batch: when a stage's examples are not a multiple of the global batch, Accelerate
  (``even_batches``) fills the last one with examples from the start of the epoch's order, so that step trains on
  duplicates (11 examples in batches of 4: its last step sees 4 examples and 120 tokens instead of 3 and 90).
  Exact would need those duplicates masked out of the loss and the token count (the DPO loss too, which is a
  per-process mean): not done.

So the test runs in float32 on one risk of 8 examples (global batch 4): the same patch to within float rounding.
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
    # (see the module docstring for what makes it differ more in bfloat16 or with an uneven last batch)
    assert len(json.loads((one / "data/toxicity.json").read_text())["sft"]) % 4 == 0
    for stage in (one / "stages" / "01-toxicity", one):
        twin = two / stage.relative_to(one)
        assert torch.allclose(patch_of(stage), patch_of(twin), rtol=0, atol=1e-5), stage
    assert not (two / ".lock").exists()  # the main process held the lock and let it go


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
