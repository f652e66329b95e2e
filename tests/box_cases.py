"""The edge-case table for box copies, shared by the host-harness, NumPy-twin and GPU tests.

A :class:`Case` is one staged chunk, the BoxCopy list a planner would make for one box of
one tensor (split at the chunk's boundaries), a destination buffer pre-filled with a
sentinel, and the expected destination computed independently with NumPy fancy indexing
and ``astype`` (ml_dtypes for bfloat16; float64 -> 16 bits through float32, as TensorFlow's
Cast). Every executor must reproduce ``expected`` bit
for bit. Nothing here imports CuPy.
"""

from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np

from gpuload.plan.copies import BoxCopy, normalize

BF16 = np.dtype(ml_dtypes.bfloat16)
F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
FLOATS = {"f16": F16, "bf16": BF16, "f32": F32, "f64": F64}
UINT = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}

# One dtype per raw itemsize for identity copies, plus the float casts.
IDENTITY_DTYPES = [np.dtype(np.bool_), np.dtype(np.int8), np.dtype(np.int16), F16, BF16,
                   np.dtype(np.int32), F32, np.dtype(np.int64), F64, np.dtype(np.complex128)]  # fmt: skip
CAST_PAIRS = [(FLOATS[s], FLOATS[d]) for s, d in (v.split("_") for v in (
    "f32_bf16", "bf16_f32", "f32_f16", "f16_f32", "bf16_f16", "f16_bf16",
    "f64_f32", "f32_f64", "f64_bf16", "f64_f16", "bf16_f64", "f16_f64"))]  # fmt: skip
ALL_PAIRS = [(d, d) for d in IDENTITY_DTYPES] + CAST_PAIRS

SENTINEL = 0xA5

# Bit patterns worth converting: signed zeros, infinities, NaNs (quiet, signalling, with
# payloads, negative), extremes, subnormals, and values on rounding ties / overflow edges.
SPECIAL_BITS = {
    "f16": [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0x7D00, 0xFDFF, 0x0001, 0x8001,
            0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0x3C01, 0x3BFF, 0x0200, 0x0003],
    "bf16": [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0x7FA0, 0xFFBF, 0x0001, 0x8001,
             0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x477F, 0x4780, 0x3380, 0x3300, 0x3340, 0x3F81, 0x3B80],
    "f32": [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
            0xFF800001, 0x7FA00000, 0x7FBFFFFF, 0x7F802000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000,
            0x00000001, 0x80000001, 0x007FFFFF, 0x00400000, 0x00008000, 0x00018000, 0x00010001,
            0x477FE000, 0x477FF000, 0x477FEFFF, 0x33000000, 0x33000001, 0x33800000, 0x38800000,
            0x387FC000, 0x3F808000, 0x3F818000, 0x3F808001, 0x7F7F8000, 0x7F7F7FFF, 0x3F800001],
    "f64": [0x0000000000000000, 0x8000000000000000, 0x7FF0000000000000, 0xFFF0000000000000,
            0x7FF8000000000000, 0xFFF8000000000001, 0x7FF0000000000001, 0x7FF0002000000000,
            0x7FF4000000000000, 0x7FEFFFFFFFFFFFFF, 0x0000000000000001, 0x800FFFFFFFFFFFFF,
            0x47EFFFFFE0000000, 0x47EFFFFFEFFFFFFF, 0x47EFFFFFF0000000, 0x3FF0000010000000,
            0x3FF0000030000000, 0x3FF0000010000001, 0x36A0000000000000, 0x3690000000000000,
            0x3690000000000001, 0x380FFFFFC0000000, 0x40EFFE0000000000, 0x40EFFDFFFFFFFFFF,
            0x3FF0100000400000, 0x3E70000000000000, 0x3E60000000000000, 0x3E60000000000001,
            0x3FF0100000001000, 0x3FF0020000000001],
}  # fmt: skip


def code_of(dtype: np.dtype) -> str | None:
    for k, v in FLOATS.items():
        if v == dtype:
            return k
    return None


def raw(a: np.ndarray) -> np.ndarray:
    """Bytes of ``a`` as uint8 with a trailing itemsize axis (bit-exact comparisons)."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(a.shape + (a.dtype.itemsize,))


#: Pairs TensorFlow's Cast rounds twice, through float32 (Eigen's half(T) and bfloat16(T)
#: constructors take static_cast<float> first); NumPy / ml_dtypes >= 0.7 round them once.
TF_VIA_F32 = {(F64, BF16), (F64, F16)}


def convert(values: np.ndarray, dst: np.dtype) -> np.ndarray:
    """The reference conversion, TensorFlow's Cast; raw bits for identity.

    NumPy / ml_dtypes ``astype``, except for :data:`TF_VIA_F32`, converted to float32 first.
    """
    if values.dtype == dst:
        return values.copy()
    with np.errstate(all="ignore"):
        if (values.dtype, dst) in TF_VIA_F32:
            values = values.astype(F32)
        return values.astype(dst)


def tensor_data(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Random bits of ``dtype`` with the special values of float dtypes at the front."""
    n = math.prod(shape)
    if dtype == np.bool_:
        return (rng.integers(0, 2, n, dtype=np.uint8).view(np.bool_)).reshape(shape)
    data = rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype)
    code = code_of(dtype)
    if code is not None:
        specials = np.array(SPECIAL_BITS[code], dtype=UINT[dtype.itemsize]).view(dtype)
        k = min(n, specials.size)
        data[:k] = specials[:k]
    return data.reshape(shape)


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


def split_box(tshape, bstart, bshape, e0, e1):
    """Sub-boxes covering the box's elements whose flat index lies in ``[e0, e1)``.

    What a planner does at chunk boundaries: whole runs of slices along an axis stay one
    box; a slice cut by the boundary is split along the next axis, down to a row piece.
    """
    rank = len(tshape)
    strides = c_strides(tshape)
    out = []

    def span(start, shape):
        lo = sum(s * k for s, k in zip(start, strides))
        hi = sum((s + n - 1) * k for s, n, k in zip(start, shape, strides)) + 1
        return lo, hi

    def rec(start, shape, axis):
        if 0 in shape:
            return
        lo, hi = span(start, shape)
        if hi <= e0 or lo >= e1:
            return
        if lo >= e0 and hi <= e1:
            out.append((start, shape))
            return
        if axis == rank - 1:  # a single row piece: every earlier axis has extent 1
            a, b = max(lo, e0), min(hi, e1)
            out.append((start[:-1] + (start[-1] + a - lo,), shape[:-1] + (b - a,)))
            return
        run = None
        for j in range(shape[axis]):
            s = start[:axis] + (start[axis] + j,) + start[axis + 1 :]
            sh = shape[:axis] + (1,) + shape[axis + 1 :]
            lo2, hi2 = span(s, sh)
            if lo2 >= e0 and hi2 <= e1:
                run = [j, 0] if run is None else run
                run[1] += 1
                continue
            if run is not None:
                out.append(
                    (
                        start[:axis] + (start[axis] + run[0],) + start[axis + 1 :],
                        shape[:axis] + (run[1],) + shape[axis + 1 :],
                    )
                )
                run = None
            rec(s, sh, axis + 1)
        if run is not None:
            out.append(
                (
                    start[:axis] + (start[axis] + run[0],) + start[axis + 1 :],
                    shape[:axis] + (run[1],) + shape[axis + 1 :],
                )
            )

    rec(tuple(bstart), tuple(bshape), 0)
    return out


@dataclasses.dataclass
class Case:
    """One chunk, its copies (all to destination 0), the initial and expected destination."""

    name: str
    chunk: np.ndarray
    copies: list[BoxCopy]
    src_dtype: np.dtype
    dst_dtype: np.dtype
    fill: np.ndarray
    expected: np.ndarray

    def fresh_dest(self) -> np.ndarray:
        return self.fill.copy()

    def __repr__(self) -> str:
        return f"Case({self.name})"


def _aligned_view(nbytes: int, misalign: int) -> np.ndarray:
    """A writable uint8 array of ``nbytes`` whose address is ``misalign`` mod 64."""
    buf = np.empty(nbytes + 128, dtype=np.uint8)
    off = (misalign - buf.ctypes.data) % 64
    return buf[off : off + nbytes]


def make_case(
    name: str,
    tshape: tuple[int, ...],
    bstart: tuple[int, ...],
    bshape: tuple[int, ...],
    src: np.dtype,
    dst: np.dtype,
    *,
    elems: tuple[int, int] | None = None,
    prefix: int = 0,
    misalign: int = 0,
    pad: int = 1,
    dst_origin: tuple[int, ...] | None = None,
    seed: int = 0,
) -> Case:
    """Build a case: box ``bstart/bshape`` of a ``tshape`` tensor of ``src`` into a ``dst`` buffer.

    ``elems=(e0, e1)`` puts only tensor elements ``[e0, e1)`` in the chunk, after ``prefix``
    junk bytes (any count: not a multiple of the itemsize makes every element misaligned);
    ``misalign`` sets the chunk's address mod 64. The destination is the box padded by ``pad``
    on every side (the box lands at ``dst_origin``, default ``(pad, ...)``).
    """
    src, dst = np.dtype(src), np.dtype(dst)
    if tshape == ():  # a scalar is stored like a 1-element vector
        tshape, bstart, bshape = (1,), (0,), (1,)
    rng = np.random.default_rng(seed)
    tensor = tensor_data(tshape, src, rng)
    n = math.prod(tshape)
    e0, e1 = elems if elems is not None else (0, n)
    isz = src.itemsize
    body = tensor.reshape(-1)[e0:e1].view(np.uint8)
    chunk = _aligned_view(prefix + body.size + 5, misalign)
    chunk[:] = rng.integers(0, 256, chunk.size, dtype=np.uint8)
    chunk[prefix : prefix + body.size] = body

    dshape = tuple(b + 2 * pad for b in bshape)
    origin = dst_origin if dst_origin is not None else (pad,) * len(bshape)
    tstr, dstr = c_strides(tshape), c_strides(dshape)
    copies = []
    for start, shape in split_box(tshape, bstart, bshape, e0, e1):
        d_start = [o + s - b for o, s, b in zip(origin, start, bstart)]
        c = BoxCopy(
            dest=0,
            src_offset=prefix + (sum(s * k for s, k in zip(start, tstr)) - e0) * isz,
            src_strides=tstr,
            dst_offset=sum(s * k for s, k in zip(d_start, dstr)),
            dst_strides=dstr,
            shape=shape,
        )
        copies.append(normalize(c))

    fill = np.full(math.prod(dshape) * dst.itemsize, SENTINEL, dtype=np.uint8).view(dst).reshape(dshape)
    expected = fill.copy()
    box = tuple(slice(s, s + k) for s, k in zip(bstart, bshape))
    values = convert(tensor[box], dst)
    flat_idx = np.zeros(bshape, dtype=np.int64)
    for ax, (s, k) in enumerate(zip(bstart, bshape)):
        shape = [1] * len(bshape)
        shape[ax] = k
        flat_idx = flat_idx + (np.arange(s, s + k) * tstr[ax]).reshape(shape)
    inside = (flat_idx >= e0) & (flat_idx < e1)
    region = tuple(slice(o, o + k) for o, k in zip(origin, bshape))
    exp_raw = raw(expected)
    sub = exp_raw[region]
    sub[inside] = raw(values)[inside]
    exp_raw[region] = sub
    expected = exp_raw.view(dst).reshape(dshape)
    return Case(name, chunk, copies, src, dst, fill, expected)


def edge_cases() -> list[Case]:
    """The fixed table: every dtype pair, scalars, empty tensors, odd sizes, chunk cuts
    inside rows, boxes along every axis of rank 1-4 tensors, vector-path rows with heads
    and tails, misaligned chunks."""
    cases: list[Case] = []
    for i, (s, d) in enumerate(ALL_PAIRS):
        tag = f"{s}->{d}"
        cases.append(make_case(f"scalar {tag}", (), (), (), s, d, seed=i))
        cases.append(make_case(f"empty {tag}", (0, 5), (0, 0), (0, 5), s, d, seed=i))
        cases.append(make_case(f"odd 7x13 {tag}", (7, 13), (0, 0), (7, 13), s, d, seed=i))
        cases.append(
            make_case(
                f"cut rows 5x11 [17,40) {tag}",
                (5, 11),
                (0, 0),
                (5, 11),
                s,
                d,
                elems=(17, 40),
                prefix=3 * s.itemsize,
                seed=i,
            )
        )
        cases.append(make_case(f"column box cut {tag}", (6, 9), (0, 2), (6, 5), s, d, elems=(10, 47), seed=i))
        cases.append(make_case(f"misaligned chunk {tag}", (4, 6), (1, 1), (3, 4), s, d, prefix=1, misalign=2, seed=i))
    shapes = [(6,), (5, 7), (3, 4, 5), (2, 3, 4, 5)]
    for shape in shapes:
        for axis in range(len(shape)):
            n = shape[axis]
            lo, hi = n // 3, max(n // 3 + 1, 2 * n // 3)
            start = tuple(lo if a == axis else 0 for a in range(len(shape)))
            bshape = tuple(hi - lo if a == axis else shape[a] for a in range(len(shape)))
            for s, d in [(F32, F32), (F32, BF16), (BF16, F16), (F64, F16)]:
                cases.append(
                    make_case(f"rank{len(shape)} axis{axis} {s}->{d}", shape, start, bshape, s, d, pad=0, seed=axis)
                )
                cases.append(make_case(f"rank{len(shape)} axis{axis} cut {s}->{d}", shape, start, bshape, s, d, pad=1,
                                       elems=(math.prod(shape) // 4, 3 * math.prod(shape) // 4), seed=axis))  # fmt: skip
    # Identity rows long enough for the 16-byte vector path, with and without head/tail.
    u8, u16, u32, u64 = (np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64))
    cases.append(make_case("vector rows u8 aligned", (4, 64), (0, 16), (4, 32), u8, u8, pad=0, dst_origin=(0, 0)))
    cases.append(make_case("vector rows u8 head+tail", (4, 64), (0, 3), (4, 50), u8, u8, pad=7, dst_origin=(7, 3)))
    cases.append(make_case("vector rows u16 head+tail", (3, 40), (0, 1), (3, 38), u16, u16, pad=1))
    cases.append(make_case("vector rows u32 cut", (8, 24), (0, 4), (8, 16), u32, u32, pad=0, elems=(30, 170)))
    cases.append(make_case("vector rows u64", (5, 10), (0, 2), (5, 8), u64, u64, pad=0))
    cases.append(make_case("vector rows 3d u8", (2, 3, 64), (0, 1, 0), (2, 2, 64), u8, u8, pad=0))
    return cases
