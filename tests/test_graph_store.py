"""The variable store: scopes, reuse, partitioned variables, devices, initialization, interop."""

import math
import sys
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest

from gpuload.errors import DeviceUnavailableError
from gpuload.graph import (
    AUTO_REUSE,
    PartitionedVariable,
    UninitializedVariableError,
    Variable,
    constant_initializer,
    device,
    fixed_size_partitioner,
    get_variable,
    get_variable_scope,
    global_variables,
    global_variables_initializer,
    ops,
    reset_default_graph,
    trainable_variables,
    variable_scope,
    variables_initializer,
    zeros_initializer,
)
from gpuload.graph import store as S

CPU = "/device:CPU:0"


@pytest.fixture(autouse=True)
def _fresh_store_on_cpu():
    """Every test starts with an empty store, its variables on the CPU unless it says otherwise."""
    reset_default_graph()
    with device("/cpu:0"):
        yield
    reset_default_graph()


def parts(*counts):
    return lambda shape, dtype: list(counts)


# ---------------------------------------------------------------- names and scopes


def test_scope_naming_and_nesting():
    with variable_scope("outer") as outer:
        assert outer.name == "outer"
        with variable_scope("inner"):
            assert get_variable_scope().name == "outer/inner"
            v = get_variable("v", [2, 3])
        w = get_variable("w", [1])
    top = get_variable("top", [1])
    assert v.name == "outer/inner/v:0" and v.op.name == "outer/inner/v"
    assert w.op.name == "outer/w" and top.op.name == "top" and top.name == "top:0"
    assert get_variable_scope().name == ""
    assert list(S._default_store().vars) == ["outer/inner/v", "outer/w", "top"]


def test_scope_reentered_by_name_and_by_object():
    with variable_scope("a") as a:
        get_variable("x", [1])
    with variable_scope("a"):  # variable scopes are not uniquified
        get_variable("y", [1])
    with variable_scope("elsewhere"):
        with variable_scope(a):  # a scope object is re-entered under its own full name
            z = get_variable("z", [1])
    assert z.op.name == "a/z"
    assert set(S._default_store().vars) == {"a/x", "a/y", "a/z"}


def test_scope_names_validated():
    with pytest.raises(ValueError, match="not a valid scope name"):
        with variable_scope("bad name"):
            pass
    with pytest.raises(TypeError):
        with variable_scope(3):
            pass
    for bad in ("v:0", "", " v", "a b"):
        with pytest.raises(ValueError):
            get_variable(bad, [1])


def test_scope_stack_restored_after_error():
    with pytest.raises(RuntimeError):
        with variable_scope("s"):
            raise RuntimeError("boom")
    assert get_variable_scope().name == ""


# ---------------------------------------------------------------- reuse


def test_existing_name_without_reuse_is_an_error():
    with variable_scope("a"):
        get_variable("v", [2])
    with variable_scope("a"):
        with pytest.raises(
            ValueError, match=r"Variable a/v already exists, disallowed. Did you mean to set reuse=True"
        ) as e:
            get_variable("v", [2])
    assert "Originally defined at" in str(e.value) and "test_graph_store.py" in str(e.value)


def test_reuse_true_returns_the_same_variable():
    with variable_scope("a"):
        v = get_variable("v", [2, 3])
    with variable_scope("a", reuse=True):
        assert get_variable("v", [2, 3]) is v
        assert get_variable("v") is v  # shape may be left out
        with pytest.raises(
            ValueError, match=r"Trying to share variable a/v, but specified shape \(3, 2\) and found shape \(2, 3\)"
        ):
            get_variable("v", [3, 2])
        with pytest.raises(ValueError, match="specified dtype int32 and found dtype float32"):
            get_variable("v", [2, 3], dtype=np.int32)
        with pytest.raises(ValueError, match="Variable a/w does not exist, or was not created with tf.get_variable"):
            get_variable("w", [1])


def test_reuse_dtype_defaults_to_float32_as_tf():
    i = get_variable("i", [2], dtype=np.int32)
    with variable_scope(get_variable_scope(), reuse=True):
        with pytest.raises(ValueError, match="specified dtype float32 and found dtype int32"):
            get_variable("i", [2])
        assert get_variable("i", [2], dtype="int32") is i


def test_reuse_is_inherited_and_cannot_be_switched_off():
    with variable_scope("a"):
        with variable_scope("b"):
            v = get_variable("v", [1])
    with variable_scope("a", reuse=True):
        with variable_scope("b", reuse=False):  # TF: reuse=False inside a reusing scope still reuses
            assert get_variable_scope().reuse is True
            assert get_variable("v", [1]) is v


def test_reuse_variables_and_auto_reuse():
    with variable_scope("a") as scope:
        v = get_variable("v", [1])
        scope.reuse_variables()
        assert get_variable("v", [1]) is v
    with variable_scope("b", reuse=AUTO_REUSE):
        w = get_variable("w", [1])  # created
        assert get_variable("w", [1]) is w  # then reused
    assert [x.op.name for x in global_variables()] == ["a/v", "b/w"]


def test_shape_is_required():
    with pytest.raises(ValueError, match=r"Shape of a new variable \(v\) must be fully defined"):
        get_variable("v")
    with pytest.raises(ValueError):
        get_variable("v", [None, 3])
    with pytest.raises(ValueError):
        get_variable("v", [-1, 3])
    assert get_variable("scalar", []).shape == ()
    assert get_variable("int_shape", 5).shape == (5,)


# ---------------------------------------------------------------- dtypes and default initializers


@pytest.mark.parametrize(
    "dtype, want",
    [
        (None, np.float32),
        (np.float16, np.float16),
        ("float64", np.float64),
        (ml_dtypes.bfloat16, ml_dtypes.bfloat16),
        ("bfloat16", ml_dtypes.bfloat16),
        ("int64", np.int64),
        (np.dtype(np.uint8), np.uint8),
        ("bool", np.bool_),
        ("string", object),
    ],
)
def test_dtype_spellings(dtype, want):
    v = get_variable("v", [2], dtype=dtype)
    assert v.dtype == np.dtype(want) and isinstance(v.dtype, np.dtype)


def test_default_initializers():
    f = get_variable("f", [30, 50])
    i = get_variable("i", [3], dtype=np.int32)
    b = get_variable("b", [3], dtype=bool)
    s = get_variable("s", [2], dtype="string")
    global_variables_initializer().run()
    assert np.abs(f.numpy()).max() <= math.sqrt(6 / 80)  # glorot_uniform
    assert np.abs(f.numpy()).max() > 0
    assert (i.numpy() == 0).all() and not b.numpy().any()
    assert s.numpy().tolist() == [b"", b""]
    with pytest.raises(ValueError, match="An initializer for variable c of complex64 is required"):
        get_variable("c", [2], dtype=np.complex64)


def test_scope_defaults_for_initializer_partitioner_dtype():
    with variable_scope(
        "s", initializer=constant_initializer(2.0), dtype="float64", partitioner=fixed_size_partitioner(2)
    ):
        with variable_scope("t"):
            v = get_variable("v", [4, 1])
    assert isinstance(v, PartitionedVariable) and v.dtype == np.float64
    global_variables_initializer().run()
    assert (v.as_array() == 2.0).all()


def test_initializer_class_or_user_callable():
    a = get_variable("a", [2, 2], initializer=zeros_initializer)  # uncalled class, as TF allows
    seen = {}

    def mine(shape, dtype=None, partition_info=None):
        seen["args"] = (shape, dtype, partition_info)
        return np.full(shape, 7)  # int64 result, cast to the variable's dtype

    b = get_variable("b", [2, 3], initializer=mine)
    c = get_variable("c", [3], initializer=lambda shape, dtype: np.ones(shape, dtype) * 2)
    global_variables_initializer().run()
    assert (a.numpy() == 0).all() and (c.numpy() == 2).all()
    assert b.numpy().dtype == np.float32 and (b.numpy() == 7).all()
    assert seen["args"] == ([2, 3], np.dtype(np.float32), None)  # TF passes shape.as_list()


def test_user_initializer_with_wrong_shape():
    v = get_variable("v", [2, 3], initializer=lambda shape, dtype: np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"shape \(3, 2\), expected \(2, 3\)"):
        variables_initializer([v]).run()
    assert not v.is_initialized()


# ---------------------------------------------------------------- value initializers


def test_value_initializer_infers_shape_and_dtype():
    a = get_variable("a", initializer=np.arange(6, dtype=np.int64).reshape(2, 3))
    f = get_variable("f", initializer=1.5)  # python float -> float32, as tf.convert_to_tensor
    i = get_variable("i", initializer=[1, 2, 3])  # python ints -> int32
    s = get_variable("s", initializer=[b"x", "y"])
    d = get_variable("d", dtype="float64", initializer=[1, 2])
    assert (a.shape, a.dtype) == ((2, 3), np.int64)
    assert (f.shape, f.dtype) == ((), np.float32)
    assert (i.dtype, s.dtype, d.dtype) == (np.int32, object, np.float64)
    global_variables_initializer().run()
    assert a.numpy().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert s.numpy().tolist() == [b"x", b"y"] and d.numpy().tolist() == [1.0, 2.0]


def test_value_initializer_is_copied():
    value = np.zeros(3, np.float32)
    v = get_variable("v", initializer=value)
    v.initializer.run()
    value[0] = 5
    assert v.numpy()[0] == 0


def test_value_initializer_errors():
    with pytest.raises(ValueError, match=r"initial value has shape \(2,\) but shape \(3,\) was given"):
        get_variable("v", [3], initializer=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="Initializer type 'float64' and explicit dtype 'float32' don't match"):
        get_variable("w", dtype=np.float32, initializer=np.zeros(2))
    get_variable("ok", [2], initializer=np.zeros(2, np.float32))  # a matching shape is fine


# ---------------------------------------------------------------- partitioned variables


def test_partitioned_variable_parts_and_slice_infos():
    seen = {}

    def partitioner(shape, dtype):
        seen["args"] = (shape, dtype)
        return [5, 1]

    with variable_scope("emb2"):
        pv = get_variable("uneven", [103, 8], initializer=constant_initializer(-3.5), partitioner=partitioner)
    assert seen["args"] == ((103, 8), np.dtype(np.float32))
    assert isinstance(pv, PartitionedVariable)
    assert (pv.name, pv.shape, pv.dtype, pv.partitions) == ("emb2/uneven", (103, 8), np.float32, (5, 1))
    ps = pv._get_variable_list()
    assert len(pv) == 5 and list(pv) == ps
    assert [p.op.name for p in ps] == [f"emb2/uneven/part_{k}" for k in range(5)]
    assert [p.name for p in ps][0] == "emb2/uneven/part_0:0"
    assert [p.shape[0] for p in ps] == [21, 21, 21, 20, 20]
    assert [p._save_slice_info.spec for p in ps] == [
        "103 8 0,21:0,8",
        "103 8 21,21:0,8",
        "103 8 42,21:0,8",
        "103 8 63,20:0,8",
        "103 8 83,20:0,8",
    ]
    info = ps[3]._save_slice_info
    assert (info.full_name, info.full_shape, info.var_offset, info.var_shape) == (
        "emb2/uneven",
        [103, 8],
        [63, 0],
        [20, 8],
    )
    assert info.box.start == (63, 0) and info.box.shape == (20, 8)
    # The store holds the parts, not the wrapper, as TF's _vars.
    store = S._default_store()
    assert isinstance(store.vars, OrderedDict)
    assert list(store.vars) == [f"emb2/uneven/part_{k}" for k in range(5)]
    assert store.partitioned_vars["emb2/uneven"] is pv
    assert store.collect_partitioned("emb2/uneven") == ps
    assert store.collect_partitioned("emb2/nothing") is None
    global_variables_initializer().run()
    assert pv.as_array().shape == (103, 8) and (pv.numpy() == -3.5).all()


def test_partitioner_called_by_keyword_or_position():
    def tf_style(shape, **unused_args):  # TF passes shape=..., dtype=...
        assert unused_args == {"dtype": np.dtype(np.float32)}
        return [2, 1]

    a = get_variable("a", [4, 2], partitioner=tf_style)
    b = get_variable("b", [4, 2], partitioner=lambda s, d: [2, 1])
    assert len(a) == len(b) == 2


def test_all_ones_partitioner_still_makes_part_0():
    pv = get_variable("v", [4, 3], partitioner=parts(1, 1))
    assert isinstance(pv, PartitionedVariable) and len(pv) == 1
    (p,) = pv
    assert p.op.name == "v/part_0" and p._save_slice_info.spec == "4 3 0,4:0,3"
    assert "v" not in S._default_store().vars


def test_collect_partitioned_stops_at_first_gap():
    get_variable("g/part_0", [1])
    get_variable("g/part_1", [1])
    get_variable("g/part_3", [1])
    assert [v.op.name for v in S._default_store().collect_partitioned("g")] == ["g/part_0", "g/part_1"]


def test_multi_axis_partitions():
    pv = get_variable("m", [5, 7], partitioner=parts(2, 3), initializer=np.arange(35.0, dtype=np.float32).reshape(5, 7))
    specs = [p._save_slice_info.spec for p in pv]
    assert specs == ["5 7 0,3:0,3", "5 7 0,3:3,2", "5 7 0,3:5,2", "5 7 3,2:0,3", "5 7 3,2:3,2", "5 7 3,2:5,2"]
    global_variables_initializer().run()
    np.testing.assert_array_equal(pv.as_array(), np.arange(35.0).reshape(5, 7))
    np.testing.assert_array_equal(pv._get_variable_list()[4].numpy(), np.arange(35.0).reshape(5, 7)[3:5, 3:5])


def test_partitioned_value_and_full_constant_initializers():
    full = np.arange(20, dtype=np.float32).reshape(10, 2)
    a = get_variable("a", partitioner=parts(3, 1), initializer=full)
    b = get_variable("b", [10, 2], partitioner=parts(4, 1), initializer=constant_initializer(full))
    global_variables_initializer().run()
    np.testing.assert_array_equal(a.as_array(), full)
    np.testing.assert_array_equal(b.as_array(), full)


def test_partitioned_glorot_uses_full_shape():
    pv = get_variable("g", [300, 50], partitioner=parts(10, 1))
    global_variables_initializer().run()
    x = pv.as_array()
    # Full-shape limit sqrt(6 / 350) = 0.131; the parts' own would be sqrt(6 / 80) = 0.274.
    assert np.abs(x).max() <= math.sqrt(6 / 350)
    # Parts are seeded apart: no two equal-shaped parts hold the same values.
    p = [v.numpy() for v in pv]
    assert not np.array_equal(p[0], p[1])


def test_more_parts_than_rows_gives_empty_parts_like_tf():
    pv = get_variable("e", [3, 2], partitioner=parts(5, 1), initializer=constant_initializer(1.0))
    assert [p.shape for p in pv] == [(1, 2), (1, 2), (1, 2), (0, 2), (0, 2)]
    assert pv._get_variable_list()[4]._save_slice_info.spec == "3 2 3,0:0,2"
    global_variables_initializer().run()
    assert (pv.as_array() == 1).all()


def test_partitioner_answers_checked():
    with pytest.raises(ValueError, match="zero partitions"):
        get_variable("z", [0, 4], partitioner=fixed_size_partitioner(3))
    with pytest.raises(ValueError, match="does not match the Variable's rank"):
        get_variable("r", [4, 4], partitioner=parts(2))
    with pytest.raises(ValueError, match="Partitioner must be callable"):
        get_variable("c", [4, 4], partitioner=[2, 1])
    with pytest.raises(ValueError, match="Shape of a new partitioned variable must be fully defined"):
        get_variable("s", partitioner=parts(2))
    assert S._default_store().vars == {}


def test_scalar_ignores_partitioner():
    v = get_variable("s", [], partitioner=parts())
    assert isinstance(v, Variable) and v.op.name == "s"


def test_partitioned_reuse_rules():
    with variable_scope("p"):
        pv = get_variable("v", [10, 4], partitioner=parts(2, 1))
        get_variable("plain", [2])
        with pytest.raises(ValueError, match="A partitioner was provided, but an unpartitioned version"):
            get_variable("plain", [2], partitioner=parts(2))
        with pytest.raises(
            ValueError,
            match="No partitioner was provided, but a partitioned version of the variable was found: p/v/part_0",
        ):
            get_variable("v", [10, 4])
        with pytest.raises(ValueError, match="Partitioned variable with name p/v already exists"):
            get_variable("v", [10, 4], partitioner=parts(2, 1))
    with variable_scope("p", reuse=True):
        assert get_variable("v", [10, 4], partitioner=parts(2, 1)) is pv
        assert get_variable("v") is pv  # reuse without the partitioner
        with pytest.raises(ValueError, match=r"specified partitions \[5, 1\] and found partitions \[2, 1\]"):
            get_variable("v", [10, 4], partitioner=parts(5, 1))
        with pytest.raises(ValueError, match=r"Trying to reuse partitioned variable p/v, but specified shape"):
            get_variable("v", [10, 5], partitioner=parts(2, 1))
        with pytest.raises(ValueError, match="PartitionedVariable p/w does not exist"):
            get_variable("w", [10, 4], partitioner=parts(2, 1))


# ---------------------------------------------------------------- devices


def test_device_context_nesting_and_canonical_strings():
    v = get_variable("v", [1])
    with device("/device:CPU:0"):
        w = get_variable("w", [1], device="cpu:0")
    with device(None):  # cleared: the default device
        x = get_variable("x", [1])
    assert v.device == CPU and w.device == CPU and v.op.device == CPU
    from gpuload.backend import placement

    assert x.device == placement.default_device()


def test_innermost_device_wins_and_availability_is_checked_late():
    with device("/gpu:99"):  # entering a device context checks nothing yet
        with device("cpu"):
            v = get_variable("v", [1])
    assert v.device == CPU
    with pytest.raises(ValueError):
        with device("/tpu:0"):
            pass


def test_default_device_used_without_context(monkeypatch):
    from gpuload.backend import placement

    calls = []

    def fake_default():
        calls.append(1)
        return CPU

    monkeypatch.setattr(placement, "default_device", fake_default)
    with device(None):
        v = get_variable("v", [1])
    assert v.device == CPU and calls


def test_missing_gpu_is_an_error_at_get_variable():
    with pytest.raises(DeviceUnavailableError):
        get_variable("v", [2], device="/device:GPU:99")
    with pytest.raises(DeviceUnavailableError):
        with device("/gpu:99"):
            get_variable("w", [2])
    with pytest.raises(DeviceUnavailableError):
        get_variable("p", [4, 2], partitioner=parts(2, 1), device=[CPU, "/device:GPU:99"])
    assert S._default_store().vars == {}  # nothing half-made


def test_part_devices_list_and_callable():
    a = get_variable("a", [4, 2], partitioner=parts(2, 1), device=[CPU, "/cpu:0"])
    b = get_variable("b", [4, 2], partitioner=parts(2, 1), device=lambda i: "/cpu:0")
    assert [p.device for p in a] == [CPU, CPU] and [p.device for p in b] == [CPU, CPU]
    with pytest.raises(ValueError, match="has 2 parts but 3 devices"):
        get_variable("c", [4, 2], partitioner=parts(2, 1), device=[CPU] * 3)
    with pytest.raises(TypeError):
        get_variable("d", [4, 2], device=5)


def test_strings_always_on_cpu():
    s = get_variable("s", [2], dtype="string", device="/device:GPU:99")
    assert s.device == CPU


# ---------------------------------------------------------------- collections and reset


def test_global_variables_order_trainable_and_reset():
    a = get_variable("a", [1])
    pv = get_variable("p", [4], partitioner=parts(2))
    b = get_variable("b", [1], trainable=False)
    assert global_variables() == [a, *pv, b]
    assert trainable_variables() == [a, *pv]
    reset_default_graph()
    assert global_variables() == [] and S._default_store().partitioned_vars == {}
    assert get_variable("a", [1]) is not a  # no "already exists" after a reset


# ---------------------------------------------------------------- initialization


def test_value_before_init_raises():
    v = get_variable("v", [2])
    assert not v.is_initialized()
    with pytest.raises(UninitializedVariableError, match=r"run gpuload.global_variables_initializer\(\).run\(\)"):
        v.value()
    with pytest.raises(UninitializedVariableError):
        np.asarray(v)
    with pytest.raises(RuntimeError):  # catchable as a builtin
        v.numpy()


def test_init_op_runs_own_initializers():
    v = get_variable("v", [2], initializer=constant_initializer(3.0))
    w = get_variable("w", [2], initializer=constant_initializer(4.0))
    op = global_variables_initializer()
    late = get_variable("late", [1])  # created after the op: not in it (TF snapshots the list)
    assert op.variables == [v, w]
    op.run()
    assert v.numpy().tolist() == [3.0, 3.0] and w.numpy().tolist() == [4.0, 4.0]
    assert not late.is_initialized()
    late.initializer.run()
    assert late.is_initialized()


def test_variables_initializer_subset_and_partitioned():
    v = get_variable("v", [2])
    pv = get_variable("p", [4], partitioner=parts(2))
    variables_initializer([pv]).run()
    assert all(p.is_initialized() for p in pv) and not v.is_initialized()
    with pytest.raises(TypeError):
        variables_initializer(["v"])


@pytest.fixture
def sourced(tmp_path):
    """A variable ``src`` of shape [2] that init_from_checkpoint gave a checkpoint source."""
    from gpuload.format.writer import save_checkpoint
    from gpuload.graph.init_from_checkpoint import init_from_checkpoint

    prefix = str(tmp_path / "m.ckpt")
    save_checkpoint(prefix, {"t": np.zeros(2, np.float32)})
    src = get_variable("src", [2])
    init_from_checkpoint(prefix, {"t": "src"})
    return src


def _fake_load(monkeypatch, fn):
    """Replace the op's load step: ``fn(requests by name) -> arrays by name`` (or raise)."""
    import gpuload.loader
    from gpuload.api import LoadResult
    from gpuload.scheduler import LoadStats

    def load_checkpoints(checkpoints, *, config=None, allow_cast=False, failed=None, commit=None):
        out = {}
        for bundle, requests in checkpoints.items():
            out[bundle.prefix] = r = LoadResult(fn(requests))
            r.stats = LoadStats()
        if commit is not None:
            commit(out)
        return out

    monkeypatch.setattr(gpuload.loader, "load_checkpoints", load_checkpoints)


def test_own_values_are_computed_before_the_load(monkeypatch, sourced):
    order = []
    v = get_variable("v", [2], initializer=lambda shape, dtype: order.append("own") or np.ones(shape))

    def load(requests):
        order.append(("load", sorted(requests)))
        assert requests["src"].key == "t" and requests["src"].target.shape == (2,)
        return {n: np.full(r.target.shape, 9, r.target.dtype) for n, r in requests.items()}

    _fake_load(monkeypatch, load)
    global_variables_initializer().run()
    assert order == ["own", ("load", ["src"])]
    assert (sourced.numpy() == 9).all() and (v.numpy() == 1).all()


def test_failing_own_initializer_stops_before_the_load(monkeypatch, sourced):
    def bad(shape, dtype):
        raise ValueError("bad constant")

    get_variable("v", [2], initializer=bad)
    loads = []
    _fake_load(monkeypatch, lambda requests: loads.append(requests) or {})
    with pytest.raises(ValueError, match="bad constant"):
        global_variables_initializer().run()
    assert loads == [] and not sourced.is_initialized()


def test_loader_failure_leaves_nothing_initialized(monkeypatch, sourced):
    v = get_variable("v", [2])

    def load(requests):
        raise OSError("disk on fire")

    _fake_load(monkeypatch, load)
    with pytest.raises(OSError, match="disk on fire"):
        global_variables_initializer().run()
    assert not v.is_initialized() and not sourced.is_initialized()


def test_loader_that_skips_a_variable_is_caught(monkeypatch, sourced):
    v = get_variable("v", [2])
    _fake_load(monkeypatch, lambda requests: {})
    with pytest.raises(UninitializedVariableError, match="without values for 1 variables: src:0"):
        global_variables_initializer().run()
    assert not v.is_initialized() and not sourced.is_initialized()


def test_allow_cast_of_one_checkpoint_allows_no_cast_from_another(monkeypatch, tmp_path):
    """Each checkpoint's requests load with its own variables' allow_cast, never another checkpoint's."""
    import gpuload.loader
    from gpuload.format.writer import save_checkpoint
    from gpuload.graph.init_from_checkpoint import init_from_checkpoint

    pa, pb = str(tmp_path / "a" / "m.ckpt"), str(tmp_path / "b" / "m.ckpt")
    save_checkpoint(pa, {"h": np.arange(2, dtype=np.float16)})
    save_checkpoint(pb, {"f": np.arange(3, dtype=np.float32)})
    va, vb = get_variable("va", [2]), get_variable("vb", [3])
    init_from_checkpoint(pa, {"h": "va"}, allow_cast=True)
    init_from_checkpoint(pb, {"f": "vb"})
    real, seen = gpuload.loader.load_checkpoints, []

    def spy(checkpoints, **kwargs):
        seen.append({b.prefix: c for b, c in kwargs["allow_cast"].items()})
        return real(checkpoints, **kwargs)

    monkeypatch.setattr(gpuload.loader, "load_checkpoints", spy)
    global_variables_initializer().run()
    assert seen == [{pa: True, pb: False}]
    assert va.numpy().tolist() == [0.0, 1.0] and vb.numpy().tolist() == [0.0, 1.0, 2.0]


def test_a_failed_assignment_leaves_last_stats_of_the_previous_step(monkeypatch, sourced):
    from gpuload import loader

    global_variables_initializer().run()
    before = loader.last_stats()
    assert len(before) == 1
    v = get_variable("v", [2])

    def broken(self, array):
        raise RuntimeError("assign failed")

    monkeypatch.setattr(Variable, "_assign", broken)
    with pytest.raises(RuntimeError, match="assign failed"):
        variables_initializer([sourced, v]).run()
    assert loader.last_stats() == before and loader.last_stats()[0] is before[0]


def test_plan_for_is_no_public_name_of_the_op_module():
    assert "plan_for" not in ops.__all__ and callable(ops.plan_for)  # tests plan with it


def test_run_initializers_is_overridable(monkeypatch):
    seen = []
    monkeypatch.setattr(ops, "_run_initializers", lambda variables: seen.append(list(variables)))
    v = get_variable("v", [1])
    global_variables_initializer().run()
    assert seen == [[v]] and not v.is_initialized()


def test_own_initializer_failure_installs_nothing():
    ok = get_variable("ok", [2])
    bad = get_variable("bad", [2], initializer=lambda shape, dtype: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        global_variables_initializer().run()
    assert not ok.is_initialized() and not bad.is_initialized()


# ---------------------------------------------------------------- _assign and interop


def test_assign_validates():
    v = get_variable("v", [2, 3])
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        v._assign(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="dtype float64"):
        v._assign(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="numpy array is required"):
        v._assign([[0.0] * 3] * 2)
    a = np.ones((2, 3), np.float32)
    v._assign(a)
    assert v.value() is a  # installed, not copied


def test_cpu_interop():
    v = get_variable("v", [2, 3], initializer=constant_initializer(np.arange(6)))
    v.initializer.run()
    arr = np.asarray(v)
    assert arr is v.value()  # a view of the buffer, no copy
    assert np.array(v, dtype=np.float64).dtype == np.float64
    h = v.numpy()
    h[0, 0] = 100
    assert v.value()[0, 0] == 0  # numpy() is a copy
    assert v.__dlpack_device__() == (1, 0)  # kDLCPU
    np.testing.assert_array_equal(np.from_dlpack(v), np.arange(6).reshape(2, 3))
    assert not hasattr(v, "__cuda_array_interface__")
    assert v.get_shape() == (2, 3) and str(v.get_shape()) == "(2, 3)"
    assert "v:0" in repr(v) and "float32" in repr(v)


def test_save_slice_info_of_plain_variable_is_none():
    assert get_variable("v", [2])._save_slice_info is None
    assert get_variable("w", [2])._init_source is None


def test_importing_the_store_does_not_import_cupy():
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, gpuload.graph as g\n"
        "with g.device('cpu'):\n"
        "    g.get_variable('v', [2]); g.global_variables_initializer().run()\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_variables():
    import cupy

    v = get_variable("v", [4, 3], device="/gpu:0", initializer=constant_initializer(-3.5))
    pv = get_variable("p", [10, 2], device="/gpu:0", partitioner=parts(3, 1))
    s = get_variable("s", [2], dtype="string", device="/gpu:0")
    assert v.device == "/device:GPU:0" and s.device == CPU
    global_variables_initializer().run()
    x = v.value()
    assert isinstance(x, cupy.ndarray) and x.device.id == 0
    assert v.__cuda_array_interface__["shape"] == (4, 3)
    assert (cupy.from_dlpack(v) == -3.5).all()
    assert v.__dlpack_device__()[0] == 2  # kDLCUDA
    h = v.numpy()
    assert isinstance(h, np.ndarray) and (h == -3.5).all()
    assert (np.asarray(v) == -3.5).all()
    with pytest.raises(ValueError):
        np.array(v, copy=False)
    assert pv.as_array().shape == (10, 2) and np.abs(pv.as_array()).max() <= math.sqrt(6 / 12)
    with pytest.raises(TypeError, match="CuPy array is required"):
        v._assign(np.zeros((4, 3), np.float32))
    v._assign(cupy.zeros((4, 3), np.float32))
    assert float(v.value().sum()) == 0
    b = get_variable("b", [3], dtype="bfloat16", device="/gpu:0", initializer=constant_initializer(-3.5))
    b.initializer.run()
    assert (b.numpy().astype(np.float32) == -3.5).all()


def test_gpuload_device_is_both_tf_device_and_the_subpackage():
    import gpuload
    import gpuload.backend.host

    with gpuload.device("/cpu:0") as dev:
        v = gpuload.get_variable("placed", [2])
    assert dev == "/device:CPU:0" and v.device == "/device:CPU:0"
    assert gpuload.backend.host.HostBackend.device == "/device:CPU:0"
    assert gpuload.backend.placement.canonical_device("gpu:1") == "/device:GPU:1"
