"""Collective loads into GPUs, one process per GPU, chunks moved with NCCL.

Needs 2+ GPUs, CuPy and NCCL (``pip install -e '.[cuda13,mpi]'``): skipped otherwise (with
``GPULOAD_REQUIRE_GPU=1`` a missing GPU fails, per tests/conftest.py). Under
``GPULOAD_SIMULATE_CUDA`` the mpiexec processes run on the CUDA simulator (two GPUs each,
NCCL transfers over MPI; tests/mpi_scenarios.py), on a 4 MiB embedding cut in 16 chunks,
and any simulator violation in any rank fails the test.
"""

from __future__ import annotations

import os

import pytest
from test_distributed_mpi import _missing, run_scenario

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


#: The embedding's rows: 256 MiB on GPUs, 4 MiB in the simulator (its kernels run on the CPU).
ROWS = 1 << 14 if os.environ.get("GPULOAD_SIMULATE_CUDA", "").strip().lower() not in ("", "0") else None


def _gpus() -> int:
    from gpuload.backend.placement import gpu_count

    return gpu_count()


@pytest.mark.parametrize("scenario", ["gpu_replicated", "gpu_sharded"])
def test_nccl_one_process_per_gpu(scenario, tmp_path, monkeypatch):
    n = _gpus()
    if n < 2:
        pytest.skip(f"needs 2+ GPUs for one process per GPU over NCCL ({n} visible)")
    from cupy.cuda import nccl

    if not nccl.available:
        pytest.fail("NCCL is not available to CuPy: install nvidia-nccl-cu12/cu13 (the CUDA extras)")
    monkeypatch.setenv("GPULOAD_TEST_GPU_PER_RANK", "1")
    monkeypatch.setenv("GPULOAD_TEST_NGPUS", str(n))
    monkeypatch.setenv("GPULOAD_TEST_EXPECT_TRANSPORT", "nccl")
    r = run_scenario(scenario, tmp_path, rows=ROWS, ranks=min(n, 4))
    assert r["transport"] == ["nccl"]


@pytest.mark.parametrize("scenario", ["warm_start", "warm_start_sharded"])
def test_warm_start_over_nccl(scenario, tmp_path, monkeypatch):
    """A vocabulary-remapped warm start into GPUs: gathers out of NCCL-received staging over
    the backup initializer's values, equal to the single-process warm start."""
    n = _gpus()
    if n < 2:
        pytest.skip(f"needs 2+ GPUs for one process per GPU over NCCL ({n} visible)")
    monkeypatch.setenv("GPULOAD_TEST_GPU_PER_RANK", "1")
    monkeypatch.setenv("GPULOAD_TEST_NGPUS", str(n))
    monkeypatch.setenv("GPULOAD_TEST_EXPECT_TRANSPORT", "nccl")
    monkeypatch.setenv("GPULOAD_TEST_WS_DEVICE", "gpu")
    r = run_scenario(scenario, tmp_path, ranks=2)
    assert r["crc_True"]["transport"] == ["nccl"]


def test_gpu_destinations_over_mpi_when_ranks_share_a_gpu(tmp_path, monkeypatch):
    if _gpus() < 1:
        pytest.skip("needs a GPU")
    # Two ranks on one GPU: NCCL refuses that, so the chunks go through pinned host memory.
    monkeypatch.setenv("GPULOAD_TEST_EXPECT_TRANSPORT", "mpi")
    monkeypatch.delenv("GPULOAD_TEST_GPU_PER_RANK", raising=False)
    r = run_scenario("gpu_replicated", tmp_path, rows=ROWS, ranks=2)
    assert r["transport"] == ["mpi"]


def test_gpu_single_rank_uses_nccl_path(tmp_path, monkeypatch):
    if _gpus() < 1:
        pytest.skip("needs a GPU")
    # One rank: NCCL communicator of size 1, H2D into device staging and the box-copy
    # kernels from device staging (the NCCL path minus the peers).
    monkeypatch.setenv("GPULOAD_TEST_EXPECT_TRANSPORT", "nccl")
    r = run_scenario("gpu_replicated", tmp_path, rows=ROWS, ranks=1)
    assert r["transport"] == ["nccl"]
