"""How many CPU threads this process may use, and sizing torch's thread pool to it.

torch sizes its intra-op pool from the cores the machine has, not the ones this process may run on: in a
container with a CPU quota, or beside other jobs pinned to their own cores, it oversubscribes, and a matrix
multiply split over more threads than cores runs many times slower (measured: evaluation ~10x slower with two
other jobs on 2 cores). ``usable_cpus`` reads the CPU affinity mask and the cgroup quota (v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``); ``configure_threads`` sets torch's pool from an explicit ``--threads``, else from
``OMP_NUM_THREADS`` when set (torch already honours it), else from ``usable_cpus``. ``matmul_tflops`` measures
how fast the machine multiplies right now: a run records it beside its wall time, which varies between sessions on
the same kind of machine (10-25% measured here).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or None when there is none."""
    v2 = _read(root / "cpu.max")  # "max 100000" (no quota) or "150000 100000"
    if v2:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def configure_threads(threads: int | None = None) -> int:
    """Size torch's intra-op thread pool; returns the number of threads it uses.

    ``threads`` (``--threads``) wins; otherwise ``OMP_NUM_THREADS`` when set, otherwise ``usable_cpus()``. Before
    torch is imported this only sets ``OMP_NUM_THREADS`` (torch sizes its pool from it when it loads, and
    ``compose --help`` stays free of the torch import); afterwards it resizes the pool.
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else usable_cpus()
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    elif torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def matmul_tflops(device: str = "cpu", dtype=None, budget: float = 0.1, n: int = 2048) -> dict:
    """This machine's matrix-multiply throughput right now in ``dtype`` (a run passes its compute dtype; default
    bfloat16): ``{"dtype", "n", "tflops"}``, the best of the cube products that fit in about ``budget`` seconds.
    The yardstick a run's wall time is read against.

    The cube grows from 128 (doubling) up to ``n`` while a product of the next size would take at most half the
    budget, so the probe costs about ``budget`` seconds on any machine: a 2048-cube bf16 product takes a few ms
    where the CPU has AMX but ~60 s on an AVX2-only CPU, which emulates bf16. The cube used is recorded, as the
    throughput depends on it. It draws from its own random generator, so a run's random state (and every figure)
    is untouched."""
    import torch

    dtype = dtype or torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def operands(size: int):
        return [torch.randn(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2)]

    def timed(a, b) -> float:
        start = time.perf_counter()
        a @ b
        sync()
        return time.perf_counter() - start

    size = min(128, n)
    a, b = operands(size)
    timed(a, b)  # warm-up: kernel selection, first touch of the operands
    while size < n and 8 * timed(a, b) <= budget / 2:  # the next cube costs 8x this one
        size *= 2
        a, b = operands(size)
        timed(a, b)
    best, end = float("inf"), time.perf_counter() + budget
    while True:
        best = min(best, timed(a, b))
        if time.perf_counter() >= end:
            return {"dtype": str(dtype).removeprefix("torch."), "n": size, "tflops": round(2 * size ** 3 / best / 1e12, 4)}
