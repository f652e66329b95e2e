"""The TF1 variable store, the graph that holds it, and ``get_variable`` (``tf.compat.v1``).

This is the part of ``tf.compat.v1`` that ``init_from_checkpoint`` works against: variables
created through :func:`get_variable` are recorded in the default graph's store under their
scoped name (``"outer/inner/name"``, without ``":0"``); a partitioned variable is recorded
as its parts ``NAME/part_0``, ``NAME/part_1``, ... exactly as TensorFlow's
``_VariableStore._vars`` holds them. ``init_from_checkpoint`` resolves names against
:attr:`_VariableStore.vars` and marks variables with a checkpoint source; running
:func:`global_variables_initializer` then loads those from the checkpoint and runs every
other variable's own initializer.

The TF1 surface is split by concept: :mod:`gpuload.graph.variables` (the variables),
:mod:`gpuload.graph.scopes` (variable and device scopes), this module (the store, the graph
that holds it and ``get_variable``) and :mod:`gpuload.graph.ops` (the initializer op).

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
import inspect
import operator
import re
import threading
import traceback

import numpy as np

from gpuload.devices import CPU_NAME
from gpuload.graph import initializers as _init
from gpuload.graph.initializers import PartitionInfo, device_kind_index
from gpuload.graph.partition import part_boxes, validate_partitions
from gpuload.graph.scopes import (
    VariableScope,
    _as_dtype,
    _context_device,
    _context_task,
    _placement,
    _task_of,
    get_variable_scope,
)
from gpuload.graph.variables import PartitionedVariable, SaveSliceInfo, Variable

__all__ = [
    "Graph",
    "get_default_graph",
    "get_variable",
    "global_variables",
    "reset_default_graph",
    "trainable_variables",
]

# TensorFlow's op-name grammar (tensorflow/python/framework/ops.py).
_VALID_OP_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/>]*$")


class _ThreadState(threading.local):
    """One thread's variable-scope stack in one graph (TF keeps it per graph)."""

    def __init__(self):
        self.scopes: list[VariableScope] = [VariableScope(False)]


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

        # Without a partitioner this call reuses (reuse is True): it returned or raised above.
        assert partitions is not None
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
            return [CPU_NAME] * n
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
            return [_context_task()] * n
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
