"""The benchmark's synthetic tensor: values computable from their index, so nothing is kept.

Element ``i`` (row-major flat index) of the tensor is a function of ``i`` alone
(Fibonacci hashing), so any worker can regenerate any row to check a load, and the
expected checksum of every part of every layout is computed in one streaming pass.

This module imports only the standard library and NumPy (``ml_dtypes`` for bfloat16): it
runs under the peers' interpreters too.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import numpy as np

#: Bump when :func:`values` changes: cached checkpoints made by an older version are redone.
GEN_VERSION = 1

_K = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio
_MIB = 1 << 20


def np_dtype(name: str) -> np.dtype:
    """NumPy dtype for a TensorFlow dtype name (``float32``, ``bfloat16``, ``int64``...)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name == "half":
        name = "float16"
    return np.dtype(name)


def values(start: int, count: int, dtype: np.dtype) -> np.ndarray:
    """Elements ``start .. start+count-1`` of the synthetic tensor, as a flat array."""
    i = np.arange(start, start + count, dtype=np.uint64)
    x = i * _K  # wraps modulo 2**64: intended
    if dtype.kind == "f" or dtype.name == "bfloat16" or dtype.kind == "V":
        # 24 high bits -> [-0.5, 0.5) exactly representable in float32; other floats round.
        v = (x >> np.uint64(40)).astype(np.float32)
        v *= np.float32(1.0 / (1 << 24))
        v -= np.float32(0.5)
        return v.astype(dtype, copy=False)
    if dtype.kind == "b":
        return (x >> np.uint64(63)).astype(np.bool_)
    return (x >> np.uint64(32)).astype(np.uint32).astype(dtype)  # wraps for narrow ints


def rows(shape, dtype, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of the synthetic tensor of ``shape`` (first axis = rows)."""
    inner = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    return values(r0 * inner, (r1 - r0) * inner, dtype).reshape((r1 - r0,) + tuple(shape[1:]))


def iter_row_blocks(shape, dtype, block_bytes: int = 32 * _MIB):
    """Yield ``(r0, r1, block)`` covering the whole tensor in row order."""
    inner = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    row_bytes = max(1, inner * dtype.itemsize)
    step = max(1, block_bytes // row_bytes)
    for r0 in range(0, shape[0], step):
        r1 = min(shape[0], r0 + step)
        yield r0, r1, rows(shape, dtype, r0, r1)


# --- layouts ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """``rows:N`` (N parts along axis 0) or ``cols:N`` (N parts along axis 1)."""

    axis: int
    parts: int

    @classmethod
    def parse(cls, text: str) -> Layout:
        m = re.fullmatch(r"\s*(rows|cols)\s*:\s*(\d+)\s*", text)
        if not m or int(m.group(2)) < 1:
            raise ValueError(f"bad layout {text!r}: expected rows:N or cols:N with N >= 1")
        return cls(0 if m.group(1) == "rows" else 1, int(m.group(2)))

    @property
    def name(self) -> str:
        return f"{'rows' if self.axis == 0 else 'cols'}:{self.parts}"

    def partitions(self, ndim: int) -> list[int]:
        """The partitioner's answer: parts per axis."""
        p = [1] * ndim
        p[self.axis] = self.parts
        return p

    def boxes(self, shape) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """``(start, size)`` of each part, with TensorFlow's split (first ``D % N`` parts get one more)."""
        d = shape[self.axis]
        if self.parts > d:
            raise ValueError(f"{self.name}: more parts than the {d} slices of axis {self.axis}")
        base, extra = divmod(d, self.parts)
        out, pos = [], 0
        for k in range(self.parts):
            n = base + (1 if k < extra else 0)
            start = [0] * len(shape)
            size = list(shape)
            start[self.axis], size[self.axis] = pos, n
            out.append((tuple(start), tuple(size)))
            pos += n
        return out


def part_crcs(shape, dtype, layouts, progress=None) -> dict[str, list[int]]:
    """zlib CRC32 of each part's bytes (C order), for each layout, in one pass over the data."""
    layouts = [Layout.parse(x) if isinstance(x, str) else x for x in layouts]
    state = {lay.name: [0] * lay.parts for lay in layouts}
    boxes = {lay.name: lay.boxes(shape) for lay in layouts}
    for r0, r1, block in iter_row_blocks(shape, dtype):
        for lay in layouts:
            crcs = state[lay.name]
            for k, (start, size) in enumerate(boxes[lay.name]):
                if lay.axis == 0:
                    a, b = max(r0, start[0]), min(r1, start[0] + size[0])
                    if a < b:
                        crcs[k] = zlib.crc32(np.ascontiguousarray(block[a - r0 : b - r0]), crcs[k])
                else:
                    idx = (slice(None),) * lay.axis + (slice(start[lay.axis], start[lay.axis] + size[lay.axis]),)
                    crcs[k] = zlib.crc32(np.ascontiguousarray(block[idx]), crcs[k])
        if progress is not None:
            progress(block.nbytes)
    return state


def verify_parts(arrays, shape, dtype, layout: str, expected_crcs, *, samples: int = 8, seed: int = 0) -> dict:
    """Check loaded parts: shapes, full CRC32 of every part, and sampled rows value by value.

    Returns ``{"ok": bool, "detail": str, "parts": n}``; never raises.
    """
    try:
        lay = Layout.parse(layout)
        boxes = lay.boxes(shape)
        if len(arrays) != len(boxes):
            return {"ok": False, "detail": f"{len(arrays)} parts, expected {len(boxes)}", "parts": len(arrays)}
        rng = np.random.default_rng(seed)
        for k, (arr, (start, size)) in enumerate(zip(arrays, boxes)):
            arr = np.asarray(arr)
            if tuple(arr.shape) != tuple(size):
                return {
                    "ok": False,
                    "detail": f"part {k}: shape {tuple(arr.shape)}, expected {size}",
                    "parts": len(arrays),
                }
            if arr.dtype != dtype:
                return {"ok": False, "detail": f"part {k}: dtype {arr.dtype}, expected {dtype}", "parts": len(arrays)}
            crc = zlib.crc32(np.ascontiguousarray(arr))
            if expected_crcs is not None and crc != expected_crcs[k]:
                return {
                    "ok": False,
                    "detail": f"part {k}: crc32 {crc:#010x}, expected {expected_crcs[k]:#010x}",
                    "parts": len(arrays),
                }
            picks = {0, size[0] - 1} | {int(x) for x in rng.integers(0, size[0], size=samples)}
            for r in sorted(picks):
                gr = start[0] + r
                want = rows(shape, dtype, gr, gr + 1)[0]
                if lay.axis != 0:
                    idx = (slice(None),) * (lay.axis - 1) + (slice(start[lay.axis], start[lay.axis] + size[lay.axis]),)
                    want = want[idx]
                if not np.array_equal(arr[r].view(np.uint8), np.ascontiguousarray(want).view(np.uint8)):
                    return {"ok": False, "detail": f"part {k}: row {r} differs from the source", "parts": len(arrays)}
        checked = "crc32 of every part" if expected_crcs is not None else "no crc32 (not cached)"
        return {"ok": True, "detail": f"{checked} + {samples + 2} rows/part", "parts": len(arrays)}
    except Exception as exc:  # a verifier must not crash the worker
        return {"ok": False, "detail": f"verification raised {type(exc).__name__}: {exc}", "parts": len(arrays)}


# --- file formats written without their libraries ----------------------------------------

_ST_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def write_safetensors(path, name: str, shape, dtype, progress=None) -> None:
    """A one-tensor ``.safetensors`` file, streamed from the generator (no full copy in memory)."""
    import json
    import struct

    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header = json.dumps(
        {name: {"dtype": _ST_DTYPES[dtype.name], "shape": list(shape), "data_offsets": [0, nbytes]}},
        separators=(",", ":"),
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for _, _, block in iter_row_blocks(shape, dtype):
            f.write(memoryview(np.ascontiguousarray(block)).cast("B"))
            if progress is not None:
                progress(block.nbytes)


def write_npy(path, shape, dtype, progress=None) -> None:
    """A ``.npy`` file (format 1.0 header), streamed from the generator."""
    from numpy.lib import format as npformat

    with open(path, "wb") as f:
        npformat.write_array_header_1_0(
            f, {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        )
        for _, _, block in iter_row_blocks(shape, dtype):
            f.write(memoryview(np.ascontiguousarray(block)).cast("B"))
            if progress is not None:
                progress(block.nbytes)
