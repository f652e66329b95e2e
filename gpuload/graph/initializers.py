"""TensorFlow 1's variable initializers, computed on the variable's device.

Each initializer is a callable ``init(shape, dtype=None, partition_info=None, *,
device=None) -> array``: a numpy array for a CPU device, a CuPy array on that GPU for a
GPU device (``device`` is a canonical string such as ``"/device:GPU:0"``; ``None`` means
the CPU). The class names and constructor signatures are those of
``tensorflow/python/ops/init_ops.py`` (``tf.compat.v1``), and the lower-case names
(``zeros_initializer``...) are aliases of the classes, as in TensorFlow, so both
``initializer=zeros_initializer()`` and ``initializer=zeros_initializer`` work.

Random values
-------------
The distributions, bounds and fan arithmetic are TensorFlow's; the random streams are not
(TensorFlow's Philox streams depend on its graph seed and op counter). With a ``seed`` the
values are deterministic for a given shape, dtype, device kind and part; with
``seed=None`` every call draws fresh values. For a part of a partitioned variable the
part's offset is mixed into the seed, so parts of equal shape get different values
(TensorFlow gives them identical ones).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence

import numpy as np

from gpuload.devices import Device
from gpuload.format.dtypes import as_numpy_dtype

__all__ = [
    "PartitionInfo",
    "Initializer",
    "Zeros",
    "Ones",
    "Constant",
    "RandomUniform",
    "RandomNormal",
    "TruncatedNormal",
    "VarianceScaling",
    "GlorotUniform",
    "GlorotNormal",
    "zeros_initializer",
    "ones_initializer",
    "constant_initializer",
    "random_uniform_initializer",
    "random_normal_initializer",
    "truncated_normal_initializer",
    "variance_scaling_initializer",
    "glorot_uniform_initializer",
    "glorot_normal_initializer",
]


@dataclasses.dataclass(frozen=True)
class PartitionInfo:
    """Where a part lies in its partitioned variable (TensorFlow's ``_PartitionInfo``).

    Passed to initializers that accept ``partition_info`` so that, for instance, Glorot
    computes its fans from the full shape rather than from the part's.
    """

    full_shape: tuple[int, ...]
    var_offset: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "full_shape", tuple(int(d) for d in self.full_shape))
        object.__setattr__(self, "var_offset", tuple(int(d) for d in self.var_offset))
        if len(self.full_shape) != len(self.var_offset):
            raise ValueError(f"full_shape {self.full_shape} and var_offset {self.var_offset} differ in rank")


# --------------------------------------------------------------------------- helpers


def _as_dtype(dtype) -> np.dtype:
    """Any dtype spelling (numpy, ml_dtypes, TensorFlow name) as a numpy dtype."""
    return as_numpy_dtype(dtype)


def _is_string(dt: np.dtype) -> bool:
    return dt.kind in "OSU"


def _is_floating(dt: np.dtype) -> bool:
    # ml_dtypes' floats (bfloat16, float8_*) are numpy "V" kinds, not np.floating.
    return dt.kind == "f" or (dt.kind == "V" and dt.name.startswith(("bfloat", "float")))


def _is_integer(dt: np.dtype) -> bool:
    return dt.kind in "iu" or (dt.kind == "V" and dt.name.startswith(("int", "uint")))


def _shape(shape) -> tuple[int, ...]:
    if shape is None:
        raise ValueError("an initializer needs a fully defined shape, got None")
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        dims = (operator.index(shape),)
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimension in shape {dims}")
    return dims


def device_kind_index(device: str | None) -> tuple[str, int]:
    """``"/device:GPU:1"`` -> ``("GPU", 1)``; ``None`` -> ``("CPU", 0)``.

    Only canonical strings are taken (the variable store canonicalises every device when
    it places a variable); anything else is a bug upstream and raises ``ValueError``.
    """
    if device is None:
        return "CPU", 0
    d = Device.parse(device)
    if str(d) != device:
        raise ValueError(f"not a canonical device string: {device!r} (expected {str(d)!r})")
    return d.kind, d.index


class _OnDevice:
    """The array module and current-device context for a canonical device string."""

    def __init__(self, device: str | None, dtype: np.dtype):
        kind, index = device_kind_index(device)
        # Strings never live on a GPU (TensorFlow keeps them on the host too).
        self.gpu = kind == "GPU" and not _is_string(dtype)
        if self.gpu:
            import cupy

            self.xp = cupy
            self._ctx = cupy.cuda.Device(index)
        else:
            self.xp = np
            self._ctx = None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False

    def rng(self, seed, partition_info):
        return _Rng(self.xp, seed, partition_info)


class _Rng:
    """One interface over numpy's Generator and CuPy's RandomState, seeded per part."""

    def __init__(self, xp, seed, partition_info: PartitionInfo | None):
        if seed is None:
            ss = np.random.SeedSequence()
        else:
            entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF]
            if partition_info is not None and any(partition_info.var_offset):
                # Parts of one variable get distinct streams; part 0 (offset 0) gets the
                # same stream as an unpartitioned variable.
                entropy += list(partition_info.var_offset)
            ss = np.random.SeedSequence(entropy)
        self.xp = xp
        if xp is np:
            self._g = np.random.default_rng(ss)
        else:
            self._g = xp.random.RandomState(int(ss.generate_state(1, np.uint64)[0] >> 1))

    def standard_normal(self, shape, dt):
        return self._g.standard_normal(shape, dtype=dt)

    def uniform01(self, shape, dt):
        """Uniform on [0, 1)."""
        if self.xp is np:
            return self._g.random(shape, dtype=dt)
        return self._g.random_sample(shape, dtype=dt)

    def integers(self, low, high, shape, dt):
        """Uniform integers on [low, high)."""
        if self.xp is np:
            return self._g.integers(low, high, size=shape, dtype=dt)
        return self._g.randint(low, high, size=shape, dtype=dt)


def _compute_dtype(dt: np.dtype) -> np.dtype:
    """The dtype random values are drawn in before the cast to ``dt``."""
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


def _compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """TensorFlow's ``_compute_fans`` (``init_ops.py``)."""
    if len(shape) < 1:  # scalars
        fan_in = fan_out = 1
    elif len(shape) == 1:
        fan_in = fan_out = shape[0]
    elif len(shape) == 2:
        fan_in, fan_out = shape[0], shape[1]
    else:
        # Convolution kernels (..., input_depth, depth).
        receptive_field_size = math.prod(shape[:-2])
        fan_in = shape[-2] * receptive_field_size
        fan_out = shape[-1] * receptive_field_size
    return int(fan_in), int(fan_out)


def as_bytes_array(value, shape=None) -> np.ndarray:
    """An object array of ``bytes`` (TensorFlow strings); ``str`` is UTF-8 encoded."""
    arr = np.array(value, dtype=object)
    flat = arr.reshape(-1)
    for i, x in enumerate(flat):
        if isinstance(x, str):
            flat[i] = x.encode("utf-8")
        elif isinstance(x, (bytes, bytearray, memoryview, np.bytes_)):
            flat[i] = bytes(x)
        else:
            raise TypeError(f"a string variable needs bytes or str elements, got {type(x).__name__}: {x!r}")
    out = flat.reshape(arr.shape)
    return out if shape is None else out.reshape(shape)


def _full(shape, dt: np.dtype, fill, device) -> object:
    if _is_string(dt):
        out = np.empty(shape, dtype=object)
        out.fill(fill)
        return out
    with _OnDevice(device, dt) as on:
        return on.xp.full(shape, fill, dtype=dt)


# --------------------------------------------------------------------------- initializers


class Initializer:
    """Base class: ``init(shape, dtype=None, partition_info=None, *, device=None)``.

    ``dtype=None`` uses the dtype given to the constructor (float32 by default).
    """

    def __init__(self, dtype=np.float32):
        self.dtype = _as_dtype(dtype)

    def __call__(self, shape, dtype=None, partition_info=None, *, device=None):
        raise NotImplementedError

    def _resolve(self, shape, dtype) -> tuple[tuple[int, ...], np.dtype]:
        return _shape(shape), self.dtype if dtype is None else _as_dtype(dtype)

    def get_config(self) -> dict:
        """Constructor arguments (as TensorFlow's ``Initializer.get_config``)."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    """All zeros (``False`` for bool, ``b""`` for strings)."""

    def __call__(self, shape, dtype=None, partition_info=None, *, device=None):
        shape, dt = self._resolve(shape, dtype)
        return _full(shape, dt, b"" if _is_string(dt) else 0, device)

    def get_config(self):
        return {"dtype": self.dtype.name}


class Ones(Initializer):
    """All ones (``True`` for bool). Not defined for strings."""

    def __call__(self, shape, dtype=None, partition_info=None, *, device=None):
        shape, dt = self._resolve(shape, dtype)
        if _is_string(dt):
            raise ValueError("ones_initializer is not defined for string variables")
        return _full(shape, dt, 1, device)

    def get_config(self):
        return {"dtype": self.dtype.name}


class Constant(Initializer):
    """A constant: a scalar broadcast to the shape, or an array of values.

    As TensorFlow 1's ``constant_initializer`` (``verify_shape=False``), the values are
    taken in row-major order: an array with as many elements as the variable is reshaped
    to it, one with fewer elements is padded with its last element (a scalar is the
    one-element case), one with more elements is an error. ``verify_shape=True`` demands
    the exact shape.

    For a part of a partitioned variable (``partition_info`` given), a value with exactly
    as many elements as the *full* variable is reshaped to the full shape and the part's
    box is cut out of it. (TensorFlow rejects that case with "Too many elements".)
    """

    def __init__(self, value=0, dtype=np.float32, verify_shape=False):
        if not (np.isscalar(value) or isinstance(value, (list, tuple, np.ndarray, bytes, str))):
            raise TypeError(
                "Invalid type for initial value: %s (expected Python scalar, list or tuple "
                "of values, or numpy.ndarray)." % type(value).__name__
            )
        super().__init__(dtype)
        self.value = value
        self._verify_shape = bool(verify_shape)

    def __call__(self, shape, dtype=None, partition_info=None, *, device=None, verify_shape=None):
        shape, dt = self._resolve(shape, dtype)
        verify_shape = self._verify_shape if verify_shape is None else verify_shape
        if _is_string(dt):
            src = as_bytes_array(self.value)
        else:
            src = np.asarray(self.value).astype(dt, copy=False)
        n = math.prod(shape)
        if verify_shape and src.shape != shape:
            raise TypeError(f"Expected Tensor's shape: {shape}, got {src.shape}.")
        flat = src.reshape(-1)
        if n == 0:
            # An empty target takes nothing from the value (TF's make_tensor_proto).
            host = np.empty(shape, dtype=flat.dtype)
        elif partition_info is not None and flat.size != n and flat.size == math.prod(partition_info.full_shape):
            full = flat.reshape(partition_info.full_shape)
            index = tuple(slice(o, o + d) for o, d in zip(partition_info.var_offset, shape))
            host = np.ascontiguousarray(full[index])
        elif flat.size == n:
            host = flat.reshape(shape)
        elif flat.size > n:
            raise ValueError(f"Too many elements provided. Takes at most {n}, but got {flat.size}.")
        elif flat.size == 0:
            raise ValueError(f"constant_initializer has no value to fill shape {shape} with")
        else:
            host = np.empty(n, dtype=flat.dtype)
            host[: flat.size] = flat
            host[flat.size :] = flat[-1]
            host = host.reshape(shape)
        if _is_string(dt):
            return np.array(host, dtype=object, copy=True)
        with _OnDevice(device, dt) as on:
            # copy: the variable must never alias the caller's value.
            return on.xp.array(host, dtype=dt, copy=True)

    def get_config(self):
        return {"value": self.value, "dtype": self.dtype.name, "verify_shape": self._verify_shape}


class RandomUniform(Initializer):
    """Uniform on ``[minval, maxval)``; ``maxval=None`` means 1 for floats (required for ints)."""

    def __init__(self, minval=0.0, maxval=None, seed=None, dtype=np.float32):
        super().__init__(dtype)
        self.minval = minval
        self.maxval = maxval
        self.seed = seed

    def __call__(self, shape, dtype=None, partition_info=None, *, device=None):
        shape, dt = self._resolve(shape, dtype)
        with _OnDevice(device, dt) as on:
            rng = on.rng(self.seed, partition_info)
            if _is_integer(dt):
                if self.maxval is None:
                    raise ValueError(f"Must specify maxval for integer dtype {dt.name!r}")
                return rng.integers(int(self.minval), int(self.maxval), shape, dt)
            if not _is_floating(dt):
                raise ValueError(f"random_uniform_initializer does not support dtype {dt.name}")
            cdt = _compute_dtype(dt)
            maxval = 1.0 if self.maxval is None else self.maxval
            u = rng.uniform01(shape, cdt)
            # TensorFlow: rnd * (maxval - minval) + minval.
            return (u * cdt.type(maxval - self.minval) + cdt.type(self.minval)).astype(dt, copy=False)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed, "dtype": self.dtype.name}


def _require_float(dt: np.dtype, what: str) -> None:
    if not _is_floating(dt):
        raise ValueError(f"{what} needs a floating point dtype, got {dt.name}")


def _truncated_standard_normal(rng: _Rng, shape, cdt):
    """Standard normal values re-drawn until all lie within 2 standard deviations."""
    xp = rng.xp
    x = rng.standard_normal(shape, cdt)
    bad = xp.abs(x) > 2.0
    # ~4.6% of draws fall outside; each round shrinks the remainder 20-fold.
    while bool(bad.any()):
        n = int(bad.sum())
        x[bad] = rng.standard_normal((n,), cdt)
        bad = xp.abs(x) > 2.0
    return x


class RandomNormal(Initializer):
    """Normal with ``mean`` and ``stddev``."""

    def __init__(self, mean=0.0, stddev=1.0, seed=None, dtype=np.float32):
        super().__init__(dtype)
        self.mean = mean
        self.stddev = stddev
        self.seed = seed

    def __call__(self, shape, dtype=None, partition_info=None, *, device=None):
        shape, dt = self._resolve(shape, dtype)
        _require_float(dt, "random_normal_initializer")
        cdt = _compute_dtype(dt)
        with _OnDevice(device, dt) as on:
            x = on.rng(self.seed, partition_info).standard_normal(shape, cdt)
            return (x * cdt.type(self.stddev) + cdt.type(self.mean)).astype(dt, copy=False)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed, "dtype": self.dtype.name}


class TruncatedNormal(Initializer):
    """Normal with ``mean`` and ``stddev``, values beyond 2 standard deviations re-drawn."""

    def __init__(self, mean=0.0, stddev=1.0, seed=None, dtype=np.float32):
        super().__init__(dtype)
        self.mean = mean
        self.stddev = stddev
        self.seed = seed

    def __call__(self, shape, dtype=None, partition_info=None, *, device=None):
        shape, dt = self._resolve(shape, dtype)
        _require_float(dt, "truncated_normal_initializer")
        cdt = _compute_dtype(dt)
        with _OnDevice(device, dt) as on:
            x = _truncated_standard_normal(on.rng(self.seed, partition_info), shape, cdt)
            return (x * cdt.type(self.stddev) + cdt.type(self.mean)).astype(dt, copy=False)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed, "dtype": self.dtype.name}


class VarianceScaling(Initializer):
    """TensorFlow 1's ``variance_scaling_initializer``.

    ``scale`` is divided by ``fan_in``, ``fan_out`` or their mean (``mode``), computed from
    the *full* shape of a partitioned variable. ``distribution``: ``"truncated_normal"``
    (alias ``"normal"``; stddev ``sqrt(scale) / .87962566103423978``),
    ``"untruncated_normal"`` (stddev ``sqrt(scale)``) or ``"uniform"`` (limit
    ``sqrt(3 * scale)``).
    """

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None, dtype=np.float32):
        if scale <= 0.0:
            raise ValueError("`scale` must be positive float.")
        if mode not in {"fan_in", "fan_out", "fan_avg"}:
            raise ValueError(f"Invalid `mode` argument: {mode}")
        distribution = distribution.lower()
        if distribution not in {"normal", "uniform", "truncated_normal", "untruncated_normal"}:
            raise ValueError(f"Invalid `distribution` argument: {distribution}")
        super().__init__(dtype)
        self.scale = scale
        self.mode = mode
        self.distribution = distribution
        self.seed = seed

    def limits(self, shape, partition_info=None) -> tuple[str, float]:
        """``("uniform", limit)`` or ``("truncated_normal" | "untruncated_normal", stddev)``."""
        scale_shape = partition_info.full_shape if partition_info is not None else tuple(shape)
        fan_in, fan_out = _compute_fans(scale_shape)
        scale = self.scale
        if self.mode == "fan_in":
            scale /= max(1.0, fan_in)
        elif self.mode == "fan_out":
            scale /= max(1.0, fan_out)
        else:
            scale /= max(1.0, (fan_in + fan_out) / 2.0)
        if self.distribution in ("normal", "truncated_normal"):
            # Constant = stddev of a standard normal truncated to (-2, 2).
            return "truncated_normal", math.sqrt(scale) / 0.87962566103423978
        if self.distribution == "untruncated_normal":
            return "untruncated_normal", math.sqrt(scale)
        return "uniform", math.sqrt(3.0 * scale)

    def __call__(self, shape, dtype=None, partition_info=None, *, device=None):
        shape, dt = self._resolve(shape, dtype)
        _require_float(dt, type(self).__name__)
        kind, value = self.limits(shape, partition_info)
        cdt = _compute_dtype(dt)
        with _OnDevice(device, dt) as on:
            rng = on.rng(self.seed, partition_info)
            if kind == "uniform":
                u = rng.uniform01(shape, cdt)
                x = u * cdt.type(2 * value) + cdt.type(-value)
            elif kind == "truncated_normal":
                x = _truncated_standard_normal(rng, shape, cdt) * cdt.type(value)
            else:
                x = rng.standard_normal(shape, cdt) * cdt.type(value)
            return x.astype(dt, copy=False)

    def get_config(self):
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            "seed": self.seed,
            "dtype": self.dtype.name,
        }


class GlorotUniform(VarianceScaling):
    """Uniform on ``[-limit, limit)``, ``limit = sqrt(6 / (fan_in + fan_out))`` of the full shape."""

    def __init__(self, seed=None, dtype=np.float32):
        super().__init__(scale=1.0, mode="fan_avg", distribution="uniform", seed=seed, dtype=dtype)

    def get_config(self):
        return {"seed": self.seed, "dtype": self.dtype.name}


class GlorotNormal(VarianceScaling):
    """Truncated normal, ``stddev = sqrt(2 / (fan_in + fan_out)) / .8796...`` of the full shape."""

    def __init__(self, seed=None, dtype=np.float32):
        super().__init__(scale=1.0, mode="fan_avg", distribution="truncated_normal", seed=seed, dtype=dtype)

    def get_config(self):
        return {"seed": self.seed, "dtype": self.dtype.name}


# TensorFlow's tf.compat.v1 names are aliases of the classes.
zeros_initializer = Zeros
ones_initializer = Ones
constant_initializer = Constant
random_uniform_initializer = RandomUniform
random_normal_initializer = RandomNormal
truncated_normal_initializer = TruncatedNormal
variance_scaling_initializer = VarianceScaling
glorot_uniform_initializer = GlorotUniform
glorot_normal_initializer = GlorotNormal
