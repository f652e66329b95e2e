"""The plan is pure arithmetic: property-test it against a byte-level simulation.

A fake bundle lays the stored pieces of random tensors out in fake files (in random
order, with holes); the plan's chunks are "read" from those bytes and its copies applied
by an interpreter written here, independent of the backends. Every destination must come
out equal to the tensor's region, every destination element written exactly once, every
stored byte read at most once, and no read larger than a chunk.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuload.errors import PlanError
from gpuload.format.slices import Box
from gpuload.plan import Request, build_plan, row_major_blocks, strides_of
from gpuload.plan.copies import BoxCopy, normalize


@dataclasses.dataclass(frozen=True)
class FakeEntry:
    key: str
    dtype: int
    shape: tuple
    shard_id: int
    offset: int
    size: int
    crc32c: int
    slices: tuple = ()


@dataclasses.dataclass(frozen=True)
class FakePiece:
    box: Box
    entry: FakeEntry


def split(n, k):
    """TensorFlow's rule: the first n % k parts are one larger."""
    base, extra = divmod(n, k)
    sizes = [base + 1] * extra + [base] * (k - extra)
    starts = list(itertools.accumulate([0] + sizes[:-1]))
    return list(zip(starts, sizes))


def grid_boxes(shape, parts):
    axes = [split(n, k) for n, k in zip(shape, parts)]
    return [Box(tuple(s for s, _ in combo), tuple(n for _, n in combo)) for combo in itertools.product(*axes)]


class FakeBundle:
    """Tensors laid out as bytes in fake shard files, with an index like Bundle's."""

    prefix = "fake/model.ckpt"

    def __init__(self, rng, tensors, nfiles=2):
        self.tensors = {}
        self._pieces = {}
        self.files = [bytearray() for _ in range(nfiles)]
        layout = []
        for name, (array, slicing) in tensors.items():
            self.tensors[name] = array
            boxes = grid_boxes(array.shape, slicing) if slicing else [Box.full(array.shape)]
            for b in boxes:
                layout.append((name, b))
        rng.shuffle(layout)
        for name, b in layout:
            array = self.tensors[name]
            data = np.ascontiguousarray(array[b.as_slices()]).tobytes()
            shard = int(rng.integers(nfiles))
            f = self.files[shard]
            f.extend(b"\xee" * int(rng.integers(0, 40)))  # a hole before the entry
            entry = FakeEntry(f"{name}@{b}", 1, b.shape, shard, len(f), len(data), 0)
            f.extend(data)
            self._pieces.setdefault(name, []).append(FakePiece(b, entry))

    def shape(self, name):
        return self.tensors[name].shape

    def numpy_dtype(self, name):
        return self.tensors[name].dtype

    def pieces(self, name):
        return sorted(self._pieces[name], key=lambda p: (p.entry.shard_id, p.entry.offset))

    def shard_path(self, shard_id):
        return f"fake-{shard_id}"


def run_plan(bundle, plan):
    """Interpret a plan over the fake files; return (destinations, write counts, read map)."""
    outs = [np.zeros(d.box.size, d.dtype) for d in plan.destinations]
    counts = [np.zeros(d.box.size, np.int64) for d in plan.destinations]
    reads = {i: np.zeros(len(bundle.files[int(f.split("-")[1])]), np.int64) for i, f in enumerate(plan.files)}
    for c in plan.chunks:
        f = bundle.files[int(plan.files[c.file].split("-")[1])]
        assert c.offset + c.size <= len(f)
        reads[c.file][c.offset : c.offset + c.size] += 1
        chunk = np.frombuffer(bytes(f[c.offset : c.offset + c.size]), np.uint8)
        for cp in c.copies:
            d = plan.destinations[cp.dest]
            isz = d.src_dtype.itemsize
            for idx in np.ndindex(*cp.shape):
                so = cp.src_offset + isz * sum(i * s for i, s in zip(idx, cp.src_strides))
                assert 0 <= so and so + isz <= c.size, "copy reads outside its chunk"
                do = cp.dst_offset + sum(i * s for i, s in zip(idx, cp.dst_strides))
                outs[cp.dest][do] = np.frombuffer(chunk[so : so + isz].tobytes(), d.src_dtype)[0]
                counts[cp.dest][do] += 1
    return [o.reshape(d.box.shape) for o, d in zip(outs, plan.destinations)], counts, reads


@st.composite
def scenarios(draw):
    rank = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0 if rank else 1, 7), min_size=rank, max_size=rank)))
    dtype = np.dtype(draw(st.sampled_from(["uint8", "int16", "float32", "float64", "complex128"])))
    saved = (
        tuple(draw(st.integers(1, max(1, n)) if n else st.just(1)) for n in shape)
        if rank and draw(st.booleans())
        else None
    )
    target = tuple(draw(st.integers(1, max(1, n)) if n else st.just(1)) for n in shape)
    chunk = draw(st.sampled_from([16, 17, 24, 40, 100, 4096]))
    gap = draw(st.sampled_from([0, 5, 1000]))
    verify = draw(st.booleans())
    subset = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return shape, dtype, saved, target, chunk, gap, verify, subset, seed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_plan_properties(sc):
    shape, dtype, saved, target, chunk, gap, verify, subset, seed = sc
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 250, size=shape).astype(dtype) if shape else np.array(7, dtype)
    other = np.arange(12, dtype=np.int16).reshape(3, 4)
    bundle = FakeBundle(rng, {"t": (array, saved), "o": (other, (2, 1))})
    boxes = grid_boxes(shape, target) if shape else [Box((), ())]
    if subset and len(boxes) > 1:
        boxes = boxes[::2]
    reqs = [Request(f"v/part_{i}", "t", b, dtype) for i, b in enumerate(boxes)]
    reqs.append(Request("w", "o", Box((1, 1), (2, 3)), np.dtype(np.int16)))
    plan = build_plan(bundle, reqs, chunk_bytes=chunk, gap_bytes=gap, verify_crc=verify)
    str(plan)  # prints without error

    outs, counts, reads = run_plan(bundle, plan)
    for req, out, cnt in zip(reqs, outs, counts):
        expect = (array if req.source == "t" else other)[req.box.as_slices()]
        np.testing.assert_array_equal(out, expect)
        assert (cnt == 1).all(), "every destination element is written exactly once"
    for c in plan.chunks:
        assert c.size <= chunk
    for r in reads.values():
        assert r.max(initial=0) <= 1, "no byte is read twice"
    # every byte of every needed piece is read when verifying, and the CRC spans tile it
    if verify:
        seen = {}
        for c in plan.chunks:
            for s in c.crc_spans:
                seen.setdefault(s.check, []).append((c.offset + s.chunk_offset, s.size))
        for i, chk in enumerate(plan.checks):
            pos = chk.offset
            for off, size in seen.get(i, []):
                assert off == pos
                pos += size
            assert pos == chk.offset + chk.size
    # holes bigger than gap_bytes are never read
    if gap == 0:
        for fi, r in reads.items():
            shard = int(plan.files[fi].split("-")[1])
            inside = np.zeros(len(r), bool)
            for ps in bundle._pieces.values():
                for p in ps:
                    if p.entry.shard_id == shard:
                        inside[p.entry.offset : p.entry.offset + p.entry.size] = True
            assert inside[r > 0].all(), "a hole was read with gap_bytes=0"


def test_rows_read_only_when_crc_off():
    rng = np.random.default_rng(0)
    array = np.arange(100 * 8, dtype=np.float32).reshape(100, 8)
    bundle = FakeBundle(rng, {"t": (array, None)}, nfiles=1)
    req = [Request("p", "t", Box((10, 0), (5, 8)), np.dtype(np.float32))]
    plan = build_plan(bundle, req, chunk_bytes=1 << 20, verify_crc=False)
    assert plan.bytes_read == 5 * 8 * 4
    plan = build_plan(bundle, req, chunk_bytes=1 << 20, verify_crc=True)
    assert plan.bytes_read == 100 * 8 * 4


def test_shared_piece_is_read_once():
    rng = np.random.default_rng(1)
    array = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
    bundle = FakeBundle(rng, {"t": (array, None)}, nfiles=1)
    reqs = [Request(f"a{i}", "t", b, np.dtype(np.float32)) for i, b in enumerate(grid_boxes((64, 4), (8, 1)))]
    reqs += [Request(f"b{i}", "t", b, np.dtype(np.float32)) for i, b in enumerate(grid_boxes((64, 4), (1, 4)))]
    plan = build_plan(bundle, reqs, chunk_bytes=256, verify_crc=True)
    assert plan.bytes_read == array.nbytes
    outs, counts, _ = run_plan(bundle, plan)
    for req, out in zip(reqs, outs):
        np.testing.assert_array_equal(out, array[req.box.as_slices()])


def test_row_aligned_chunks_give_one_copy_per_part():
    rng = np.random.default_rng(2)
    array = np.zeros((1024, 16), np.float32)
    bundle = FakeBundle(rng, {"t": (array, None)}, nfiles=1)
    reqs = [Request(f"c{i}", "t", b, np.dtype(np.float32)) for i, b in enumerate(grid_boxes((1024, 16), (1, 4)))]
    plan = build_plan(bundle, reqs, chunk_bytes=4096, verify_crc=True)
    for c in plan.chunks:
        assert c.size % (16 * 4) == 0
        assert len(c.copies) == 4
        assert all(len(cp.shape) == 2 for cp in c.copies)


def test_insufficient_slices_and_out_of_range():
    rng = np.random.default_rng(3)
    array = np.zeros((10, 4), np.float32)
    bundle = FakeBundle(rng, {"t": (array, (2, 1))}, nfiles=1)
    # drop a stored piece: coverage must fail
    bundle._pieces["t"] = bundle._pieces["t"][:1]
    with pytest.raises(PlanError, match="sufficient slices"):
        build_plan(bundle, [Request("v", "t", Box.full((10, 4)), np.dtype(np.float32))], chunk_bytes=64)
    with pytest.raises(PlanError, match="outside tensor"):
        build_plan(bundle, [Request("v", "t", Box((8, 0), (3, 4)), np.dtype(np.float32))], chunk_bytes=64)
    with pytest.raises(PlanError, match="dtype"):
        build_plan(bundle, [Request("v", "t", Box((0, 0), (2, 4)), np.dtype(np.float16))], chunk_bytes=64)


@given(st.lists(st.integers(1, 5), min_size=0, max_size=4), st.data())
@settings(max_examples=200, deadline=None)
def test_row_major_blocks_tile_the_range(shape, data):
    total = math.prod(shape)
    a = data.draw(st.integers(0, total))
    b = data.draw(st.integers(a, total))
    blocks = row_major_blocks(a, b, shape)
    assert len(blocks) <= max(1, 2 * len(shape) - 1)
    flat = []
    strides = strides_of(shape)
    for blk in blocks:
        for idx in np.ndindex(*blk.shape):
            flat.append(sum((i + s) * st_ for i, s, st_ in zip(idx, blk.start, strides)))
    expect = list(range(a, b)) if shape else ([0] if a < b else [])
    assert flat == expect


def test_normalize_merges_and_drops_axes():
    cp = normalize(BoxCopy(0, 0, (32, 8, 1), 0, (32, 8, 1), (1, 4, 8)))
    assert cp.shape == (32,) and cp.src_strides == (1,) and cp.dst_strides == (1,)
    cp = normalize(BoxCopy(0, 0, (16, 1), 0, (4, 1), (3, 4)))
    assert cp.shape == (3, 4) and cp.src_strides == (16, 1) and cp.dst_strides == (4, 1)
    cp = normalize(BoxCopy(0, 0, (), 0, (), ()))
    assert cp.shape == (1,)
