"""Data-parallel training of a patch: the same TRL code path on several processes.

    torchrun --nproc_per_node 2 experiments/bench/ddp.py [--model tiny-random] [--out /tmp/ddp]
    # on GPUs: torchrun --nproc_per_node 8 ... or accelerate launch --num_processes 8 ...

Each process trains the same patch on its shard of the batches (Accelerate/DDP inside the TRL trainer, gloo on
CPU); the gradients are averaged, so every rank ends with the identical patch. Each rank writes
``rank-N.json`` (rank, world size, batches and tokens it processed itself, the patch's hash); rank 0 also
saves the patch (a normal patch directory) and prints a summary showing that every process took part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--out", default="/tmp/compose-ddp")
    args = p.parse_args()

    import torch
    from transformers import TrainerCallback

    from compose.artifact import save_patch
    from compose.models import load_model
    from compose.patch import attach_patch, get_prompt, segments_for
    from compose.train import TrainConfig, _trainer_scope, make_sft_trainer

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model)
    model = attach_patch(loaded.model, loaded.tokenizer, num_tokens=8)
    examples = [{"prompt": f"Question number {i}: how do I stay safe online?",
                 "completion": "Use strong passwords, update your software and think before you click."}
                for i in range(args.examples)]
    seen = {"batches": 0, "tokens": 0}

    class Count(TrainerCallback):
        def on_step_end(self, *a, **k):
            seen["batches"] += 1

    cfg = TrainConfig(sft_epochs=1, batch_size=4, sft_lr=1e-2)
    start = time.perf_counter()
    with _trainer_scope(model, None):
        trainer = make_sft_trainer(model, loaded.tokenizer, examples, cfg, str(out / "trainer"), [Count()])
        original = trainer.training_step

        def counting_step(model_, inputs, *a, **k):
            seen["tokens"] += int(inputs["attention_mask"].sum())
            return original(model_, inputs, *a, **k)

        trainer.training_step = counting_step
        trainer.train()
        backend = trainer.accelerator.state.distributed_type.value
    prompt = get_prompt(model)
    digest = hashlib.sha256(prompt.numpy().tobytes()).hexdigest()[:16]
    record = {"rank": rank, "world_size": world, "backend": backend, "local_batches": seen["batches"],
              "local_tokens": seen["tokens"], "patch_sha256": digest, "seconds": time.perf_counter() - start}
    (out / f"rank-{rank}.json").write_text(json.dumps(record, indent=2))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if rank == 0:
        save_patch(model, out / "patch", name="ddp-demo", segments=segments_for([("demo", 8)]),
                   base_model=loaded.name, fingerprint=loaded.fingerprint, training=cfg.to_dict())
        records = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]
        for r in records:
            print(f"rank {r['rank']}/{r['world_size']} ({r['backend']}): {r['local_batches']} steps, "
                  f"{r['local_tokens']} tokens of its own shard, patch {r['patch_sha256']}")
        same = len({r["patch_sha256"] for r in records}) == 1
        print(f"all {world} processes trained; identical patch on every rank: {same}; patch saved to {out / 'patch'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
