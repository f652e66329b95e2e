"""The TF1 variables: :class:`Variable`, :class:`PartitionedVariable` and :class:`SaveSliceInfo`.

A variable's value is a device array that exists only after initialization: a numpy array
for ``/device:CPU:0``, a CuPy array for ``/device:GPU:N``. String variables always live
on the CPU. Variables are made by :func:`gpuload.graph.store.get_variable` and given their
values by the initializer op (:mod:`gpuload.graph.ops`).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from gpuload.errors import UninitializedVariableError
from gpuload.format.slices import Box
from gpuload.graph.initializers import device_kind_index

if TYPE_CHECKING:
    from gpuload.graph.ops import InitOp

__all__ = ["PartitionedVariable", "SaveSliceInfo", "Variable"]


def _placement():
    # Imported late: the device layer may import CuPy, and the store must import without it.
    from gpuload.backend import placement

    return placement


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
    Two hooks belong to the graph layer's initializer op (:mod:`gpuload.graph.ops`):
    ``_init_source`` (``None`` unless ``init_from_checkpoint`` or ``warm_start`` gave the
    variable a checkpoint source; then the op loads it through :func:`gpuload.load`
    instead of running the variable's own initializer) and :meth:`_assign`, which
    installs a device array as the value.
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
        self._task: int | None = None  # the task of a '/job:w/task:K/...' device: its rank under a communicator
        self._not_local: Callable[[Variable], Exception] | None = (
            None  # set by a collective run on ranks other than _task (no buffer here)
        )
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
        """An :class:`~gpuload.graph.ops.InitOp` initializing only this variable."""
        from gpuload.graph.ops import InitOp  # the op runs on variables: it imports this module

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
        """Install ``array`` as the value (the initializer op's hook).

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
            info = part._save_slice_info
            assert info is not None  # every part of a PartitionedVariable has one
            out[info.box.as_slices()] = part.numpy()
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
