"""Thread sizing: the CPUs a process may use come from its affinity mask and its cgroup quota."""

import os
import time

import pytest
import torch

from compose.hardware import cgroup_cpu_limit, configure_threads, matmul_tflops, usable_cpus


def _cgroup(tmp_path, v2: str | None = None, v1: tuple[str, str] | None = None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


@pytest.mark.parametrize("v2, v1, expected", [
    ("max 100000", None, None),
    ("150000 100000", None, 1.5),
    (None, ("-1", "100000"), None),
    (None, ("50000", "100000"), 0.5),
    (None, None, None),
])
def test_cgroup_quota(tmp_path, v2, v1, expected):
    assert cgroup_cpu_limit(_cgroup(tmp_path, v2, v1)) == expected


def test_usable_cpus_is_capped_by_the_quota_and_the_affinity(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == affinity  # no quota files: the affinity mask
    assert usable_cpus(_cgroup(tmp_path, v2="50000 100000")) == 1  # half a core: one thread, never zero
    (tmp_path / "cpu.max").write_text(f"{100000 * (affinity + 8)} 100000")
    assert usable_cpus(tmp_path) == affinity  # a quota above the affinity mask does not add cores


def test_configure_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        assert configure_threads() == 1 == torch.get_num_threads()  # OMP_NUM_THREADS, when set
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert configure_threads() == usable_cpus() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_threads_before_torch_loads_go_through_the_environment():
    """In a fresh process: --threads sets OMP_NUM_THREADS without importing torch; torch then starts with it."""
    import subprocess
    import sys

    code = ("import sys; from compose.hardware import configure_threads; configure_threads(1); "
            "assert 'torch' not in sys.modules; import torch; print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"


def test_the_speed_probe_leaves_the_random_state_alone():
    """A run measures the machine's matmul speed beside its wall time; its figures must not depend on it."""
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    speed = matmul_tflops(budget=0.05, n=128)
    assert torch.equal(torch.rand(4), expected)
    assert speed["dtype"] == "bfloat16" and speed["n"] == 128 and 0 < speed["tflops"] < 1e4


def test_the_speed_probe_fits_its_budget_on_a_slow_machine(monkeypatch):
    """A CPU without native bf16 multiplies a 2048-cube in bf16 in about a minute: the probe must shrink the cube
    rather than take that long (a slow matmul is simulated, so the test means the same on every machine)."""
    calls = []
    real = torch.Tensor.__matmul__

    def slow(a, b):
        calls.append(a.shape[0])
        time.sleep(a.shape[0] ** 3 / 2048 ** 3 * 60)  # 60 s for a 2048-cube, 0.015 s for a 128-cube
        return real(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", slow)
    start = time.perf_counter()
    speed = matmul_tflops(dtype=torch.float32, budget=0.1)
    assert time.perf_counter() - start < 1.0 and speed["n"] == 128 and max(calls) == 128, (speed, calls)
    assert speed["dtype"] == "float32"


def test_the_speed_probe_uses_the_full_cube_on_a_fast_machine():
    """Where a 2048-cube costs little, the probe measures it (the size earlier runs recorded their speed at)."""
    speed = matmul_tflops(dtype=torch.float32, budget=0.05, n=256)
    assert speed["n"] == 256
