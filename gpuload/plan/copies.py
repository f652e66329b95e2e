"""The unit of device work: one N-D strided box copy (with optional dtype cast).

A :class:`BoxCopy` says: take ``shape`` elements from a staged chunk, starting at byte
``src_offset`` of the chunk and stepping ``src_strides`` *source elements* per index on
each axis, and write them into a destination buffer starting at element ``dst_offset``,
stepping ``dst_strides`` *destination elements*. The plan normalises copies (axes of
extent 1 dropped, contiguous axes merged) so most copies have rank 1 or 2.

Every backend executes exactly this: the CUDA kernels in ``kernels/box_copy.cu`` and
their NumPy twin :func:`gpuload.backend.host.box_copy`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["BoxCopy", "GatherCopy", "normalize"]


@dataclasses.dataclass(frozen=True)
class BoxCopy:
    """Copy one box from a staged chunk into destination ``dest``.

    Attributes
    ----------
    dest:
        Index of the destination in ``Plan.destinations``.
    src_offset:
        Byte offset, in the staged chunk, of the box's first element.
    src_strides:
        Per-axis step in source elements.
    dst_offset:
        Element offset, in the destination buffer (flat, row-major), of the first element.
    dst_strides:
        Per-axis step in destination elements.
    shape:
        Extent of the box on each axis; normalised copies have rank >= 1.
    """

    dest: int
    src_offset: int
    src_strides: tuple[int, ...]
    dst_offset: int
    dst_strides: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def is_contiguous(self) -> bool:
        """Whether source and destination are both one dense run (after normalising)."""
        return len(self.shape) <= 1 and all(s == 1 for s in self.src_strides + self.dst_strides)


def normalize(copy: BoxCopy) -> BoxCopy:
    """Drop axes of extent 1 and merge axes that are contiguous in both source and destination."""
    axes = [(n, s, d) for n, s, d in zip(copy.shape, copy.src_strides, copy.dst_strides) if n != 1]
    if any(n == 0 for n, _, _ in axes):
        axes = [(0, 1, 1)]
    merged: list[tuple[int, int, int]] = []
    for n, s, d in axes:
        if merged:
            pn, ps, pd = merged[-1]
            if ps == n * s and pd == n * d:
                merged[-1] = (pn * n, s, d)
                continue
        merged.append((n, s, d))
    return dataclasses.replace(
        copy,
        shape=tuple(n for n, _, _ in merged) or (1,),
        src_strides=tuple(s for _, s, _ in merged) or (1,),
        dst_strides=tuple(d for _, _, d in merged) or (1,),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class GatherCopy:
    """Copy ``n`` boxes of one shape from listed places of a staged chunk to listed places.

    Box ``k`` is the :class:`BoxCopy` with ``src_offset = src_offsets[k]`` and
    ``dst_offset = dst_offsets[k]`` and this copy's ``shape``, ``src_strides`` and
    ``dst_strides``. A warm start's row gather is one of these per (chunk block, part):
    box ``k`` is one old row (or, for a vocabulary along axis 1, one old column) and
    the offsets come from the vocabulary mapping. Executed by ``kernels/gather.cu`` and
    its NumPy twin :func:`gpuload.backend.host.gather_copy`; element ``i`` of box ``k``
    (``k`` slowest) is the work item ``k * prod(shape) + i``.

    Attributes
    ----------
    dest:
        Index of the destination in ``Plan.destinations``.
    src_offsets:
        ``int64`` byte offsets, in the staged chunk, of each box's first element.
    dst_offsets:
        ``int64`` element offsets, in the destination, of each box's first element.
    src_strides, dst_strides, shape:
        The common box, as in :class:`BoxCopy` (normalised).
    """

    dest: int
    src_offsets: np.ndarray
    dst_offsets: np.ndarray
    src_strides: tuple[int, ...]
    dst_strides: tuple[int, ...]
    shape: tuple[int, ...]

    def __post_init__(self):
        src = np.ascontiguousarray(self.src_offsets, dtype=np.int64)
        dst = np.ascontiguousarray(self.dst_offsets, dtype=np.int64)
        if src.ndim != 1 or src.shape != dst.shape:
            raise ValueError(
                f"GatherCopy to destination {self.dest}: {src.shape} source and "
                f"{dst.shape} destination offsets; expected two 1-D arrays of one length"
            )
        src.flags.writeable = False
        dst.flags.writeable = False
        object.__setattr__(self, "src_offsets", src)
        object.__setattr__(self, "dst_offsets", dst)

    @property
    def boxes(self) -> int:
        """Number of boxes gathered."""
        return int(self.src_offsets.shape[0])

    @property
    def box_size(self) -> int:
        """Elements per box."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def size(self) -> int:
        """Elements copied in all."""
        return self.boxes * self.box_size

    def is_contiguous(self) -> bool:
        """Never one dense run (a gather is never a direct copy)."""
        return False

    def __eq__(self, other):
        if not isinstance(other, GatherCopy):
            return NotImplemented
        return (
            (self.dest, self.src_strides, self.dst_strides, self.shape)
            == (other.dest, other.src_strides, other.dst_strides, other.shape)
            and np.array_equal(self.src_offsets, other.src_offsets)
            and np.array_equal(self.dst_offsets, other.dst_offsets)
        )

    def __hash__(self):
        return hash(
            (
                self.dest,
                self.src_strides,
                self.dst_strides,
                self.shape,
                self.boxes,
                self.src_offsets[:4].tobytes(),
                self.dst_offsets[:4].tobytes(),
            )
        )

    def __repr__(self):
        def head(a):
            items = ", ".join(str(int(x)) for x in a[:4])
            return f"[{items}{', ...' if len(a) > 4 else ''}]"

        return (
            f"GatherCopy(dest={self.dest}, boxes={self.boxes}, src_offsets={head(self.src_offsets)}, "
            f"dst_offsets={head(self.dst_offsets)}, src_strides={self.src_strides}, "
            f"dst_strides={self.dst_strides}, shape={self.shape})"
        )
