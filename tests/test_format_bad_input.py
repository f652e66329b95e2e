"""Corrupt, truncated, hostile and unusual checkpoints: every case ends in a clear gpuload error.

Every failure must be a :class:`gpuload.errors.CheckpointError` (a ``ValueError``) with a
message naming the problem; never ``IndexError``/``struct.error``/``MemoryError``/a hang.
"""

from __future__ import annotations

import os
import shutil
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from format_helpers import (
    block_ranges,
    copy_golden,
    edit_entry,
    entry_kwargs,
    fix_block_crcs,
    golden_checkpoints,
    overwrite,
    rewrite_index,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuload.errors import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    ChecksumError,
    GpuloadError,
    TruncatedCheckpointError,
    UnsupportedCheckpointError,
)
from gpuload.format import Bundle, load_checkpoint, proto, save_checkpoint
from gpuload.format.crc import crc32c, mask
from gpuload.format.slices import Box
from gpuload.format.sstable import TableWriter, read_table, read_table_file


def _read_everything(prefix, verify=True):
    """Open and read every tensor; return the errors (all must be CheckpointErrors)."""
    errors = []
    try:
        b = Bundle.open(prefix)
    except CheckpointError as e:
        return [e]
    with b:
        for n in b.names():
            try:
                b.read_tensor(n, verify=verify)
            except CheckpointError as e:
                errors.append(e)
    return errors


# --- data corruption --------------------------------------------------------------------


def test_every_bit_flip_in_a_tensor_is_caught(golden_ckpts, tmp_path):
    d = copy_golden("dtypes", tmp_path)
    b = Bundle.open(d)
    e = b.entry("inner/b")  # float32 [3]: 12 bytes
    path = b.shard_path(0)
    original = Path(path).read_bytes()
    for i in range(e.offset, e.offset + e.size):
        for bit in range(8):
            data = bytearray(original)
            data[i] ^= 1 << bit
            overwrite(path, data)
            with pytest.raises(ChecksumError) as info:
                b.read_tensor("inner/b")
            msg = str(info.value)
            assert "inner/b" in msg and "model.ckpt.data-00000-of-00001" in msg and f"offset {e.offset}" in msg
            assert "crc32c mismatch" in msg and isinstance(info.value, ValueError)
    overwrite(path, original)
    assert b.read_tensor("inner/b").shape == (3,)


def test_every_byte_of_a_string_tensor_is_checked(golden_ckpts, tmp_path):
    d = copy_golden("dtypes", tmp_path)
    b = Bundle.open(d)
    e = b.entry("string_t")
    values = b.read_tensor("string_t").reshape(-1)
    header = sum(len(proto.encode_varint(len(v))) for v in values) + 4  # varints + length checksum
    assert e.size == header + sum(len(v) for v in values)
    path = b.shard_path(0)
    original = Path(path).read_bytes()
    for i in range(e.offset, e.offset + e.size):
        data = bytearray(original)
        data[i] ^= 0x41
        overwrite(path, data)
        with pytest.raises(CheckpointFormatError):  # ChecksumError or a bad length varint
            b.read_tensor("string_t")
        if i < e.offset + header:  # lengths are guarded by their own checksum even unverified
            with pytest.raises(CheckpointFormatError):
                b.read_tensor("string_t", verify=False)
        else:  # string bytes are covered only by the entry CRC
            assert b.read_tensor("string_t", verify=False).shape == (3, 4)


def test_slice_data_corruption_names_the_slice(golden_ckpts, tmp_path):
    d = copy_golden("partitioned_save", tmp_path)
    b = Bundle.open(d)
    piece = b.pieces("emb/uneven")[2]
    path = b.shard_path(0)
    data = bytearray(Path(path).read_bytes())
    data[piece.entry.offset + 5] ^= 0x10
    overwrite(path, data)
    with pytest.raises(ChecksumError, match=r"tensor 'emb/uneven' slice \[52:78, 0:8\] \(832 bytes at") as info:
        load_checkpoint(d).get_tensor("emb/uneven")
    assert info.value.tensor == "emb/uneven" and info.value.offset == piece.entry.offset
    # reading rows of an intact piece still works, and a partial read of the bad one is unverified
    r = load_checkpoint(d)
    assert r.get_rows("emb/uneven", 0, 26).shape == (26, 8)
    assert r.get_rows("emb/uneven", 53, 60).shape == (7, 8)


def test_truncated_data_file(golden_ckpts, tmp_path):
    d = copy_golden("seed_example", tmp_path)
    shard = d / "model.ckpt.data-00000-of-00001"
    b = Bundle.open(d)  # opened while intact
    os.truncate(shard, 1000)
    shape = r"data-00000-of-00001: tensor '{}': expected {} bytes at offset {}, found {}: the file ends at byte 1000;"
    e = b.entry("old_scope_2/var3")
    with pytest.raises(TruncatedCheckpointError, match=shape.format(e.key, e.size, e.offset, 1000 - e.offset)):
        b.read_tensor("old_scope_2/var3")
    # found when opening: the same error, the same message shape
    with pytest.raises(TruncatedCheckpointError, match=shape.format(".*", r"\d+", r"\d+", r"\d+")):
        Bundle.open(d)


def test_missing_shard(golden_ckpts, tmp_path):
    d = copy_golden("sharded", tmp_path)
    os.unlink(d / "model.ckpt.data-00001-of-00003")
    with pytest.raises(CheckpointNotFoundError, match=r"model\.ckpt\.data-00001-of-00003.*shard 1 of 3") as info:
        Bundle.open(d)
    assert isinstance(info.value, ValueError) and "tower_1/w" in str(info.value)


# --- index structure --------------------------------------------------------------------


def test_truncated_index_at_every_length(golden_ckpts, tmp_path):
    d = copy_golden("dtypes", tmp_path)
    index = d / "model.ckpt.index"
    original = index.read_bytes()
    for n in range(len(original)):
        with pytest.raises(CheckpointFormatError):
            read_table(original[:n], path=index)
        if n % 50 == 0:  # the whole path, through the file, for a sample
            overwrite(index, original[:n])
            with pytest.raises(CheckpointFormatError):
                Bundle.open(d)


def test_short_file_and_bad_magic(golden_ckpts, tmp_path):
    d = copy_golden("seed_example", tmp_path)
    index = d / "model.ckpt.index"
    original = index.read_bytes()
    overwrite(index, original[-40:])
    with pytest.raises(CheckpointFormatError, match="too short to be an sstable"):
        Bundle.open(d)
    overwrite(index, original[:-1] + b"\x00")
    with pytest.raises(CheckpointFormatError, match="bad magic number") as info:
        Bundle.open(d)
    assert info.value.path == str(index) and info.value.offset == len(original) - 8


def test_block_checksum_mismatch(golden_ckpts, tmp_path):
    d = copy_golden("seed_example", tmp_path)
    index = d / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    data[10] ^= 1
    overwrite(index, data)
    with pytest.raises(CheckpointFormatError, match="block checksum mismatch"):
        Bundle.open(d)


def test_keys_out_of_order(golden_ckpts, tmp_path):
    d = copy_golden("seed_example", tmp_path)
    index = d / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    pos = data.index(b"var3")  # old_scope_2/var3 -> old_scope_0/var3 sorts before var2's key
    data[pos - 2] = ord("0")  # the key delta is "2/var3"
    fix_block_crcs(data, block_ranges(index.read_bytes()))
    overwrite(index, data)
    with pytest.raises(CheckpointFormatError, match="strictly increasing"):
        Bundle.open(d)


def _snappy_table(rows, compressor):
    w = TableWriter()
    for k, v in rows:
        w.add(k, v)
    raw = w.finish()
    (boff, bsize) = block_ranges(raw)[2]  # the one data block
    block = raw[boff : boff + bsize]
    comp = compressor(block)
    out = bytearray(comp) + b"\x01" + mask(crc32c(comp + b"\x01")).to_bytes(4, "little")
    # rebuild: compressed data block, then the original metaindex/index with a fixed handle
    rest = raw[boff + bsize + 5 : -48]
    shift = len(out) - (bsize + 5)
    meta_off = boff + bsize + 5
    index_block = proto.encode_varint(0) + proto.encode_varint(len(comp))
    idx = TableWriter()._index  # noqa: SLF001 - build an index block by hand
    idx.add(rows[-1][0][:1] + b"\xff", index_block)
    idx_bytes = idx.finish()
    meta = rest[: 8 + 5]
    body = bytes(out) + meta
    index_off = len(body)
    body += idx_bytes + b"\x00" + mask(crc32c(idx_bytes + b"\x00")).to_bytes(4, "little")
    footer = (
        proto.encode_varint(meta_off + shift)
        + proto.encode_varint(8)
        + proto.encode_varint(index_off)
        + proto.encode_varint(len(idx_bytes))
    )
    footer += b"\x00" * (40 - len(footer)) + raw[-8:]
    return body + footer


def test_snappy_block_without_cramjam(golden_ckpts, tmp_path, monkeypatch):
    d = copy_golden("seed_example", tmp_path)
    index = d / "model.ckpt.index"
    rows = read_table_file(index)
    monkeypatch.setitem(sys.modules, "cramjam", None)  # as if not installed
    overwrite(index, _snappy_table(rows, lambda b: b"\x00" * 7 + b))
    with pytest.raises(
        UnsupportedCheckpointError, match=r"snappy-compressed index block; install cramjam \(pip install cramjam\)"
    ):
        Bundle.open(d)


def test_snappy_block_with_cramjam(golden_ckpts, tmp_path):
    cramjam = pytest.importorskip("cramjam")  # the optional dependency, gpuload[snappy]
    d = copy_golden("seed_example", tmp_path)
    index = d / "model.ckpt.index"
    rows = read_table_file(index)
    overwrite(index, _snappy_table(rows, lambda b: bytes(cramjam.snappy.compress_raw(b))))
    assert Bundle.open(d).names() == ["old_scope_1/var1", "old_scope_1/var2", "old_scope_2/var3"]
    overwrite(index, _snappy_table(rows, lambda b: b"\xff\xff\xff" + b))
    with pytest.raises(CheckpointFormatError, match="corrupt snappy block"):
        Bundle.open(d)


def test_bad_block_type(golden_ckpts, tmp_path):
    d = copy_golden("seed_example", tmp_path)
    index = d / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    off, size = block_ranges(bytes(data))[2]
    data[off + size] = 7
    fix_block_crcs(data, [(off, size)])
    overwrite(index, data)
    with pytest.raises(CheckpointFormatError, match="bad block type 7"):
        Bundle.open(d)


def test_missing_header(golden_ckpts, tmp_path):
    d = copy_golden("seed_example", tmp_path)
    rewrite_index(d / "model.ckpt", lambda rows: rows[1:])
    with pytest.raises(CheckpointFormatError, match="header entry"):
        Bundle.open(d)


# --- entries that pass the table checks but lie -----------------------------------------

BAD_EDITS = [
    ("old_scope_1/var2", dict(shape=(10**15,)), "invalid size in bundle entry"),
    ("old_scope_1/var2", dict(shape=(2**62, 2**62, 0)), "too many elements"),
    ("old_scope_1/var2", dict(shape=(-1, 4)), "negative dimension"),
    ("old_scope_1/var2", dict(size=801), "stored size 801, expected 800"),
    ("old_scope_1/var2", dict(offset=40500), r"expected 800 bytes at offset 40500, found 460: the file ends at"),
    ("old_scope_1/var2", dict(offset=-5), "negative offset"),
    ("old_scope_1/var2", dict(shard_id=3), "shard_id 3 is out of range"),
    ("old_scope_1/var2", dict(shard_id=-1), "shard_id -1"),
    ("old_scope_1/var2", dict(dtype=0), "invalid dtype code 0"),
    ("old_scope_1/var2", dict(dtype=101), "invalid dtype code 101"),
    ("old_scope_1/var2", dict(shape=(1,) * 300), "rank 300 exceeds 254"),
    ("old_scope_1/var2", dict(slices=[[(0, 10), (0, None)], [(5, 10), (0, None)]]), "overlap"),
    ("old_scope_1/var2", dict(slices=[[(45, 10), (0, None)]]), "outside"),
    ("old_scope_1/var2", dict(slices=[[(0, 10)]]), "rank 1"),
    ("old_scope_1/var2", dict(slices=[[(0, 10), (2, None)]]), "no length"),
    ("old_scope_1/var2", dict(slices=[[(0, 10), (0, None)]]), "is missing from the index"),
]


@pytest.mark.parametrize("name,changes,message", BAD_EDITS)
def test_lying_entries_are_caught(golden_ckpts, tmp_path, name, changes, message):
    d = copy_golden("seed_example", tmp_path)
    edit_entry(d / "model.ckpt", name, **changes)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointFormatError, match=message) as info:
            Bundle.open(d)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"open allocated {peak} bytes before failing"
    # an entry past the end of its data file is reported as that file's truncation, the
    # same error as a short read during a load; every other lie is the index's
    culprit = "data-00000-of-00001" if isinstance(info.value, TruncatedCheckpointError) else "model.ckpt.index"
    assert name in str(info.value) and culprit in str(info.value)


def test_huge_partitioned_shape_fails_before_allocating(golden_ckpts, tmp_path):
    d = copy_golden("partitioned_save", tmp_path)
    edit_entry(
        d / "model.ckpt",
        "emb/table",
        shape=(10**15, 16),
        slices=entry_kwargs(dict(read_table_file(d / "model.ckpt.index"))[b"emb/table"])["slices"],
    )
    b = Bundle.open(d)  # legal: the slices cover only part of the (huge) tensor
    assert b.shape("emb/table") == (10**15, 16)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointFormatError, match="sufficient slices"):
            b.read_tensor("emb/table")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    assert b.read_rows("emb/table", 0, 3).shape == (3, 16)


def test_huge_string_count(golden_ckpts, tmp_path):
    d = copy_golden("dtypes", tmp_path)
    edit_entry(d / "model.ckpt", "string_t", shape=(10**12,))
    with pytest.raises(CheckpointFormatError, match="below the minimum"):
        Bundle.open(d)


def test_slice_entry_with_wrong_shape(golden_ckpts, tmp_path):
    d = copy_golden("partitioned_save", tmp_path)
    rows = dict(read_table_file(d / "model.ckpt.index"))
    key = next(k for k in rows if k.startswith(b"\x00emb/uneven"))
    edit_entry(d / "model.ckpt", key, shape=(13, 16), size=13 * 16 * 4)
    with pytest.raises(CheckpointFormatError, match="differs from the slice's"):
        Bundle.open(d)


def test_unsupported_dtype_opens_but_refuses_to_read(golden_ckpts, tmp_path):
    d = copy_golden("seed_example", tmp_path)
    edit_entry(d / "model.ckpt", "old_scope_1/var1", dtype=21)
    b = Bundle.open(d)
    assert b.tf_dtype_name("old_scope_1/var1") == "variant"
    with pytest.raises(UnsupportedCheckpointError, match=r"DT_VARIANT \(21\)"):
        b.read_tensor("old_scope_1/var1")
    with pytest.raises(UnsupportedCheckpointError, match="old_scope_1/var1"):
        b.numpy_dtype("old_scope_1/var1")
    assert load_checkpoint(d).get_variable_to_dtype_map()["old_scope_1/var1"] == np.dtype(object)


@pytest.mark.parametrize(
    "header,message",
    [
        (proto.encode_header(num_shards=0), "num_shards is 0"),
        (proto.encode_header(min_consumer=2), "requires reader version >= 2"),
        (proto.encode_header(bad_consumers=[1]), "bad_consumers"),
        (proto.encode_header(producer=-1), "producer version -1"),
        (proto.encode_header(endianness=7), "endianness 7"),
        (b"\x08", "truncated varint"),
    ],
)
def test_bad_headers(golden_ckpts, tmp_path, header, message):
    d = copy_golden("seed_example", tmp_path)
    rewrite_index(d / "model.ckpt", lambda rows: [(b"", header)] + rows[1:])
    with pytest.raises(CheckpointFormatError, match=message):
        Bundle.open(d)


def test_unknown_tensor_message(golden_ckpts):
    b = Bundle.open(golden_ckpts / "seed_example")
    with pytest.raises(CheckpointNotFoundError, match=r"'old_scope_1/var3' not found .*did you mean") as info:
        b.entry("old_scope_1/var3")
    assert isinstance(info.value, ValueError) and b.prefix in str(info.value)


# --- big-endian bundles -------------------------------------------------------------------


def test_big_endian_bundle_is_swapped(tmp_path):
    import ml_dtypes

    tensors = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5,
        "c64": np.array([1 + 2j, -3.5 + 0.25j], np.complex64),
        "bf16": np.array([1.5, -2, 3], ml_dtypes.bfloat16),
        "i16": np.array([1, -2, 300], np.int16),
        "flag": np.array([True, False]),
        "s": np.array([b"ab", b"", b"xyz"], dtype=object),
    }
    prefix = save_checkpoint(tmp_path / "m", tensors)
    le = Bundle.open(prefix)
    shard = Path(le.shard_path(0))
    data = bytearray(shard.read_bytes())
    changes = {}
    for name, arr in tensors.items():
        e = le.entry(name)
        if name == "s":
            # lengths stay varints; the length checksum is written in big-endian order
            lengths = [len(x) for x in arr]
            lcrc = crc32c(np.asarray(lengths, ">u4").tobytes())
            pos = e.offset + len(lengths)
            data[pos : pos + 4] = mask(lcrc).to_bytes(4, "big")
            crc = crc32c(bytes(data[pos : e.offset + e.size]), lcrc)
        else:
            unit = arr.dtype.itemsize // (2 if arr.dtype.kind == "c" else 1)
            swapped = np.frombuffer(bytes(data[e.offset : e.offset + e.size]), f"<u{unit}").astype(f">u{unit}")
            data[e.offset : e.offset + e.size] = swapped.tobytes()
            crc = crc32c(swapped.tobytes())
        changes[name] = mask(crc)
    overwrite(shard, data)

    def edit(rows):
        out = [(b"", proto.encode_header(endianness=1))]
        for k, v in rows[1:]:
            kw = entry_kwargs(v)
            kw["crc32c"] = changes[k.decode()]
            out.append((k, proto.encode_entry(**kw)))
        return out

    rewrite_index(prefix, edit)
    be = Bundle.open(prefix)
    assert be.big_endian
    for name, arr in tensors.items():
        got = be.read_tensor(name)
        assert got.tolist() == arr.tolist(), name
    assert be.read_rows("f32", 1, 2).tolist() == tensors["f32"][1:2].tolist()


# --- fuzzing ------------------------------------------------------------------------------


class _FuzzTarget:
    def __init__(self, name, base: Path):
        source = golden_checkpoints() / name  # fails (and creates nothing) without golden data
        self.dir = base / name
        shutil.copytree(source, self.dir)
        for p in self.dir.iterdir():
            p.chmod(0o644)
        self.index = self.dir / "model.ckpt.index"
        self.original = self.index.read_bytes()
        self.blocks = block_ranges(self.original)


@pytest.fixture(scope="module")
def fuzz_targets(tmp_path_factory):
    """``name -> _FuzzTarget``: one writable copy per golden checkpoint, made on first use.

    Module-scoped (Hypothesis reruns the test body, not the fixture) and under pytest's
    temporary directory, so every copy is removed with it whatever the tests do.
    """
    base = tmp_path_factory.mktemp("fuzz")
    targets = {}

    def get(name):
        if name not in targets:
            targets[name] = _FuzzTarget(name, base)
        return targets[name]

    yield get
    shutil.rmtree(base, ignore_errors=True)


@settings(max_examples=300, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(["dtypes", "partitioned_save", "sharded"]),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    fix_crcs=st.booleans(),
    cut=st.none() | st.integers(0, 10**6),
)
def test_fuzz_index(fuzz_targets, target, edits, fix_crcs, cut):
    t = fuzz_targets(target)
    data = bytearray(t.original)
    # aim most edits at block contents (not trailers/footer) so the decoders get exercised
    for pos, val in edits:
        data[pos % len(data)] = val
    if fix_crcs:
        fix_block_crcs(data, t.blocks)
    if cut is not None and cut % 7 == 0:
        data = data[: cut % len(data)]
    overwrite(t.index, bytes(data))
    try:
        for err in _read_everything(t.dir / "model.ckpt"):
            assert isinstance(err, GpuloadError) and isinstance(err, ValueError)
            assert str(err)
    finally:
        overwrite(t.index, t.original)


@settings(max_examples=150, deadline=2000, database=None)
@given(pos=st.integers(0, 10**6), val=st.integers(1, 255), verify=st.booleans())
def test_fuzz_data(fuzz_targets, pos, val, verify):
    t = fuzz_targets("dtypes")
    shard = t.dir / "model.ckpt.data-00000-of-00001"
    original = shard.read_bytes()
    data = bytearray(original)
    data[pos % len(data)] ^= val
    overwrite(shard, bytes(data))
    try:
        errors = _read_everything(t.dir / "model.ckpt", verify=verify)
        if verify:
            b = Bundle.open(t.dir)
            hit = [e for e in b.data_entries() if e.offset <= pos % len(data) < e.offset + e.size]
            assert len(errors) == len(hit)  # the flipped byte is caught in exactly its tensor
    finally:
        overwrite(shard, original)


def test_random_index_garbage_never_escapes(tmp_path):
    rng = np.random.default_rng(7)
    d = tmp_path
    for i in range(200):
        n = int(rng.integers(0, 400))
        blob = bytes(rng.integers(0, 256, n, dtype=np.uint8))
        if i % 2:  # give it a real footer magic so parsing goes further
            blob = blob + bytes(40) + bytes.fromhex("57fb808b247547db")
        index = d / "m.index"
        if i == 0:
            index.write_bytes(blob)
        else:
            overwrite(index, blob)
        try:
            read_table(blob)
            Bundle.open(d / "m")
        except CheckpointError:
            pass


def test_errors_from_readers_of_unusual_requests(golden_ckpts):
    r = load_checkpoint(golden_ckpts / "seed_example")
    with pytest.raises(ValueError):
        r.get_slice("old_scope_1/var1", Box((0, 0), (21, 2)))
    with pytest.raises(ValueError):
        r.get_slice("old_scope_1/var1", "0,5")
    with pytest.raises(CheckpointNotFoundError):
        r.get_rows("nope", 0, 1)
    out = np.empty((20, 2), np.float64)
    with pytest.raises(ValueError):
        r.bundle.read_entry(r.bundle.entry("old_scope_1/var1"), out)
