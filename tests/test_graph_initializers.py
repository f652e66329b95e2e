"""Initializers: shapes, dtypes, TF's constants and bounds, seeding, partition awareness."""

import math

import ml_dtypes
import numpy as np
import pytest

from gpuload.graph import initializers as I
from gpuload.graph.initializers import PartitionInfo

BF16 = np.dtype(ml_dtypes.bfloat16)


# ---------------------------------------------------------------- zeros / ones / constant


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.int32, np.uint8, np.bool_, np.complex64, BF16, "bfloat16", "float16"]
)
def test_zeros_ones_shapes_and_dtypes(dtype):
    z = I.zeros_initializer()((3, 4), dtype)
    o = I.ones_initializer()([3, 4], dtype=dtype)
    want = I._as_dtype(dtype)
    for a in (z, o):
        assert isinstance(a, np.ndarray) and a.shape == (3, 4) and a.dtype == want
    assert not z.astype(np.complex128).any()
    assert (o.astype(np.complex128) == 1).all()


def test_zeros_default_dtype_and_scalar_and_strings():
    assert I.zeros_initializer()(()).dtype == np.float32
    assert I.zeros_initializer(dtype="int64")((2,)).dtype == np.int64
    s = I.zeros_initializer()((2, 2), "string")
    assert s.dtype == object and (s == b"").all()
    with pytest.raises(ValueError):
        I.ones_initializer()((2,), "string")


def test_constant_scalar_broadcast_and_array():
    c = I.constant_initializer(-3.5)((2, 3), np.float32)
    assert c.dtype == np.float32 and (c == -3.5).all()
    c = I.constant_initializer([[1, 2, 3], [4, 5, 6]])((2, 3), np.int32)
    np.testing.assert_array_equal(c, [[1, 2, 3], [4, 5, 6]])
    # Same number of elements, another shape: reshaped in row-major order (TF v1).
    c = I.constant_initializer([1, 2, 3, 4, 5, 6])((3, 2), np.float64)
    np.testing.assert_array_equal(c, [[1, 2], [3, 4], [5, 6]])


def test_constant_pads_with_last_element_like_tf1():
    c = I.constant_initializer([1, 2])((2, 2), np.int32)
    np.testing.assert_array_equal(c, [[1, 2], [2, 2]])


def test_constant_errors():
    with pytest.raises(ValueError, match="Too many elements provided. Takes at most 4, but got 6."):
        I.constant_initializer(np.arange(6))((2, 2), np.int32)
    with pytest.raises(TypeError, match="Expected Tensor's shape"):
        I.constant_initializer([1, 2, 3, 4], verify_shape=True)((2, 2), np.int32)
    with pytest.raises(TypeError):
        I.constant_initializer({"a": 1})
    with pytest.raises(ValueError):
        I.constant_initializer([])((2,), np.float32)


def test_constant_does_not_alias_the_value():
    value = np.arange(4, dtype=np.float32)
    c = I.constant_initializer(value)((4,), np.float32)
    c[0] = 99
    assert value[0] == 0


def test_constant_strings():
    c = I.constant_initializer(b"init")((2, 3), "string")
    assert c.dtype == object and c.shape == (2, 3) and all(x == b"init" for x in c.flat)
    c = I.constant_initializer(["a", b"b"])((2,), np.dtype(object))
    assert list(c) == [b"a", b"b"]  # str is UTF-8 encoded, as TF does


def test_constant_complex_and_bool_and_bf16():
    assert (I.constant_initializer(-3.5)((2,), np.complex128) == -3.5).all()
    assert I.constant_initializer(True)((2,), np.bool_).all()
    b = I.constant_initializer(-3.5)((2,), "bfloat16")
    assert b.dtype == BF16 and (b.astype(np.float32) == -3.5).all()


def test_constant_full_value_for_a_part_is_sliced():
    full = np.arange(20, dtype=np.float32).reshape(10, 2)
    info = PartitionInfo(full_shape=(10, 2), var_offset=(4, 0))
    part = I.constant_initializer(full)((3, 2), np.float32, partition_info=info)
    np.testing.assert_array_equal(part, full[4:7])


# ---------------------------------------------------------------- random


@pytest.mark.parametrize(
    "make",
    [
        lambda s: I.random_normal_initializer(seed=s),
        lambda s: I.random_uniform_initializer(seed=s),
        lambda s: I.truncated_normal_initializer(seed=s),
        lambda s: I.glorot_uniform_initializer(seed=s),
        lambda s: I.glorot_normal_initializer(seed=s),
    ],
)
def test_seeded_initializers_are_deterministic(make):
    a = make(7)((20, 5), np.float32)
    b = make(7)((20, 5), np.float32)
    c = make(8)((20, 5), np.float32)
    d, e = make(None)((20, 5), np.float32), make(None)((20, 5), np.float32)
    assert a.dtype == np.float32 and a.shape == (20, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(d, e)


def test_random_normal_moments():
    x = I.random_normal_initializer(mean=2.0, stddev=0.5, seed=1)((200, 100), np.float64)
    assert x.dtype == np.float64
    assert abs(x.mean() - 2.0) < 0.01 and abs(x.std() - 0.5) < 0.01


def test_random_uniform_range_floats_and_ints():
    x = I.random_uniform_initializer(-1.0, 3.0, seed=1)((100, 100), np.float32)
    assert x.min() >= -1.0 and x.max() < 3.0 and abs(x.mean() - 1.0) < 0.05
    d = I.random_uniform_initializer(seed=2)((1000,), np.float32)  # maxval None -> [0, 1)
    assert d.min() >= 0.0 and d.max() < 1.0
    n = I.random_uniform_initializer(5, 9, seed=3)((1000,), np.int32)
    assert n.dtype == np.int32 and set(np.unique(n)) == {5, 6, 7, 8}
    with pytest.raises(ValueError, match="Must specify maxval for integer dtype"):
        I.random_uniform_initializer(seed=1)((3,), np.int64)


def test_truncated_normal_within_two_stddev():
    mean, std = 1.0, 0.5
    x = I.truncated_normal_initializer(mean, std, seed=3)((300, 100), np.float32)
    assert x.min() >= mean - 2 * std and x.max() <= mean + 2 * std
    # stddev of a standard normal truncated to (-2, 2) is 0.8796...
    assert abs(x.std() - std * 0.87962566103423978) < 0.01


def test_truncated_normal_low_precision():
    x = I.truncated_normal_initializer(0.0, 1.0, seed=4)((5000,), "bfloat16")
    assert x.dtype == BF16
    f = x.astype(np.float32)
    assert f.min() >= -2.0 and f.max() <= 2.0


def test_random_needs_floating_dtype():
    with pytest.raises(ValueError, match="floating point"):
        I.random_normal_initializer()((3,), np.int32)
    with pytest.raises(ValueError, match="floating point"):
        I.glorot_uniform_initializer()((3,), np.complex64)


def test_glorot_uniform_bounds():
    # limit = sqrt(6 / (fan_in + fan_out)) = sqrt(6 / 80)
    limit = math.sqrt(6 / 80)
    x = I.glorot_uniform_initializer(seed=5)((30, 50), np.float32)
    assert np.abs(x).max() <= limit
    assert np.abs(x).max() > 0.95 * limit  # really uses the range
    assert I.glorot_uniform_initializer().limits((30, 50)) == ("uniform", pytest.approx(limit))


def test_glorot_uses_full_shape_of_a_partitioned_variable():
    # Part [30, 50] of a [300, 50] variable: fans 300 and 50, limit sqrt(6 / 350) = 0.131,
    # not the part's sqrt(6 / 80) = 0.274.
    info = PartitionInfo(full_shape=(300, 50), var_offset=(60, 0))
    x = I.glorot_uniform_initializer(seed=5)((30, 50), np.float32, partition_info=info)
    assert np.abs(x).max() <= math.sqrt(6 / 350)


def test_compute_fans():
    assert I._compute_fans(()) == (1, 1)
    assert I._compute_fans((7,)) == (7, 7)
    assert I._compute_fans((3, 5)) == (3, 5)
    # conv kernel 3x3x16 -> 32: receptive field 9; fan_in 144, fan_out 288
    assert I._compute_fans((3, 3, 16, 32)) == (144, 288)


def test_variance_scaling_limits():
    vs = I.variance_scaling_initializer(scale=2.0, mode="fan_in")
    kind, std = vs.limits((100, 10))
    assert kind == "truncated_normal" and std == pytest.approx(math.sqrt(2.0 / 100) / 0.87962566103423978)
    kind, lim = I.variance_scaling_initializer(mode="fan_out", distribution="uniform").limits((100, 10))
    assert kind == "uniform" and lim == pytest.approx(math.sqrt(3.0 / 10))
    with pytest.raises(ValueError):
        I.variance_scaling_initializer(scale=0)
    with pytest.raises(ValueError):
        I.variance_scaling_initializer(mode="fan_sideways")


def test_parts_get_distinct_streams_and_part_zero_matches_unpartitioned():
    init = I.random_normal_initializer(seed=11)
    whole = init((4, 3), np.float32)
    p0 = init((4, 3), np.float32, partition_info=PartitionInfo((8, 3), (0, 0)))
    p1 = init((4, 3), np.float32, partition_info=PartitionInfo((8, 3), (4, 0)))
    np.testing.assert_array_equal(whole, p0)
    assert not np.array_equal(p0, p1)


def test_initializer_classes_are_tf_names():
    # TF's lower-case names are the classes, so an uncalled name can be instantiated.
    assert I.zeros_initializer is I.Zeros and I.glorot_uniform_initializer is I.GlorotUniform
    assert "seed=3" in repr(I.random_normal_initializer(seed=3))


def test_device_kind_index():
    assert I.device_kind_index("/device:GPU:3") == ("GPU", 3)
    assert I.device_kind_index("/device:CPU:0") == ("CPU", 0)
    assert I.device_kind_index(None) == ("CPU", 0)
    with pytest.raises(ValueError):
        I.device_kind_index("gpu")


def test_explicit_cpu_device():
    x = I.random_uniform_initializer(seed=1)((3,), np.float32, device="/device:CPU:0")
    assert isinstance(x, np.ndarray)


@pytest.mark.gpu
def test_initializers_on_gpu():
    import cupy

    dev = "/device:GPU:0"
    for init in (
        I.zeros_initializer(),
        I.ones_initializer(),
        I.constant_initializer(-3.5),
        I.random_normal_initializer(seed=1),
        I.random_uniform_initializer(seed=1),
        I.truncated_normal_initializer(seed=1),
        I.glorot_uniform_initializer(seed=1),
    ):
        x = init((64, 8), np.float32, device=dev)
        assert isinstance(x, cupy.ndarray) and x.device.id == 0
        assert x.shape == (64, 8) and x.dtype == np.float32
    t = I.truncated_normal_initializer(seed=2)((10000,), np.float32, device=dev)
    assert float(cupy.abs(t).max()) <= 2.0
    a = I.glorot_uniform_initializer(seed=3)((30, 50), np.float32, device=dev)
    b = I.glorot_uniform_initializer(seed=3)((30, 50), np.float32, device=dev)
    assert bool((a == b).all()) and float(cupy.abs(a).max()) <= math.sqrt(6 / 80)
    # Strings stay on the host whatever the device.
    s = I.constant_initializer(b"x")((2,), "string", device=dev)
    assert isinstance(s, np.ndarray)
    h = I.constant_initializer(-3.5)((4,), "float16", device=dev)
    assert isinstance(h, cupy.ndarray) and h.dtype == np.float16
