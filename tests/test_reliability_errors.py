"""Misuse and resource failures are clear gpuload errors naming the argument, file or tensor
(issue 7, part B, item 8)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import gpuload
from gpuload import errors
from gpuload.format.slices import Box


@pytest.fixture(autouse=True)
def fresh_graph():
    gpuload.reset_default_graph()
    yield
    gpuload.reset_default_graph()


@pytest.fixture
def ckpt(tmp_path):
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {"w": np.arange(6, dtype=np.float32)})
    return prefix


def test_deeply_nested_state_file_is_a_format_error(tmp_path):
    depth = 200000
    (tmp_path / "checkpoint").write_text("a {" * depth + "}" * depth + '\nmodel_checkpoint_path: "x"\n')
    from gpuload.format.state import get_checkpoint_state

    assert get_checkpoint_state(str(tmp_path)).model_checkpoint_path.endswith("x")  # valid, just deep
    (tmp_path / "checkpoint").write_text("a {" * depth)  # unterminated
    with pytest.raises(errors.CheckpointFormatError, match="missing '}'"):
        get_checkpoint_state(str(tmp_path))
    (tmp_path / "checkpoint").write_text("a: " + "[" * depth + "]" * depth)
    with pytest.raises(errors.CheckpointFormatError, match="model_checkpoint_path is empty"):
        gpuload.latest_checkpoint(str(tmp_path))


def test_inspect_prints_a_clean_error_for_a_deep_state_file(tmp_path):
    (tmp_path / "checkpoint").write_text("a {" * 100000)
    out = subprocess.run(
        [sys.executable, "-m", "gpuload", "inspect", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr, out.stderr[-2000:]
    assert "checkpoint" in out.stderr


@pytest.mark.parametrize("amap", [None, 5, "w"])
def test_init_from_checkpoint_bad_map_type(ckpt, amap):
    with pytest.raises(errors.ArgumentTypeError, match="assignment_map") as info:
        gpuload.init_from_checkpoint(ckpt, amap)
    assert isinstance(info.value, TypeError)


def test_init_from_checkpoint_mixed_key_types(ckpt):
    gpuload.get_variable("w", shape=[6], device="/cpu:0")
    with pytest.raises(errors.ArgumentTypeError, match="assignment_map keys.*int: 1"):
        gpuload.init_from_checkpoint(ckpt, {"w": "w", 1: "w"})


@pytest.mark.parametrize("path", [None, 5, ["a"]])
def test_bad_checkpoint_path_types(path):
    for call in (
        lambda: gpuload.init_from_checkpoint(path, {}),
        lambda: gpuload.load_checkpoint(path),
        lambda: gpuload.list_variables(path),
    ):
        with pytest.raises(errors.ArgumentTypeError, match="ckpt_dir_or_file"):
            call()


def test_save_checkpoint_bad_argument_types(tmp_path):
    with pytest.raises(errors.ArgumentTypeError, match=r"tensors must be a mapping.*dict\(pairs\)"):
        gpuload.save_checkpoint(str(tmp_path / "m"), [("w", np.zeros(2))])
    with pytest.raises(errors.ArgumentTypeError, match="prefix"):
        gpuload.save_checkpoint(None, {"w": np.zeros(2)})
    with pytest.raises(errors.ArgumentTypeError, match="max_shard_bytes"):
        gpuload.save_checkpoint(str(tmp_path / "m"), {"w": np.zeros(2)}, max_shard_bytes="big")
    assert os.listdir(tmp_path) == []


def test_duplicate_empty_slices_named(tmp_path):
    empty = np.zeros((0, 2), np.float32)
    with pytest.raises(errors.InvalidArgumentError) as info:
        gpuload.save_checkpoint(
            str(tmp_path / "m"), slices={"t": ((4, 2), [(Box((0, 0), (0, 2)), empty), (Box((0, 0), (0, 2)), empty)])}
        )
    msg = str(info.value)
    assert "'t slice [0:0, 0:2]'" in msg and "[]" not in msg.replace("[0:0, 0:2]", ""), msg


def test_state_file_naming_the_index_file(tmp_path, ckpt):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "m.ckpt.index"\n')
    assert gpuload.latest_checkpoint(str(tmp_path)) == ckpt
    np.testing.assert_array_equal(gpuload.load_variable(str(tmp_path), "w"), np.arange(6, dtype=np.float32))


def test_truncation_is_one_error_class_before_and_during_run(tmp_path, ckpt, monkeypatch):
    data = ckpt + ".data-00000-of-00001"
    v = gpuload.get_variable("w", shape=[6], dtype="float32", device="/cpu:0")
    gpuload.init_from_checkpoint(ckpt, {"w": v})
    # during run(): cut the file after the plan was made
    from gpuload.io import reader as reader_mod

    real = reader_mod.ShardFiles._pread_full

    def cut(self, fd, index, view, offset, allow_short=False, **names):
        os.truncate(self.paths[index], 8)
        return real(self, fd, index, view, offset, allow_short, **names)

    monkeypatch.setattr(reader_mod.ShardFiles, "_pread_full", cut)
    with pytest.raises(errors.TruncatedCheckpointError) as during:
        gpuload.global_variables_initializer().run()
    monkeypatch.undo()
    # before run(): the file is already short when the checkpoint is opened
    with pytest.raises(errors.TruncatedCheckpointError) as before:
        gpuload.init_from_checkpoint(ckpt, {"w": v})
    for e in (during.value, before.value):
        assert isinstance(e, ValueError) and isinstance(e, OSError)
        assert isinstance(e, errors.CheckpointFormatError) and isinstance(e, errors.ShardReadError)
        assert "data-00000-of-00001" in str(e) and "truncated" in str(e)
        assert e.tensor == "w"
    assert os.path.getsize(data) == 8


def test_out_of_memory_names_tensor_and_size(tmp_path, ckpt, monkeypatch):
    from gpuload.backend.host import HostBackend

    def no_memory(self, shape, dtype):
        raise MemoryError()

    v = gpuload.get_variable("w", shape=[6], dtype="float32", device="/cpu:0")
    gpuload.init_from_checkpoint(ckpt, {"w": v})
    monkeypatch.setattr(HostBackend, "empty", no_memory)
    with pytest.raises(errors.OutOfMemoryError) as info:
        gpuload.global_variables_initializer().run()
    assert isinstance(info.value, MemoryError)
    assert "'w'" in str(info.value) and "24 bytes" in str(info.value)
    monkeypatch.undo()

    real_empty = np.empty

    def enomem(shape, dtype=float, *a, **k):
        if tuple(np.atleast_1d(shape)) == (6,) and np.dtype(dtype) == np.float32:
            raise OSError(12, "Cannot allocate memory")
        return real_empty(shape, dtype, *a, **k)

    monkeypatch.setattr(np, "empty", enomem)
    with gpuload.load_checkpoint(ckpt) as r:
        with pytest.raises(errors.OutOfMemoryError, match=r"24 bytes.*tensor 'w'"):
            r.get_tensor("w")
