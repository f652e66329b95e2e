"""Page-cache control for warm and cold runs: warm a file, evict it, and check which it is.

Residency is measured with ``mincore(2)`` on a shared read-only mapping of the file (the
same answer ``fincore`` from util-linux gives; that tool is the fallback). Eviction is
``fsync`` + ``posix_fadvise(POSIX_FADV_DONTNEED)``, then checked: pages that another
process has mapped, or that are dirty, stay, and a "cold" run on them would be warm.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
import subprocess
import time

_PAGE = mmap.PAGESIZE
_libc = None


def _c():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
        lib.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        lib.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
        _libc = lib
    return _libc


def resident_fraction(path) -> float | None:
    """Fraction of ``path``'s pages in the page cache (0..1), or None when it cannot be told."""
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    try:
        lib = _c()
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = lib.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), "mmap failed")
            try:
                npages = (size + _PAGE - 1) // _PAGE
                vec = (ctypes.c_ubyte * npages)()
                if lib.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                    raise OSError(ctypes.get_errno(), "mincore failed")
                resident = sum(1 for b in bytes(vec) if b & 1)
                return resident / npages
            finally:
                lib.munmap(ctypes.c_void_p(addr), size)
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return _fincore(path, size)


def _fincore(path, size) -> float | None:
    tool = shutil.which("fincore")
    if tool is None:
        return None
    try:
        out = subprocess.run(
            [tool, "--bytes", "--noheadings", "--output", "RES", path],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        return int(out[0]) / size if out else None
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def evict(paths, *, tolerance: float = 0.01) -> dict:
    """Drop ``paths`` from the page cache and check it worked.

    Returns ``{"ok": bool, "resident": [fractions after], "method": str}``; ``ok`` is False
    when a file kept more than ``tolerance`` of its pages (or residency is unknown).
    """
    fractions = []
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            for _ in range(3):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                frac = resident_fraction(p)
                if frac is not None and frac <= tolerance:
                    break
                time.sleep(0.05)
        finally:
            os.close(fd)
        fractions.append(frac)
    ok = all(f is not None and f <= tolerance for f in fractions)
    return {"ok": ok, "resident": fractions, "method": "fsync+posix_fadvise(DONTNEED), checked with mincore"}


def warm(paths, *, buf_bytes: int = 8 << 20) -> list[float | None]:
    """Read ``paths`` whole so they sit in the page cache; return their residency after."""
    buf = bytearray(buf_bytes)
    out = []
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        out.append(resident_fraction(p))
    return out
