"""The unit of device work: one N-D strided box copy (with optional dtype cast).

A :class:`BoxCopy` says: take ``shape`` elements from a staged chunk, starting at byte
``src_offset`` of the chunk and stepping ``src_strides`` *source elements* per index on
each axis, and write them into a destination buffer starting at element ``dst_offset``,
stepping ``dst_strides`` *destination elements*. The plan normalises copies (axes of
extent 1 dropped, contiguous axes merged) so most copies have rank 1 or 2.

Every backend executes exactly this: the CUDA kernels in ``kernels/box_copy.cu`` and
their NumPy twin :func:`gpuload.device.host.box_copy`.
"""

from __future__ import annotations

import dataclasses

__all__ = ["BoxCopy", "normalize"]


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
