"""One job over several processes: ``torchrun --nproc_per_node N -m compose run ...`` (or ``accelerate launch``).

Every process runs the same program on the same inputs and takes the same decisions; only the work is split:

* training: the TRL trainers run data-parallel (DDP through Accelerate, which finds the process group set up
  here): each process takes its share of every batch and the gradients are averaged, so every process holds the
  identical patch, the one a single process trains (within float rounding). Accelerate hands every process a
  full share in every step (``even_batches``): when a stage's examples do not fill the last step of an epoch, it
  fills that step with examples from the start of the epoch's order. ``padded_last_step`` says which examples
  those are, and ``compose.train`` gives them no weight: SFT masks their labels, so they count in neither the
  summed loss nor the token count it is divided by; DPO, whose loss is a mean over each process's pairs, makes
  them neutral pairs and re-weights each process's mean. That step's averaged gradient and logged loss are then
  one process's on the same real examples (``experiments/results/ddp.md``). Not exact, and why: a stage's
  ``tokens`` figure counts the tokens the processes ran, the repeats' included, and so do TRL's other logged
  metrics (entropy, token accuracy, rewards), which the trainers compute and gather themselves; in bfloat16 each
  process's share of a batch, padded to its own longest sequence, rounds differently from the whole batch, and
  Adam amplifies that on coordinates whose gradient is near 0;
* generation and perplexity (``compose.generation``): the batches are built identically everywhere, process r
  computes batches r, r + N, ... (each seeded by its global index, as in one process) and the results are
  gathered, so every process gets the one-process results; an uneven number of batches leaves some processes one
  batch fewer, and nothing is computed twice or left out;
* files: the main process (rank 0) writes; the others wait at a barrier until it has (``on_main``), so nobody
  reads a file before it exists and no two processes write the same one.

Launched without a launcher (``WORLD_SIZE`` unset or 1) nothing here does anything and ``torch.distributed``
is never imported: one process behaves exactly as before.
"""

from __future__ import annotations

import functools
import os
import sys
from datetime import timedelta

from compose.errors import ComposeError

_alone = False  # inside ``first``: the main process works alone, its writes need no barrier


def launched() -> bool:
    """True when a launcher (torchrun, accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def active() -> bool:
    """True once the process group of a multi-process job is set up (``start``)."""
    if not launched() or "torch.distributed" not in sys.modules:
        return False
    dist = sys.modules["torch.distributed"]
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0) if launched() else 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


DEVICES = ("auto", "cpu", "cuda")


def use_gpu() -> bool:
    """Whether this process computes on a GPU: ``$COMPOSE_DEVICE`` (``auto``, the default: where there is one;
    ``cpu``; ``cuda``: a GPU or an error). A launched process takes the GPU of its ``LOCAL_RANK``, so a machine
    needs a GPU for every process it runs."""
    import torch

    want = os.environ.get("COMPOSE_DEVICE", "auto").strip().lower() or "auto"
    if want not in DEVICES:
        raise ComposeError(f"unknown COMPOSE_DEVICE '{want}'; valid: {', '.join(DEVICES)}")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return False
    if not torch.cuda.is_available():
        raise ComposeError("COMPOSE_DEVICE=cuda, but torch sees no GPU here; valid here: auto, cpu")
    gpus = torch.cuda.device_count()
    if launched() and local_rank() >= gpus:
        raise ComposeError(f"process {local_rank()} of this machine has no GPU of its own ({gpus} here): launch "
                           f"at most {gpus} process(es) per machine (--nproc_per_node {gpus}), or set "
                           f"COMPOSE_DEVICE=cpu to run them all on the CPU")
    return True


def is_main() -> bool:
    """True in the process that writes files and prints (rank 0; the only one without a launcher)."""
    return rank() == 0


def start() -> None:
    """Set up the process group of a launched job (gloo on CPU, nccl on GPUs: each process on the GPU of its
    ``LOCAL_RANK``); nothing without a launcher or when it is already set up."""
    if not launched() or active():
        return
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise ComposeError("launched as several processes, but this torch has no torch.distributed; run one "
                           "process (without torchrun / accelerate launch)")
    backend = "gloo"
    if use_gpu():
        torch.cuda.set_device(local_rank())
        backend = "nccl"
    dist.init_process_group(backend=backend, timeout=timedelta(hours=2))  # a long stage on one rank: not a hang


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def shard(n: int) -> range:
    """The indices of ``n`` work items (batches) this process computes: rank, rank + N, ..."""
    return range(rank(), n, world_size()) if active() else range(n)


def gather(local: dict) -> dict:
    """Every process's ``{index: result}`` merged, on every process (the identity in one process)."""
    if not active():
        return local
    import torch.distributed as dist

    parts = [None] * world_size()
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


def on_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the main process only (a write every process reaches at the same point of the
    program). It starts once every process has arrived and ends before any goes on, so a file looks the same to
    all of them at any point between two writes (``if not path.is_file(): write(path)`` takes the same branch
    everywhere). Returns ``fn``'s result on the main process, None on the others."""
    if not active() or _alone:
        return fn(*args, **kwargs)
    barrier()
    result = fn(*args, **kwargs) if is_main() else None
    barrier()
    return result


def main_writes(write):
    """Decorator for a function that writes the file named by its first argument: the main process writes it,
    the others wait and get the path back."""
    from pathlib import Path

    @functools.wraps(write)
    def wrapper(path, *args, **kwargs):
        result = on_main(write, path, *args, **kwargs)
        return Path(path) if result is None else result

    return wrapper


def first(fn, *args, **kwargs):
    """``fn`` on the main process alone (its writes without barriers: the others are not there), then its result
    on every process; a ``ComposeError`` it raises is raised on every process, so all stop with the same message.
    For claiming and locking the run folder before the others look at it."""
    global _alone
    if not active():
        return fn(*args, **kwargs)
    import torch.distributed as dist

    outcome = [None]
    if is_main():
        _alone = True
        try:
            outcome = [("ok", fn(*args, **kwargs))]
        except ComposeError as exc:
            outcome = [("error", str(exc))]
        except BaseException as exc:
            outcome = [("failed", f"{type(exc).__name__}: {exc}")]
            dist.broadcast_object_list(outcome, src=0)
            raise
        finally:
            _alone = False
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise ComposeError(value)
    if kind == "failed":
        raise RuntimeError(f"the main process failed: {value}")
    return value


def padded_last_step(per_process: int, examples: int) -> tuple[int, int] | None:
    """The last step of an epoch over ``examples`` in batches of ``per_process`` examples a process, when it holds
    repeated examples: (the real examples of this process's batch, its first ones; the real examples of the whole
    step). None when nothing is repeated: the step is full, or this is the only process.

    Accelerate (``BatchSamplerShard`` with ``even_batches``) deals each step's batches out in rank order from the
    epoch's order and fills the last step up by cycling from the start of that order, behind the real examples:
    with 9 examples and 2 per process, the last step is rank 0's [e8, e0] and rank 1's [e1, e2], of which e8 alone
    is real."""
    step = examples % (per_process * world_size())
    if not launched() or step == 0:
        return None
    return max(0, min(per_process, step - rank() * per_process)), step


def per_process_batch(total: int, setting: str = "batch_size") -> int:
    """Each process's share of a global batch of ``total`` examples (``total`` in one process), so that a step
    sees the same examples as in one process; a batch that does not split evenly is refused (``setting`` names
    it in the message)."""
    if launched() and total % world_size():
        raise ComposeError(f"{setting} {total} cannot be split across {world_size()} processes; valid: a "
                           f"multiple of {world_size()}")
    return total // world_size() if launched() else total
