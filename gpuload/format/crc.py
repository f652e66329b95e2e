"""CRC32C (Castagnoli) as TensorFlow uses it: plain, masked, combined, and checked.

:func:`check_entry` is the one check of a stored entry's CRC: a load and a reader that
find the same corrupt entry raise the same :class:`~gpuload.errors.ChecksumError`.

:func:`crc32c` runs on any contiguous buffer (``bytes``, ``bytearray``, ``memoryview``,
NumPy arrays) without copying it. Large buffers go straight to the native ``crc32c_extend``
that ships with ``google_crc32c``, called through :mod:`ctypes` so that the GIL is released
while it runs: reader threads can checksum chunks in parallel and
:func:`crc32c_combine` joins their results in order.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os

import google_crc32c
import numpy as np

from gpuload.errors import ChecksumError
from gpuload.format.keys import describe_key

__all__ = ["crc32c", "mask", "unmask", "crc32c_combine", "check_entry", "MASK_DELTA"]

MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_POLY = 0x82F63B78  # reflected Castagnoli polynomial

# Below this size the C extension's call overhead wins over ctypes; above it the
# extension would need a ``bytes`` copy (it accepts only objects without a release
# hook) and would hold the GIL.
_SMALL = 1 << 14
# Bound on the temporary copy made per call when the native symbol cannot be found.
_FALLBACK_CHUNK = 1 << 22


def _find_native():
    """``crc32c_extend(uint32, const uint8*, size_t)`` from the library google_crc32c loads."""
    try:
        spec = importlib.util.find_spec("google_crc32c._crc32c")
    except (ImportError, ValueError):
        return None
    candidates = []
    if spec is not None and spec.origin:
        candidates.append(spec.origin)  # dlsym also searches its DT_NEEDED libcrc32c
        libs = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), "google_crc32c.libs")
        if os.path.isdir(libs):
            candidates += [os.path.join(libs, f) for f in sorted(os.listdir(libs)) if "crc32c" in f]
    for path in candidates:
        try:
            fn = ctypes.CDLL(path).crc32c_extend
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_uint32
        fn.argtypes = (ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
        if fn(0, b"123456789", 9) == 0xE3069283:
            return fn
    return None


_native = _find_native()


def crc32c(data, crc: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``crc`` (TensorFlow's ``crc32c::Extend``).

    Parameters
    ----------
    data:
        A C-contiguous buffer: ``bytes``, ``bytearray``, ``memoryview``, ``mmap`` or a
        NumPy array (any dtype; its raw bytes are hashed). Never copied when large.
    crc:
        The unmasked CRC of the bytes that precede ``data`` (0 to start).

    Returns
    -------
    int
        The unmasked CRC32C, in ``[0, 2**32)``.
    """
    crc &= _U32
    if isinstance(data, bytes):
        if len(data) <= _SMALL or _native is None:
            return google_crc32c.extend(crc, data)
        return _native(crc, data, len(data))
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise TypeError("crc32c of an object array: hash the encoded bytes instead")
        if not data.flags.c_contiguous:
            raise ValueError("crc32c needs a C-contiguous array")
        arr = data.reshape(-1).view(np.uint8) if data.ndim else data.reshape(1).view(np.uint8)
    else:
        arr = np.frombuffer(data, dtype=np.uint8)  # zero-copy view of any buffer
    n = arr.size
    if n == 0:
        return crc
    if _native is not None and n > _SMALL:
        return _native(crc, arr.ctypes.data, n)
    for start in range(0, n, _FALLBACK_CHUNK):
        crc = google_crc32c.extend(crc, arr[start : start + _FALLBACK_CHUNK].tobytes())
    return crc


def mask(crc: int) -> int:
    """TensorFlow's ``crc32c::Mask``: the form every stored CRC takes."""
    crc &= _U32
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    """Inverse of :func:`mask`."""
    rot = (masked - MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


# --- combining --------------------------------------------------------------------------
# zlib's crc32_combine (1.2.12+ form: x^(8*len2) mod P by repeated squaring, then one
# GF(2) polynomial product), with the Castagnoli polynomial. Bit 31 of a value is x^0.


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) mod P(x) over GF(2), both in reflected bit order."""
    m = 1 << 31
    p = 0
    while a:
        if a & m:
            p ^= b
            a ^= m
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table():
    table = []
    p = 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()  # _X2N[k] = x^(2^k) mod P


def _x2nmodp(n: int, k: int) -> int:
    """x^(n * 2^k) mod P."""
    p = 1 << 31  # x^0
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32C of ``A + B`` from ``crc1 = crc32c(A)``, ``crc2 = crc32c(B)``, ``len2 = len(B)``.

    Lets reader threads checksum the chunks of one entry independently; combining their
    CRCs in order gives the entry's CRC. Cost is O(log len2), independent of the data.
    """
    if len2 < 0:
        raise ValueError(f"len2 must be >= 0, got {len2}")
    # x^(8*len2) shifts crc1 past B's bytes (k=3: 2^3 bits per byte)
    return (_multmodp(_x2nmodp(len2, 3), crc1 & _U32) ^ (crc2 & _U32)) & _U32


def check_entry(computed: int, *, masked_crc: int, path, key: str, offset: int, size: int) -> None:
    """Check a stored entry's bytes, whose unmasked CRC is ``computed``, against the index.

    Parameters
    ----------
    masked_crc:
        The masked CRC32C the index stores for the entry.
    path, key, offset, size:
        The data file, the entry's table key (a tensor name or a slice key) and where its
        bytes are.

    Raises
    ------
    ChecksumError
        They differ; ``tensor`` is the checkpoint's tensor name (for a slice key, its
        partitioned tensor), the message names the slice.
    """
    stored = unmask(masked_crc)
    if computed != stored:
        tensor, part = describe_key(key)
        raise ChecksumError.mismatch(
            path=path, tensor=tensor, part=part, offset=offset, size=size, stored=stored, computed=computed
        )
