"""The columnar (vectorised) index path of ``Bundle.open`` (``gpuload/format/fastindex.py``).

The per-entry code is the reference: for any index, the fast path must either give the
same bundle (same names, same entries, same partitioned pieces) or hand over to the
reference, which then gives the same result or raises. And a 10^6-entry index opens in
seconds with peak memory below 4x the index size.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from format_helpers import block_ranges, copy_golden, fix_block_crcs, golden_checkpoints, overwrite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuload.format.index as index_mod
from gpuload.errors import CheckpointError
from gpuload.format import Bundle, fastindex, proto
from gpuload.format.crc import crc32c, mask
from gpuload.format.index import data_filename
from gpuload.format.proto import decode_varint, encode_varint
from gpuload.format.sstable import _MAGIC_BYTES, FOOTER_SIZE, _BlockBuilder


def _snapshot(b: Bundle):
    n = len(b._key_off) - 1
    return {
        "names": b.names(),
        "len": len(b),
        "rows": [b._entry_at(r) for r in range(1, n)],
        "entries": {k: b.entry(k) for k in b.names()},
        "owner": dict(b._slice_owner),
        "pieces": {k: [(p.box, p.entry) for p in v] for k, v in b._pieces.items()},
        "data": sorted((e.key, e.shard_id, e.offset) for e in b.data_entries()),
    }


def _outcome(prefix, reference: bool):
    """``("ok", snapshot, fast?)`` or ``("error", type, message)``."""
    saved = index_mod.parse_table
    if reference:
        index_mod.parse_table = lambda *a, **k: None
    try:
        b = Bundle.open(prefix)
        return ("ok", _snapshot(b), b._data is not None)
    except CheckpointError as e:
        return ("error", type(e), str(e))
    finally:
        index_mod.parse_table = saved


def _same(prefix):
    fast = _outcome(prefix, False)
    ref = _outcome(prefix, True)
    assert fast[:2] == ref[:2] and (fast[0] == "ok" or fast[2] == ref[2])
    return fast


@pytest.mark.parametrize("name", ["dtypes", "partitioned_save", "sharded", "seed_example", "keras_tf2"])
def test_golden_checkpoints_take_the_fast_path_and_agree(name):
    prefix = golden_checkpoints() / name
    out = _same(prefix)
    assert out[0] == "ok" and out[2], "a golden (TF-written) index must not need the per-entry path"


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast")
    for target in ("dtypes", "partitioned_save", "sharded"):
        copy_golden(target, d)
    return d


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(["dtypes", "partitioned_save", "sharded"]),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_fuzzed_index_fast_and_reference_agree(fuzz_dir, target, edits):
    d = fuzz_dir / target
    index = d / "model.ckpt.index"
    original = (golden_checkpoints() / target / "model.ckpt.index").read_bytes()
    data = bytearray(original)
    blocks = block_ranges(original)
    for pos, val in edits:  # mostly inside blocks, CRCs fixed: the entry decoders get exercised
        lo, hi = blocks[pos % len(blocks)]
        data[lo + pos % max(1, hi - lo)] = val
    fix_block_crcs(data, blocks)
    overwrite(index, bytes(data))
    try:
        _same(d / "model.ckpt")
    finally:
        overwrite(index, original)


def _write(prefix: Path, rows, shard_bytes=1 << 12):
    from gpuload.format.sstable import TableWriter

    w = TableWriter()
    for k, v in rows:
        w.add(k, v)
    Path(str(prefix) + ".index").write_bytes(w.finish())
    with open(data_filename(str(prefix), 0, 1), "wb") as f:
        f.truncate(shard_bytes)


def _tag(field, wt):
    return encode_varint(field << 3 | wt)


@pytest.mark.parametrize(
    "value,fast",
    [
        (proto.encode_entry(1, (2, 3), 0, 0, 24, 7), True),
        (proto.encode_entry(1, (), 0, 8, 4), True),  # scalar: empty shape message
        (proto.encode_entry(1, (0, 5), 0, 0, 0), True),  # empty tensor, 12 00 dim
        (proto.encode_entry(7, (3,), 0, 0, 3 + 4 + 3), True),  # DT_STRING
        (proto.encode_entry(1, (2,), 0, 0, 8)[2:] + proto.encode_entry(1, ())[:2], False),  # fields out of order
        (proto.encode_entry(1, (2,), 0, 0, 8) + _tag(1, 0) + b"\x01", False),  # dtype again: the last wins
        (proto.encode_entry(1, (2,), 0, 0, 8) + _tag(9, 0) + b"\x05", False),  # unknown field
        (proto.encode_entry(1, (2,), 0, 0, 8) + _tag(200, 2) + b"\x00", False),  # two-byte tag
        (b"\x08\x01\x12\x06\x12\x04\x08\x02\x10\x01\x28\x08", False),  # a Dim with a name field
        (b"\x08\x01\x12\x02\x18\x01", False),  # unknown_rank -> error in both
        (b"\x08\x01\x12\x04\x12\x02\x08\x02\x28\x08\x12\x02\x12\x00", False),  # shape in two parts: merged
        (b"\x08\x81\x80\x80\x80\x10\x12\x04\x12\x02\x08\x02\x28\x08", True),  # dtype varint beyond 32 bits
        (proto.encode_entry(1, (2,), 0, 0, 9), True),  # wrong size -> error
        (proto.encode_entry(1, (2,), 1, 0, 8), True),  # shard out of range -> error
        (proto.encode_entry(1, (2,), 0, 1 << 20, 8), True),  # past the end of the shard -> error
        (proto.encode_entry(1, (1 << 40, 1 << 30), 0, 0, 8), False),  # too many elements -> error
        (proto.encode_entry(1, (-1,), 0, 0, 8), True),  # negative dim -> error
        (proto.encode_entry(150, (2,), 0, 0, 8), True),  # bad dtype -> error
        (proto.encode_entry(1, (2,), 0, 0, 8) + b"\x35\x01\x02", True),  # truncated fixed32 -> error
        (b"\x08\x01\x20" + b"\xff" * 10 + b"\x01", True),  # overlong varint -> error
    ],
)
def test_unusual_and_bad_entries(tmp_path, value, fast):
    rows = [(b"", proto.encode_header(1)), (b"a", proto.encode_entry(1, (1,), 0, 0, 4)), (b"b", value)]
    _write(tmp_path / "m", rows)
    _same(tmp_path / "m")  # the fast path never accepts what the reference rejects
    ok, unusual, bad, _, _ = fastindex.decode_entries(value, np.zeros(1, np.int64), np.array([len(value)]), 1)
    assert bool(unusual[0]) != fast, "expected the usual layout" if fast else "expected the per-entry decoder"


def test_partitioned_and_orphan_slice_entries(tmp_path):
    from gpuload.format.keys import encode_tensor_name_slice

    s0 = encode_tensor_name_slice("t", [(0, 2)])
    s1 = encode_tensor_name_slice("t", [(2, 2)])
    orphan = encode_tensor_name_slice("u", [(0, 1)])
    rows = sorted(
        [
            (b"", proto.encode_header(1)),
            (b"t", proto.encode_entry(1, (4,), slices=[[(0, 2)], [(2, 2)]])),
            (s0, proto.encode_entry(1, (2,), 0, 0, 8)),
            (s1, proto.encode_entry(1, (2,), 0, 8, 8)),
            (orphan, proto.encode_entry(1, (1,), 0, 16, 4)),
            (b"v", proto.encode_entry(1, (1,), 0, 20, 4)),
        ]
    )
    _write(tmp_path / "m", rows)
    out = _same(tmp_path / "m")
    assert out[0] == "ok" and out[2]
    snap = out[1]
    assert snap["names"] == ["t", "v"] and snap["len"] == 2
    assert [p[0] for p in snap["pieces"]["t"]] == [index_mod.Box((0,), (2,)), index_mod.Box((2,), (2,))]
    b = Bundle.open(tmp_path / "m")
    assert orphan.decode("utf-8", "surrogateescape") not in b and "t" in b and "v" in b
    assert b.tensor_of(b.pieces("t")[1].entry) == "t slice [2:4]"


def test_names_decode_like_each_key_alone(tmp_path):
    rng = np.random.default_rng(5)
    keys = set()
    while len(keys) < 300:
        keys.add(bytes(rng.integers(1, 256, int(rng.integers(1, 6)), dtype=np.uint8)))
    keys.discard(b"")
    rows = [(b"", proto.encode_header(1))] + [(k, proto.encode_entry(1, (1,), 0, 0, 4)) for k in sorted(keys)]
    _write(tmp_path / "m", rows)
    b = Bundle.open(tmp_path / "m")
    assert b._data is not None
    public = [k for k in sorted(keys) if k[0] != 0]
    assert b.names() == [k.decode("utf-8", "surrogateescape") for k in public]
    for k in public[:50]:
        assert b.entry(k.decode("utf-8", "surrogateescape")).key == k.decode("utf-8", "surrogateescape")
    assert "\ud800" not in b  # a lone surrogate cannot be encoded: simply not there
    # every ASCII byte present in the keys: the per-key fallback
    rows = [(b"", proto.encode_header(1))] + [
        (bytes([c]) + b"x", proto.encode_entry(1, (1,), 0, 0, 4)) for c in range(1, 128)
    ]
    _write(tmp_path / "n", rows)
    assert Bundle.open(tmp_path / "n").names() == [chr(c) + "x" for c in range(1, 128)]


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(min_size=0, max_size=12), st.sampled_from([5, 10]))
def test_varints_match_the_scalar_decoder(buf, nbytes):
    d = np.frombuffer(buf + b"\x00", np.uint8)  # one readable byte past the limit
    value, nxt, bad = fastindex._varints(d, np.zeros(1, np.int64), np.array([len(buf)]), nbytes)
    try:
        v, p = decode_varint(buf, 0, len(buf), max_bytes=nbytes)
    except CheckpointError:
        assert bad[0]
    else:
        assert not bad[0] and int(value[0]) == v and int(nxt[0]) == p


# --- a 10^6-entry index -------------------------------------------------------------------


_ZERO_CRC = mask(crc32c(bytes(8)))


def _big_index(prefix: str, n: int) -> int:
    """Write a valid TF-layout index of ``n`` float32[2] tensors ``v/0000000``... fast (NumPy).

    Blocks of 4096 entries, restart interval 16, the last key of each block as its index
    key; offsets start at 2**21 so every entry has the same size. Returns the index size.
    """
    width = 7
    ids = np.arange(n)
    digits = (ids[:, None] // 10 ** np.arange(width - 1, -1, -1)) % 10 + ord("0")
    keys = np.concatenate([np.full((n, 2), [ord("v"), ord("/")]), digits], axis=1).astype(np.uint8)
    klen = keys.shape[1]
    diff = np.ones((n, klen), bool)
    diff[1:] = keys[1:] != keys[:-1]
    shared = np.argmax(diff, axis=1)
    shared[np.arange(n) % 16 == 0] = 0
    offset = (1 << 21) + 8 * ids
    head = bytes.fromhex("080112041202080220")  # dtype float, shape [2], offset tag
    var = np.stack([(offset >> (7 * k)) & 0x7F for k in range(4)], axis=1) | np.array([0x80, 0x80, 0x80, 0])
    tail = bytes.fromhex("280835") + _ZERO_CRC.to_bytes(4, "little")  # the data file is zeros
    vlen = len(head) + 4 + len(tail)
    ns = klen - shared
    size = 3 + ns + vlen
    ends = np.cumsum(size)
    starts = ends - size
    flat = np.zeros(int(ends[-1]), np.uint8)
    flat[starts] = shared
    flat[starts + 1] = ns
    flat[starts + 2] = vlen
    col = np.arange(klen)
    m = col[None, :] >= shared[:, None]
    rowpos = (starts + 3 - shared)[:, None] + col[None, :]
    flat[rowpos[m]] = keys[m]
    vstart = starts + 3 + ns
    for j, byte in enumerate(head):
        flat[vstart + j] = byte
    for j in range(4):
        flat[vstart + len(head) + j] = var[:, j]
    for j, byte in enumerate(tail):
        flat[vstart + len(head) + 4 + j] = byte
    header = proto.encode_header(1)
    # the header entry goes in a block of its own (any block split is a valid table)
    blocks = [(b"", _raw_entry(0, b"", header) + b"\x00" * 4 + b"\x01\x00\x00\x00")]
    per = 4096
    for b0 in range(0, n, per):
        b1 = min(n, b0 + per)
        body = flat[starts[b0] : ends[b1 - 1]].tobytes()
        restarts = (starts[b0:b1:16] - starts[b0]).astype("<u4").tobytes()
        blocks.append((keys[b1 - 1].tobytes(), body + restarts + len(range(b0, b1, 16)).to_bytes(4, "little")))
    out = _assemble(blocks)
    with open(prefix + ".index", "wb") as f:
        f.write(out)
    with open(data_filename(prefix, 0, 1), "wb") as f:
        f.truncate((1 << 21) + 8 * n)  # sparse
    return len(out)


def _raw_entry(shared: int, suffix: bytes, value: bytes) -> bytes:
    return encode_varint(shared) + encode_varint(len(suffix)) + encode_varint(len(value)) + suffix + value


def _assemble(blocks) -> bytes:
    """A table from ``(index key, block contents)`` pairs: trailers, index block, footer."""
    out = bytearray()
    index = _BlockBuilder(1)
    for last_key, contents in blocks:
        handle = encode_varint(len(out)) + encode_varint(len(contents))
        out += contents + b"\x00" + mask(crc32c(contents + b"\x00")).to_bytes(4, "little")
        index.add(last_key, handle)
    meta = _BlockBuilder(16).finish()
    meta_handle = encode_varint(len(out)) + encode_varint(len(meta))
    out += meta + b"\x00" + mask(crc32c(meta + b"\x00")).to_bytes(4, "little")
    idx = index.finish()
    index_handle = encode_varint(len(out)) + encode_varint(len(idx))
    out += idx + b"\x00" + mask(crc32c(idx + b"\x00")).to_bytes(4, "little")
    footer = meta_handle + index_handle
    out += footer + b"\x00" * (FOOTER_SIZE - 8 - len(footer)) + _MAGIC_BYTES
    return bytes(out)


def _measure(prefix):
    t = time.perf_counter()
    b = Bundle.open(prefix)
    seconds = time.perf_counter() - t
    del b
    tracemalloc.start()
    try:
        b = Bundle.open(prefix)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return seconds, peak, b


def test_big_index_builder_matches_the_reference(tmp_path):
    prefix = str(tmp_path / "m")
    _big_index(prefix, 5000)
    out = _same(prefix)
    assert out[0] == "ok" and out[2] and out[1]["len"] == 5000
    e = out[1]["entries"]["v/0004999"]
    assert (e.dtype, e.shape, e.offset, e.size, e.crc32c) == (1, (2,), (1 << 21) + 8 * 4999, 8, _ZERO_CRC)


@pytest.mark.slow
def test_million_entry_index_opens_fast_in_little_memory(tmp_path):
    prefix = str(tmp_path / "m")
    n = 10**6
    size = _big_index(prefix, n)
    seconds, peak, b = _measure(prefix)
    print(
        f"\n10^6 entries: index {size / 2**20:.1f} MiB, open {seconds:.2f} s, "
        f"tracemalloc peak {peak / 2**20:.1f} MiB ({peak / size:.2f}x)"
    )
    # generous time guard for a loaded CI machine (measured ~0.5-1 s on a 2-core VM);
    # the memory bound is the issue's, measured by tracemalloc (which counts NumPy's)
    assert seconds < 30
    assert peak < 4 * size
    assert len(b) == n and b._data is not None and not b._objs  # the columnar path, nothing decoded yet
    names = b.names()
    assert len(names) == n and names[0] == "v/0000000" and names[-1] == "v/0999999"
    e = b.entry("v/0123456")
    assert (e.shape, e.offset, e.size) == ((2,), (1 << 21) + 8 * 123456, 8)
    assert b.read_tensor("v/0999999").tolist() == [0.0, 0.0]
    # linear, not quadratic: a tenth of the entries costs about a tenth of the time
    small = str(tmp_path / "s")
    _big_index(small, n // 10)
    t_small = min(_measure(small)[0] for _ in range(3))
    t_big = min(seconds, _measure(prefix)[0])
    print(f"10^5 entries: {t_small:.3f} s; 10^6: {t_big:.3f} s")
    assert t_big < 30 * t_small + 1.0


def test_wrong_value_never_served_after_a_lazy_decode(tmp_path):
    """Entries decoded on demand are exactly what the reference decodes (5,000 of them)."""
    prefix = str(tmp_path / "m")
    _big_index(prefix, 5000)
    fast = Bundle.open(prefix)
    assert fast._data is not None and not fast._objs
    ref = _outcome(prefix, True)[1]
    assert [fast._entry_at(r) for r in range(1, 5001)] == ref["rows"]


def _one_block_table(prefix: Path, entries, restarts=(0,)):
    body = b"".join(entries)
    contents = body + b"".join(r.to_bytes(4, "little") for r in restarts) + len(restarts).to_bytes(4, "little")
    Path(str(prefix) + ".index").write_bytes(_assemble([(b"\xff", contents)]))
    with open(data_filename(str(prefix), 0, 1), "wb") as f:
        f.truncate(64)


def test_hostile_share_count_is_refused_without_allocating(tmp_path):
    v = proto.encode_entry(1, (1,), 0, 0, 4)
    entries = [_raw_entry(0, b"", proto.encode_header(1)), _raw_entry(0, b"a", v), _raw_entry(0xFFFFFFF0, b"b", v)]
    _one_block_table(tmp_path / "m", entries)
    assert fastindex.parse_table((tmp_path / "m.index").read_bytes()) is None
    tracemalloc.start()
    try:
        out = _same(tmp_path / "m")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out[0] == "error" and "shares" in out[2]
    assert peak < 1 << 20


def test_non_canonical_prefix_sharing_is_left_to_the_reference(tmp_path):
    v = proto.encode_entry(1, (1,), 0, 0, 4)
    # "ab" then "ac" written without sharing the common "a": valid, but not what TF writes
    entries = [_raw_entry(0, b"", proto.encode_header(1)), _raw_entry(0, b"ab", v), _raw_entry(0, b"ac", v)]
    _one_block_table(tmp_path / "m", entries)
    out = _same(tmp_path / "m")
    assert out[0] == "ok" and out[1]["names"] == ["ab", "ac"]
    # and equal or decreasing keys are errors in both
    for second in (b"ab", b"aa", b"a"):
        entries[2] = _raw_entry(0, second, v)
        _one_block_table(tmp_path / "m", entries)
        assert _same(tmp_path / "m")[0] == "error"


def test_long_restart_intervals_go_to_the_reference(tmp_path):
    from gpuload.format.sstable import TableWriter

    w = TableWriter(restart_interval=100)
    w.add(b"", proto.encode_header(1))
    for i in range(300):
        w.add(b"t%04d" % i, proto.encode_entry(1, (1,), 0, 0, 4))
    data = w.finish()
    assert fastindex.parse_table(data) is None
    Path(str(tmp_path / "m") + ".index").write_bytes(data)
    with open(data_filename(str(tmp_path / "m"), 0, 1), "wb") as f:
        f.truncate(64)
    out = _same(tmp_path / "m")
    assert out[0] == "ok" and not out[2] and out[1]["len"] == 300
