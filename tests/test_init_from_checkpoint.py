"""init_from_checkpoint beyond the golden scenarios: where gpuload is stricter or wider."""

from __future__ import annotations

import numpy as np
import pytest

import gpuload
from gpuload.errors import AssignmentMapError


@pytest.fixture
def ckpt(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "old/w": rng.standard_normal((6, 4)).astype(np.float32),
        "old/b": rng.standard_normal(4).astype(np.float32),
        "old/sub/k": np.arange(12, dtype=np.int32).reshape(3, 4),
        "emb": rng.standard_normal((10, 3)).astype(np.float32),
        "half": rng.standard_normal((2, 2)).astype(np.float16),
    }
    gpuload.save_checkpoint(str(tmp_path / "m.ckpt"), tensors)
    gpuload.reset_default_graph()
    yield str(tmp_path), tensors
    gpuload.reset_default_graph()


def var(name, shape, dtype="float32", parts=None):
    *scopes, leaf = name.split("/")
    part = (lambda s, d: parts) if parts else None

    def make(i=0):
        if i < len(scopes):
            with gpuload.variable_scope(scopes[i]):
                return make(i + 1)
        return gpuload.get_variable(
            leaf, shape, dtype, initializer=gpuload.zeros_initializer(), partitioner=part, device="/cpu:0"
        )

    return make()


def run():
    gpuload.global_variables_initializer().run()


def test_root_to_root_and_scope_to_root(ckpt):
    path, t = ckpt
    w = var("old/w", [6, 4])
    k = var("old/sub/k", [3, 4], "int32")
    gpuload.init_from_checkpoint(path, {"/": "/"})
    run()
    np.testing.assert_array_equal(w.numpy(), t["old/w"])
    np.testing.assert_array_equal(k.numpy(), t["old/sub/k"])

    gpuload.reset_default_graph()
    w = var("w", [6, 4])
    b = var("b", [4])
    k = var("sub/k", [3, 4], "int32")
    gpuload.init_from_checkpoint(path, {"old/": "/"})
    run()
    np.testing.assert_array_equal(k.numpy(), t["old/sub/k"])
    np.testing.assert_array_equal(b.numpy(), t["old/b"])


def test_later_mapping_wins(ckpt):
    path, t = ckpt
    w = var("new/w", [6, 4])
    b = var("new/b", [4])
    # pairs apply sorted by key: "old/w" sorts after "old/" and wins, even listed first
    gpuload.init_from_checkpoint(path, [("old/w", w), ("old/", "new/")])
    run()
    np.testing.assert_array_equal(w.numpy(), t["old/w"])
    np.testing.assert_array_equal(b.numpy(), t["old/b"])


def test_one_tensor_into_several_variables_and_partitioned_object(ckpt):
    path, t = ckpt
    a = var("a", [10, 3], parts=[3, 1])
    b = var("b", [10, 3], parts=[1, 2])
    c = var("c", [10, 3])
    gpuload.init_from_checkpoint(path, [("emb", a), ("emb", b._get_variable_list()), ("emb", "c")])
    run()
    for v in (a, b):
        for part in v:
            np.testing.assert_array_equal(part.numpy(), t["emb"][part._save_slice_info.box.as_slices()])
    np.testing.assert_array_equal(c.numpy(), t["emb"])


@pytest.mark.parametrize(
    "amap, match",
    [
        ({"emb": "a"}, r"partitioned variable a \[10, 4\] does not match tensor 'emb' \[10, 3\]"),
        ({"half": "h"}, r"dtype of variable 'h' \(float32\) does not match tensor 'half' \(float16\).*allow_cast"),
        (
            {"old/sub/k": "kf"},
            r"dtype of variable 'kf' \(float32\) does not match tensor 'old/sub/k' \(int32\) in checkpoint \S+m\.ckpt \(from [^)]*\)$",
        ),
        ({"old/": "nothing_here/"}, r"scope 'nothing_here/' .* holds no variables"),
        ({"old/": "a/"}, r"tensor 'old/part_0'|tensor 'old' is not in checkpoint"),
        ({"emb": ["not a variable"]}, r"not a non-empty list of variables"),
        ({"emb": 3}, r"must be a variable"),
    ],
)
def test_errors_at_the_call(ckpt, amap, match):
    path, _ = ckpt
    var("a", [10, 4], parts=[2, 1])
    var("h", [2, 2])
    var("kf", [3, 4])
    with pytest.raises(AssignmentMapError, match=match):
        gpuload.init_from_checkpoint(path, amap)
    assert all(v._init_source is None for v in gpuload.global_variables()), "nothing changed"


def test_list_of_parts_from_two_variables_is_refused(ckpt):
    path, _ = ckpt
    a = var("a", [10, 3], parts=[2, 1])
    b = var("b", [10, 3], parts=[2, 1])
    with pytest.raises(AssignmentMapError, match="same variable"):
        gpuload.init_from_checkpoint(path, {"emb": [a._get_variable_list()[0], b._get_variable_list()[1]]})


def test_cast_float16_into_float32(ckpt):
    path, t = ckpt
    h = var("h", [2, 2])
    gpuload.init_from_checkpoint(path, {"half": "h"}, allow_cast=True)
    run()
    np.testing.assert_array_equal(h.numpy(), t["half"].astype(np.float32))


def test_unmapped_variables_keep_their_initializer(ckpt):
    path, t = ckpt
    w = var("new/w", [6, 4])
    other = gpuload.get_variable("other", [3], initializer=gpuload.ones_initializer(), device="/cpu:0")
    gpuload.init_from_checkpoint(path, {"old/w": "new/w"})
    run()
    np.testing.assert_array_equal(w.numpy(), t["old/w"])
    np.testing.assert_array_equal(other.numpy(), np.ones(3, np.float32))


def test_only_the_index_is_read_at_the_call(ckpt):
    import os

    path, _ = ckpt
    var("new/w", [6, 4])
    data = os.path.join(path, "m.ckpt.data-00000-of-00001")
    with open(data, "r+b") as f:  # corrupt the data: the call must not notice (it reads no data)
        f.write(b"\xff" * 8)
    gpuload.init_from_checkpoint(path, {"old/w": "new/w"})
    with pytest.raises(ValueError, match="crc32c mismatch"):
        run()
