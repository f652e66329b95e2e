"""The only module that reads ``kernels/*.cu``: source assembly, compilation, launch shapes.

Kernel sources live in ``kernels/`` at the repository root; an installed package carries
them as package data, ``gpuload/_kernels`` (see setup.py), found through
``importlib.resources``; ``GPULOAD_KERNEL_DIR`` overrides both. :func:`source` inlines their local ``#include "x.cuh"`` lines, with
``#line`` markers so that compiler messages still name the right file and line, because
CuPy's kernel cache hashes the source string it is given but not headers found through
``-I``: an edited header would otherwise reuse a stale cubin.

Each variant (:data:`gpuload.backend.contract.VARIANTS`, e.g. ``"f32_bf16"``) is compiled as its
own :class:`cupy.RawModule` with ``-DGPULOAD_ONLY="<variant>"``: the whole file takes
about 7 s of NVRTC per GPU architecture, one variant about half a second, and a load
usually needs one or two. CuPy caches cubins on disk (``CUPY_CACHE_DIR``), so this is paid
once per machine; call :func:`warmup` to pay it before a timed load.

Compile-time constants are passed only as ``-D`` options (:data:`DEFINES`); the ``.cu``
guards each with ``#ifndef`` so the file also compiles standalone with ``nvcc``.
CuPy is imported lazily: this module imports without it.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpuload.backend.contract import KINDS, MAX_RANK, VARIANTS, cast_code
from gpuload.errors import GpuloadError

__all__ = [
    "BLOCK_THREADS",
    "DEFINES",
    "ITEMS_PER_THREAD",
    "KERNEL_DIR_ENV",
    "OPTIONS",
    "KernelCompileError",
    "get_kernel",
    "kernel_dir",
    "kernel_name",
    "launch_geometry",
    "options",
    "source",
    "warmup",
]

#: Environment variable naming a directory of kernel sources to use instead of the repo's.
KERNEL_DIR_ENV = "GPULOAD_KERNEL_DIR"

#: Threads per block of every box-copy launch (passed to the kernels as -D).
BLOCK_THREADS = 256
#: Work items per thread per grid-stride step (passed to the kernels as -D).
ITEMS_PER_THREAD = 2
#: Largest gridDim.y; more descriptors are looped over inside the kernel.
MAX_GRID_Y = 65535

#: Every -D the kernels get. The Python side relies on the same values.
DEFINES: tuple[tuple[str, int], ...] = (
    ("GPULOAD_MAX_RANK", MAX_RANK),
    ("GPULOAD_BLOCK_THREADS", BLOCK_THREADS),
    ("GPULOAD_ITEMS_PER_THREAD", ITEMS_PER_THREAD),
)

#: Pinned explicitly: CuPy 13 defaults to C++11, CuPy 14 to C++17.
OPTIONS: tuple[str, ...] = ("-std=c++17",)

_MAIN_SOURCE = "box_copy.cu"
#: Where a built package carries kernels/*.cu and *.cuh (setup.py maps them there).
_PACKAGE_DATA = "_kernels"
_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"(?P<name>[^"]+)"[ \t]*(?://.*)?$')


class KernelCompileError(GpuloadError, RuntimeError):
    """A kernel source failed to compile.

    The message names the file, the variant and the options; the CuPy
    ``CompileException`` is the ``__cause__`` and :meth:`dump` prints its log with the
    numbered source.
    """

    def __init__(self, message: str, *, path: Path, options: tuple[str, ...], cause: BaseException):
        super().__init__(message)
        self.path = path
        self.options = options
        self.cause = cause

    def dump(self, f) -> None:
        """Write the compiler log and the numbered source to file object ``f``."""
        dump = getattr(self.cause, "dump", None)
        if dump is not None:
            dump(f)
        else:
            f.write(str(self.cause))


def kernel_dir() -> Path:
    """Directory holding the ``.cu`` sources.

    ``$GPULOAD_KERNEL_DIR`` if set; else the installed package's ``gpuload/_kernels``
    (package data, located with :func:`importlib.resources.files`); else ``kernels/`` at
    the repository root (a checkout, or an editable install of one).

    Raises
    ------
    FileNotFoundError
        None of these holds ``box_copy.cu``.
    """
    override = os.environ.get(KERNEL_DIR_ENV)
    if override:
        path = Path(override)
        if not (path / _MAIN_SOURCE).is_file():
            raise FileNotFoundError(f"{KERNEL_DIR_ENV}={override!r} has no {_MAIN_SOURCE}")
        return path
    candidates = [Path(__file__).resolve().parents[2] / "kernels"]
    packaged = importlib.resources.files("gpuload") / _PACKAGE_DATA
    # Sources are read and inlined by path; an install that is not on a file system (a
    # zip) is not supported, and falls through to the error below.
    if isinstance(packaged, Path):
        candidates.insert(0, packaged)
    for path in candidates:
        if (path / _MAIN_SOURCE).is_file():
            return path
    raise FileNotFoundError(
        f"kernel sources ({_MAIN_SOURCE}) not found in {' or '.join(map(str, candidates))}; "
        f"reinstall gpuload (a wheel carries them in gpuload/{_PACKAGE_DATA}) or set "
        f"{KERNEL_DIR_ENV} to the directory holding them"
    )


def _inline(path: Path, seen: set[Path]) -> list[str]:
    lines = [f'#line 1 "{path.name}"']
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        m = _INCLUDE_RE.match(line)
        if m is None:
            lines.append(line)
            continue
        target = (path.parent / m.group("name")).resolve()
        if not target.is_file():
            raise FileNotFoundError(f'{path}:{lineno}: #include "{m.group("name")}": no such file in {path.parent}')
        if target not in seen:  # #pragma once semantics; the headers also have guards
            seen.add(target)
            lines.extend(_inline(target, seen))
        lines.append(f'#line {lineno + 1} "{path.name}"')
    return lines


def source(name: str = _MAIN_SOURCE) -> str:
    """The text of ``kernels/<name>`` with its local ``#include "..."`` lines inlined.

    ``#include <...>`` lines are left alone. Needs no CuPy.
    """
    path = kernel_dir() / name
    return "\n".join(_inline(path.resolve(), {path.resolve()})) + "\n"


def options(variant: str | None = None) -> tuple[str, ...]:
    """Compiler options for one variant (or all variants, for ``None``)."""
    opts = OPTIONS + tuple(f"-D{k}={v}" for k, v in DEFINES)
    if variant is not None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown box-copy variant {variant!r}; known: {', '.join(VARIANTS)}")
        opts += (f'-DGPULOAD_ONLY="{variant}"',)
    return opts


def kernel_name(src_dtype: Any, dst_dtype: Any) -> str:
    """``gpuload_box_copy_<variant>`` for a dtype pair (raises PlanError if unsupported)."""
    return f"gpuload_box_copy_{cast_code(src_dtype, dst_dtype)}"


_lock = threading.Lock()
#: The kernel kinds (the copy contract's) and their sources: ``gpuload_<kind>_<variant>``
#: lives in ``kernels/<kind>.cu``.
_SOURCES = {kind: f"{kind}.cu" for kind in KINDS}
_modules: dict[tuple[str, str], Any] = {}  # (kind, variant) -> cupy.RawModule (CuPy compiles it per device)
_functions: dict[tuple[int, str, str], Any] = {}  # (device id, kind, variant) -> compiled kernel


def get_kernel(src_dtype: Any, dst_dtype: Any):
    """The compiled ``gpuload_box_copy_<variant>`` for a dtype pair, on the current CuPy device.

    Compiles on first use per device (cached in memory here and on disk by CuPy).

    Raises
    ------
    PlanError
        No kernel for this dtype pair.
    KernelCompileError
        The source does not compile; the message names the file and options.
    """
    return _compiled("box_copy", cast_code(src_dtype, dst_dtype))


def _compiled(kind: str, variant: str):
    """``gpuload_<kind>_<variant>`` compiled for the current device (once per device and process).

    One module per (kind, variant): each variant compiles alone (``-DGPULOAD_ONLY``), so a
    load compiles only the dtype pairs it uses.
    """
    import cupy

    key = (cupy.cuda.Device().id, kind, variant)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    with _lock:
        fn = _functions.get(key)
        if fn is None:
            opts = options(variant)
            try:
                mod = _modules.get((kind, variant))
                if mod is None:
                    mod = _modules[(kind, variant)] = cupy.RawModule(code=source(_SOURCES[kind]), options=opts)
                fn = mod.get_function(f"gpuload_{kind}_{variant}")
                fn.attributes  # noqa: B018 - forces the compile and load now, inside the try
            except cupy.cuda.compiler.CompileException as e:
                path = kernel_dir() / _SOURCES[kind]
                raise KernelCompileError(
                    f"{path}: variant {variant!r} failed to compile with options {opts}:\n{e}",
                    path=path,
                    options=opts,
                    cause=e,
                ) from e
            _functions[key] = fn
    return fn


def warmup(variants: Iterable[str] | None = None, devices: Iterable[int] | None = None) -> float:
    """Compile kernels now, so that compilation never lands inside a measured load.

    Returns the seconds it took (NVRTC compile, or CuPy's disk cache, plus module load).

    Parameters
    ----------
    variants:
        Variant names (``"f32_bf16"``, ``"b4_b4"``, ...; see
        :data:`gpuload.backend.contract.VARIANTS`); all of them by default.
    devices:
        CUDA device ids; all visible devices by default.

    Raises
    ------
    ValueError
        An unknown variant name.
    KernelCompileError
        A variant does not compile.
    """
    import time

    import cupy

    t = time.perf_counter()
    variants = tuple(VARIANTS if variants is None else variants)
    for v in variants:
        options(v)  # validates the name before anything is compiled
    devices = range(cupy.cuda.runtime.getDeviceCount()) if devices is None else devices
    for dev in devices:
        with cupy.cuda.Device(dev):
            for v in variants:
                _compiled("box_copy", v)
    return time.perf_counter() - t


def launch_geometry(counts: Iterable[int], sm_count: int) -> tuple[tuple[int, int], tuple[int]]:
    """Grid and block for one batched launch over descriptors of ``counts`` elements.

    ``gridDim.y`` is one descriptor per row (capped at 65535, the kernel loops beyond);
    ``gridDim.x`` covers the largest descriptor but stops at about eight blocks per SM in
    total, since the grid-stride loop does the rest and more blocks only add scheduling.

    Returns
    -------
    (grid, block)
        ``((gx, gy), (BLOCK_THREADS,))``; ``((1, 1), ...)`` for no descriptors (a load
        with no copies: the kernel's descriptor loop then does nothing).
    """
    counts = list(counts)
    if not counts:
        return (1, 1), (BLOCK_THREADS,)
    per_block = BLOCK_THREADS * ITEMS_PER_THREAD
    need = max(-(-max(c, 1) // per_block) for c in counts)
    gy = min(len(counts), MAX_GRID_Y)
    budget = max(1, -(-8 * max(sm_count, 1) // gy))
    gx = max(1, min(need, budget, 2**31 - 1))
    return (gx, gy), (BLOCK_THREADS,)


# -- row gather (kernels/gather.cu): a warm start's vocabulary remap ------------------------


def gather_kernel_name(src_dtype: Any, dst_dtype: Any) -> str:
    """``gpuload_gather_<variant>`` for a dtype pair (raises PlanError if unsupported)."""
    return f"gpuload_gather_{cast_code(src_dtype, dst_dtype)}"


def get_gather_kernel(src_dtype: Any, dst_dtype: Any):
    """The compiled ``gpuload_gather_<variant>`` for a dtype pair, on the current CuPy device.

    Compiled from ``kernels/gather.cu`` on first use per device, with the same options
    (one variant per module) as the box copies.

    Raises
    ------
    PlanError
        No kernel for this dtype pair.
    KernelCompileError
        The source does not compile.
    """
    return _compiled("gather", cast_code(src_dtype, dst_dtype))
