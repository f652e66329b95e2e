"""Each failure kind is built in one place: a load and a reader report one bad file alike.

A corrupt entry, a truncated data file and a data file that is not a regular file give
the same error class, the same message and the same ``tensor``/``offset`` whether they
are found by ``gpuload.load`` (plan, reader threads, streaming CRC) or by
``CheckpointReader.get_tensor`` (the bundle's whole-entry reads), and whether found when
the checkpoint is opened or while it is read.
"""

from __future__ import annotations

import errno
import io
import os

import numpy as np
import pytest

import gpuload
from gpuload import errors
from gpuload.format import strings
from gpuload.format.bundle import Bundle
from gpuload.format.crc import mask
from gpuload.format.files import ShardFiles
from gpuload.format.keys import describe_key, encode_tensor_name_slice
from gpuload.format.slices import Box


@pytest.fixture
def ckpt(tmp_path):
    emb = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
    part = np.arange(40, dtype=np.float64).reshape(10, 4)
    prefix = gpuload.save_checkpoint(
        str(tmp_path / "model.ckpt"),
        {"emb": emb},
        slices={"part": [(Box((0, 0), (6, 4)), part[:6]), (Box((6, 0), (4, 4)), part[6:])]},
    )
    return prefix, prefix + ".data-00000-of-00001"


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x20]))


def _both(prefix, name):
    """The errors of ``gpuload.load`` and ``CheckpointReader.get_tensor`` reading ``name``."""
    with pytest.raises(errors.GpuloadError) as by_load:
        gpuload.load(prefix, [name])
    with pytest.raises(errors.GpuloadError) as by_reader:
        gpuload.load_checkpoint(prefix).get_tensor(name)
    return by_load.value, by_reader.value


@pytest.mark.parametrize(
    "name,piece,tensor,where",
    [
        ("emb", None, "emb", "tensor 'emb' (2048 bytes at offset"),
        ("part", 1, "part", "tensor 'part' slice [6:10, 0:4] (128 bytes at offset"),
    ],
)
def test_a_corrupt_entry_is_one_checksum_error_on_both_paths(ckpt, name, piece, tensor, where):
    prefix, data = ckpt
    with Bundle.open(prefix) as b:
        entry = b.entry(name) if piece is None else b.pieces(name)[piece].entry
    _flip(data, entry.offset + entry.size - 3)
    by_load, by_reader = _both(prefix, name)
    for e in (by_load, by_reader):
        assert type(e) is errors.ChecksumError
        assert e.tensor == tensor and e.path == data and e.offset == entry.offset
        assert str(e).startswith(f"{data}: crc32c mismatch in {where} {entry.offset}): stored 0x")
        assert str(e).endswith("; the data file may be truncated or corrupt")
    assert str(by_load) == str(by_reader)


def test_a_truncated_data_file_is_one_error_when_opened_and_when_read(tmp_path):
    prefix = gpuload.save_checkpoint(str(tmp_path / "m.ckpt"), {"emb": np.ones((64, 8), np.float32)})
    data = prefix + ".data-00000-of-00001"
    reader = gpuload.load_checkpoint(prefix)  # opened while the file is whole
    entry = reader.bundle.entry("emb")
    os.truncate(data, entry.offset + 100)
    with pytest.raises(errors.TruncatedCheckpointError) as when_read:
        reader.get_tensor("emb")  # the index was checked before the cut: a short read
    with pytest.raises(errors.TruncatedCheckpointError) as when_opened:
        gpuload.load(prefix, ["emb"])  # the cut is seen against the index when opening
    for e in (when_read.value, when_opened.value):
        assert e.tensor == "emb" and e.path == data and e.offset == entry.offset
        assert isinstance(e, ValueError) and isinstance(e, OSError)
    assert (
        str(when_read.value)
        == str(when_opened.value)
        == (
            f"{data}: tensor 'emb': expected {entry.size} bytes at offset {entry.offset}, found 100: the file ends at "
            f"byte {entry.offset + 100}; the data file is truncated, or is not the one the index describes"
        )
    )


def test_a_fifo_for_a_data_file_is_one_error_on_both_paths(ckpt):
    prefix, data = ckpt
    reader = gpuload.load_checkpoint(prefix)  # sizes checked now; the swap comes after
    plan = gpuload.plan_load(prefix, ["emb"])
    os.unlink(data)
    os.mkfifo(data)
    with pytest.raises(errors.CheckpointFileError) as by_reader:
        reader.get_tensor("emb")
    with ShardFiles(plan.files) as files, pytest.raises(errors.CheckpointFileError) as by_load_reader:
        files.read_into(0, 0, [bytearray(16)], tensor="emb")
    assert (
        str(by_reader.value)
        == str(by_load_reader.value)
        == f"{data}: tensor 'emb': checkpoint data file is a FIFO (named pipe), not a regular file"
    )
    assert by_reader.value.tensor == by_load_reader.value.tensor == "emb"


def test_one_shard_reader_serves_loads_and_bundles(ckpt):
    from gpuload.io import reader as io_reader

    prefix, _ = ckpt
    assert io_reader.ShardFiles is ShardFiles
    with Bundle.open(prefix) as b:
        assert isinstance(b._files, ShardFiles)
        np.testing.assert_array_equal(b.read_tensor("emb"), np.arange(64 * 8, dtype=np.float32).reshape(64, 8))
        assert b._files._fds, "the bundle read through its ShardFiles"
    assert not b._files._fds, "closing the bundle closes the files"


def test_strings_round_trip_through_the_one_codec():
    values = [b"", b"a", "é".encode(), bytes(range(256)) * 3]
    f = io.BytesIO()
    masked = strings.write(f, values)
    data = f.getvalue()
    assert len(data) == strings.encoded_size(values)
    out, crc = strings.decode(data, len(values), big_endian=False, path="p", tensor="t", offset=0, crc=True)
    assert out == values and mask(crc) == masked
    bad = bytearray(data)
    bad[1] ^= 1  # a length changes, its checksum no longer matches
    with pytest.raises(errors.ChecksumError, match="length checksum") as info:
        strings.decode(bytes(bad), len(values), big_endian=False, path="p", tensor="t", offset=7, crc=False)
    varints = len(data) - 4 - sum(map(len, values))
    assert info.value.tensor == "t" and info.value.offset == 7 + varints


def test_describe_key_names_the_tensor_and_slice():
    assert describe_key("a/b") == ("a/b", None)
    key = encode_tensor_name_slice("a/b", [(2, 3), (0, None)]).decode("utf-8", "surrogateescape")
    assert describe_key(key) == ("a/b", "[2:5, :]")
    key = encode_tensor_name_slice("a/b", Box((2, 0), (3, 8))).decode("utf-8", "surrogateescape")
    assert describe_key(key) == ("a/b", "[2:5, 0:8]")
    assert describe_key("\x00not a slice key") == ("\x00not a slice key", None)


def test_a_data_file_gone_after_opening_is_one_error_on_every_path(ckpt):
    """Missing when opened, or deleted after: a CheckpointNotFoundError (as before) and an
    OSError (ENOENT), naming the file, the shard and the tensor, on every path."""
    prefix, data = ckpt
    reader = gpuload.load_checkpoint(prefix)
    os.unlink(data)
    with pytest.raises(errors.GpuloadError) as by_reader:
        reader.get_tensor("emb")
    with pytest.raises(errors.GpuloadError) as by_load:
        gpuload.load(reader.bundle, ["emb"])  # planned on the open bundle: the reader threads find it
    with pytest.raises(errors.GpuloadError) as when_opened:
        gpuload.load(prefix, ["emb"])  # opening checks every entry: it names the first it checks
    for info in (by_reader, by_load, when_opened):
        e = info.value
        holds = "tensor 'emb'" if e.tensor == "emb" else "tensor 'part' slice [0:6, 0:4]"
        assert type(e) is errors.MissingDataFileError and str(e) == (
            f"data file {data!r} (shard 0 of 1), which holds {holds}, is missing: the checkpoint is incomplete, "
            f"or the file was deleted or renamed after the checkpoint was opened"
        )
        assert isinstance(e, errors.CheckpointNotFoundError) and isinstance(e, ValueError)
        assert isinstance(e, errors.ShardReadError) and isinstance(e, OSError) and e.errno == errno.ENOENT
        assert e.path == e.filename == data and (e.shard, e.num_shards) == (0, 1)
    assert by_reader.value.tensor == by_load.value.tensor == "emb"
    with pytest.raises(errors.MissingDataFileError, match=r"which holds tensor 'part' slice \[0:6, 0:4\],") as info:
        reader.get_tensor("part")
    assert info.value.tensor == "part"
    reader.close()


def test_a_truncated_data_file_is_one_error_for_a_load_and_a_reader(tmp_path):
    """The load's reader threads name the tensor of the chunk they read, as a reader does."""
    a, emb = np.zeros(1000, np.float32), np.arange(1200, dtype=np.float32).reshape(400, 3)
    prefix = gpuload.save_checkpoint(str(tmp_path / "m.ckpt"), {"a": a, "emb": emb})
    data = prefix + ".data-00000-of-00001"
    reader = gpuload.load_checkpoint(prefix)
    os.truncate(data, reader.bundle.entry("emb").offset + 100)
    with pytest.raises(errors.GpuloadError) as by_reader:
        reader.get_tensor("emb")
    for verify in (True, False):  # named from the chunk's CRC spans, or from its copies
        with gpuload.config.set(verify_crc=verify), pytest.raises(errors.GpuloadError) as by_load:
            gpuload.load(reader.bundle, ["emb"])
        for e in (by_load.value, by_reader.value):
            assert type(e) is errors.TruncatedCheckpointError
            assert e.tensor == "emb" and e.path == data
        assert str(by_load.value) == str(by_reader.value)
    with pytest.raises(errors.TruncatedCheckpointError) as both:
        gpuload.load(reader.bundle, ["a", "emb"])  # one chunk holds both
    assert both.value.tensor == "a" and f"{data}: tensor 'a' and 1 more: expected " in str(both.value)
    reader.close()


def test_a_read_error_names_the_stored_slice(tmp_path):
    """``.tensor`` is the partitioned tensor; the message says which of its slices."""
    part = np.arange(40, dtype=np.float64).reshape(10, 4)
    prefix = gpuload.save_checkpoint(
        str(tmp_path / "m.ckpt"),
        {},
        slices={"part": [(Box((0, 0), (6, 4)), part[:6]), (Box((6, 0), (4, 4)), part[6:])]},
    )
    data = prefix + ".data-00000-of-00001"
    reader = gpuload.load_checkpoint(prefix)
    last = max(reader.bundle.data_entries(), key=lambda e: e.offset)
    tensor, part_of = reader.bundle.describe(last)
    os.truncate(data, last.offset + 2)
    with pytest.raises(errors.TruncatedCheckpointError) as info:
        reader.get_tensor(tensor)
    assert info.value.tensor == tensor and info.value.offset == last.offset
    assert str(info.value).startswith(f"{data}: tensor {tensor!r} slice {part_of}: expected {last.size} bytes")
    with pytest.raises(errors.TruncatedCheckpointError) as by_load:
        gpuload.load(reader.bundle, [tensor])  # one chunk, both slices: the first named
    first = reader.bundle.describe(reader.bundle.pieces(tensor)[0].entry)[1]
    assert by_load.value.tensor == tensor and f"tensor {tensor!r} slice {first} and 1 more: " in str(by_load.value)
    reader.close()


def test_a_corrupt_string_slice_names_the_slice(tmp_path):
    text = np.array([b"a", b"bb", b"ccc", b"dddd"], dtype=object)
    prefix = gpuload.save_checkpoint(
        str(tmp_path / "m.ckpt"), {}, slices={"text": [(Box((0,), (2,)), text[:2]), (Box((2,), (2,)), text[2:])]}
    )
    with Bundle.open(prefix) as b:
        entry = b.pieces("text")[1].entry
    _flip(prefix + ".data-00000-of-00001", entry.offset)  # the first length: the length checksum fails
    with pytest.raises(errors.ChecksumError, match=r"string tensor slice \[2:4\]: the length checksum") as info:
        gpuload.load_checkpoint(prefix).get_tensor("text")
    assert info.value.tensor == "text"


def test_shard_pread_counts_bytes_whatever_the_buffer_format(tmp_path):
    path = tmp_path / "f.bin"
    values = np.arange(6, dtype=np.float64)
    path.write_bytes(values.tobytes())
    with ShardFiles([str(path)]) as files:
        out = np.zeros(4, np.float64)
        files.pread(0, 8, memoryview(out), tensor="t")  # 4 elements, 32 bytes
        np.testing.assert_array_equal(out, values[1:5])
        with pytest.raises(errors.TruncatedCheckpointError) as info:
            files.pread(0, 24, memoryview(np.zeros(4, np.float64)), tensor="t")  # 24 of 32 bytes there
        assert info.value.tensor == "t" and "expected 32 bytes at offset 24, found 24" in str(info.value)


def test_an_io_error_names_the_file_and_the_tensor(ckpt, monkeypatch):
    prefix, data = ckpt
    reader = gpuload.load_checkpoint(prefix)

    def eio(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", eio)
    with pytest.raises(errors.ShardReadError) as by_reader:
        reader.get_tensor("part")
    with pytest.raises(errors.ShardReadError) as by_load:
        gpuload.load(reader.bundle, ["part"])
    for e in (by_reader.value, by_load.value):
        assert type(e) is errors.ShardReadError and e.errno == errno.EIO and e.filename == data
        assert e.tensor == "part" and "(tensor 'part' slice [0:6, 0:4]" in str(e)
    reader.close()
