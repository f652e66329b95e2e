"""CRC32C, dtypes, slice keys and protobuf wire coding: the format layer's building blocks."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuload.errors import CheckpointFormatError, UnsupportedCheckpointError
from gpuload.format import dtypes as D
from gpuload.format import proto
from gpuload.format.crc import crc32c, crc32c_combine, mask, unmask
from gpuload.format.keys import decode_tensor_name_slice, encode_tensor_name_slice
from gpuload.format.slices import Box
from gpuload.format.sstable import TableWriter, read_table

# --- crc ------------------------------------------------------------------------------


def test_crc32c_test_vector_and_buffers():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    data = bytes(range(256)) * 200  # above the ctypes threshold
    expect = crc32c(data)
    assert crc32c(bytearray(data)) == expect
    assert crc32c(memoryview(data)) == expect
    assert crc32c(np.frombuffer(data, np.uint8).copy()) == expect
    assert crc32c(np.frombuffer(data, np.float32).copy()) == expect
    assert crc32c(data[100:], crc32c(data[:100])) == expect
    with pytest.raises(ValueError):
        crc32c(np.zeros((4, 4), np.float32)[:, ::2])


def test_mask_matches_tensorflow():
    assert mask(0) == 0xA282EAD8  # the CRC of an empty tensor as stored
    for c in (0, 1, 0xFFFFFFFF, 0xE3069283, 0x12345678):
        assert unmask(mask(c)) == c
    assert mask(0xE3069283) != 0xE3069283


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=3000), st.integers(0, 2**32 - 1))
def test_crc32c_combine_equals_direct(data, split, seed):
    split = min(split, len(data))
    a, b = data[:split], data[split:]
    assert crc32c_combine(crc32c(a), crc32c(b), len(b)) == crc32c(data)


def test_crc32c_combine_many_chunks():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    cuts = sorted(rng.integers(0, data.size, 20).tolist()) + [data.size]
    crc, start = 0, 0
    for cut in cuts:
        crc = crc32c_combine(crc, crc32c(data[start:cut]), cut - start)
        start = cut
    assert crc == crc32c(data)


# --- dtypes ---------------------------------------------------------------------------

TF_NAMES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    8: "complex64",
    9: "int64",
    10: "bool",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    14: "bfloat16",
    15: "qint16",
    16: "quint16",
    17: "uint16",
    18: "complex128",
    19: "float16",
    22: "uint32",
    23: "uint64",
}


def test_dtype_table():
    for code, name in TF_NAMES.items():
        assert D.tf_name(code) == name
        dt = D.numpy_dtype(code)
        assert D.as_numpy_dtype(name) == dt
        if code not in (11, 12, 13, 15, 16):
            assert D.tf_code(dt) == code
    assert D.numpy_dtype(14) == np.dtype(ml_dtypes.bfloat16)
    assert D.numpy_dtype(7) == np.dtype(object)
    assert [D.numpy_dtype(c) for c in (11, 12, 15, 16, 13)] == [np.int8, np.uint8, np.int16, np.uint16, np.int32]
    assert D.itemsize(7) is None and D.itemsize(18) == 16 and D.itemsize(14) == 2
    assert D.is_memcpyable(1) and not D.is_memcpyable(7)


def test_as_numpy_dtype_forms():
    assert D.as_numpy_dtype("float") == np.float32
    assert D.as_numpy_dtype("half") == np.float16
    assert D.as_numpy_dtype("double") == np.float64
    assert D.as_numpy_dtype(ml_dtypes.bfloat16) == np.dtype(ml_dtypes.bfloat16)
    assert D.as_numpy_dtype(np.int64) == np.int64
    assert D.as_numpy_dtype(np.dtype(">f4")) == np.float32
    assert D.as_numpy_dtype("bool") == np.bool_
    for bad in ("floaty", "resource", "variant", "float32_ref", np.dtype("datetime64[s]")):
        with pytest.raises(ValueError):
            D.as_numpy_dtype(bad)


@pytest.mark.parametrize("code", [0, 20, 21, 24, 99, -1])
def test_unsupported_codes_name_the_code(code):
    with pytest.raises(UnsupportedCheckpointError, match=str(code)) as info:
        D.numpy_dtype(code)
    assert isinstance(info.value, ValueError)


# --- slice keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,hexed",
    [
        (0, "80"),
        (5, "85"),
        (63, "bf"),
        (-1, "7f"),
        (-64, "40"),
        (64, "c040"),
        (100, "c064"),
        (8192, "e02000"),
        (-65, "3fbf"),
        (2**63 - 1, "ffc07fffffffffffffff"),
        (-(2**63), "003f8000000000000000"),
    ],
)
def test_signed_num_increasing_golden(value, hexed):
    key = encode_tensor_name_slice("x", [(value, 1)])
    assert key == b"\x00x\x00\x01\x01\x01" + bytes.fromhex(hexed) + b"\x81"


def test_worked_example_and_full_dims():
    key = encode_tensor_name_slice("new_scope_2/var3", Box((20, 0), (20, 100)))
    assert key == bytes.fromhex("00") + b"new_scope_2/var3" + bytes.fromhex("0001 0102 94 94 80 c064")
    assert decode_tensor_name_slice(key) == ("new_scope_2/var3", [(20, 20), (0, 100)])
    full = encode_tensor_name_slice("a", [(0, None), (5, 5)])
    assert full == b"\x00a\x00\x01\x01\x02\x80\x7f\x85\x85"
    assert encode_tensor_name_slice("a\x00\xff", [(0, 1)]).startswith(b"\x00a\x00\xff\xc3\xbf\x00\x01")


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.text(min_size=1, max_size=20),
    st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=4),
)
def test_slice_key_round_trip(name, extents):
    key = encode_tensor_name_slice(name.encode("utf-8", "surrogatepass"), extents)
    got_name, got = decode_tensor_name_slice(key)
    assert got == [tuple(e) for e in extents]
    assert got_name.encode("utf-8", "surrogateescape") == name.encode("utf-8", "surrogatepass")


def test_slice_keys_sort_like_their_extents():
    vals = sorted({*range(-300, 300), *(2**k for k in range(63)), *(-(2**k) for k in range(64))})
    keys = [encode_tensor_name_slice("t", [(v, 1)]) for v in vals]
    assert keys == sorted(keys)


@settings(max_examples=300, deadline=1000, database=None)
@given(st.binary(max_size=40))
def test_decode_slice_key_garbage(data):
    try:
        decode_tensor_name_slice(data)
    except CheckpointFormatError:
        pass


# --- protobuf -------------------------------------------------------------------------


def test_entry_round_trip_and_tf_bytes():
    b = proto.encode_entry(1, (3,), 0, 2202, 12, 931675737)
    assert b.hex() == "0801120412020803209a11280c35593e8837"  # golden dtypes/b
    assert proto.encode_entry(1, ()) == bytes.fromhex("08011200")  # scalar: empty shape submessage
    assert proto.encode_entry(1, (0, 4)) == bytes.fromhex("0801 1206 1200 12020804")
    assert proto.encode_header() == bytes.fromhex("08011a020801")
    e = proto.decode_entry(proto.encode_entry(14, (5, 6), 2, 1 << 40, 60, 0xDEADBEEF, [[(0, 2), (0, None)]]))
    assert (e.dtype, e.shape.dims, e.shard_id, e.offset, e.size, e.crc32c) == (14, (5, 6), 2, 1 << 40, 60, 0xDEADBEEF)
    assert e.slices[0].extents == ((0, 2), (0, None))


def test_unknown_fields_of_every_wire_type_are_skipped():
    base = proto.encode_entry(1, (2,), 0, 8, 8, 77)
    extra = (
        bytes.fromhex("f801 05")  # field 31 varint
        + bytes.fromhex("f901")
        + b"12345678"  # field 31 fixed64
        + bytes.fromhex("fa01 03")
        + b"abc"  # field 31 length-delimited
        + bytes.fromhex("fb01 0801 0b 1000 0c fc01")  # group 31 holding a nested group 1
        + bytes.fromhex("fd01")
        + b"1234"  # field 31 fixed32
        + bytes.fromhex("0a02 0000")
    )  # dtype field with the wrong wire type: ignored
    e = proto.decode_entry(extra + base + extra)
    assert (e.dtype, e.shape.dims, e.offset, e.size, e.crc32c) == (1, (2,), 8, 8, 77)


def test_header_packed_and_unpacked_bad_consumers():
    packed = proto.encode_header(1, 0, 1, 0, [3, 4])
    h = proto.decode_header(packed)
    assert h.version.bad_consumers == (3, 4) and h.num_shards == 1
    unpacked = bytes.fromhex("0801 1a06 0801 1803 1804")
    assert proto.decode_header(unpacked).version.bad_consumers == (3, 4)
    neg = bytes.fromhex("08ffffffffffffffffff01")  # num_shards = -1 as a 10-byte varint
    assert proto.decode_header(neg).num_shards == -1


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("08"),  # truncated varint
        bytes.fromhex("08ffffffffffffffffffff01"),  # 11-byte varint
        bytes.fromhex("12 05 1203"),  # shape longer than the message
        bytes.fromhex("35 0102"),  # truncated fixed32
        bytes.fromhex("31 010203"),  # truncated fixed64
        bytes.fromhex("0f"),  # wire type 7
        bytes.fromhex("00"),  # field number 0
        bytes.fromhex("0c"),  # end-group without start
        bytes.fromhex("0b 0801"),  # unterminated group
        bytes.fromhex("12 04 12 02 08"),  # truncated inside a dim
    ],
)
def test_malformed_protos(data):
    with pytest.raises(CheckpointFormatError):
        proto.decode_entry(data)


@settings(max_examples=400, deadline=1000, database=None)
@given(st.binary(max_size=60))
def test_proto_decoders_never_crash(data):
    for fn in (proto.decode_entry, proto.decode_header):
        try:
            fn(data)
        except CheckpointFormatError:
            pass


# --- sstable ----------------------------------------------------------------------------


def test_table_round_trip_many_blocks():
    rows = [(f"key/{i:06d}".encode(), bytes([i % 256]) * (i % 300)) for i in range(3000)]
    w = TableWriter(block_size=4096)
    for k, v in rows:
        w.add(k, v)
    assert read_table(w.finish()) == rows


def test_table_writer_rejects_unsorted_keys():
    w = TableWriter()
    w.add(b"b", b"")
    with pytest.raises(ValueError):
        w.add(b"a", b"")
    with pytest.raises(ValueError):
        w.add(b"b", b"")
