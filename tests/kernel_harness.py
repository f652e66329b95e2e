"""Build and drive tests/kernel_host_harness.cpp (the kernels' C++ run on the host).

:func:`build_harness` compiles it with g++ once per test process; without g++ the calling
test is skipped, and any compile error fails it.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpuload.backend import contract, kernels

HARNESS_SRC = Path(__file__).resolve().parent / "kernel_host_harness.cpp"
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_built: dict[str, Harness] = {}


class Harness:
    """ctypes front end of the harness library."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        vp, ll, i = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
        lib.gpuload_harness_variants.restype = ctypes.c_char_p
        lib.gpuload_harness_desc_layout.argtypes = [vp, i]
        lib.gpuload_harness_map.argtypes = [vp, ll, ctypes.c_ulonglong, vp]
        lib.gpuload_harness_run.argtypes = [ctypes.c_char_p, vp, vp, i, i, i, i, i]
        lib.gpuload_harness_convert.argtypes = [ctypes.c_char_p, vp, vp, ll]
        lib.gpuload_harness_plan.argtypes = [ctypes.c_char_p, vp, vp, vp]
        lib.gpuload_harness_gather_layout.argtypes = [vp, i]
        lib.gpuload_harness_gather_run.argtypes = [ctypes.c_char_p, vp, vp, i, vp, i, i, i, i]

    def variants(self) -> tuple[str, ...]:
        return tuple(v for v in self.lib.gpuload_harness_variants().decode().split(",") if v)

    def layout(self) -> list[int]:
        out = np.zeros(32, np.int64)
        n = self.lib.gpuload_harness_desc_layout(out.ctypes.data, out.size)
        return out[:n].tolist()

    def map(self, desc: np.ndarray, itemsize: int, idx: int) -> tuple[int, int]:
        out = np.zeros(2, np.int64)
        self.lib.gpuload_harness_map(desc.ctypes.data, itemsize, idx, out.ctypes.data)
        return int(out[0]), int(out[1])

    def run(
        self, variant: str, src: np.ndarray, descs: np.ndarray, grid=(3, 2), block=32, force64=False, n_desc=None
    ) -> None:
        """Simulate ``gpuload_box_copy_<variant><<<grid, block>>>(src, descs, n_desc)``."""
        n = len(descs) if n_desc is None else n_desc
        rc = self.lib.gpuload_harness_run(
            variant.encode(), src.ctypes.data, descs.ctypes.data, n, grid[0], grid[1], block, int(force64)
        )
        assert rc == 0, variant

    def convert(self, variant: str, bits: np.ndarray, out_itemsize: int) -> np.ndarray:
        bits = np.ascontiguousarray(bits)
        out = np.zeros(bits.size, _UINT[out_itemsize])
        assert self.lib.gpuload_harness_convert(variant.encode(), bits.ctypes.data, out.ctypes.data, bits.size) == 0
        return out

    def plan(self, variant: str, src: np.ndarray, desc: np.ndarray) -> dict:
        out = np.zeros(6, np.int64)
        assert self.lib.gpuload_harness_plan(variant.encode(), src.ctypes.data, desc.ctypes.data, out.ctypes.data) == 0
        return dict(zip(("items", "row_items", "head", "body", "vec", "aligned"), out.tolist()))

    def gather_layout(self) -> list[int]:
        out = np.zeros(8, np.int64)
        n = self.lib.gpuload_harness_gather_layout(out.ctypes.data, out.size)
        return out[:n].tolist()

    def gather_run(
        self,
        variant: str,
        src: np.ndarray,
        descs: np.ndarray,
        offsets: np.ndarray,
        grid=(3, 2),
        block=32,
        force64=False,
        n_desc=None,
    ) -> None:
        """Simulate ``gpuload_gather_<variant><<<grid, block>>>(src, descs, n_desc, offsets)``."""
        n = len(descs) if n_desc is None else n_desc
        rc = self.lib.gpuload_harness_gather_run(
            variant.encode(),
            src.ctypes.data,
            descs.ctypes.data,
            n,
            offsets.ctypes.data,
            grid[0],
            grid[1],
            block,
            int(force64),
        )
        assert rc == 0, variant

    def execute(self, case, dest: np.ndarray, grid=(3, 2), block=32, force64=False) -> None:
        """All of a case's copies in one simulated batched launch (empty copies included)."""
        descs = contract.pack_descriptors(case.copies, [dest.ctypes.data] * len(case.copies))
        self.run(contract.cast_code(case.src_dtype, case.dst_dtype), case.chunk, descs, grid, block, force64)


def build_harness(tmp_dir: Path) -> Harness:
    """Compile the harness with g++ (once per process) and load it."""
    if "lib" in _built:
        return _built["lib"]
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: cannot build tests/kernel_host_harness.cpp")
    out = Path(tmp_dir) / "libgpuload_box_copy_harness.so"
    cmd = [gxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Werror",
           f"-I{kernels.kernel_dir()}", *(f"-D{k}={v}" for k, v in kernels.DEFINES), str(HARNESS_SRC), "-o", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    _built["lib"] = Harness(ctypes.CDLL(str(out)))
    return _built["lib"]
