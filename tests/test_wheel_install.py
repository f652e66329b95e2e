"""A built wheel carries the kernel sources, and they compile from where it installs them.

The wheel is built from a copy of the package's files (so the build leaves nothing in the
checkout), installed with ``--no-deps`` into a fresh virtual environment outside the
checkout, whose other dependencies come from the environment running the tests. Inside it,
``gpuload.backend.kernels`` must find the sources in the installed ``gpuload/_kernels``
(through importlib.resources), and every kernel compiles from those files with nvcc: each
``.cu`` standalone for sm_80 and sm_90, and every box-copy and gather variant in the
form CuPy gets it (inlined source, the loader's options, ``-ftz=true``).

This is CI's one compile of the kernels (.ci/run has no separate nvcc loop, and
test_kernels_nvcc.py only emits the PTX it inspects). Needs the network the first time (pip's isolated build fetches setuptools). Skips only
without nvcc, except under CI, where that fails (as in test_kernels_nvcc.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO
from test_kernels_nvcc import ARCHS, _nvcc

# ~25 nvcc processes, 60-80 s on two busy cores: headroom over the 300 s default for slow runners.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# What the build reads; everything else in the checkout is left out of the copy.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "gpuload", "kernels")

# Run inside the fresh environment: where gpuload and its kernels come from, and the
# inlined source plus options of every variant, as the CUDA backend would hand them to CuPy.
PROBE = r"""
import json, sys
import gpuload
from gpuload.backend import contract, kernels
out = sys.argv[1]
variants = []
for v in contract.VARIANTS:
    for name in contract.KINDS:
        path = f"{out}/{name}.{v}.cu"
        with open(path, "w") as f:
            f.write(kernels.source(f"{name}.cu"))
        variants.append([f"{name}.{v}", path, list(kernels.options(v))])
print(json.dumps({"gpuload": gpuload.__file__, "kernel_dir": str(kernels.kernel_dir()),
                  "sources": sorted(str(p) for p in kernels.kernel_dir().iterdir()),
                  "variants": variants}))
"""


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"$ {' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with the wheel installed, that venv's directory, the wheel)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = base / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("gpuload-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)])
    # The dependencies (numpy, ml_dtypes, ...) from this environment; a path in a .pth file
    # goes on sys.path after the venv's own site-packages, and .pth files inside it (this
    # checkout's editable install) are not processed, so gpuload itself comes from the wheel.
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "_test_deps.pth").write_text(
        "\n".join(sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})) + "\n"
    )
    return py, venv, wheel


def test_wheel_lists_every_kernel_file(installed):
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"gpuload/_kernels/{p.name}" for p in (REPO / "kernels").iterdir() if p.suffix in (".cu", ".cuh")}
    assert want and want <= names, sorted(want - names)
    assert "gpuload/py.typed" in names  # PEP 561: type checkers use the package's hints


def test_installed_kernels_compile_with_nvcc(installed, tmp_path):
    py, venv, _ = installed
    nvcc = _nvcc()
    env = {k: v for k, v in os.environ.items() if k not in ("GPULOAD_KERNEL_DIR", "PYTHONPATH")}
    info = json.loads(_run([str(py), "-c", PROBE, str(tmp_path)], cwd=tmp_path, env=env))
    kdir = Path(info["kernel_dir"])
    assert Path(info["gpuload"]).is_relative_to(venv), info["gpuload"]
    assert kdir.is_relative_to(venv) and kdir.name == "_kernels", kdir
    assert not kdir.is_relative_to(REPO)
    installed_cu = sorted(kdir.glob("*.cu"))
    assert [p.name for p in installed_cu] == sorted(p.name for p in (REPO / "kernels").glob("*.cu"))
    # Byte-identical to the checkout's, so this is CI's one compile of kernels/ as well
    # (test_kernels_nvcc.py does not compile them again).
    for p in kdir.iterdir():
        if p.suffix in (".cu", ".cuh"):
            assert p.read_bytes() == (REPO / "kernels" / p.name).read_bytes(), p.name

    cmds = [
        [
            nvcc,
            "-std=c++17",
            f"-arch={arch}",
            "-Werror",
            "all-warnings",
            "-c",
            str(cu),
            "-o",
            str(tmp_path / f"{cu.stem}.{arch}.o"),
        ]
        for cu in installed_cu
        for arch in ARCHS
    ]
    cmds += [
        [
            nvcc,
            *opts,
            "-ftz=true",
            f"-arch={ARCHS[i % 2]}",
            "-Werror",
            "all-warnings",
            "-cubin",
            path,
            "-o",
            str(tmp_path / f"{variant}.cubin"),
        ]
        for i, (variant, path, opts) in enumerate(info["variants"])
    ]

    def compile_one(cmd):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        ok = proc.returncode == 0 and "warning" not in proc.stderr.lower()
        return None if ok else f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        failures = [f for f in pool.map(compile_one, cmds) if f]
    assert not failures, "\n\n".join(failures)
    assert len(info["variants"]) >= 2 * 17  # box copy and gather, every dtype pair
