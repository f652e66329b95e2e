"""The copy contract: what the kernels, their NumPy twin and the host harness agree on.

Three executors run the same copies: the CUDA kernels (``kernels/box_copy.cu``,
``kernels/gather.cu``), their NumPy twin (:mod:`gpuload.backend.host`) and the C++ host
harness the tests build from the kernels' own headers (``tests/kernel_host_harness.cpp``).
This module is the one place that says what they share:

- the **copy kinds** (:data:`KINDS`): a :class:`~gpuload.plan.copies.BoxCopy` runs as
  ``gpuload_box_copy_<variant>``, a :class:`~gpuload.plan.copies.GatherCopy` as
  ``gpuload_gather_<variant>``;
- the **cast table** (:data:`CASTS`, :func:`cast_code`): which dtype pairs a copy may
  convert, and the variant name the kernels know each pair by (``GPULOAD_BOX_COPY_VARIANTS``
  in ``box_copy.cuh`` lists exactly :data:`VARIANTS`); ``allow_cast`` converts exactly
  these pairs (:func:`converts`);
- the **descriptor layout** (:data:`DESC_DTYPE`, :data:`GATHER_DESC_DTYPE`, :data:`MAX_RANK`)
  and how copies are packed into it (:func:`pack_descriptors`, :func:`pack_gather`);
  tests parse the ``.cuh`` structs and compare;
- the **validity checks** every executor runs first (:func:`check_copy`,
  :func:`check_gather`): the kernels check no bounds.

Notes
-----
Supported conversions (every other pair of different dtypes raises
:class:`~gpuload.errors.PlanError`; identical dtypes of 1, 2, 4, 8 or 16 bytes are copied
as raw bytes, so NaN payloads, ``bool`` and complex values pass unchanged): every ordered
pair of two different dtypes among float16, bfloat16, float32 and float64 (native byte
order). That is TensorFlow's ``init_from_checkpoint(..., allow_cast=True)`` rule: floating
dtypes convert into each other, nothing else converts. How each one rounds is documented
in :mod:`gpuload.backend.host`.

This module imports no CuPy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np

from gpuload.errors import PlanError
from gpuload.plan.copies import BoxCopy, GatherCopy

__all__ = [
    "BF16",
    "CASTS",
    "DESC_DTYPE",
    "GATHER_DESC_DTYPE",
    "KINDS",
    "MAX_RANK",
    "RAW_SIZES",
    "VARIANTS",
    "cast_code",
    "check_copy",
    "check_gather",
    "converts",
    "kind_of",
    "pack_descriptors",
    "pack_gather",
]

#: Highest rank a copy may have (the descriptors hold this many axes; ``-DGPULOAD_MAX_RANK``).
MAX_RANK = 8

#: NumPy's bfloat16 (from ml_dtypes).
BF16 = np.dtype(ml_dtypes.bfloat16)

#: The floating dtypes and the names the kernels give them.
_FLOAT_CODES = {
    np.dtype(np.float16): "f16",
    BF16: "bf16",
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
}

#: The cast table: ``(source dtype, destination dtype) -> kernel variant``, in the order of
#: ``GPULOAD_BOX_COPY_VARIANTS``. Every ordered pair of different floating dtypes.
CASTS: dict[tuple[np.dtype, np.dtype], str] = {
    (s, d): f"{_FLOAT_CODES[s]}_{_FLOAT_CODES[d]}"
    for s, d in (
        (np.dtype(a), np.dtype(b))
        for a, b in (
            (np.float32, BF16), (BF16, np.float32), (np.float32, np.float16), (np.float16, np.float32),
            (BF16, np.float16), (np.float16, BF16), (np.float64, np.float32), (np.float32, np.float64),
            (np.float64, BF16), (np.float64, np.float16), (BF16, np.float64), (np.float16, np.float64),
        )
    )
}  # fmt: skip

#: Element sizes an identity copy moves as raw bytes (variant ``b<n>_b<n>``).
RAW_SIZES = (1, 2, 4, 8, 16)

#: Every kernel variant, in the order of ``GPULOAD_BOX_COPY_VARIANTS`` in box_copy.cuh.
VARIANTS: tuple[str, ...] = tuple(f"b{n}_b{n}" for n in RAW_SIZES) + tuple(CASTS.values())

#: The copy kinds: kernel ``gpuload_<kind>_<variant>`` is defined in ``kernels/<kind>.cu``.
KINDS: tuple[str, ...] = ("box_copy", "gather")


def kind_of(copy: BoxCopy | GatherCopy) -> str:
    """The kind (:data:`KINDS`) that executes ``copy``."""
    return "gather" if isinstance(copy, GatherCopy) else "box_copy"


def cast_code(src_dtype: Any, dst_dtype: Any) -> str:
    """Name the kernel variant that copies ``src_dtype`` elements into ``dst_dtype``.

    Parameters
    ----------
    src_dtype, dst_dtype:
        Anything :class:`numpy.dtype` accepts; ``ml_dtypes.bfloat16`` for bfloat16.

    Returns
    -------
    str
        ``"b<itemsize>_b<itemsize>"`` for identical dtypes (a raw copy), else the
        :data:`CASTS` entry, ``"<src>_<dst>"`` with codes ``f16``, ``bf16``, ``f32``, ``f64``.

    Raises
    ------
    PlanError
        No kernel copies between the two dtypes (see the module notes).
    """
    src, dst = np.dtype(src_dtype), np.dtype(dst_dtype)
    if src == dst:
        if src.hasobject or src.itemsize not in RAW_SIZES:
            raise PlanError(
                f"cannot copy elements of dtype {src} ({src.itemsize} bytes): box copies move "
                f"fixed-size elements of 1, 2, 4, 8 or 16 bytes"
            )
        return f"b{src.itemsize}_b{src.itemsize}"
    code = CASTS.get((src, dst))
    if code is None:
        raise PlanError(
            f"no box-copy kernel converts {src} to {dst}: supported conversions are between "
            f"float16, bfloat16, float32 and float64 (native byte order); load into a variable "
            f"of the checkpoint's dtype ({src}) instead"
        )
    return code


def converts(src_dtype: Any, dst_dtype: Any) -> bool:
    """Whether ``allow_cast`` converts ``src_dtype`` into a different ``dst_dtype``.

    ``True`` exactly for the pairs of :data:`CASTS` (between floating dtypes, as
    TensorFlow's ``init_from_checkpoint(..., allow_cast=True)``); identical dtypes need no
    cast and give ``False``.
    """
    return (np.dtype(src_dtype), np.dtype(dst_dtype)) in CASTS


def check_copy(copy: BoxCopy, src_nbytes: int, src_itemsize: int, dst_size: int) -> None:
    """Check that ``copy`` reads inside the chunk and writes inside the destination.

    Parameters
    ----------
    copy:
        The copy to check. Rank 0 (a scalar, as an unnormalised plan may produce) is one
        element.
    src_nbytes:
        Bytes in the staged chunk.
    src_itemsize:
        Bytes per source element.
    dst_size:
        Elements in the destination buffer.

    Raises
    ------
    PlanError
        Malformed copy (rank, negative offset, stride or extent) or a box that reaches
        outside the chunk or the destination. The kernels do not check bounds: every
        backend calls this first.
    """
    rank = len(copy.shape)
    if rank > MAX_RANK or len(copy.src_strides) != rank or len(copy.dst_strides) != rank:
        raise PlanError(
            f"BoxCopy to destination {copy.dest}: rank {rank} with {len(copy.src_strides)} "
            f"source and {len(copy.dst_strides)} destination strides; expected rank 0..{MAX_RANK} "
            f"and one stride per axis"
        )
    values = (copy.src_offset, copy.dst_offset, *copy.shape, *copy.src_strides, *copy.dst_strides)
    if any(v < 0 for v in values):
        raise PlanError(f"BoxCopy to destination {copy.dest} has a negative offset, extent or stride: {copy}")
    if 0 in copy.shape:
        return
    src_end = copy.src_offset + src_itemsize * (1 + sum((n - 1) * s for n, s in zip(copy.shape, copy.src_strides)))
    if src_end > src_nbytes:
        raise PlanError(
            f"BoxCopy to destination {copy.dest} reads chunk bytes [{copy.src_offset}, {src_end}) "
            f"but the chunk holds {src_nbytes} bytes"
        )
    dst_end = copy.dst_offset + 1 + sum((n - 1) * d for n, d in zip(copy.shape, copy.dst_strides))
    if dst_end > dst_size:
        raise PlanError(
            f"BoxCopy to destination {copy.dest} writes elements [{copy.dst_offset}, {dst_end}) "
            f"but the destination holds {dst_size} elements"
        )


def check_gather(copy: GatherCopy, src_nbytes: int, src_itemsize: int, dst_size: int) -> None:
    """Check that every box of ``copy`` reads inside the chunk and writes inside the destination.

    Parameters are those of :func:`check_copy`.

    Raises
    ------
    PlanError
        Malformed copy (rank, strides, negative offsets) or a box outside the chunk or
        the destination. The gather kernel does not check bounds: every backend calls this.
    """
    rank = len(copy.shape)
    if not 1 <= rank <= MAX_RANK or len(copy.src_strides) != rank or len(copy.dst_strides) != rank:
        raise PlanError(
            f"GatherCopy to destination {copy.dest}: rank {rank} with {len(copy.src_strides)} "
            f"source and {len(copy.dst_strides)} destination strides; expected rank 1..{MAX_RANK}"
        )
    if any(v < 0 for v in (*copy.shape, *copy.src_strides, *copy.dst_strides)):
        raise PlanError(f"GatherCopy to destination {copy.dest} has a negative extent or stride: {copy!r}")
    if copy.boxes == 0 or 0 in copy.shape:
        return
    if copy.src_offsets.min() < 0 or copy.dst_offsets.min() < 0:
        raise PlanError(f"GatherCopy to destination {copy.dest} has a negative offset: {copy!r}")
    src_span = src_itemsize * (1 + sum((n - 1) * s for n, s in zip(copy.shape, copy.src_strides)))
    dst_span = 1 + sum((n - 1) * d for n, d in zip(copy.shape, copy.dst_strides))
    src_end = int(copy.src_offsets.max()) + src_span
    dst_end = int(copy.dst_offsets.max()) + dst_span
    if src_end > src_nbytes:
        raise PlanError(
            f"GatherCopy to destination {copy.dest} reads chunk bytes up to {src_end} "
            f"but the chunk holds {src_nbytes} bytes"
        )
    if dst_end > dst_size:
        raise PlanError(
            f"GatherCopy to destination {copy.dest} writes elements up to {dst_end} "
            f"but the destination holds {dst_size} elements"
        )


# -- descriptors: the host image of the structs the kernels read ---------------------------

#: Host image of ``struct gpuload_box_desc`` (box_copy.cuh). Axis ``rank - 1`` is the
#: fastest-varying one; ``src_offset`` is in bytes from the kernel's ``src`` pointer,
#: ``dst_offset`` in destination elements from ``dst``, strides in elements.
DESC_DTYPE = np.dtype(
    [
        ("rank", "<i8"),
        ("count", "<i8"),
        ("src_offset", "<i8"),
        ("dst_offset", "<i8"),
        ("dst", "<u8"),
        ("shape", "<i8", (MAX_RANK,)),
        ("src_strides", "<i8", (MAX_RANK,)),
        ("dst_strides", "<i8", (MAX_RANK,)),
    ]
)

#: Host image of ``struct gpuload_gather_desc`` (gather.cuh): the box template
#: (``box.count`` elements per box), the number of boxes and the index of the first
#: (source byte, destination element) pair of this descriptor.
GATHER_DESC_DTYPE = np.dtype([("box", DESC_DTYPE), ("boxes", "<i8"), ("index_offset", "<i8")])


def pack_descriptors(
    copies: Iterable[BoxCopy], dst_ptrs: Iterable[int], src_base: int = 0, out: np.ndarray | None = None
) -> np.ndarray:
    """Build the ``gpuload_box_desc`` array for a batch of copies.

    Parameters
    ----------
    copies:
        :class:`~gpuload.plan.copies.BoxCopy` objects (already checked with
        :func:`check_copy`).
    dst_ptrs:
        Address of each copy's destination buffer (element 0).
    src_base:
        Byte offset of the kernel's ``src`` pointer within the chunk: the staged copy of
        the chunk may start later than the chunk itself.
    out:
        Optional array of :data:`DESC_DTYPE` to fill (e.g. a view of pinned memory).

    Returns
    -------
    numpy.ndarray
        One :data:`DESC_DTYPE` record per copy.
    """
    copies = list(copies)
    ptrs = list(dst_ptrs)
    if len(ptrs) != len(copies):
        raise ValueError(f"{len(copies)} copies but {len(ptrs)} destination addresses")
    descs = np.zeros(len(copies), DESC_DTYPE) if out is None else out[: len(copies)]
    if not copies:
        return descs
    # Column-wise assignment: one numpy call per field rather than per copy and field
    # (half the time for the 32 copies of a partitioned chunk; submit() is on the hot path).
    # Every field of every record is written, so a reused `out` needs no clearing.
    pad = (0,) * MAX_RANK
    rows = [
        (c.shape, c.src_strides, c.dst_strides) if c.shape else ((1,), (1,), (1,)) for c in copies
    ]  # rank 0: one element
    descs["rank"] = [len(r[0]) for r in rows]
    descs["count"] = [c.size for c in copies]
    descs["src_offset"] = [c.src_offset - src_base for c in copies]
    descs["dst_offset"] = [c.dst_offset for c in copies]
    descs["dst"] = ptrs
    descs["shape"] = [(r[0] + pad)[:MAX_RANK] for r in rows]
    descs["src_strides"] = [(r[1] + pad)[:MAX_RANK] for r in rows]
    descs["dst_strides"] = [(r[2] + pad)[:MAX_RANK] for r in rows]
    return descs


def pack_gather(
    copies: Iterable[GatherCopy],
    dst_ptrs: Iterable[int],
    src_base: int = 0,
    *,
    out_descs: np.ndarray | None = None,
    out_offsets: np.ndarray | None = None,
    first_pair: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors and (source byte, destination element) pairs of a batch of GatherCopies.

    Parameters
    ----------
    copies:
        :class:`~gpuload.plan.copies.GatherCopy` objects (already checked with
        :func:`check_gather`).
    dst_ptrs:
        Address of each copy's destination buffer (element 0).
    src_base:
        Byte offset of the kernel's ``src`` pointer within the chunk.
    out_descs, out_offsets:
        Optional arrays (e.g. views of pinned memory) to fill: :data:`GATHER_DESC_DTYPE`
        records and ``int64`` pairs (two per box).
    first_pair:
        Index of the first pair in the offsets buffer the kernel receives (descriptors'
        ``index_offset`` count from there).

    Returns
    -------
    (descs, offsets)
        One record per copy, and ``2 * total boxes`` ``int64`` values.
    """
    copies = list(copies)
    ptrs = list(dst_ptrs)
    if len(ptrs) != len(copies):
        raise ValueError(f"{len(copies)} copies but {len(ptrs)} destination addresses")
    total = sum(c.boxes for c in copies)
    descs = np.zeros(len(copies), GATHER_DESC_DTYPE) if out_descs is None else out_descs[: len(copies)]
    pairs = np.empty(2 * total, np.int64) if out_offsets is None else out_offsets[: 2 * total]
    if not copies:
        return descs, pairs
    pad = (0,) * MAX_RANK
    box = descs["box"]
    box["rank"] = [len(c.shape) for c in copies]
    box["count"] = [c.box_size for c in copies]
    box["src_offset"] = 0
    box["dst_offset"] = 0
    box["dst"] = ptrs
    box["shape"] = [(c.shape + pad)[:MAX_RANK] for c in copies]
    box["src_strides"] = [(c.src_strides + pad)[:MAX_RANK] for c in copies]
    box["dst_strides"] = [(c.dst_strides + pad)[:MAX_RANK] for c in copies]
    descs["boxes"] = [c.boxes for c in copies]
    at = 0
    starts = []
    view = pairs.reshape(-1, 2)
    for c in copies:
        starts.append(first_pair + at)
        view[at : at + c.boxes, 0] = c.src_offsets - src_base
        view[at : at + c.boxes, 1] = c.dst_offsets
        at += c.boxes
    descs["index_offset"] = starts
    return descs, pairs
