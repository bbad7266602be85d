"""Shared test fixtures: the tiny random model (offline, deterministic) and the real benchmark data folder."""

import importlib.util
import os
from pathlib import Path

import pytest

# The suite is the CPU's contract (CI has no GPU): its unit tests build their inputs on the CPU, so on a GPU
# machine every model of the suite, and every run it launches, stays on the CPU as well. The GPU check is
# experiments/bench/gpu_preset.py.
os.environ["COMPOSE_DEVICE"] = "cpu"

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # ../shared/data from the repo root


def experiment(name: str):
    """The study script experiments/NAME.py as a module (the scripts are not a package: they run from the root)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny():
    """A session-wide 2-layer random Llama ``LoadedModel`` in fp32. Do not train or mutate it in place."""
    from compose.models import load_model

    return load_model("tiny-random", dtype="fp32")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real benchmark sets); tests using it are skipped where it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture()
def shared_cache(tmp_path_factory, monkeypatch) -> Path:
    """One ``COMPOSE_CACHE`` for the whole test session: the risks' training data is built once and shared by the
    runs, as in real use."""
    path = tmp_path_factory.getbasetemp() / "compose-cache"
    monkeypatch.setenv("COMPOSE_CACHE", str(path))
    return path
