"""nvcc and NVRTC checks of the kernels that need no GPU.

The full compile (every kernels/*.cu standalone for sm_80 and sm_90, and every box-copy
variant as CuPy gets it, warning-free) runs once, in test_wheel_install.py, from the files
the wheel installs (byte-identical to kernels/, which that test asserts); here only what it
does not cover: the 128-bit vector accesses in the PTX, the NVRTC compile, the nvcc lookup.

No GPU is needed. Without nvcc these tests skip, except under CI (``CI`` set), where a
missing nvcc fails: CI is where the kernels' syntax is guaranteed to be checked. The
NVRTC check (what CuPy really runs, with CuPy's own extra options) needs CuPy and an
NVRTC library, and skips without them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuload.backend import contract, kernels

ARCHS = ("sm_80", "sm_90")


def _cuda_roots() -> tuple:
    return (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda")


def _nvcc() -> str:
    found = shutil.which("nvcc")
    if found is None:
        for root in _cuda_roots():
            if root and (Path(root) / "bin" / "nvcc").is_file():
                return str(Path(root) / "bin" / "nvcc")
        if os.environ.get("CI"):
            pytest.fail("nvcc not found, and CI is set: the kernels must be compile-checked in CI", pytrace=False)
        pytest.skip("nvcc not found (set CUDA_PATH or put nvcc on PATH)")
    return found


def _run_all(cmds: list[list[str]]) -> None:
    """Run the compiles concurrently (each is ~10 s of single-threaded nvcc)."""
    procs = [(cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for cmd in cmds]
    failures = []
    for cmd, p in procs:
        out, err = p.communicate()
        if p.returncode != 0 or "warning" in err.lower():
            failures.append(f"$ {' '.join(cmd)}\n{out}{err}")
    assert not failures, "\n\n".join(failures)


def test_vector_path_emits_128bit_accesses(tmp_path):
    nvcc = _nvcc()
    ptx = tmp_path / "b1.ptx"
    src = kernels.kernel_dir() / "box_copy.cu"
    cmd = [nvcc, "-std=c++17", "-arch=sm_90", '-DGPULOAD_ONLY="b1_b1"', "-ptx", str(src), "-o", str(ptx)]
    _run_all([cmd])
    text = ptx.read_text()
    # One 128-bit load and store per vector item; stores are generic-space (st.v4) because
    # the destination address arrives as an integer in the descriptor.
    assert re.search(r"\bld\.global(\.nc)?\.(v4\.u32|v2\.u64)\b", text)
    assert re.search(r"\bst(\.global)?\.(v4\.u32|v2\.u64)\b", text)


def test_nvrtc_compiles_with_cupy_options():
    """NVRTC (no GPU needed) with the options CuPy always adds, incl. -ftz=true."""
    cupy = pytest.importorskip("cupy", reason="CuPy not installed")
    if getattr(cupy, "IS_SIMULATOR", False):
        pytest.skip("GPULOAD_SIMULATE_CUDA: cupy is tests/cuda_sim.py, which has no NVRTC")
    from cupy.cuda import nvrtc

    try:
        nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001 - the NVRTC shared library is not installed
        pytest.skip(f"NVRTC library not loadable: {e}")
    code = kernels.source()
    for variant, arch in (("b2_b2", "sm_90"), ("f32_f16", "sm_80")):
        prog = nvrtc.createProgram(code, "box_copy.cu", (), ())
        try:
            opts = (*kernels.options(variant), "-ftz=true", "--device-as-default-execution-space", f"-arch={arch}")
            try:
                nvrtc.compileProgram(prog, opts)
            except Exception as e:  # noqa: BLE001 - any NVRTC failure, reported with its log
                pytest.fail(f"NVRTC {arch} {variant}: {e}\n{nvrtc.getProgramLog(prog)}")
            assert "warning" not in nvrtc.getProgramLog(prog).lower()
            assert len(nvrtc.getCUBIN(prog)) > 0
        finally:
            nvrtc.destroyProgram(prog)


def test_missing_nvcc_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys.modules[__name__], "_cuda_roots", lambda: (None,))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nvcc not found"):
        _nvcc()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        _nvcc()


def test_variant_names_are_in_the_source():
    text = (kernels.kernel_dir() / "box_copy.cuh").read_text()
    for v in contract.VARIANTS:
        assert f"X({v}," in text
