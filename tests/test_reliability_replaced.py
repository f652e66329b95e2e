"""A checkpoint changed between ``init_from_checkpoint`` and ``run()`` is an error at run(),
never silently different values (issue 7, part B, item 1)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpuload
from gpuload.errors import CheckpointChangedError
from gpuload.format.slices import Box


@pytest.fixture(autouse=True)
def fresh_graph():
    gpuload.reset_default_graph()
    yield
    gpuload.reset_default_graph()


def _unassigned(variables):
    return all(v._value is None for v in variables)


def test_tensor_replaced_by_a_bigger_one(tmp_path):
    """The reproduction: a [20,2] variable would get a box of the new [40,3] tensor."""
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {"t": np.arange(40, dtype=np.float32).reshape(20, 2)})
    v = gpuload.get_variable("t", shape=[20, 2], dtype="float32", partitioner=lambda s, d: [2, 1], device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"t": "t"})
    gpuload.save_checkpoint(prefix, {"t": -np.arange(120, dtype=np.float32).reshape(40, 3)})
    with pytest.raises(CheckpointChangedError) as info:
        gpuload.global_variables_initializer().run()
    msg = str(info.value)
    assert "'t'" in msg and "[20, 2]" in msg and "[40, 3]" in msg, msg
    assert isinstance(info.value, ValueError)
    assert _unassigned(v._get_variable_list())


def test_dtype_changed(tmp_path):
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {"t": np.zeros((4, 2), np.float32)})
    v = gpuload.get_variable("t", shape=[4, 2], dtype="float32", device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"t": v})
    gpuload.save_checkpoint(prefix, {"t": np.zeros((4, 2), np.int32)})
    with pytest.raises(CheckpointChangedError, match="int32"):
        gpuload.global_variables_initializer().run()
    assert _unassigned([v])


def test_slicing_changed(tmp_path):
    prefix = str(tmp_path / "m.ckpt")
    t = np.arange(8, dtype=np.float32).reshape(4, 2)
    gpuload.save_checkpoint(prefix, {"t": t})
    v = gpuload.get_variable("t", shape=[4, 2], dtype="float32", device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"t": v})
    gpuload.save_checkpoint(prefix, slices={"t": [(Box((0, 0), (2, 2)), t[:2]), (Box((2, 0), (2, 2)), t[2:])]})
    with pytest.raises(CheckpointChangedError, match="slic"):
        gpuload.global_variables_initializer().run()
    assert _unassigned([v])


def test_same_shapes_but_rewritten_index_is_named(tmp_path):
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {"t": np.zeros((4, 2), np.float32)})
    v = gpuload.get_variable("t", shape=[4, 2], dtype="float32", device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"t": v})
    gpuload.save_checkpoint(prefix, {"t": np.ones((4, 2), np.float32), "extra": np.zeros(3, np.int8)})
    with pytest.raises(CheckpointChangedError) as info:
        gpuload.global_variables_initializer().run()
    assert prefix + ".index" in str(info.value) and "replaced" in str(info.value)
    assert _unassigned([v])


def test_unchanged_checkpoint_loads_and_reloads(tmp_path):
    prefix = str(tmp_path / "m.ckpt")
    t = np.arange(8, dtype=np.float32).reshape(4, 2)
    gpuload.save_checkpoint(prefix, {"t": t})
    v = gpuload.get_variable("t", shape=[4, 2], dtype="float32", device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"t": v})
    gpuload.global_variables_initializer().run()
    np.testing.assert_array_equal(v.numpy(), t)
    os.utime(prefix + ".index")  # touched: a different file as far as the call knows
    with pytest.raises(CheckpointChangedError):
        gpuload.global_variables_initializer().run()
    gpuload.init_from_checkpoint(prefix, {"t": v})  # a new call sees the file as it is now
    gpuload.global_variables_initializer().run()
    np.testing.assert_array_equal(v.numpy(), t)
