"""The CUDA simulator (tests/cuda_sim.py) for tests that need it in every run.

``sim`` makes gpuload see the simulator's two GPUs for one test, whether or not the whole
session runs under ``GPULOAD_SIMULATE_CUDA``; at the end it fails the test on any
violation the simulator recorded (tests that expect violations call
``cuda_sim.finish_test()`` themselves and look at what it returns).
"""

from __future__ import annotations

import gc
import sys

import cuda_sim
import pytest


@pytest.fixture
def sim(monkeypatch):
    from gpuload.backend import cuda, kernels, placement

    if sys.modules.get("cupy") is not cuda_sim:
        monkeypatch.setitem(sys.modules, "cupy", cuda_sim)
        monkeypatch.setitem(sys.modules, "cupy.cuda", cuda_sim.cuda)
        monkeypatch.setattr(placement, "_probe", lambda: (cuda_sim.NDEV, "CUDA simulator"))
        monkeypatch.setattr(kernels, "_modules", {})
        monkeypatch.setattr(kernels, "_functions", {})
    # Fresh backends (stats, default sessions) and pinned pool for every test.
    monkeypatch.setattr(placement, "_backends", {})
    mode = cuda_sim.state.mode
    if hasattr(cuda, "_PinnedPool"):
        monkeypatch.setattr(cuda, "_POOL", cuda._PinnedPool())
    cuda_sim.finish_test()
    yield cuda_sim
    gc.collect()
    found = cuda_sim.finish_test()
    cuda_sim.set_mode(mode)
    cuda_sim.set_version("14.0.0+sim")
    if found:
        pytest.fail("CUDA simulator violations:\n  " + "\n  ".join(found[:20]), pytrace=False)
