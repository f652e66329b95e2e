"""TensorFlow ``DataType`` codes and their NumPy counterparts.

Codes follow ``tensorflow/core/framework/types.proto``. Names are what TensorFlow
reports (``tf.DType.name``), e.g. in ``manifest.json``: ``float32``, ``bfloat16``,
``string``, ``qint8``. Quantized types map to the plain integer of the same width, as
their bytes are. ``DT_STRING`` maps to ``object`` (arrays of ``bytes``).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from gpuload.errors import UnsupportedCheckpointError

__all__ = [
    "DT_FLOAT",
    "DT_DOUBLE",
    "DT_INT32",
    "DT_UINT8",
    "DT_INT16",
    "DT_INT8",
    "DT_STRING",
    "DT_COMPLEX64",
    "DT_INT64",
    "DT_BOOL",
    "DT_QINT8",
    "DT_QUINT8",
    "DT_QINT32",
    "DT_BFLOAT16",
    "DT_QINT16",
    "DT_QUINT16",
    "DT_UINT16",
    "DT_COMPLEX128",
    "DT_HALF",
    "DT_RESOURCE",
    "DT_VARIANT",
    "DT_UINT32",
    "DT_UINT64",
    "SUPPORTED_CODES",
    "numpy_dtype",
    "as_numpy_dtype",
    "tf_code",
    "tf_name",
    "itemsize",
    "is_memcpyable",
    "is_supported",
]

DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_COMPLEX64, DT_INT64, DT_BOOL, DT_QINT8, DT_QUINT8, DT_QINT32 = 8, 9, 10, 11, 12, 13
DT_BFLOAT16, DT_QINT16, DT_QUINT16, DT_UINT16, DT_COMPLEX128, DT_HALF = 14, 15, 16, 17, 18, 19
DT_RESOURCE, DT_VARIANT, DT_UINT32, DT_UINT64 = 20, 21, 22, 23

# code -> (TF name, numpy dtype)
_TABLE: dict[int, tuple[str, np.dtype]] = {
    DT_FLOAT: ("float32", np.dtype(np.float32)),
    DT_DOUBLE: ("float64", np.dtype(np.float64)),
    DT_INT32: ("int32", np.dtype(np.int32)),
    DT_UINT8: ("uint8", np.dtype(np.uint8)),
    DT_INT16: ("int16", np.dtype(np.int16)),
    DT_INT8: ("int8", np.dtype(np.int8)),
    DT_STRING: ("string", np.dtype(object)),
    DT_COMPLEX64: ("complex64", np.dtype(np.complex64)),
    DT_INT64: ("int64", np.dtype(np.int64)),
    DT_BOOL: ("bool", np.dtype(np.bool_)),
    DT_QINT8: ("qint8", np.dtype(np.int8)),
    DT_QUINT8: ("quint8", np.dtype(np.uint8)),
    DT_QINT32: ("qint32", np.dtype(np.int32)),
    DT_BFLOAT16: ("bfloat16", np.dtype(ml_dtypes.bfloat16)),
    DT_QINT16: ("qint16", np.dtype(np.int16)),
    DT_QUINT16: ("quint16", np.dtype(np.uint16)),
    DT_UINT16: ("uint16", np.dtype(np.uint16)),
    DT_COMPLEX128: ("complex128", np.dtype(np.complex128)),
    DT_HALF: ("float16", np.dtype(np.float16)),
    DT_UINT32: ("uint32", np.dtype(np.uint32)),
    DT_UINT64: ("uint64", np.dtype(np.uint64)),
}
SUPPORTED_CODES = frozenset(_TABLE)

# Names of codes gpuload knows but cannot read, for error messages and listings.
_UNSUPPORTED_NAMES = {
    0: "invalid",
    DT_RESOURCE: "resource",
    DT_VARIANT: "variant",
    24: "float8_e5m2",
    25: "float8_e4m3fn",
    26: "float8_e4m3fnuz",
    27: "float8_e4m3b11fnuz",
    28: "float8_e5m2fnuz",
    29: "int4",
    30: "uint4",
    31: "int2",
    32: "uint2",
}

# numpy dtype -> code; the plain (non-quantized) code wins for shared dtypes
_FROM_NUMPY: dict[np.dtype, int] = {}
for _code in sorted(_TABLE, key=lambda c: c in (DT_QINT8, DT_QUINT8, DT_QINT32, DT_QINT16, DT_QUINT16)):
    _FROM_NUMPY.setdefault(_TABLE[_code][1], _code)

_NAMES: dict[str, int] = {name: code for code, (name, _) in _TABLE.items()}
_NAMES.update({"float": DT_FLOAT, "double": DT_DOUBLE, "half": DT_HALF})


def _unsupported(code, what=""):
    name = _UNSUPPORTED_NAMES.get(code)
    label = f"DT_{name.upper()} ({code})" if name else f"code {code}"
    reason = {
        0: "DT_INVALID never appears in a valid checkpoint",
        DT_RESOURCE: "resource handles are not saveable data",
        DT_VARIANT: "variant tensors (e.g. tf.data iterator state) are not supported",
    }.get(code, "not one of the types gpuload reads (TF DataType codes 1-19, 22, 23)")
    return UnsupportedCheckpointError(f"unsupported TensorFlow dtype {label}{what}: {reason}")


def _check(code) -> int:
    if isinstance(code, bool) or not isinstance(code, (int, np.integer)):
        raise TypeError(f"a TF DataType code must be an int, got {code!r}")
    code = int(code)
    if code not in _TABLE:
        raise _unsupported(code)
    return code


def is_supported(code: int) -> bool:
    """Whether gpuload can read tensors of this ``DataType`` code."""
    return code in _TABLE


def numpy_dtype(code: int) -> np.dtype:
    """The NumPy dtype for a TF ``DataType`` code.

    Raises
    ------
    UnsupportedCheckpointError
        For codes gpuload cannot read (0, 20 resource, 21 variant, >= 24), naming the code.
    """
    return _TABLE[_check(code)][1]


def tf_name(code: int) -> str:
    """TensorFlow's name for a code (``tf.DType.name``): ``"float32"``, ``"bfloat16"``, ...

    Names are also given for known but unreadable codes (``"variant"``, ``"resource"``)
    so that listings can show them; wholly unknown codes raise.
    """
    if isinstance(code, (int, np.integer)) and not isinstance(code, bool):
        if int(code) in _TABLE:
            return _TABLE[int(code)][0]
        if int(code) in _UNSUPPORTED_NAMES and int(code) != 0:
            return _UNSUPPORTED_NAMES[int(code)]
    raise (
        _unsupported(code)
        if isinstance(code, (int, np.integer))
        else TypeError(f"a TF DataType code must be an int, got {code!r}")
    )


def itemsize(code: int) -> int | None:
    """Bytes per element, or ``None`` for ``DT_STRING`` (variable length)."""
    code = _check(code)
    return None if code == DT_STRING else _TABLE[code][1].itemsize


def is_memcpyable(code: int) -> bool:
    """Whether the stored bytes are the raw row-major buffer (every supported type but string)."""
    return _check(code) != DT_STRING


def tf_code(dtype) -> int:
    """The TF ``DataType`` code for a NumPy dtype (or anything :func:`as_numpy_dtype` takes).

    Fixed-width byte strings (``S``) and unicode (``U``) map to ``DT_STRING`` like
    ``object``; byte order is ignored (the writer stores little-endian).
    """
    if isinstance(dtype, np.dtype) and dtype.kind in "SU":
        return DT_STRING
    dt = as_numpy_dtype(dtype)
    code = _FROM_NUMPY.get(dt.newbyteorder("=") if dt.byteorder not in "=|" else dt)
    if code is None:
        raise ValueError(f"numpy dtype {dt} has no TensorFlow DataType")
    return code


def as_numpy_dtype(x) -> np.dtype:
    """Normalise a dtype given in any common form to a NumPy dtype.

    Parameters
    ----------
    x:
        A NumPy dtype or scalar type (``np.float32``), ``ml_dtypes.bfloat16``, a TF
        ``DataType`` code (int), an object with ``as_numpy_dtype`` (a ``tf.DType``), or a
        name: TensorFlow's (``"float32"``, ``"float"``, ``"half"``, ``"bfloat16"``,
        ``"string"``, ``"qint8"``, ...) or NumPy's (``"f4"``, ``"<i8"``).

    Raises
    ------
    ValueError
        For names and types with no TensorFlow counterpart.
    """
    if isinstance(x, np.dtype):
        dt = x
    elif isinstance(x, str):
        key = x.strip().lower()
        if key.startswith("tf."):
            key = key[3:]
        if key in _NAMES:
            return _TABLE[_NAMES[key]][1]
        if key in ("resource", "variant") or key.endswith("_ref"):
            raise ValueError(f"dtype {x!r} is not a data type gpuload reads or writes")
        try:
            dt = np.dtype(x)
        except TypeError:
            raise ValueError(f"unknown dtype name {x!r} (expected e.g. 'float32', 'bfloat16', 'string')") from None
    elif isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        try:
            return numpy_dtype(int(x))
        except UnsupportedCheckpointError as e:
            raise ValueError(str(e)) from None
    elif hasattr(x, "as_numpy_dtype") and not isinstance(x, type):
        return as_numpy_dtype(x.as_numpy_dtype)
    else:
        try:
            dt = np.dtype(x)
        except TypeError:
            raise ValueError(f"not a dtype: {x!r}") from None
    if dt.kind in "SU":
        return np.dtype(object)
    native = dt.newbyteorder("=") if dt.byteorder not in "=|" else dt
    if native not in _FROM_NUMPY:
        raise ValueError(f"dtype {x!r} ({dt}) has no TensorFlow DataType")
    return native
