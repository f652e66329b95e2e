"""Turn "these variable parts need these regions of these stored tensors" into reads and copies.

Pure arithmetic on the checkpoint's index: no file is read and no memory is allocated
here. The resulting :class:`Plan` is a value: it prints, compares and is property-tested;
the scheduler executes it without re-deriving a single offset.

How a plan is made
------------------
1. Each :class:`Request` (one destination buffer: a variable or a variable part) is
   intersected with the stored pieces of its source tensor (one piece for a tensor saved
   whole, one per stored slice for a tensor saved partitioned). The intersections must
   cover the request exactly, as TensorFlow's ``TensorSliceSet::QueryMeta`` requires.
2. Every stored piece needed by any request is read **once**, however many requests use
   it: its needed byte ranges are merged (with CRC verification on, the whole piece, since a
   CRC covers a whole entry; off, only the row-major hull of each intersection).
3. Needed ranges are sorted in file order and merged into runs, reading through holes
   smaller than ``gap_bytes``; runs are cut into chunks of at most ``chunk_bytes``, at row
   boundaries of the piece being cut when a row fits, so most chunks cut into few boxes.
4. Each chunk's part of each piece is split into row-major blocks that are boxes, and each
   block is intersected with each request's box: one :class:`~gpuload.plan.copies.BoxCopy`
   per non-empty intersection.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from gpuload.errors import PlanError
from gpuload.format.slices import Box
from gpuload.plan.copies import BoxCopy, GatherCopy, normalize

__all__ = [
    "Request",
    "Remap",
    "Destination",
    "Chunk",
    "CrcCheck",
    "CrcSpan",
    "HostLoad",
    "Plan",
    "build_plan",
    "row_major_blocks",
    "strides_of",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Remap:
    """A destination filled by a row gather (a warm start's vocabulary remap).

    ``rows[j]`` is the index, along ``axis`` of the source tensor, of the slab that lands
    at position ``j`` along ``axis`` of the destination; ``-1`` means "not from the
    checkpoint" (the destination's prefilled value stays). On the other axes the
    destination's box is in the source tensor's coordinates.
    """

    axis: int
    rows: np.ndarray

    def __post_init__(self):
        rows = np.ascontiguousarray(self.rows, dtype=np.int64)
        rows.flags.writeable = False
        object.__setattr__(self, "rows", rows)

    @property
    def gathered(self) -> int:
        """Positions filled from the checkpoint."""
        return int(np.count_nonzero(self.rows >= 0))

    def __eq__(self, other):
        if not isinstance(other, Remap):
            return NotImplemented
        return self.axis == other.axis and np.array_equal(self.rows, other.rows)

    def __hash__(self):
        return hash((self.axis, self.rows.shape, self.rows[:8].tobytes()))


@dataclasses.dataclass(frozen=True)
class Request:
    """One destination buffer to fill from a checkpoint tensor.

    ``box`` is the region of the source tensor (in its full coordinates) that the
    destination holds; its shape is the destination's shape.
    """

    name: str
    source: str
    box: Box
    dtype: np.dtype
    device: str = "/device:CPU:0"
    #: A row gather instead of a box copy: ``box`` is then the destination's region of
    #: the *new* tensor, and its position along ``remap.axis`` maps through ``remap.rows``.
    remap: Remap | None = None


@dataclasses.dataclass(frozen=True)
class Destination:
    """A destination buffer of the plan, with the dtype it is read as and stored as."""

    name: str
    source: str
    box: Box
    src_dtype: np.dtype
    dtype: np.dtype
    device: str
    #: Set for a gather destination: it is prefilled (a warm start's backup values), then
    #: the gathered slabs overwrite their positions.
    remap: Remap | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.box.shape

    @property
    def nbytes(self) -> int:
        return self.box.size * self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class CrcCheck:
    """A stored entry whose masked CRC32C is checked once all its bytes have streamed by."""

    key: str
    tensor: str
    file: int
    offset: int
    size: int
    masked_crc: int


@dataclasses.dataclass(frozen=True)
class CrcSpan:
    """``size`` bytes at ``chunk_offset`` of a chunk belong, in order, to check ``check``."""

    check: int
    chunk_offset: int
    size: int


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One read: ``size`` bytes at ``offset`` of ``Plan.files[file]``, then its copies."""

    file: int
    offset: int
    size: int
    copies: tuple[BoxCopy, ...]
    crc_spans: tuple[CrcSpan, ...] = ()


@dataclasses.dataclass(frozen=True)
class HostLoad:
    """A destination filled on the host through the reader (DT_STRING tensors)."""

    dest: int
    source: str
    box: Box


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a load does, in order: which bytes to read, where each one goes."""

    prefix: str
    files: tuple[str, ...]
    destinations: tuple[Destination, ...]
    chunks: tuple[Chunk, ...]
    checks: tuple[CrcCheck, ...]
    host_loads: tuple[HostLoad, ...]
    chunk_bytes: int

    @property
    def bytes_read(self) -> int:
        return sum(c.size for c in self.chunks)

    @property
    def bytes_written(self) -> int:
        return sum(d.nbytes for d in self.destinations)

    def summary(self) -> str:
        """A few lines: files, destinations, chunks, bytes."""
        ncopies = sum(1 for c in self.chunks for cp in c.copies if isinstance(cp, BoxCopy))
        ngathers = sum(1 for c in self.chunks for cp in c.copies if isinstance(cp, GatherCopy))
        gathers = f"{ngathers} gather copies, " if ngathers else ""
        return (
            f"Plan for {self.prefix}: {len(self.files)} file(s), {len(self.destinations)} destination(s), "
            f"{len(self.chunks)} chunk(s) of <= {_human(self.chunk_bytes)}, {ncopies} box copies, {gathers}"
            f"{_human(self.bytes_read)} read, {_human(self.bytes_written)} written, "
            f"{len(self.checks)} CRC check(s), {len(self.host_loads)} host load(s)"
        )

    def __str__(self) -> str:
        lines = [self.summary()]
        for i, f in enumerate(self.files):
            lines.append(f"  file {i}: {f}")
        for i, d in enumerate(self.destinations):
            remap = (
                ""
                if d.remap is None
                else (
                    f", remapped along axis {d.remap.axis}: {d.remap.gathered} of {len(d.remap.rows)} "
                    f"gathered, the rest prefilled"
                )
            )
            lines.append(f"  dest {i}: {d.name} <- {d.source!r}{d.box} {d.src_dtype} -> {d.dtype} on {d.device}{remap}")
        for i, c in enumerate(self.chunks):
            lines.append(f"  chunk {i}: file {c.file} [{c.offset}, {c.offset + c.size})")
            for cp in c.copies:
                if isinstance(cp, GatherCopy):
                    lines.append(
                        f"    gather -> dest {cp.dest}: {cp.boxes} boxes of shape {cp.shape}, src strides "
                        f"{cp.src_strides}, dst strides {cp.dst_strides}, src +{_head(cp.src_offsets)}, "
                        f"dst +{_head(cp.dst_offsets)}"
                    )
                    continue
                lines.append(
                    f"    copy -> dest {cp.dest}: src +{cp.src_offset} strides {cp.src_strides}, "
                    f"dst +{cp.dst_offset} strides {cp.dst_strides}, shape {cp.shape}"
                )
            for s in c.crc_spans:
                lines.append(f"    crc {s.check} += [{s.chunk_offset}, {s.chunk_offset + s.size})")
        for h in self.host_loads:
            lines.append(f"  host load -> dest {h.dest}: {h.source!r}{h.box}")
        return "\n".join(lines)


def _head(a) -> str:
    items = ", ".join(str(int(x)) for x in a[:3])
    return f"[{items}{', ...' if len(a) > 3 else ''}]"


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def strides_of(shape) -> tuple[int, ...]:
    """Row-major element strides of ``shape``."""
    out = []
    acc = 1
    for n in reversed(tuple(shape)):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


def _flat(index, strides) -> int:
    return sum(i * s for i, s in zip(index, strides))


def row_major_blocks(first: int, stop: int, shape) -> list[Box]:
    """Split the flat element range ``[first, stop)`` of a row-major ``shape`` into boxes.

    The boxes are in row-major order and each is a box of the tensor (a prefix of fixed
    indices, a range on one axis, full extent on the axes after it). At most
    ``2 * rank - 1`` boxes come back.
    """
    shape = tuple(shape)
    out: list[Box] = []
    if first >= stop:
        return out
    if not shape:
        return [Box((), ())]

    def rec(prefix: tuple[int, ...], a: int, b: int, dims: tuple[int, ...]) -> None:
        if a >= b:
            return
        if not dims:
            out.append(Box(prefix, (1,) * len(prefix)))
            return
        inner = math.prod(dims[1:])
        i0, r0 = divmod(a, inner)
        i1, r1 = divmod(b, inner)
        ones = (1,) * len(prefix)
        zeros = (0,) * (len(dims) - 1)
        if i0 == i1:
            rec(prefix + (i0,), r0, r1, dims[1:])
            return
        if r0:
            rec(prefix + (i0,), r0, inner, dims[1:])
            i0 += 1
        if i1 > i0:
            out.append(Box(prefix + (i0,) + zeros, ones + (i1 - i0,) + dims[1:]))
        if r1:
            rec(prefix + (i1,), 0, r1, dims[1:])

    rec((), first, stop, shape)
    return out


@dataclasses.dataclass
class _Piece:
    """A stored entry needed by the load, and who needs which part of it."""

    id: int
    tensor: str
    box: Box
    entry: object  # gpuload.format.bundle.TensorEntry
    itemsize: int
    users: list = dataclasses.field(default_factory=list)  # (dest index, intersection box)
    gathers: list = dataclasses.field(default_factory=list)  # _Gather
    ranges: list = dataclasses.field(default_factory=list)  # needed byte ranges [a, b) within the entry
    check: int | None = None


@dataclasses.dataclass
class _Gather:
    """One gather destination's needs from one stored piece.

    ``box`` is the piece's box cut to the destination on every axis but ``axis`` (where
    it keeps the piece's extent); ``old`` are the needed indices along ``axis`` (global,
    sorted, within the piece) and ``pos`` their positions along ``axis`` in the destination.
    """

    dest: int
    axis: int
    box: Box
    old: np.ndarray
    pos: np.ndarray


def _merge_np(starts, ends, gap: int):
    """Merge sorted-or-not ranges whose holes are at most ``gap`` bytes: [[a, b], ...]."""
    if len(starts) == 0:
        return []
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    e = np.maximum.accumulate(e)
    brk = np.flatnonzero(s[1:] > e[:-1] + gap) + 1
    first = np.concatenate(([0], brk))
    last = np.concatenate((brk - 1, [len(s) - 1]))
    return [[int(a), int(b)] for a, b in zip(s[first], e[last])]


def _plan_gather(bundle, di, req, shape, pieces, src_dtype):
    """Register destination ``di``'s row gather with the pieces it reads."""
    remap = req.remap
    a = remap.axis
    if not 0 <= a < len(shape) or req.box.rank != len(shape):
        raise PlanError(
            f"{req.name}: remap axis {a} does not fit tensor {req.source!r} of shape "
            f"{list(shape)} in {bundle.prefix} (destination rank {req.box.rank})"
        )
    if len(remap.rows) != req.box.shape[a]:
        raise PlanError(
            f"{req.name}: {len(remap.rows)} remap rows for a destination of extent {req.box.shape[a]} along axis {a}"
        )
    other = Box(
        tuple(0 if k == a else s for k, s in enumerate(req.box.start)),
        tuple(shape[a] if k == a else n for k, n in enumerate(req.box.shape)),
    )
    if not other.within(shape):
        raise PlanError(
            f"{req.name}: region {req.box} (off the remapped axis {a}) lies outside tensor "
            f"{req.source!r} of shape {list(shape)} in {bundle.prefix}"
        )
    rows = remap.rows
    bad = (rows < -1) | (rows >= shape[a])
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise PlanError(
            f"{req.name}: remap row {int(rows[j])} at position {j} is outside axis {a} "
            f"(extent {shape[a]}) of tensor {req.source!r} in {bundle.prefix}"
        )
    pos = np.flatnonzero(rows >= 0)
    old = rows[pos]
    order = np.argsort(old, kind="stable")
    old, pos = old[order], pos[order]
    need = len(old) * (other.size // max(shape[a], 1)) if shape[a] else 0
    covered = 0
    for sp in bundle.pieces(req.source):
        inter = sp.box.intersect(other)
        if inter is None or inter.size == 0:
            continue
        lo, hi = np.searchsorted(old, [sp.box.start[a], sp.box.start[a] + sp.box.shape[a]])
        if hi <= lo:
            continue
        key = sp.entry.key
        piece = pieces.get(key)
        if piece is None:
            piece = pieces[key] = _Piece(len(pieces), req.source, sp.box, sp.entry, src_dtype.itemsize)
        piece.gathers.append(_Gather(di, a, inter, old[lo:hi], pos[lo:hi]))
        covered += int(hi - lo) * (inter.size // inter.shape[a])
    if covered != need:
        raise PlanError(
            f"{req.name}: the stored slices of tensor {req.source!r} in {bundle.prefix} cover "
            f"{covered} of the {need} elements the remap needs (TensorFlow: "
            f'"Does not have sufficient slices for partitioned tensor")'
        )


def _gather_ranges(piece, gap: int):
    """Byte ranges (within the piece's entry) that the piece's gathers need, CRC off."""
    starts, ends = [], []
    pstrides = strides_of(piece.box.shape)
    isz = piece.itemsize
    for g in piece.gathers:
        rel = g.box.relative_to(piece.box)
        if g.axis == 0:
            # Only the needed rows, each cut to the destination's extent on the other axes.
            first = _flat((0,) + rel.start[1:], pstrides)
            last = _flat((0,) + tuple(s + n - 1 for s, n in zip(rel.start[1:], rel.shape[1:])), pstrides)
            o = (g.old - piece.box.start[0]) * pstrides[0]
            starts.append((o + first) * isz)
            ends.append((o + last + 1) * isz)
        else:
            # A slab along a later axis is strided: read the hull from the first to the
            # last needed slab.
            lo = list(rel.start)
            hi = [s + n - 1 for s, n in zip(rel.start, rel.shape)]
            lo[g.axis] = int(g.old[0]) - piece.box.start[g.axis]
            hi[g.axis] = int(g.old[-1]) - piece.box.start[g.axis]
            starts.append(np.array([_flat(lo, pstrides) * isz], dtype=np.int64))
            ends.append(np.array([(_flat(hi, pstrides) + 1) * isz], dtype=np.int64))
    return starts, ends


def _merge(ranges):
    out = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def build_plan(
    bundle, requests, *, chunk_bytes: int, gap_bytes: int = 0, verify_crc: bool = True, allow_cast: bool = False
) -> Plan:
    """Plan the reads and copies that fill ``requests`` from ``bundle``.

    Parameters
    ----------
    bundle:
        An opened :class:`gpuload.format.bundle.Bundle`.
    requests:
        The destinations, in order; destination ``i`` of the plan is ``requests[i]``.
    chunk_bytes:
        Largest single read (one ring slot).
    gap_bytes:
        Holes between needed byte ranges up to this size are read through rather than
        splitting the read.
    verify_crc:
        Read every needed stored entry whole and check its CRC32C.
    allow_cast:
        Let a destination's dtype differ from the stored dtype (the copy converts).

    Raises
    ------
    PlanError
        When the stored slices do not cover a request, or a region lies outside its
        tensor, or (without ``allow_cast``) the dtypes differ.
    """
    if chunk_bytes < 16:  # a chunk must hold at least one element of the widest dtype
        raise PlanError(f"chunk_bytes must be at least 16, got {chunk_bytes}")
    files: list[str] = []
    file_index: dict[int, int] = {}
    destinations: list[Destination] = []
    host_loads: list[HostLoad] = []
    pieces: dict[str, _Piece] = {}

    for di, req in enumerate(requests):
        shape = tuple(bundle.shape(req.source))
        src_dtype = np.dtype(bundle.numpy_dtype(req.source))
        dst_dtype = np.dtype(req.dtype)
        if req.remap is None and not req.box.within(shape):
            raise PlanError(
                f"{req.name}: region {req.box} lies outside tensor {req.source!r} of shape "
                f"{list(shape)} in {bundle.prefix}"
            )
        if src_dtype != dst_dtype:
            if not allow_cast or src_dtype == object or dst_dtype == object:
                raise PlanError(
                    f"{req.name}: dtype {dst_dtype} does not match {src_dtype} of tensor "
                    f"{req.source!r} in {bundle.prefix}"
                )
        destinations.append(Destination(req.name, req.source, req.box, src_dtype, dst_dtype, req.device, req.remap))
        if req.remap is not None:
            if src_dtype == object:
                raise PlanError(f"{req.name}: tensor {req.source!r} holds strings; a remap gathers fixed-size elements")
            _plan_gather(bundle, di, req, shape, pieces, src_dtype)
            continue
        if src_dtype == object:
            host_loads.append(HostLoad(di, req.source, req.box))
            continue
        covered = 0
        for sp in bundle.pieces(req.source):
            inter = sp.box.intersect(req.box)
            if inter is None or inter.size == 0:
                continue
            key = sp.entry.key
            piece = pieces.get(key)
            if piece is None:
                piece = pieces[key] = _Piece(len(pieces), req.source, sp.box, sp.entry, src_dtype.itemsize)
            piece.users.append((di, inter))
            covered += inter.size
        if covered != req.box.size:
            raise PlanError(
                f"{req.name}: the stored slices of tensor {req.source!r} in {bundle.prefix} cover "
                f"{covered} of the {req.box.size} elements of region {req.box} (TensorFlow: "
                f'"Does not have sufficient slices for partitioned tensor")'
            )

    checks: list[CrcCheck] = []
    segments = []  # (file index, file offset, size, piece, offset within entry)
    for piece in pieces.values():
        e = piece.entry
        if e.shard_id not in file_index:
            file_index[e.shard_id] = len(files)
            files.append(bundle.shard_path(e.shard_id))
        fi = file_index[e.shard_id]
        if verify_crc:
            piece.ranges = [[0, e.size]] if e.size else []
            if e.size:
                piece.check = len(checks)
                checks.append(CrcCheck(e.key, piece.tensor, fi, e.offset, e.size, e.crc32c))
        else:
            pstrides = strides_of(piece.box.shape)
            hulls = []
            for _, inter in piece.users:
                rel = inter.relative_to(piece.box)
                first = _flat(rel.start, pstrides)
                last = _flat(tuple(s + n - 1 for s, n in zip(rel.start, rel.shape)), pstrides)
                hulls.append((first * piece.itemsize, (last + 1) * piece.itemsize))
            if piece.gathers:
                gs, ge = _gather_ranges(piece, gap_bytes)
                starts = np.concatenate([np.array([h[0] for h in hulls], dtype=np.int64)] + gs)
                ends = np.concatenate([np.array([h[1] for h in hulls], dtype=np.int64)] + ge)
                piece.ranges = _merge_np(starts, ends, gap_bytes)
            else:
                piece.ranges = _merge(hulls)
        for a, b in piece.ranges:
            segments.append((fi, e.offset + a, b - a, piece, a))
    segments.sort(key=lambda s: (s[0], s[1]))

    # Runs: segments of one file, merged across holes of at most gap_bytes.
    runs: list[list] = []
    for seg in segments:
        fi, off, size = seg[0], seg[1], seg[2]
        if runs and runs[-1][0] == fi and off - runs[-1][2] <= gap_bytes and off >= runs[-1][1]:
            runs[-1][2] = max(runs[-1][2], off + size)
            runs[-1][3].append(seg)
        else:
            runs.append([fi, off, off + size, [seg]])

    chunks: list[Chunk] = []
    for fi, start, end, segs in runs:
        pos = start
        while pos < end:
            cut = min(pos + chunk_bytes, end)
            if cut < end:
                cut = _aligned_cut(pos, cut, segs, chunk_bytes)
            chunks.append(_make_chunk(fi, pos, cut, segs, destinations))
            pos = cut

    return Plan(
        prefix=str(bundle.prefix),
        files=tuple(files),
        destinations=tuple(destinations),
        chunks=tuple(chunks),
        checks=tuple(checks),
        host_loads=tuple(host_loads),
        chunk_bytes=chunk_bytes,
    )


def _aligned_cut(pos: int, cut: int, segs, chunk_bytes: int) -> int:
    """Move a chunk end back to an element boundary, and to a row boundary when cheap.

    A cut in the middle of a row would split that row's copy into several boxes; a cut
    inside an element would be wrong. Cuts in holes between segments are free.
    """
    for fi, off, size, piece, a in segs:
        if off < cut < off + size:
            base = off - a  # file offset of the piece's element 0
            rel = cut - base
            shape = piece.box.shape
            best = rel - rel % piece.itemsize
            # Try the largest block (row, then sub-row) that keeps the chunk at least half full.
            for k in range(1, len(shape) + 1):
                block = piece.itemsize * math.prod(shape[k:])
                aligned = rel - rel % block
                if block and base + aligned > pos and (base + aligned - pos) * 2 >= chunk_bytes:
                    best = aligned
                    break
            new = base + best
            if new <= pos:  # cannot happen for itemsize <= chunk_bytes; keep progress anyway
                new = base + rel - rel % piece.itemsize
            return new if new > pos else cut
        if off >= cut:
            break
    return cut


def _make_chunk(fi: int, cstart: int, cend: int, segs, destinations) -> Chunk:
    copies: list[BoxCopy] = []
    spans: list[CrcSpan] = []
    for _, off, size, piece, a in segs:
        lo, hi = max(off, cstart), min(off + size, cend)
        if lo >= hi:
            continue
        base = off - a  # file offset of the piece's element 0
        if piece.check is not None:
            spans.append(CrcSpan(piece.check, lo - cstart, hi - lo))
        isz = piece.itemsize
        pstrides = strides_of(piece.box.shape)
        for block in row_major_blocks((lo - base) // isz, (hi - base) // isz, piece.box.shape):
            gblock = Box(tuple(s + p for s, p in zip(block.start, piece.box.start)), block.shape)
            for di, inter in piece.users:
                sub = gblock.intersect(inter)
                if sub is None or sub.size == 0:
                    continue
                dest = destinations[di]
                src_elem = _flat(sub.relative_to(piece.box).start, pstrides)
                copies.append(
                    normalize(
                        BoxCopy(
                            dest=di,
                            src_offset=base + src_elem * isz - cstart,
                            src_strides=pstrides,
                            dst_offset=_flat(sub.relative_to(dest.box).start, strides_of(dest.box.shape)),
                            dst_strides=strides_of(dest.box.shape),
                            shape=sub.shape,
                        )
                    )
                )
            for g in piece.gathers:
                gc = _gather_copy(g, gblock, piece, base, cstart, destinations[g.dest])
                if gc is not None:
                    copies.append(gc)
    return Chunk(fi, cstart, cend - cstart, tuple(copies), tuple(spans))


def _gather_copy(g, gblock, piece, base, cstart, dest):
    """The slabs of gather ``g`` that lie in ``gblock`` (one row-major block of a chunk)."""
    a = g.axis
    # Axes other than a: ordinary intersection; axis a: the needed indices inside the block.
    lo = [max(s, t) for s, t in zip(gblock.start, g.box.start)]
    hi = [min(s + n, t + m) for s, n, t, m in zip(gblock.start, gblock.shape, g.box.start, g.box.shape)]
    if any(h <= l for k, (l, h) in enumerate(zip(lo, hi)) if k != a):
        return None
    i0, i1 = np.searchsorted(g.old, [lo[a], hi[a]])
    if i1 <= i0:
        return None
    old, pos = g.old[i0:i1], g.pos[i0:i1]
    pstrides = strides_of(piece.box.shape)
    dstrides = strides_of(dest.box.shape)
    start = [l if k != a else piece.box.start[a] for k, l in enumerate(lo)]
    src0 = _flat([s - p for s, p in zip(start, piece.box.start)], pstrides)
    dst0 = _flat([0 if k == a else s - d for k, (s, d) in enumerate(zip(start, dest.box.start))], dstrides)
    shape = tuple(1 if k == a else h - l for k, (l, h) in enumerate(zip(lo, hi)))
    template = normalize(BoxCopy(g.dest, 0, pstrides, 0, dstrides, shape))
    isz = piece.itemsize
    return GatherCopy(
        dest=g.dest,
        src_offsets=base - cstart + (src0 + (old - piece.box.start[a]) * pstrides[a]) * isz,
        dst_offsets=dst0 + pos * dstrides[a],
        src_strides=template.src_strides,
        dst_strides=template.dst_strides,
        shape=template.shape,
    )
