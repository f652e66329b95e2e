"""Test-suite wiring: the golden data's location and the `gpu` marker's skip/fail rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The `sim` fixture (the CUDA simulator for one test), for every test module.
pytest_plugins = ["sim_support"]

REPO = Path(__file__).resolve().parents[1]

#: The TensorFlow-written reference data, shipped with the tests.
IN_REPO_GOLDEN = REPO / "tests" / "data" / "golden"

#: Where the same data lives outside the repository, when a checkout has it beside it;
#: tests/test_golden_copy.py keeps the in-repo copy identical to it.
SHARED_GOLDEN = REPO.parent / "shared" / "golden"

# GPULOAD_SIMULATE_CUDA=1|late|early: every gpu-marked test runs against tests/cuda_sim.py,
# installed as `cupy` before anything imports CuPy (see that module; issue 8).
SIMULATE_CUDA = os.environ.get("GPULOAD_SIMULATE_CUDA", "").strip().lower()
if SIMULATE_CUDA not in ("", "0"):
    import cuda_sim

    cuda_sim.install("early" if SIMULATE_CUDA == "early" else "late")


@pytest.fixture(autouse=True)
def _cuda_simulator_violations(request):
    """In simulation, a test that made the simulator record a violation fails."""
    if SIMULATE_CUDA in ("", "0"):
        yield
        return
    import cuda_sim

    cuda_sim.finish_test()
    yield
    found = cuda_sim.finish_test()
    if found:
        pytest.fail("CUDA simulator violations:\n  " + "\n  ".join(found[:20]), pytrace=False)


def golden_dir() -> Path:
    """``tests/data/golden`` in the repository, or ``$GPULOAD_GOLDEN_DIR`` when set."""
    env = os.environ.get("GPULOAD_GOLDEN_DIR")
    return Path(env) if env else IN_REPO_GOLDEN


@pytest.fixture(scope="session")
def golden() -> Path:
    path = golden_dir()
    if not (path / "cases.json").exists():
        if os.environ.get("GPULOAD_ALLOW_NO_GOLDEN") == "1":
            pytest.skip(f"golden data not found at {path} (GPULOAD_ALLOW_NO_GOLDEN=1)")
        pytest.fail(
            f"golden data not found at {path} (it ships in tests/data/golden; "
            f"GPULOAD_GOLDEN_DIR overrides the location)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def golden_ckpts() -> Path:
    """The golden ``checkpoints/`` directory (the format-layer tests' view of it)."""
    from format_helpers import golden_checkpoints

    return golden_checkpoints()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    if SIMULATE_CUDA not in ("", "0"):
        skip_hw = pytest.mark.skip(reason="needs real GPU hardware (marked hardware); skipped in the CUDA simulator")
        for item in gpu_items:
            if "hardware" in item.keywords:
                item.add_marker(skip_hw)
        return
    from gpuload.backend.placement import is_gpu_available

    if is_gpu_available():
        return
    if os.environ.get("GPULOAD_REQUIRE_GPU") == "1":
        return  # pytest_runtest_setup fails them
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible); GPULOAD_REQUIRE_GPU=1 fails instead")
    for item in gpu_items:
        item.add_marker(skip)


def pytest_runtest_setup(item):
    if "gpu" in item.keywords and os.environ.get("GPULOAD_REQUIRE_GPU") == "1":
        from gpuload.backend.placement import is_gpu_available

        if not is_gpu_available():
            pytest.fail(
                "GPULOAD_REQUIRE_GPU=1 but no CUDA device is usable (is CuPy installed? CUDA_VISIBLE_DEVICES?)",
                pytrace=False,
            )
