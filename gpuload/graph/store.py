"""A TensorFlow-1-style variable store: ``variable_scope``, ``get_variable`` and friends.

This is the part of ``tf.compat.v1`` that ``init_from_checkpoint`` works against: variables
created through :func:`get_variable` are recorded in the default store under their
scoped name (``"outer/inner/name"``, without ``":0"``); a partitioned variable is recorded
as its parts ``NAME/part_0``, ``NAME/part_1``, ... exactly as TensorFlow's
``_VariableStore._vars`` holds them. ``init_from_checkpoint`` resolves names against
:attr:`_VariableStore.vars` and marks variables with a checkpoint source; running
:func:`global_variables_initializer` then loads those from the checkpoint and runs every
other variable's own initializer.

A variable's value is a device array that exists only after initialization: a numpy array
for ``/device:CPU:0``, a CuPy array for ``/device:GPU:N``. String variables always live
on the CPU.

Differences from TensorFlow
---------------------------
* Several axes of one variable may be partitioned (TensorFlow: one). Parts are numbered
  row-major over the grid of per-axis parts.
* ``device=`` of :func:`get_variable` takes a device string, and for a partitioned
  variable also a list (one per part) or a callable ``part_index -> device``.
* A value used as ``initializer`` (a numpy array or Python scalar/list, the analogue of a
  TensorFlow ``Tensor``) may come with a ``shape`` if the shapes agree (TensorFlow forbids
  any ``shape`` there).
* Random initializers are seeded per part (see :mod:`gpuload.graph.initializers`).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import inspect
import operator
import re
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from gpuload.errors import UninitializedVariableError
from gpuload.format.dtypes import as_numpy_dtype
from gpuload.format.slices import Box
from gpuload.graph import initializers as _init
from gpuload.graph.initializers import PartitionInfo, device_kind_index
from gpuload.graph.partition import part_boxes, validate_partitions

__all__ = [
    "AUTO_REUSE",
    "Graph",
    "InitOp",
    "PartitionedVariable",
    "SaveSliceInfo",
    "UninitializedVariableError",
    "Variable",
    "VariableScope",
    "device",
    "get_default_graph",
    "get_variable",
    "get_variable_scope",
    "global_variables",
    "global_variables_initializer",
    "reset_default_graph",
    "trainable_variables",
    "variable_scope",
    "variables_initializer",
]

CPU = "/device:CPU:0"

# TensorFlow's op-name and scope-name grammars (tensorflow/python/framework/ops.py).
_VALID_OP_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/>]*$")
_VALID_SCOPE_NAME = re.compile(r"^[A-Za-z0-9_.\-/>]*$")


class _ReuseMode(enum.Enum):
    """``AUTO_REUSE``: return the variable if it exists, create it otherwise."""

    AUTO_REUSE = 1

    def __repr__(self):
        return "AUTO_REUSE"


AUTO_REUSE = _ReuseMode.AUTO_REUSE


# --------------------------------------------------------------------------- helpers


def _task_of(spec):
    from gpuload.distributed.placement import task_of  # pure string parsing, no MPI

    return task_of(spec)


def _placement():
    # Imported late: the device layer may import CuPy, and the store must import without it.
    from gpuload.backend import placement

    return placement


def _as_dtype(dtype) -> np.dtype:
    """numpy dtype, ``ml_dtypes.bfloat16`` or a TensorFlow name (``"float32"``) -> numpy dtype."""
    return as_numpy_dtype(dtype)


def _is_string(dt: np.dtype) -> bool:
    return dt.kind in "OSU"


def _as_shape(shape) -> tuple[int, ...] | None:
    """``None``, an int or a sequence of ints -> ``None`` or a tuple of non-negative ints."""
    if shape is None:
        return None
    if hasattr(shape, "as_list"):  # a TensorFlow TensorShape, should one be passed
        shape = shape.as_list()
    try:
        dims = [shape] if isinstance(shape, (int, np.integer)) else list(shape)
    except TypeError:
        raise TypeError(f"shape must be None, an int or a sequence of ints, got {shape!r}") from None
    out = []
    for d in dims:
        if d is None:
            raise ValueError(f"shape {tuple(dims)} is not fully defined; gpuload needs every dimension")
        try:
            d = operator.index(d)
        except TypeError:
            raise TypeError(f"shape {shape!r} has a non-integer dimension {d!r}") from None
        if d < 0:
            raise ValueError(f"shape {tuple(dims)} has a negative dimension")
        out.append(d)
    return tuple(out)


def _shape_str(shape) -> str:
    return "<unknown>" if shape is None else str(tuple(shape))


def _to_host_numpy(x):
    """A numpy view of ``x`` (CuPy arrays copied to the host)."""
    if type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    return x


def _to_device(x, dev: str, dtype: np.dtype, shape: tuple[int, ...] | None = None):
    """A fresh array on ``dev`` holding ``x`` cast to ``dtype`` (never aliasing ``x``)."""
    if _is_string(dtype):
        arr = _init.as_bytes_array(_to_host_numpy(x))
        out = np.array(arr, dtype=object, copy=True)
    else:
        kind, index = device_kind_index(dev)
        if kind == "GPU":
            import cupy

            with cupy.cuda.Device(index):
                out = cupy.array(x, dtype=dtype, copy=True)
        else:
            out = np.array(_to_host_numpy(x), dtype=dtype, copy=True)
    if shape is not None and tuple(out.shape) != tuple(shape):
        raise ValueError(f"initial value has shape {tuple(out.shape)}, expected {tuple(shape)}")
    return out


def _infer_value(value, dtype: np.dtype | None) -> np.ndarray:
    """A constant ``initializer`` as a host array, with TensorFlow's dtype inference.

    Without an explicit dtype, numpy values keep theirs and Python values convert as
    ``tf.convert_to_tensor`` does: float -> float32, int -> int32 (int64 if too large),
    str/bytes -> string.
    """
    value = _to_host_numpy(value)
    is_numpy = isinstance(value, (np.ndarray, np.generic))
    if dtype is not None:
        if _is_string(dtype):
            return _init.as_bytes_array(value)
        if is_numpy and np.asarray(value).dtype != dtype:
            raise ValueError(
                f"Initializer type '{np.asarray(value).dtype.name}' and explicit dtype '{dtype.name}' don't match."
            )
        return np.array(value, dtype=dtype)
    arr = np.array(value)
    if arr.dtype.kind in "SUO":
        return _init.as_bytes_array(value)
    if not is_numpy:
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind == "i":
            info = np.iinfo(np.int32)
            if arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max):
                arr = arr.astype(np.int32)
    return arr


def _accepts_partition_info(fn) -> bool:
    """Whether a user initializer names a ``partition_info`` parameter (TF's getargspec test)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("partition_info")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _call_partitioner(partitioner, shape: tuple[int, ...], dtype: np.dtype):
    """Call ``partitioner`` as TensorFlow does (``shape=..., dtype=...``), or positionally.

    TensorFlow passes keywords, so TF-style partitioners such as ``(shape, **unused)``
    work; a callable whose parameters are not named ``shape``/``dtype`` (``lambda s, d:``)
    gets them positionally.
    """
    try:
        inspect.signature(partitioner).bind(shape=shape, dtype=dtype)
    except TypeError:
        return partitioner(shape, dtype)
    except ValueError:  # no signature (some builtins): TensorFlow's way
        pass
    return partitioner(shape=shape, dtype=dtype)


def _creation_frames() -> list:
    """Where a variable is being created, without gpuload's own frames (for errors)."""
    stack = traceback.extract_stack(limit=16)[:-1]
    frames = [f for f in stack if "gpuload/graph/" not in f.filename.replace("\\", "/")]
    return frames[-5:]


# --------------------------------------------------------------------------- SaveSliceInfo


class SaveSliceInfo:
    """Which part of a partitioned variable a part variable is (TF's ``Variable.SaveSliceInfo``).

    Parameters
    ----------
    full_name:
        The partitioned variable's name (``"scope/v"``), the checkpoint key of the whole.
    full_shape:
        The whole variable's shape.
    var_offset:
        Where the part starts, per axis.
    var_shape:
        The part's shape.
    """

    __slots__ = ("full_name", "full_shape", "var_offset", "var_shape")

    def __init__(self, full_name: str, full_shape, var_offset, var_shape):
        self.full_name = full_name
        self.full_shape = [int(d) for d in full_shape]
        self.var_offset = [int(d) for d in var_offset]
        self.var_shape = [int(d) for d in var_shape]
        if not (len(self.full_shape) == len(self.var_offset) == len(self.var_shape)):
            raise ValueError(
                f"SaveSliceInfo ranks differ: full_shape {self.full_shape}, "
                f"var_offset {self.var_offset}, var_shape {self.var_shape}"
            )

    @property
    def spec(self) -> str:
        """TensorFlow's shape-and-slice string, e.g. ``"100 100 20,20:0,100"``."""
        full_shape_str = " ".join("%d" % d for d in self.full_shape) + " "
        sl_spec = ":".join("%d,%d" % (o, s) for o, s in zip(self.var_offset, self.var_shape))
        return full_shape_str + sl_spec

    @property
    def box(self) -> Box:
        """The part's region of the full variable."""
        return Box(tuple(self.var_offset), tuple(self.var_shape))

    def __eq__(self, other):
        if not isinstance(other, SaveSliceInfo):
            return NotImplemented
        return (self.full_name, self.full_shape, self.var_offset, self.var_shape) == (
            other.full_name,
            other.full_shape,
            other.var_offset,
            other.var_shape,
        )

    def __hash__(self):
        return hash((self.full_name, tuple(self.full_shape), tuple(self.var_offset), tuple(self.var_shape)))

    def __repr__(self):
        return f"SaveSliceInfo({self.full_name!r}, spec={self.spec!r})"


# --------------------------------------------------------------------------- Variable


class Variable:
    """A variable created by :func:`get_variable`: a named, typed buffer on one device.

    Not created directly; use :func:`get_variable`.

    Attributes
    ----------
    name : str
        TensorFlow's tensor name, ``"scope/v:0"``.
    op : object
        ``op.name`` is the store key and checkpoint key, ``"scope/v"``.
    shape : tuple of int
    dtype : numpy.dtype
    device : str
        Canonical device string, ``"/device:CPU:0"`` or ``"/device:GPU:N"``.
    trainable : bool

    Notes
    -----
    Two hooks belong to the loader: ``_init_source`` (``None`` unless
    ``init_from_checkpoint`` gave the variable a checkpoint source; then the
    initializer run loads it instead of running the variable's own initializer) and
    :meth:`_assign`, which installs a device array as the value.
    """

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        device: str,
        initializer_fn: Callable[[], object],
        *,
        trainable: bool = True,
        save_slice_info: SaveSliceInfo | None = None,
        _frames=None,
    ):
        self._op = types.SimpleNamespace(name=name, device=device)
        self._shape = tuple(shape)
        self._dtype = np.dtype(dtype)
        self._device = device
        self._initializer_fn = initializer_fn
        self._trainable = bool(trainable)
        self._save_slice_info = save_slice_info
        self._init_source = None
        self._value = None
        self._task = None  # the task of a '/job:w/task:K/...' device: its rank under a communicator
        self._not_local = None  # set by a collective run on ranks other than _task (no buffer here)
        self._frames = _frames or []

    # ---- identity

    @property
    def name(self) -> str:
        """``"scope/v:0"``."""
        return self._op.name + ":0"

    @property
    def op(self):
        """A namespace whose ``name`` is ``"scope/v"`` (and ``device`` the device)."""
        return self._op

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def get_shape(self) -> tuple[int, ...]:
        """The shape (a tuple; prints as TensorFlow's ``TensorShape`` does)."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def device(self) -> str:
        return self._device

    @property
    def trainable(self) -> bool:
        return self._trainable

    @property
    def initializer(self) -> InitOp:
        """An :class:`InitOp` initializing only this variable."""
        return InitOp([self], name=self._op.name + "/Assign")

    def _set_save_slice_info(self, save_slice_info: SaveSliceInfo) -> None:
        self._save_slice_info = save_slice_info

    # ---- value

    def is_initialized(self) -> bool:
        """Whether a value has been installed."""
        return self._value is not None

    def value(self):
        """The value on the variable's device (numpy on the CPU, CuPy on a GPU); not a copy.

        Raises
        ------
        UninitializedVariableError
            Before any initializer ran.
        """
        if self._value is None and self._not_local is not None:
            raise self._not_local(self)
        if self._value is None:
            raise UninitializedVariableError(
                f"variable {self.name!r} is not initialized; run "
                "gpuload.global_variables_initializer().run() (or variable.initializer.run()) first"
            )
        return self._value

    def numpy(self) -> np.ndarray:
        """A host copy of the value."""
        v = self.value()
        if isinstance(v, np.ndarray):
            return v.copy()
        return _placement().backend_for(self._device).to_host(v)

    def eval(self, session=None) -> np.ndarray:
        """TensorFlow's ``Variable.eval``: a host copy of the value (``session`` is ignored)."""
        return self.numpy()

    def _assign(self, array) -> None:
        """Install ``array`` as the value (the loader's and the initializers' hook).

        ``array`` must be a numpy array for a CPU variable, a CuPy array on the right GPU
        for a GPU variable, with the variable's shape and dtype. It is kept, not copied.

        Raises
        ------
        TypeError
            ``array`` is not the right kind of array for the device.
        ValueError
            Wrong shape, dtype or GPU.
        """
        kind, index = device_kind_index(self._device)
        if kind == "GPU":
            import cupy

            if not isinstance(array, cupy.ndarray):
                raise TypeError(
                    f"cannot assign {type(array).__module__}.{type(array).__name__} to "
                    f"{self.name!r} on {self._device}: a CuPy array is required"
                )
            if array.device.id != index:
                raise ValueError(f"cannot assign an array on GPU {array.device.id} to {self.name!r} on {self._device}")
        elif not isinstance(array, np.ndarray):
            raise TypeError(
                f"cannot assign {type(array).__module__}.{type(array).__name__} to "
                f"{self.name!r} on {self._device}: a numpy array is required"
            )
        if tuple(array.shape) != self._shape:
            raise ValueError(
                f"cannot assign a value of shape {tuple(array.shape)} to {self.name!r} of shape {self._shape}"
            )
        if np.dtype(array.dtype) != self._dtype:
            raise ValueError(
                f"cannot assign a value of dtype {np.dtype(array.dtype).name} to "
                f"{self.name!r} of dtype {self._dtype.name}"
            )
        self._value = array

    # ---- interop

    def __array__(self, dtype=None, copy=None):
        v = self.value()
        if isinstance(v, np.ndarray):
            if dtype is not None:
                v = v.astype(dtype, copy=False)
            return v.copy() if copy else v
        if copy is False:
            raise ValueError(f"{self.name!r} lives on {self._device}; converting it to numpy needs a copy")
        host = self.numpy()
        return host if dtype is None else host.astype(dtype, copy=False)

    @property
    def __cuda_array_interface__(self):
        if device_kind_index(self._device)[0] != "GPU":
            # AttributeError, so that hasattr() says no for host variables.
            raise AttributeError(f"{self.name!r} lives on {self._device}, not on a GPU")
        return self.value().__cuda_array_interface__

    def __dlpack__(self, *args, **kwargs):
        return self.value().__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.value().__dlpack_device__()

    def __repr__(self):
        return (
            f"<gpuload.Variable {self.name!r} shape={self._shape} dtype={self._dtype.name} "
            f"device={self._device}{'' if self._value is not None else ' (uninitialized)'}>"
        )


class PartitionedVariable:
    """A variable split into part :class:`Variable` s (``NAME/part_K``).

    Attributes
    ----------
    name : str
        ``"scope/v"`` (no ``":0"``, as TensorFlow's ``PartitionedVariable.name``).
    shape : tuple of int
        The full shape.
    dtype : numpy.dtype
    partitions : tuple of int
        Parts per axis.
    """

    def __init__(self, name: str, shape, dtype, variable_list: Sequence[Variable], partitions):
        self._name = name
        self._shape = tuple(shape)
        self._dtype = np.dtype(dtype)
        self._variable_list = list(variable_list)
        self._partitions = tuple(int(p) for p in partitions)
        if len(self._partitions) != len(self._shape):
            raise ValueError(f"partitions {self._partitions} do not match the rank of shape {self._shape}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def get_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def partitions(self) -> tuple[int, ...]:
        return self._partitions

    def _get_partitions(self) -> list[int]:
        return list(self._partitions)

    def _get_variable_list(self) -> list[Variable]:
        """The part variables, in part order (a new list)."""
        return list(self._variable_list)

    def __iter__(self) -> Iterator[Variable]:
        return iter(self._variable_list)

    def __len__(self) -> int:
        return len(self._variable_list)

    def as_array(self) -> np.ndarray:
        """The full value assembled on the host (a new array).

        Raises
        ------
        UninitializedVariableError
            If a part has no value yet.
        """
        out = np.empty(self._shape, dtype=self._dtype)
        for part in self._variable_list:
            out[part._save_slice_info.box.as_slices()] = part.numpy()
        return out

    numpy = as_array

    def __array__(self, dtype=None, copy=None):
        out = self.as_array()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self):
        return (
            f"<gpuload.PartitionedVariable {self._name!r} shape={self._shape} "
            f"dtype={self._dtype.name} partitions={self._partitions}>"
        )


# --------------------------------------------------------------------------- scopes & devices


class VariableScope:
    """A variable scope: a name prefix, a reuse mode and defaults for :func:`get_variable`.

    Obtained from :func:`variable_scope` (``with variable_scope("a") as scope``) or
    :func:`get_variable_scope`. Passing it back to :func:`variable_scope` re-enters it.
    """

    def __init__(self, reuse, name: str = "", initializer=None, partitioner=None, dtype=np.dtype(np.float32)):
        self._reuse = reuse
        self._name = name
        self._initializer = initializer
        self._partitioner = partitioner
        self._dtype = _as_dtype(dtype)

    @property
    def name(self) -> str:
        return self._name

    @property
    def reuse(self):
        return self._reuse

    @property
    def initializer(self):
        return self._initializer

    @property
    def partitioner(self):
        return self._partitioner

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def reuse_variables(self) -> None:
        """Make this scope reuse variables from now on."""
        self._reuse = True

    def set_initializer(self, initializer) -> None:
        self._initializer = initializer

    def set_partitioner(self, partitioner) -> None:
        self._partitioner = partitioner

    def set_dtype(self, dtype) -> None:
        self._dtype = _as_dtype(dtype)

    def get_variable(self, name, shape=None, dtype=None, initializer=None, **kwargs):
        """:func:`get_variable` in this scope."""
        return _default_store()._get_variable(self, name, shape, dtype, initializer, **kwargs)

    def __repr__(self):
        return f"<gpuload.VariableScope {self._name!r} reuse={self._reuse!r}>"


class _ThreadState(threading.local):
    """One thread's variable-scope stack in one graph (TF keeps it per graph)."""

    def __init__(self):
        self.scopes: list[VariableScope] = [VariableScope(False)]


class _Devices(threading.local):
    """One thread's :func:`device` stack. Per thread, not per graph: it survives
    :func:`reset_default_graph` and applies inside ``Graph.as_default()`` blocks."""

    def __init__(self):
        self.devices: list[str | None] = []
        self.tasks: list[int | None] = []


_devices = _Devices()


class _StateProxy:
    """``_state.scopes`` (the thread's stack in the default graph), ``_state.devices`` and ``_state.tasks``."""

    def __getattr__(self, name):
        if name in ("devices", "tasks"):
            return getattr(_devices, name)
        return getattr(get_default_graph()._thread_state, name)


_state = _StateProxy()


def get_variable_scope() -> VariableScope:
    """The current variable scope (the root scope has name ``""``)."""
    return _state.scopes[-1]


@contextlib.contextmanager
def variable_scope(name_or_scope, reuse=None, initializer=None, partitioner=None, dtype=None):
    """Open a variable scope: names of variables created inside get the prefix ``name/``.

    Parameters
    ----------
    name_or_scope : str or VariableScope
        A name, appended to the current scope's (``"outer/inner"``), or a
        :class:`VariableScope`, re-entered under its own full name.
    reuse : {None, True, False, AUTO_REUSE}
        ``True``: :func:`get_variable` returns existing variables and fails for missing
        ones; ``AUTO_REUSE``: returns existing ones, creates missing ones; ``None`` or
        ``False``: inherit (once a scope reuses, its sub-scopes do too, as in TensorFlow).
    initializer, partitioner, dtype :
        Defaults for :func:`get_variable` in this scope and its sub-scopes.

    Yields
    ------
    VariableScope
    """
    old = get_variable_scope()
    if isinstance(name_or_scope, VariableScope):
        base = name_or_scope
        name = base.name
        new_reuse = reuse if reuse else base.reuse
    elif isinstance(name_or_scope, str):
        if not name_or_scope or not _VALID_SCOPE_NAME.match(name_or_scope):
            raise ValueError(f"{name_or_scope!r} is not a valid scope name")
        base = old
        name = f"{old.name}/{name_or_scope}" if old.name else name_or_scope
        # Reuse is inherited by sub-scopes and cannot be switched off in them.
        new_reuse = reuse or old.reuse
    else:
        raise TypeError(f"variable_scope takes a name or a VariableScope, got {name_or_scope!r}")
    scope = VariableScope(
        new_reuse,
        name,
        initializer=base.initializer if initializer is None else initializer,
        partitioner=base.partitioner if partitioner is None else partitioner,
        dtype=base.dtype if dtype is None else dtype,
    )
    scopes = _state.scopes  # this graph's: popped from it even if the default graph changed inside
    scopes.append(scope)
    try:
        yield scope
    finally:
        scopes.pop()


@contextlib.contextmanager
def device(spec):
    """Place variables created inside on a device (nestable; the innermost wins).

    Parameters
    ----------
    spec : str or None
        Any spelling :func:`gpuload.backend.placement.canonical_device` accepts
        (``"/gpu:0"``, ``"/device:CPU:0"``...). ``None`` clears the enclosing devices:
        variables then go to the default device.

    Yields
    ------
    str or None
        The canonical device string.

    Notes
    -----
    Availability is checked when a variable is created, not here (as in TensorFlow,
    where placement happens later).
    """
    dev = None if spec is None else _placement().canonical_device(spec)
    _state.devices.append(dev)
    _state.tasks.append(_task_of(spec))
    try:
        yield dev
    finally:
        _state.devices.pop()
        _state.tasks.pop()


def _context_device() -> str:
    dev = _state.devices[-1] if _state.devices else None
    return _placement().default_device() if dev is None else dev


# --------------------------------------------------------------------------- the store


class _VariableStore:
    """TensorFlow's ``_VariableStore``: every variable made by :func:`get_variable`.

    Attributes
    ----------
    vars : collections.OrderedDict
        ``"scope/name"`` -> :class:`Variable`, in creation order; partitioned variables
        appear as their parts ``"scope/name/part_K"`` (what TensorFlow's ``_vars`` holds).
    partitioned_vars : collections.OrderedDict
        ``"scope/name"`` -> :class:`PartitionedVariable`.
    """

    def __init__(self):
        self.vars: collections.OrderedDict[str, Variable] = collections.OrderedDict()
        self.partitioned_vars: collections.OrderedDict[str, PartitionedVariable] = collections.OrderedDict()
        self._lock = threading.RLock()

    def snapshot(self) -> dict[str, Variable]:
        """A copy of :attr:`vars`, taken under the store's lock.

        Iterate over this, never over :attr:`vars` itself: another thread's
        :func:`get_variable` may add to it at any moment.
        """
        with self._lock:
            return dict(self.vars)

    def snapshot_variables(self) -> list[Variable]:
        with self._lock:
            return list(self.vars.values())

    def collect_partitioned(self, name: str, vars: dict | None = None) -> list[Variable] | None:
        """``name/part_0``, ``name/part_1``, ... up to the first missing index; ``None`` if no ``part_0``.

        TensorFlow's ``_collect_partitioned_variable`` (``checkpoint_utils.py``). Looks in
        ``vars`` (a :meth:`snapshot`) when given, else in a fresh snapshot.
        """
        vars = self.snapshot() if vars is None else vars
        if f"{name}/part_0" not in vars:
            return None
        out = []
        i = 0
        while f"{name}/part_{i}" in vars:
            out.append(vars[f"{name}/part_{i}"])
            i += 1
        return out

    # ---- get_variable

    def _get_variable(
        self,
        scope: VariableScope,
        name,
        shape=None,
        dtype=None,
        initializer=None,
        *,
        partitioner=None,
        device=None,
        trainable=True,
    ):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a variable needs a non-empty string name, got {name!r}")
        full = f"{scope.name}/{name}" if scope.name else name
        if not _VALID_OP_NAME.match(full):
            raise ValueError(
                f"{full!r} is not a valid variable name (letters, digits and '_.-/>' only; no ':0' suffix)"
            )
        reuse = scope.reuse
        if initializer is None:
            initializer = scope.initializer
        if partitioner is None:
            partitioner = scope.partitioner
        shape = _as_shape(shape)
        value = None
        if initializer is not None and not callable(initializer):
            value = _infer_value(initializer, None if dtype is None else _as_dtype(dtype))
            dtype = value.dtype
            if shape is not None and shape != value.shape:
                raise ValueError(
                    f"Variable {full}: the initial value has shape {value.shape} but shape "
                    f"{shape} was given. Use constant_initializer(value) to fill a shape with "
                    "a scalar."
                )
            shape = value.shape
            initializer = None
        else:
            dtype = scope.dtype if dtype is None else _as_dtype(dtype)
        with self._lock:
            if partitioner is not None and shape != ():
                if not callable(partitioner):
                    raise ValueError(f"Partitioner must be callable, but received: {partitioner!r}")
                return self._get_partitioned(
                    full, shape, dtype, initializer, value, partitioner, reuse, device, trainable
                )
            # Reusing a partitioned variable without naming the partitioner again.
            if reuse is True and partitioner is None and full in self.partitioned_vars:
                return self._get_partitioned(full, shape, dtype, initializer, value, None, reuse, device, trainable)
            if f"{full}/part_0" in self.vars:
                raise ValueError(
                    "No partitioner was provided, but a partitioned version of the variable "
                    f"was found: {full}/part_0. Perhaps a variable of the same name was already "
                    "created with partitioning?"
                )
            found = self._check_existing(full, shape, dtype, reuse)
            if found is not None:
                return found
            if shape is None:
                raise ValueError(f"Shape of a new variable ({full}) must be fully defined, but instead was <unknown>.")
            dev = self._resolve_devices(device, 1, dtype, full)[0]
            fn = self._init_fn(full, initializer, value, shape, dtype, dev, None)
            var = Variable(full, shape, dtype, dev, fn, trainable=trainable, _frames=_creation_frames())
            var._task = self._resolve_tasks(device, 1)[0]
            self.vars[full] = var
            return var

    def _check_existing(self, full, shape, dtype, reuse) -> Variable | None:
        """The existing variable ``full`` if reuse allows; raise as TensorFlow otherwise."""
        if full in self.vars:
            found = self.vars[full]
            if not reuse:
                msg = (
                    f"Variable {full} already exists, disallowed. Did you mean to set "
                    "reuse=True or reuse=tf.AUTO_REUSE in VarScope?"
                )
                if found._frames:
                    msg += " Originally defined at:\n\n" + "".join(traceback.format_list(found._frames))
                raise ValueError(msg)
            if shape is not None and shape != found.shape:
                raise ValueError(
                    f"Trying to share variable {full}, but specified shape {_shape_str(shape)} "
                    f"and found shape {_shape_str(found.shape)}."
                )
            if dtype != found.dtype:
                raise ValueError(
                    f"Trying to share variable {full}, but specified dtype {dtype.name} "
                    f"and found dtype {found.dtype.name}."
                )
            return found
        if reuse is True:
            raise ValueError(
                f"Variable {full} does not exist, or was not created with tf.get_variable(). "
                "Did you mean to set reuse=tf.AUTO_REUSE in VarScope?"
            )
        return None

    def _get_partitioned(self, full, shape, dtype, initializer, value, partitioner, reuse, device, trainable):
        if full in self.vars:
            raise ValueError(
                "A partitioner was provided, but an unpartitioned version of the variable was "
                f"found: {full}.  Perhaps a variable of the same name was already created "
                "without partitioning?"
            )
        partitions = None
        if not reuse or partitioner is not None:
            if shape is None:
                raise ValueError(
                    "Shape of a new partitioned variable must be fully defined, but instead was <unknown>."
                )
            partitions = validate_partitions(shape, _call_partitioner(partitioner, shape, dtype))

        if full in self.partitioned_vars:
            if not reuse:
                raise ValueError(
                    f"Partitioned variable with name {full} already exists. Did you mean to set "
                    "reuse=True or reuse=tf.AUTO_REUSE in VarScope?"
                )
            existing = self.partitioned_vars[full]
            if shape is not None and shape != existing.shape:
                raise ValueError(
                    f"Trying to reuse partitioned variable {full}, but specified shape "
                    f"{_shape_str(shape)} and found shape {_shape_str(existing.shape)}."
                )
            if dtype != existing.dtype:
                raise ValueError(
                    f"Trying to reuse partitioned variable {full}, but specified dtype "
                    f"{dtype.name} and found dtype {existing.dtype.name}."
                )
            if partitions is not None and existing._get_partitions() != partitions:
                raise ValueError(
                    f"Trying to reuse partitioned variable {full}, but specified partitions "
                    f"{partitions} and found partitions {existing._get_partitions()}."
                )
            return existing
        if reuse is True:
            raise ValueError(
                f"PartitionedVariable {full} does not exist, or was not created with "
                "tf.get_variable(). Did you mean to set reuse=False or reuse=tf.AUTO_REUSE in VarScope?"
            )

        boxes = part_boxes(shape, partitions)
        n = len(boxes)
        if f"{full}/part_0" in self.vars:
            # Parts made one by one under these names earlier: TensorFlow's consistency checks.
            if f"{full}/part_{n - 1}" not in self.vars:
                raise ValueError(
                    "Partitioner returned a different partitioning than what was already found.  "
                    f"Partitioner returned {n} shards, and shard {full}/part_0 was found, but "
                    f"{full}/part_{n - 1} was not."
                )
            if f"{full}/part_{n}" in self.vars:
                raise ValueError(
                    "Partitioner returned a different partitioning than what was already found.  "
                    f"Partitioner returned {n} shards, and shard {full}/part_0 was found, but so "
                    f"was the extra shard {full}/part_{n}."
                )
        devs = self._resolve_devices(device, n, dtype, full)
        tasks = self._resolve_tasks(device, n)
        frames = _creation_frames()
        parts = []
        for i, (box, dev) in enumerate(zip(boxes, devs)):
            part_name = f"{full}/part_{i}"
            found = self._check_existing(part_name, box.shape, dtype, reuse)
            if found is not None:
                parts.append(found)
                continue
            info = PartitionInfo(full_shape=shape, var_offset=box.start)
            part_value = None if value is None else value[box.as_slices()]
            fn = self._init_fn(part_name, initializer, part_value, box.shape, dtype, dev, info)
            var = Variable(
                part_name,
                box.shape,
                dtype,
                dev,
                fn,
                trainable=trainable,
                save_slice_info=SaveSliceInfo(full, shape, box.start, box.shape),
                _frames=frames,
            )
            var._task = tasks[i]
            parts.append(var)
        # Every check passed and every part exists: only now touch the store, so that a
        # failed get_variable leaves nothing half-made behind.
        for var in parts:
            self.vars.setdefault(var.op.name, var)
        pv = PartitionedVariable(full, shape, dtype, parts, partitions)
        self.partitioned_vars[full] = pv
        return pv

    # ---- helpers

    @staticmethod
    def _resolve_devices(device, n: int, dtype: np.dtype, full: str) -> list[str]:
        """One canonical, available device per part (strings: the CPU)."""
        if _is_string(dtype):
            # String tensors live on the host; TensorFlow soft-places them there too.
            return [CPU] * n
        placement = _placement()
        if device is None:
            devs = [_context_device()] * n
        elif isinstance(device, str):
            devs = [placement.canonical_device(device)] * n
        elif isinstance(device, (list, tuple)):
            if len(device) != n:
                raise ValueError(f"variable {full} has {n} parts but {len(device)} devices were given")
            devs = [placement.canonical_device(d) for d in device]
        elif callable(device):
            devs = [placement.canonical_device(device(i)) for i in range(n)]
        else:
            raise TypeError(
                f"device must be a string, a list of strings or a callable part_index -> device, got {device!r}"
            )
        for d in dict.fromkeys(devs):
            placement.check_device(d)
        return devs

    @staticmethod
    def _resolve_tasks(device, n: int) -> list[int | None]:
        """The task each part's device names (``/job:w/task:K/...``), ``None`` for none."""
        if device is None:
            return [_state.tasks[-1] if _state.tasks else None] * n
        if isinstance(device, str):
            return [_task_of(device)] * n
        if isinstance(device, (list, tuple)):
            return [_task_of(d) for d in device]
        return [_task_of(device(i)) for i in range(n)]

    @staticmethod
    def _init_fn(full, initializer, value, shape, dtype, dev, partition_info):
        """A closure computing the variable's own initial value on its device."""
        if value is not None:
            return lambda: _to_device(value, dev, dtype, shape)
        if initializer is None:
            if _init._is_floating(dtype):
                initializer = _init.GlorotUniform()
            elif _init._is_integer(dtype) or dtype == np.bool_ or _is_string(dtype):
                initializer = _init.Zeros()
            else:
                raise ValueError(f"An initializer for variable {full} of {dtype.name} is required")
        if inspect.isclass(initializer):
            initializer = initializer()
        if isinstance(initializer, _init.Initializer):
            return lambda: initializer(shape, dtype, partition_info, device=dev)
        kwargs = {"dtype": dtype}
        if _accepts_partition_info(initializer):
            kwargs["partition_info"] = partition_info

        def fn():
            # TensorFlow passes shape.as_list(): a list.
            return _to_device(initializer(list(shape), **kwargs), dev, dtype, shape)

        return fn


class Graph:
    """A set of variables with their scopes (``tf.compat.v1.Graph``, for what gpuload keeps of it).

    Every variable made by :func:`get_variable` goes into the *default graph* of the
    calling thread, as in TensorFlow:

    * inside ``with graph.as_default():`` that is ``graph`` (blocks nest; the stack of
      default graphs is per thread);
    * elsewhere it is the thread's own global default graph, created on first use;
      :func:`reset_default_graph` replaces it (for the calling thread only).

    So the TF1 "one graph per thread" patterns work: threads that each call
    ``reset_default_graph()`` or each enter ``with gpuload.Graph().as_default():`` see
    only their own variables. A graph may also be shared: threads that enter the same
    graph's ``as_default()`` share its variables; its store is locked, so
    :func:`get_variable` and :func:`init_from_checkpoint` may run in several threads at
    once. Variable scopes are per graph and per thread; :func:`device` blocks are per
    thread (they apply in whichever graph is the default).
    """

    def __init__(self):
        self._store = _VariableStore()
        self._thread_state = _ThreadState()

    @contextlib.contextmanager
    def as_default(self):
        """Make this graph the calling thread's default graph inside a ``with`` block.

        Yields
        ------
        Graph
            This graph.
        """
        _graphs.stack.append(self)
        try:
            yield self
        finally:
            # Remove this entry even if inner blocks were left unbalanced (a generator
            # closed late): the stack never keeps a graph whose block has ended.
            stack = _graphs.stack
            for i in range(len(stack) - 1, -1, -1):
                if stack[i] is self:
                    del stack[i:]
                    break

    def get_variables(self) -> list[Variable]:
        """Every variable of this graph, in creation order (parts, not their wrappers)."""
        return self._store.snapshot_variables()

    def __repr__(self):
        return f"<gpuload.Graph at 0x{id(self):x}: {len(self._store.vars)} variables>"


class _GraphStack(threading.local):
    def __init__(self):
        self.stack: list[Graph] = []  # graphs entered with as_default(), innermost last
        self.global_default: Graph | None = None  # this thread's default outside any block


_graphs = _GraphStack()


def get_default_graph() -> Graph:
    """The calling thread's default graph (``tf.compat.v1.get_default_graph``).

    The innermost ``with graph.as_default():`` of this thread, else the thread's global
    default graph (created on first use).
    """
    state = _graphs
    if state.stack:
        return state.stack[-1]
    if state.global_default is None:
        state.global_default = Graph()
    return state.global_default


def _default_store() -> _VariableStore:
    """The store :func:`get_variable` records variables in (TF's ``_get_default_variable_store()``)."""
    return get_default_graph()._store


def reset_default_graph() -> None:
    """Give the calling thread a new, empty global default graph (``tf.compat.v1.reset_default_graph``).

    Affects only the calling thread, as in TensorFlow. Variables already handed out stay
    usable but are no longer in the default graph or in :func:`global_variables`.

    Raises
    ------
    AssertionError
        Inside a ``with graph.as_default():`` block (TensorFlow's error and message).
    """
    if _graphs.stack:
        raise AssertionError(
            "Do not use tf.reset_default_graph() to clear nested graphs. If you need a cleared graph, "
            "exit the nesting and create a new graph."
        )
    _graphs.global_default = Graph()


def get_variable(
    name: str,
    shape=None,
    dtype=None,
    initializer=None,
    *,
    partitioner=None,
    device=None,
    trainable: bool = True,
):
    """Create a variable in the current scope, or return it when the scope reuses.

    Parameters
    ----------
    name : str
        The name inside the current :func:`variable_scope`; the full name is
        ``"scope/name"``.
    shape : int or sequence of int, optional
        Required unless ``initializer`` is a value.
    dtype : optional
        numpy dtype, ``ml_dtypes.bfloat16`` or a TensorFlow name (``"float32"``,
        ``"string"``). Default: the scope's dtype (float32), or the value's for a value
        ``initializer``.
    initializer : optional
        An initializer callable ``(shape, dtype, partition_info=None) -> array`` (see
        :mod:`gpuload.graph.initializers`; an initializer class is instantiated), or a
        value (numpy array, Python scalar or list) that becomes the initial value. Default:
        the scope's initializer, else Glorot uniform for floating dtypes, zeros for
        integers and bool, ``b""`` for strings; other dtypes (complex) need one.
    partitioner : callable, optional
        ``partitioner(shape=tuple, dtype=numpy.dtype) -> list[int]`` of parts per axis.
        Gives a :class:`PartitionedVariable` of parts ``NAME/part_K``, even for one part.
        Ignored for scalars.
    device : str, list of str or callable, optional
        Where the variable lives. For a partitioned variable also one device per part, or
        ``part_index -> device``. Default: the innermost :func:`device` context, else the
        default device. String variables always live on the CPU.
    trainable : bool
        Recorded on the variable (see :func:`trainable_variables`).

    Returns
    -------
    Variable or PartitionedVariable

    Raises
    ------
    ValueError
        TensorFlow's errors: the name exists and the scope does not reuse ("Variable x
        already exists, disallowed. ..."), reuse of a missing variable, shape or dtype
        mismatch on reuse, shape missing, bad partitioner answer.
    gpuload.errors.DeviceUnavailableError
        The device asked for is not there.
    """
    return _default_store()._get_variable(
        get_variable_scope(),
        name,
        shape,
        dtype,
        initializer,
        partitioner=partitioner,
        device=device,
        trainable=trainable,
    )


def global_variables() -> list[Variable]:
    """Every variable of the default graph in creation order (parts, not their wrappers)."""
    return _default_store().snapshot_variables()


def trainable_variables() -> list[Variable]:
    """The variables of :func:`global_variables` created with ``trainable=True``."""
    return [v for v in global_variables() if v.trainable]


# --------------------------------------------------------------------------- initialization


class InitOp:
    """An initialization step over a fixed list of variables; :meth:`run` performs it.

    Obtained from :func:`global_variables_initializer`, :func:`variables_initializer` or
    ``Variable.initializer``.
    """

    def __init__(self, variables: Iterable[Variable], name: str = "init"):
        self._variables = list(variables)
        self.name = name

    @property
    def variables(self) -> list[Variable]:
        return list(self._variables)

    def run(self, session=None, feed_dict=None) -> None:
        """Initialize the variables: load those with a checkpoint source, then run the others' own initializers.

        ``session`` and ``feed_dict`` are accepted for TensorFlow compatibility and ignored.

        Raises
        ------
        Exception
            Whatever the checkpoint loader raises; in that case no variable's own
            initializer has run and no variable of this step is half-initialized.
        """
        _run_initializers(self._variables)

    def __repr__(self):
        return f"<gpuload.InitOp {self.name!r} over {len(self._variables)} variables>"


def _run_initializers(variables: Sequence[Variable]) -> None:
    """Initialize ``variables``: checkpoint-sourced ones through the loader, the rest by their initializers.

    Own initial values are computed first (they may fail, e.g. for a bad constant), then
    the loader (``gpuload.loader.load_checkpoint_sources``, all-or-nothing) runs, and only
    then are the own values installed: a failure anywhere leaves every variable of this run
    as it was. Overridable (tests) by replacing this module attribute.
    """
    from gpuload.loader import load_checkpoint_sources

    variables = list(dict.fromkeys(variables))  # keep order, drop duplicates
    from gpuload import config

    cfg = config.get()
    collective = cfg.communicator is not None
    try:
        if collective:
            from gpuload.distributed import local_variables

            variables = local_variables(variables)  # the others' parts hold no buffer on this rank
        sourced = [v for v in variables if v._init_source is not None]
        own = [v for v in variables if v._init_source is None]
        values = [v._initializer_fn() for v in own]
    except BaseException as exc:
        if collective:  # the other ranks wait in the load's first exchange: answer with the error
            from gpuload.distributed.load import collective_load

            try:
                collective_load([], cfg, failed=exc)
            except Exception:  # noqa: BLE001 - it raises exc, or the exchange failed: exc is raised
                pass
        raise
    before = [(v, v._value) for v in sourced]
    try:
        if sourced or collective:  # with a communicator every rank joins, even with nothing to load
            load_checkpoint_sources(sourced)
            missing = [v.name for v in sourced if v._value is None]
            if missing:
                raise UninitializedVariableError(
                    f"the checkpoint loader returned without assigning {len(missing)} variables: "
                    + ", ".join(missing[:10])
                    + (" ..." if len(missing) > 10 else "")
                )
        _assign_all(zip(own, values))
    except BaseException:
        for v, old in before:  # the loaded ones too: all or nothing
            v._value = old
        raise


def _assign_all(pairs) -> None:
    """``v._assign(array)`` for every ``(v, array)`` pair, all or nothing.

    A failure or an interrupt in the middle puts back the values the variables had, so a
    failed ``run()`` never leaves some variables loaded and others not.
    """
    previous = []
    try:
        for v, array in pairs:
            previous.append((v, v._value))  # before _assign: an interrupt right after it is undone too
            v._assign(array)
    except BaseException:
        for v, old in previous:
            v._value = old
        raise


def variables_initializer(var_list: Iterable, name: str = "init") -> InitOp:
    """An :class:`InitOp` over ``var_list`` (variables; a :class:`PartitionedVariable` stands for its parts)."""
    flat: list[Variable] = []
    for v in var_list:
        if isinstance(v, PartitionedVariable):
            flat.extend(v._get_variable_list())
        elif isinstance(v, Variable):
            flat.append(v)
        else:
            raise TypeError(f"variables_initializer takes gpuload variables, got {v!r}")
    return InitOp(flat, name=name)


def global_variables_initializer() -> InitOp:
    """An :class:`InitOp` over :func:`global_variables` as they are now (as TensorFlow)."""
    return variables_initializer(global_variables(), name="init")
