"""``PYTHONPATH=tests/sim_cupy`` makes ``import cupy`` give the CUDA simulator (tests/cuda_sim.py)
in any process: a dry run of scripts that need CuPy (the bench, scripts/gpu_check.sh's Python
parts) on a machine without a GPU. Mode from GPULOAD_SIMULATE_CUDA (``early``, else late)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
del sys.modules["cupy"]  # this shim; cuda_sim.install() puts the simulator there
import cuda_sim  # noqa: E402

cuda_sim.install("early" if os.environ.get("GPULOAD_SIMULATE_CUDA", "").lower() == "early" else "late")
