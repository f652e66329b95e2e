"""save_checkpoint: round trips, shards, sliced saves, the state file, and byte-compatibility with TF."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from format_helpers import GOLDEN_NAMES, bits

from gpuload.format import Bundle, latest_checkpoint, list_variables, load_checkpoint, save_checkpoint
from gpuload.format.crc import crc32c, mask
from gpuload.format.slices import Box
from gpuload.format.sstable import read_table_file


def _all_dtypes(rng):
    def strings(shape):
        n = int(np.prod(shape))
        flat = [bytes(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8)) for _ in range(n)]
        a = np.empty(len(flat), dtype=object)
        a[:] = flat
        return a.reshape(shape)

    f = rng.standard_normal((5, 7))
    t = {
        "f32": f.astype(np.float32),
        "f64": f,
        "f16": f.astype(np.float16),
        "bf16": f.astype(ml_dtypes.bfloat16),
        "i8": rng.integers(-128, 128, (3, 4), dtype=np.int8),
        "i16": rng.integers(-9999, 9999, (3, 4), dtype=np.int16),
        "i32": rng.integers(-(2**31), 2**31, (3, 4), dtype=np.int32),
        "i64": rng.integers(-(2**62), 2**62, (9,)),
        "u8": rng.integers(0, 256, (4,), dtype=np.uint8),
        "u16": rng.integers(0, 65536, (4,), dtype=np.uint16),
        "u32": rng.integers(0, 2**32, (4,), dtype=np.uint32),
        "u64": rng.integers(0, 2**63, (4,), dtype=np.uint64),
        "bool": rng.random((3, 3)) > 0.5,
        "c64": (f + 1j * f[::-1]).astype(np.complex64),
        "c128": f + 2j * f,
        "str": strings((2, 3)),
        "str_scalar": np.array(b"hello\x00world", dtype=object),
        "str_empty": strings((0, 3)),
        "scalar": np.float32(3.5),
        "scalar_i": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 4), np.float32),
        "empty_mid": np.zeros((3, 0, 2), np.float64),
        "nan_payload": np.array([0x7FC00001, 0xFFC12345, 0x80000000], np.uint32).view(np.float32),
        "rank5": rng.standard_normal((2, 1, 3, 1, 2)).astype(np.float32),
        "noncontig": f[:, ::2],
        "bigendian": f.astype(">f8"),
        "scope/with/slashes": np.arange(3, dtype=np.int32),
        "ünïcode": np.arange(2, dtype=np.int8),
    }
    return t


def _check_equal(got, want):
    want = np.asarray(want)
    if want.dtype == object:
        assert got.dtype == object and got.shape == want.shape
        assert got.reshape(-1).tolist() == [bytes(x) for x in want.reshape(-1).tolist()]
        return
    assert got.shape == want.shape
    assert got.dtype == want.dtype.newbyteorder("=")
    assert np.array_equal(bits(got), bits(want.astype(want.dtype.newbyteorder("="))))


def test_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tensors = _all_dtypes(rng)
    prefix = save_checkpoint(tmp_path / "model.ckpt", tensors)
    assert prefix == str(tmp_path / "model.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt.data-00000-of-00001", "model.ckpt.index"]
    with load_checkpoint(tmp_path) as r:
        assert sorted(r.get_variable_to_shape_map()) == sorted(tensors)
        for name, want in tensors.items():
            _check_equal(r.get_tensor(name), want)
        names = r.get_variable_to_dtype_name_map()
    assert names["bf16"] == "bfloat16" and names["str"] == "string" and names["f16"] == "float16"
    b = Bundle.open(prefix)
    for e in b.data_entries():
        b.verify_entry(e)
    assert b.entry("empty").crc32c == mask(0) and b.entry("empty").size == 0
    assert b.entry("f32").crc32c == mask(crc32c(tensors["f32"]))
    # data laid out in the order given, back to back
    offsets = [b.entry(n).offset for n in tensors]
    sizes = [b.entry(n).size for n in tensors]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]


def test_str_and_unicode_inputs(tmp_path):
    save_checkpoint(tmp_path / "m", {"s": np.array(["ab", "ü"]), "b": np.array([b"x", b"yz"]), "one": "txt"})
    with load_checkpoint(tmp_path / "m") as r:
        assert r.get_tensor("s").tolist() == [b"ab", "ü".encode()]
        assert r.get_tensor("b").tolist() == [b"x", b"yz"]
        assert r.get_tensor("one")[()] == b"txt"


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "m", {"": np.zeros(1)})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "m", {"\x00x": np.zeros(1)})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "m", {"t": np.zeros(2, dtype="datetime64[s]")})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m", {"t": np.array([1, "x"], dtype=object)})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, {"t": np.zeros(1)})
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_several_shards(tmp_path):
    tensors = {f"t{i}": np.full((i + 1, 10), i, np.float32) for i in range(6)}  # 40..240 bytes
    prefix = save_checkpoint(tmp_path / "m", tensors, max_shard_bytes=300)
    b = Bundle.open(prefix)
    assert b.num_shards > 1
    files = sorted(f for f in os.listdir(tmp_path) if ".data-" in f)
    assert files == [f"m.data-{i:05d}-of-{b.num_shards:05d}" for i in range(b.num_shards)]
    for i in range(b.num_shards):
        assert b.shard_size(i) <= 300 or len([n for n in b.names() if b.entry(n).shard_id == i]) == 1
    for n, v in tensors.items():
        assert np.array_equal(b.read_tensor(n), v)
    # shard order follows the given order
    assert [b.entry(n).shard_id for n in tensors] == sorted(b.entry(n).shard_id for n in tensors)


def test_sliced_save_reads_back(tmp_path):
    rng = np.random.default_rng(3)
    full = rng.standard_normal((10, 6)).astype(np.float32)
    cols = rng.integers(0, 100, (4, 9)).astype(np.int64)
    slices = {
        "emb": [(Box((0, 0), (4, 6)), full[:4]), (Box((4, 0), (3, 6)), full[4:7]), (Box((7, 0), (3, 6)), full[7:])],
        "cols": [(Box((0, 0), (4, 3)), cols[:, :3]), (Box((0, 3), (4, 6)), cols[:, 3:])],
        "whole": [(Box((0,), (5,)), np.arange(5, dtype=np.int32))],  # a full slice is a plain entry
    }
    prefix = save_checkpoint(tmp_path / "m", {"plain": np.ones(2, np.float32)}, slices=slices, max_shard_bytes=100)
    assert list_variables(prefix) == [("cols", [4, 9]), ("emb", [10, 6]), ("plain", [2]), ("whole", [5])]
    b = Bundle.open(prefix)
    assert len(b.pieces("emb")) == 3 and b.entry("emb").slices[1] == Box((4, 0), (3, 6))
    assert not b.entry("whole").slices
    assert len({p.entry.shard_id for p in b.pieces("emb")}) > 1  # slices spread over shards
    with load_checkpoint(prefix) as r:
        assert np.array_equal(r.get_tensor("emb"), full)
        assert np.array_equal(r.get_tensor("cols"), cols)
        assert np.array_equal(r.get_slice("emb", Box((3, 1), (5, 4))), full[3:8, 1:5])
        assert np.array_equal(r.get_rows("emb", 2, 9), full[2:9])
        assert np.array_equal(r.get_slice("cols", (slice(1, 3), slice(2, 5))), cols[1:3, 2:5])
    # keys: slice keys are stored, and hidden
    keys = [k for k, _ in read_table_file(prefix + ".index")]
    assert sum(k.startswith(b"\x00emb\x00\x01") for k in keys) == 3


def test_sliced_save_partial_coverage(tmp_path):
    part = np.arange(8, dtype=np.float32).reshape(2, 4)
    prefix = save_checkpoint(tmp_path / "m", slices={"p": ((6, 4), [(Box((2, 0), (2, 4)), part)])})
    with load_checkpoint(prefix) as r:
        assert r.get_variable_to_shape_map() == {"p": [6, 4]}
        assert np.array_equal(r.get_rows("p", 2, 4), part)
        with pytest.raises(ValueError, match="sufficient slices"):
            r.get_tensor("p")


def test_sliced_save_rejects_bad_slices(tmp_path):
    a = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        save_checkpoint(tmp_path / "m", slices={"x": [(Box((0, 0), (3, 2)), a), (Box((2, 0), (3, 2)), a)]})
    with pytest.raises(ValueError, match="shape"):
        save_checkpoint(tmp_path / "m", slices={"x": [(Box((0, 0), (2, 2)), a)]})
    with pytest.raises(ValueError, match="both"):
        save_checkpoint(tmp_path / "m", {"x": a}, slices={"x": [(Box((0, 0), (3, 2)), a)]})


def test_state_file_like_saver(tmp_path):
    for step in (100, 200):
        save_checkpoint(tmp_path / f"model.ckpt-{step}", {"w": np.full(3, step, np.float32)})
    assert (tmp_path / "checkpoint").read_text() == (
        'model_checkpoint_path: "model.ckpt-200"\n'
        'all_model_checkpoint_paths: "model.ckpt-100"\n'
        'all_model_checkpoint_paths: "model.ckpt-200"\n'
    )
    assert latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-200")
    save_checkpoint(tmp_path / "other", {"w": np.zeros(1)}, update_state=False)
    assert latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-200")


def test_overwrite_is_atomic_and_clean(tmp_path):
    save_checkpoint(tmp_path / "m", {"a": np.zeros(3)})
    save_checkpoint(tmp_path / "m", {"b": np.ones(2)})
    assert list_variables(tmp_path / "m") == [("b", [2])]
    assert not [f for f in os.listdir(tmp_path) if "tempstate" in f or ".tmp" in f]


def test_big_array_crosses_write_pieces(tmp_path, monkeypatch):
    import gpuload.format.writer as W

    monkeypatch.setattr(W, "WRITE_PIECE_BYTES", 1000)  # exercise the piecewise path cheaply
    a = np.arange(10000, dtype=np.float32)
    prefix = save_checkpoint(tmp_path / "m", {"a": a})
    b = Bundle.open(prefix)
    assert b.entry("a").crc32c == mask(crc32c(a.tobytes()))
    assert np.array_equal(b.read_tensor("a"), a)


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_resave_golden_is_byte_identical(golden_ckpts, tmp_path, name):
    """Same tensors in the same order -> the same entries, data bytes and even index bytes as TF."""
    golden = Bundle.open(golden_ckpts / name)
    order = sorted(golden.names(), key=lambda n: min((p.entry.shard_id, p.entry.offset) for p in golden.pieces(n)))
    tensors, slices = {}, {}
    for n in order:
        e = golden.entry(n)
        if e.slices:
            slices[n] = (e.shape, [(p.box, golden.read_piece(p)) for p in golden.pieces(n)])
        else:
            tensors[n] = golden.read_tensor(n)
    ours = Bundle.open(save_checkpoint(tmp_path / "model.ckpt", tensors, slices=slices))
    assert ours.names() == golden.names()
    for n in golden.names():
        g, o = golden.entry(n), ours.entry(n)
        assert (o.dtype, o.shape, o.size, o.crc32c, o.slices) == (g.dtype, g.shape, g.size, g.crc32c, g.slices)
        for gp, op in zip(golden.pieces(n), ours.pieces(n)):
            assert (op.box, op.entry.key, op.entry.size, op.entry.crc32c) == (
                gp.box,
                gp.entry.key,
                gp.entry.size,
                gp.entry.crc32c,
            )
    if golden.num_shards == 1:
        assert Path(ours.shard_path(0)).read_bytes() == Path(golden.shard_path(0)).read_bytes()
        assert Path(ours.prefix + ".index").read_bytes() == Path(golden.prefix + ".index").read_bytes()


def test_reader_handles_full_extents_in_stored_slices(tmp_path):
    """TF writes a '-' dimension as an empty Extent and keys it with length -1."""
    from format_helpers import entry_kwargs, rewrite_index

    from gpuload.format import proto
    from gpuload.format.keys import encode_tensor_name_slice

    a = np.arange(24, dtype=np.int32).reshape(6, 4)
    boxes = [Box((0, 0), (2, 4)), Box((2, 0), (4, 4))]
    prefix = save_checkpoint(tmp_path / "m", slices={"t": [(b, a[b.as_slices()]) for b in boxes]})

    def edit(rows):
        out = []
        for k, v in rows:
            if k == b"t":
                kw = entry_kwargs(v)
                kw["slices"] = [[(b.start[0], b.shape[0]), (0, None)] for b in boxes]
                v = proto.encode_entry(**kw)
            elif k.startswith(b"\x00"):
                b = next(b for b in boxes if encode_tensor_name_slice("t", b) == k)
                k = encode_tensor_name_slice("t", [(b.start[0], b.shape[0]), (0, -1)])
            out.append((k, v))
        return out

    rewrite_index(prefix, edit)
    with load_checkpoint(prefix) as r:
        assert r.bundle.entry("t").slices == tuple(boxes)
        assert np.array_equal(r.get_tensor("t"), a)
        assert np.array_equal(r.get_rows("t", 1, 5), a[1:5])
