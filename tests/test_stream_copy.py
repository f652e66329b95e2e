"""Host copies that stream: each piece of a chunk is read, checksummed and copied out while hot.

The reader streams a chunk through a small per-thread buffer (``scheduler._read_crc_stream``)
and :class:`gpuload.backend.host.StreamCopy` copies every slab (outermost index of a copy)
that the window completes. These tests cut chunks into pieces that do not line up with
rows, elements or slabs, and compare with NumPy slicing of the saved table and with the
box-copy edge-case table.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from box_cases import edge_cases

import gpuload
from gpuload import config
from gpuload import scheduler as sched_mod
from gpuload.backend import host as host_mod
from gpuload.backend.host import HostBackend
from gpuload.errors import ChecksumError
from gpuload.format import crc as crcmod
from gpuload.plan.plan import Chunk, CrcSpan

BF16 = np.dtype(ml_dtypes.bfloat16)


class _BytesFiles:
    """``ShardFiles.read_into`` over one in-memory file."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.reads = []

    def read_into(self, index, offset, buffers, *, tensor=None, what=None):
        for buf in buffers:
            n = len(buf)
            np.frombuffer(buf, np.uint8)[:] = self.data[offset : offset + n]
            self.reads.append((offset, n))
            offset += n


@pytest.mark.parametrize("piece", [1, 3, 7, 64, 1000, 1 << 20])
def test_streamed_copies_match_the_box_copy_table(monkeypatch, piece):
    monkeypatch.setattr(sched_mod, "_STREAM_PIECE", piece)
    streamed = 0
    for case in edge_cases():
        data = np.ascontiguousarray(case.chunk)
        dest = case.fresh_dest()
        stream = HostBackend().stream(data.nbytes, case.copies, [dest], [(case.src_dtype, case.dst_dtype)], piece)
        if stream is None:
            # A slab wider than a piece: the scheduler stages such chunks whole instead.
            assert piece < data.nbytes, case
            continue
        streamed += 1
        half = data.nbytes // 2
        spans = (CrcSpan(0, 0, half), CrcSpan(1, half, data.nbytes - half))
        chunk = Chunk(file=0, offset=0, size=data.nbytes, copies=tuple(case.copies), crc_spans=spans)
        files = _BytesFiles(data)
        scratch = np.empty(2 * piece, np.uint8)
        crcs, *_ = sched_mod._read_crc_stream(files, chunk, scratch, [stream])
        assert crcs == [crcmod.crc32c(data[:half]), crcmod.crc32c(data[half:])], case
        assert sum(n for _, n in files.reads) == data.nbytes and max(n for _, n in files.reads) <= piece
        np.testing.assert_array_equal(case.expected.view(np.uint8), dest.view(np.uint8), err_msg=repr(case))
    # Every case streams with big pieces; single elements stream even with 1-byte pieces.
    assert streamed == len(edge_cases()) if piece >= 1 << 20 else streamed > 0


def test_a_window_that_dropped_needed_bytes_is_refused():
    table = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
    dest = np.zeros((8, 2), np.float32)
    copy = gpuload.plan.copies.BoxCopy(0, 4, (4, 1), 0, (2, 1), (8, 2))
    stream = HostBackend().stream(table.nbytes, [copy], [dest], [(np.float32, np.float32)], 64)
    raw = table.view(np.uint8).reshape(-1)
    assert stream.feed(raw[:20], 0) == 20  # slab 0 is bytes [4, 12): done; slab 1 starts at 20
    with pytest.raises(RuntimeError, match="misses slab 1"):
        stream.feed(raw[24:40], 24)
    with pytest.raises(RuntimeError, match="not streamed whole"):
        stream.finish()


def _save(tmp_path, table):
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {"t": table})
    return prefix


def _count_feeds(monkeypatch):
    calls = []
    real = host_mod.StreamCopy.feed

    def feed(self, window, base):
        calls.append(window.nbytes)
        return real(self, window, base)

    monkeypatch.setattr(host_mod.StreamCopy, "feed", feed)
    return calls


def _column_requests(shape, cuts, dtype=None):
    reqs = {}
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        reqs[f"p{i}"] = gpuload.Request("t", box=(slice(None), slice(a, b)), target=gpuload.Spec(dtype=dtype))
    return reqs


@pytest.mark.parametrize(
    ("stored", "target"),
    [("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "bfloat16"), ("bfloat16", "float32"),
     ("float64", "float16"), ("float16", "float64"), ("int32", "int32")],
)  # fmt: skip
@pytest.mark.parametrize("piece", [100, 333, 4096])  # rows are 37 elements: 148 to 296 bytes
def test_column_parts_stream_into_place(tmp_path, monkeypatch, stored, target, piece):
    rng = np.random.default_rng(piece)
    shape = (301, 37)  # rows of 37 elements: pieces cut rows and elements anywhere
    table = (rng.standard_normal(shape) * 100).astype(stored)
    prefix = _save(tmp_path, table)
    cuts = [0, 1, 5, 12, 20, 21, 30, 37]  # 7 parts of odd widths, one of one column
    monkeypatch.setattr(sched_mod, "_STREAM_PIECE", piece)
    feeds = _count_feeds(monkeypatch)
    with config.set(chunk_bytes=4096, ring_bytes=3 * 4096, reader_threads=3):
        out = gpuload.load(prefix, _column_requests(shape, cuts, target), allow_cast=stored != target)
    assert feeds, "the column parts did not stream"
    assert 0 < out.stats.ring_bytes <= 3 * 2 * piece  # the readers' buffers; no ring slot
    want = table.astype(np.float32).astype(target) if stored != target else table
    if (stored, target) == ("float64", "float16"):
        want = table.astype(np.float32).astype(np.float16)  # TensorFlow rounds through float32
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        got = out[f"p{i}"]
        assert got.dtype == np.dtype(BF16 if target == "bfloat16" else target)
        np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(want[:, a:b]).view(np.uint8))


def test_boxes_of_a_3d_tensor_stream_and_wide_slabs_fall_back(tmp_path, monkeypatch):
    table = np.arange(6 * 50 * 9, dtype=np.float32).reshape(6, 50, 9)
    prefix = _save(tmp_path, table)
    reqs = {
        "a": gpuload.Request("t", box=(slice(1, 5), slice(3, 47), slice(2, 7))),
        "b": gpuload.Request("t", box=(slice(0, 6), slice(0, 50), slice(7, 9))),
    }
    for piece, streams in [(64, True), (8, False)]:  # a slab of "a" spans 20 bytes
        monkeypatch.setattr(sched_mod, "_STREAM_PIECE", piece)
        feeds = _count_feeds(monkeypatch)
        with config.set(chunk_bytes=4096, ring_bytes=3 * 4096):
            out = gpuload.load(prefix, reqs)
        monkeypatch.undo()
        assert bool(feeds) == streams
        np.testing.assert_array_equal(out["a"], table[1:5, 3:47, 2:7])
        np.testing.assert_array_equal(out["b"], table[:, :, 7:9])


def test_a_corrupt_byte_in_a_streamed_chunk_fails_the_load(tmp_path, monkeypatch):
    table = np.arange(512 * 16, dtype=np.float32).reshape(512, 16)
    prefix = _save(tmp_path, table)
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.seek(12345)
        byte = f.read(1)[0]
        f.seek(12345)
        f.write(bytes([byte ^ 0x40]))
    monkeypatch.setattr(sched_mod, "_STREAM_PIECE", 1000)
    feeds = _count_feeds(monkeypatch)
    with config.set(chunk_bytes=4096, ring_bytes=3 * 4096), pytest.raises(ChecksumError, match="crc32c mismatch"):
        gpuload.load(prefix, _column_requests((512, 16), [0, 4, 8, 12, 16]))
    assert feeds


# ---- the CPU test of a destination: its device parsed, not its spelling


@pytest.mark.parametrize("spelling", ["/device:CPU:0", "cpu", "/job:localhost/replica:0/task:0/device:CPU:0"])
def test_row_parts_of_any_cpu_spelling_are_read_in_place(tmp_path, monkeypatch, spelling):
    """A plan's destination device may be any CPU spelling: its row chunks still land in place."""
    from gpuload.format.bundle import Bundle
    from gpuload.format.slices import Box
    from gpuload.plan import Request, build_plan

    prefix = str(tmp_path / "m.ckpt")
    table = np.arange(64 * 16, dtype=np.float32).reshape(64, 16)
    gpuload.save_checkpoint(prefix, {"t": table})
    req = Request("r", "t", Box((16, 0), (32, 16)), np.dtype(np.float32), spelling)
    plan = build_plan(Bundle.open(prefix), [req], chunk_bytes=1024)
    streamed = []
    real = sched_mod._read_crc_stream
    monkeypatch.setattr(sched_mod, "_read_crc_stream", lambda *a: streamed.append(a[1]) or real(*a))
    (out,) = sched_mod.execute(plan, {spelling: HostBackend()}, config=config.get())
    np.testing.assert_array_equal(out, table[16:48])
    assert len([c for c in plan.chunks if c.copies]) == 2
    assert [c for c in streamed if c.copies] == []  # read straight into the destination, no copy


def test_the_ring_is_pinned_for_a_gpu_whatever_the_cpus_spelling():
    """Any destination on a GPU takes the ring from its backend, also after a CPU spelled 'cpu'."""
    from types import SimpleNamespace

    from gpuload.devices import Device

    dests = [SimpleNamespace(device=d) for d in ("cpu", "/device:GPU:0", "/cpu:0")]
    plan = SimpleNamespace(destinations=dests)
    backends = {"cpu": "host", "/device:GPU:0": "cuda", "/cpu:0": "host2"}
    on_cpu = [Device.parse(d.device).kind == "CPU" for d in dests]
    assert sched_mod._ring_backend(plan, backends, on_cpu) == "cuda"
    assert sched_mod._ring_backend(SimpleNamespace(destinations=dests[::2]), backends, [True, True]) == "host"


def test_streaming_buffer_is_no_larger_than_the_largest_chunk(tmp_path):
    """Each reader's window buffer is at most 2 MiB and never more than a chunk: a small
    column load must not cost megabytes of staging (LoadStats.ring_bytes counts it)."""
    prefix = str(tmp_path / "small.ckpt")
    table = np.arange(32 * 8, dtype=np.float32).reshape(32, 8)  # 1 KiB
    gpuload.save_checkpoint(prefix, {"t": table})
    with gpuload.config.set(reader_threads=4):
        r = gpuload.load(prefix, {"c": gpuload.Request("t", columns=(2, 5))})
    np.testing.assert_array_equal(r["c"], table[:, 2:5])
    assert 0 < r.stats.ring_bytes <= 4 * table.nbytes, r.stats.ring_bytes


def test_an_aborted_load_stops_a_streaming_reader_within_one_piece(monkeypatch):
    """A failed or interrupted load closes the ring; a reader in the middle of a streamed
    chunk must stop at the next piece, not read (and copy) the rest of the chunk."""
    from gpuload.io.ring import Ring, RingClosed

    piece = 64
    monkeypatch.setattr(sched_mod, "_STREAM_PIECE", piece)
    table = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)  # 2 KiB: 32 pieces
    raw = table.view(np.uint8).reshape(-1)
    dest = np.zeros((64, 4), np.float32)
    copy = gpuload.plan.copies.BoxCopy(0, 64, (4, 1), 0, (4, 1), (64, 4))
    stream = HostBackend().stream(raw.nbytes, [copy], [dest], [(np.float32, np.float32)], piece)
    chunk = Chunk(file=0, offset=0, size=raw.nbytes, copies=(copy,), crc_spans=(CrcSpan(0, 0, raw.nbytes),))
    files = _BytesFiles(raw)
    ring = Ring(HostBackend(), 1, 4096)

    def abort_after_three_pieces():
        if len(files.reads) == 3:
            ring.abort()
        ring.check_open()

    with pytest.raises(RingClosed):
        sched_mod._read_crc_stream(files, chunk, np.empty(2 * piece, np.uint8), [stream], (None, None),
                                   abort_after_three_pieces)  # fmt: skip
    assert len(files.reads) == 3
