"""Reading the golden checkpoints written by TensorFlow 2.21: the reader must agree exactly."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from format_helpers import GOLDEN_NAMES, bits, copy_golden, expected, golden_checkpoints

from gpuload.errors import CheckpointFormatError, CheckpointNotFoundError, UnsupportedCheckpointError
from gpuload.format import Bundle, CheckpointReader, latest_checkpoint, list_variables, load_checkpoint, load_variable
from gpuload.format.slices import Box
from gpuload.format.state import (
    get_checkpoint_state,
    parse_checkpoint_state,
    resolve_prefix,
    update_checkpoint_state,
)


def test_golden_dir_is_found():
    # fails (not skips) when the golden data is missing, unless GPULOAD_ALLOW_NO_GOLDEN=1
    assert golden_checkpoints().is_dir()


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_list_variables_matches_manifest(golden_ckpts, name):
    d = golden_ckpts / name
    manifest, _, _ = expected(d)
    assert list_variables(d) == [(m["name"], m["shape"]) for m in manifest]
    with load_checkpoint(d) as reader:
        names = reader.get_variable_to_dtype_name_map()
        assert names == {m["name"]: m["dtype"] for m in manifest}
        dtypes = reader.get_variable_to_dtype_map()
        for m in manifest:
            want = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "string": np.dtype(object)}.get(m["dtype"])
            assert dtypes[m["name"]] == (want if want is not None else np.dtype(m["dtype"]))
        assert reader.get_variable_to_shape_map() == {m["name"]: m["shape"] for m in manifest}


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_every_tensor_equals_expected(golden_ckpts, name):
    d = golden_ckpts / name
    manifest, arrays, strings = expected(d)
    with load_checkpoint(d) as reader:
        assert reader.verify_crc
        for m in manifest:
            got = reader.get_tensor(m["name"])
            assert got.shape == tuple(m["shape"])
            if m["dtype"] == "string":
                want = strings[m["name"]]
                assert got.dtype == object and got.shape == want.shape
                assert got.reshape(-1).tolist() == want.reshape(-1).tolist()
                assert all(type(x) is bytes for x in got.reshape(-1))
                continue
            want = arrays[m["name"]]
            if m["dtype"] == "bfloat16":
                assert got.dtype == ml_dtypes.bfloat16
                got = got.astype(np.float32)
            assert got.dtype == want.dtype
            assert np.array_equal(bits(got), bits(want)), m["name"]


def test_dtypes_specials(golden_ckpts):
    with load_checkpoint(golden_ckpts / "dtypes") as r:
        s = r.get_tensor("scalar_f32")
        assert isinstance(s, np.ndarray) and s.shape == () and s.dtype == np.float32
        assert r.get_tensor("empty_rows").shape == (0, 4)
        assert r.get_tensor("bool_t").dtype == np.bool_
        assert r.get_tensor("complex64_t").dtype == np.complex64
        assert r.has_tensor("inner/w") and not r.has_tensor("inner")


def test_latest_checkpoint_multi_step(golden_ckpts):
    d = golden_ckpts / "multi_step"
    assert latest_checkpoint(d) == str(d / "model.ckpt-200")
    assert latest_checkpoint(str(d)) == os.path.join(str(d), "model.ckpt-200")
    assert CheckpointReader(d).prefix.endswith("model.ckpt-200")
    _, arrays, _ = expected(d)
    assert np.array_equal(bits(load_variable(d, "layer/w")), bits(arrays["layer/w"]))
    older = load_variable(d / "model.ckpt-100", "layer/w")
    assert not np.array_equal(older, arrays["layer/w"])


def test_load_variable_strips_colon_zero_but_reader_does_not(golden_ckpts):
    d = golden_ckpts / "seed_example"
    v = load_variable(d, "old_scope_1/var1:0")
    assert v.shape == (20, 2)
    with load_checkpoint(d) as r, pytest.raises(CheckpointNotFoundError, match="old_scope_1/var1:0"):
        r.get_tensor("old_scope_1/var1:0")


def test_slice_keys_are_hidden_and_pieces_listed(golden_ckpts):
    b = Bundle.open(golden_ckpts / "partitioned_save")
    assert all(not n.startswith("\x00") for n in b.names())
    assert b.names() == ["deep/cube", "dense/kernel", "emb/table", "emb/uneven"]
    pieces = b.pieces("emb/uneven")
    assert [p.box for p in pieces] == [
        Box((0, 0), (26, 8)),
        Box((26, 0), (26, 8)),
        Box((52, 0), (26, 8)),
        Box((78, 0), (25, 8)),
    ]
    assert [p.entry.offset for p in pieces] == sorted(p.entry.offset for p in pieces)
    assert all(p.entry.key.startswith("\x00emb/uneven") for p in pieces)
    assert b.entry("dense/kernel").slices == (Box((0, 0), (30, 4)), Box((0, 4), (30, 4)), Box((0, 8), (30, 4)))
    assert b.pieces("dense/kernel")[0].entry.shape == (30, 4)


def test_partitioned_get_slice_and_rows(golden_ckpts):
    d = golden_ckpts / "partitioned_save"
    _, arrays, _ = expected(d)
    with load_checkpoint(d) as r:
        table = arrays["emb/table"]
        assert np.array_equal(r.get_rows("emb/table", 240, 760), table[240:760])
        assert np.array_equal(r.get_slice("emb/table", Box((249, 3), (2, 5))), table[249:251, 3:8])
        assert np.array_equal(r.get_slice("emb/table", "0,10:-"), table[:10])
        assert np.array_equal(r.get_slice("emb/table", "1000 16 5,3:2,2"), table[5:8, 2:4])
        assert np.array_equal(
            r.get_slice("dense/kernel", (slice(3, 9), slice(2, 11))), arrays["dense/kernel"][3:9, 2:11]
        )
        assert np.array_equal(r.get_slice("deep/cube", (5, slice(None), 2)), arrays["deep/cube"][5, :, 2])
        assert r.get_rows("emb/uneven", 50, 50).shape == (0, 8)
        with pytest.raises(ValueError):
            r.get_rows("emb/table", 10, 1001)
        with pytest.raises(ValueError, match="does not match"):
            r.get_slice("emb/table", "999 16 0,1:-")


def test_sharded_reads_three_files(golden_ckpts):
    d = golden_ckpts / "sharded"
    b = Bundle.open(d)
    assert b.num_shards == 3
    assert {p.entry.shard_id for n in b.names() for p in b.pieces(n)} == {0, 1, 2}
    _, arrays, _ = expected(d)
    for n in b.names():
        assert np.array_equal(bits(b.read_tensor(n)), bits(arrays[n]))
    assert sorted(b._files._fds) == [0, 1, 2]  # every data file was opened
    assert [b.shard_size(i) for i in range(3)] == [os.path.getsize(b.shard_path(i)) for i in range(3)]
    assert b.shard_path(1).endswith("model.ckpt.data-00001-of-00003")
    b.close()


def test_row_reads_touch_only_those_rows(golden_ckpts, tmp_path, monkeypatch):
    d = golden_ckpts / "seed_example"
    b = Bundle.open(d)
    calls = []
    real = os.preadv

    def spy(fd, buffers, offset):
        calls.append((offset, sum(memoryview(x).nbytes for x in buffers)))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", spy)
    e = b.entry("old_scope_2/var3")
    rows = b.read_rows("old_scope_2/var3", 10, 13)
    assert rows.shape == (3, 100)
    assert calls == [(e.offset + 10 * 400, 1200)]


def test_keras_object_graph_string(golden_ckpts):
    d = golden_ckpts / "keras_tf2"
    with load_checkpoint(d) as r:
        g = r.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
        assert g.shape == () and isinstance(g[()], bytes) and len(g[()]) > 100


# --- resolution and the state file ----------------------------------------------------


def test_resolve_prefix_forms(golden_ckpts):
    d = golden_ckpts / "sharded"
    prefix = str(d / "model.ckpt")
    assert resolve_prefix(d) == prefix
    assert resolve_prefix(Path(prefix)) == prefix
    assert resolve_prefix(prefix + ".index") == prefix
    assert resolve_prefix(prefix + ".data-00002-of-00003") == prefix
    assert resolve_prefix(os.fsencode(prefix)) == prefix


def test_missing_checkpoints_name_what_was_looked_for(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no 'checkpoint' state file") as info:
        load_checkpoint(tmp_path)
    assert isinstance(info.value, ValueError)
    with pytest.raises(CheckpointNotFoundError, match=r"nope\.index"):
        list_variables(tmp_path / "nope")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "gone"\n')
    with pytest.raises(CheckpointNotFoundError, match="names"):
        load_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "empty_dir_missing") is None


def test_v1_checkpoint_is_refused(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"\x00" * 100)
    with pytest.raises(UnsupportedCheckpointError, match="legacy V1"):
        load_checkpoint(tmp_path / "model.ckpt")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    with pytest.raises(UnsupportedCheckpointError, match="legacy V1"):
        load_checkpoint(tmp_path)


def test_moved_directory_uses_basename(golden_ckpts, tmp_path):
    d = copy_golden("multi_step", tmp_path)
    (d / "checkpoint").write_text(
        'model_checkpoint_path: "/somewhere/else/model.ckpt-100"\n'
        'all_model_checkpoint_paths: "/somewhere/else/model.ckpt-100"\n'
    )
    assert latest_checkpoint(d) == str(d / "model.ckpt-100")


def test_state_file_parsing():
    text = (
        b'# comment\nmodel_checkpoint_path: "dir/a\\303\\251\\"b" \'c\'\n'
        b"all_model_checkpoint_paths: 'x\\x41\\n'\n"
        b"all_model_checkpoint_timestamps: 1.5e9\nall_model_checkpoint_timestamps: 2\n"
        b"last_preserved_timestamp: 1700000000.25\n"
        b'future_field { nested: 1 other < x: "y" > }\n[ext.field]: 3\nlist_field: [1, 2]\n'
    )
    st = parse_checkpoint_state(text)
    assert st.model_checkpoint_path == 'dir/a\u00e9"bc'
    assert st.all_model_checkpoint_paths == ["xA\n"]
    for bad in (
        b'model_checkpoint_path: "unterminated\n',
        b"model_checkpoint_path: 3\n",
        b'model_checkpoint_path "x"\n',
        b"a { b: 1\n",
        b'model_checkpoint_path: "\\q"\n',
    ):
        with pytest.raises(CheckpointFormatError):
            parse_checkpoint_state(bad)


def test_update_checkpoint_state(tmp_path):
    for step in (1, 2):
        (tmp_path / f"m-{step}.index").write_bytes(b"")
        update_checkpoint_state(tmp_path, tmp_path / f"m-{step}")
    text = (tmp_path / "checkpoint").read_text()
    assert text == (
        'model_checkpoint_path: "m-2"\nall_model_checkpoint_paths: "m-1"\nall_model_checkpoint_paths: "m-2"\n'
    )
    st = get_checkpoint_state(tmp_path)
    assert st.model_checkpoint_path == str(tmp_path / "m-2")
    outside = tmp_path.parent / "elsewhere"
    update_checkpoint_state(tmp_path, outside, all_prefixes=[outside])
    assert f'model_checkpoint_path: "{outside}"' in (tmp_path / "checkpoint").read_text()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
