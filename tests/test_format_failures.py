"""Each failure kind is built in one place: a load and a reader report one bad file alike.

A corrupt entry, a truncated data file and a data file that is not a regular file give
the same error class, the same message and the same ``tensor``/``offset`` whether they
are found by ``gpuload.load`` (plan, reader threads, streaming CRC) or by
``CheckpointReader.get_tensor`` (the bundle's whole-entry reads), and whether found when
the checkpoint is opened or while it is read.
"""

from __future__ import annotations

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
        files.read_into(0, 0, [bytearray(16)])
    assert (
        str(by_reader.value)
        == str(by_load_reader.value)
        == f"{data}: checkpoint data file is a FIFO (named pipe), not a regular file"
    )


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
