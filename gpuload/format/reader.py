"""The ``tf.train`` checkpoint-reading API on top of :class:`~gpuload.format.bundle.Bundle`.

``load_checkpoint``, ``list_variables``, ``load_variable``, ``latest_checkpoint`` and
``CheckpointReader`` behave as TensorFlow's do (partitioned tensors appear once, under their
full name and shape, and are assembled on read; slice keys are hidden), with these
differences:

- errors are :mod:`gpuload.errors` exceptions, all ``ValueError`` subclasses, whose
  messages name the file, the tensor and what was expected;
- ``get_variable_to_dtype_map`` returns NumPy dtypes (``ml_dtypes.bfloat16`` for
  bfloat16, ``object`` for strings) instead of ``tf.DType``;
  ``get_variable_to_dtype_name_map`` gives TensorFlow's names;
- ``get_slice`` / ``get_rows`` read only the bytes needed.
"""

from __future__ import annotations

import re

import numpy as np

from gpuload import config as _config
from gpuload.format import dtypes as _dt
from gpuload.format.bundle import Bundle
from gpuload.format.slices import Box
from gpuload.format.state import latest_checkpoint

__all__ = [
    "CheckpointReader",
    "load_checkpoint",
    "list_variables",
    "load_variable",
    "latest_checkpoint",
    "parse_slice_spec",
]


class CheckpointReader:
    """Reads the tensors of one checkpoint (``tf.compat.v1.train.NewCheckpointReader``).

    Parameters
    ----------
    ckpt_dir_or_file:
        A checkpoint prefix, a directory (its latest checkpoint) or one of its files.
    verify_crc:
        Check each entry's CRC32C on whole-entry reads. Default:
        ``gpuload.config.get().verify_crc`` (on unless ``GPULOAD_VERIFY_CRC=0``).
        Partial reads (``get_slice``/``get_rows`` cutting through a stored entry) are never
        verified: the CRC covers the whole entry.
    """

    def __init__(self, ckpt_dir_or_file, *, verify_crc: bool | None = None):
        self._bundle = Bundle.open(ckpt_dir_or_file)
        self.verify_crc = _config.get().verify_crc if verify_crc is None else bool(verify_crc)

    @property
    def prefix(self) -> str:
        """The checkpoint prefix being read."""
        return self._bundle.prefix

    @property
    def bundle(self) -> Bundle:
        """The underlying :class:`Bundle`."""
        return self._bundle

    def __repr__(self):
        return f"CheckpointReader({self.prefix!r})"

    def close(self) -> None:
        """Close the data files."""
        self._bundle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def has_tensor(self, tensor_str: str) -> bool:
        """Whether the checkpoint holds a tensor of this name (slice keys excluded)."""
        if isinstance(tensor_str, bytes):
            tensor_str = tensor_str.decode("utf-8", "surrogateescape")
        return tensor_str in self._bundle

    def get_tensor(self, tensor_str: str) -> np.ndarray:
        """The whole tensor as a NumPy array (partitioned tensors assembled).

        Strings come back as an ``object`` array of ``bytes``; bfloat16 as
        ``ml_dtypes.bfloat16``; scalars as 0-d arrays.

        Raises
        ------
        CheckpointNotFoundError
            No tensor of that name (the name is not stripped of ``:0``; see
            :func:`load_variable`).
        ChecksumError
            Stored bytes do not match their CRC32C (when ``verify_crc``).
        MissingDataFileError
            The tensor's data file is gone (deleted or renamed since the checkpoint was
            opened): a ``CheckpointNotFoundError`` and an ``OSError`` (ENOENT).
        TruncatedCheckpointError
            The data file ends before the tensor's bytes (truncated since it was opened).
        ShardReadError
            The data file cannot be read (an I/O error).
        """
        return self._bundle.read_tensor(tensor_str, verify=self.verify_crc)

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        """``{name: shape as a list of ints}`` for every tensor (full shapes for partitioned ones)."""
        b = self._bundle
        return {n: list(b.shape(n)) for n in b.names()}

    def get_variable_to_dtype_map(self) -> dict[str, np.dtype]:
        """``{name: NumPy dtype}``.

        TensorFlow returns ``tf.DType`` objects; this returns their ``as_numpy_dtype``:
        ``ml_dtypes.bfloat16`` for bfloat16, ``object`` for string (and, as in TF, for
        resource/variant and other types gpuload cannot read), plain integers for
        quantized types (use :meth:`get_variable_to_dtype_name_map` to tell them apart).
        """
        b = self._bundle
        out = {}
        for n in b.names():
            code = b.entry(n).dtype
            out[n] = _dt.numpy_dtype(code) if _dt.is_supported(code) else np.dtype(object)
        return out

    def get_variable_to_dtype_name_map(self) -> dict[str, str]:
        """``{name: TensorFlow dtype name}`` (``"float32"``, ``"bfloat16"``, ``"string"``, ``"qint8"``...)."""
        b = self._bundle
        return {n: b.tf_dtype_name(n) for n in b.names()}

    def get_slice(self, name: str, box_or_slices) -> np.ndarray:
        """A region of a tensor, reading only the stored rows that hold it.

        Parameters
        ----------
        name:
            Tensor name.
        box_or_slices:
            A :class:`~gpuload.format.slices.Box`; a TF slice spec (``"0,20:0,100"``,
            ``"-:0,5"``, or a full ``shape_and_slice`` ``"100 100 0,20:0,100"``); or a
            tuple of ``slice``\\ s / ints as in NumPy basic indexing (step 1; ints drop
            their axis, as in NumPy).

        Returns
        -------
        numpy.ndarray
            Stored pieces needed whole are CRC-checked (if ``verify_crc``); parts of
            pieces are not (see the class docstring).
        """
        shape = self._bundle.shape(name)
        box, squeeze = parse_slice_spec(box_or_slices, shape, name)
        out = self._bundle.read_box(name, box, verify=self.verify_crc)
        return out.reshape(tuple(n for d, n in enumerate(box.shape) if d not in squeeze)) if squeeze else out

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` (dimension 0) of a tensor, reading only those rows."""
        shape = self._bundle.shape(name)
        if not shape:
            raise ValueError(f"tensor {name!r} is a scalar: it has no rows")
        if not 0 <= start <= stop <= shape[0]:
            raise ValueError(f"row range [{start}, {stop}) is outside tensor {name!r} of {shape[0]} rows")
        box = Box((start,) + (0,) * (len(shape) - 1), (stop - start,) + tuple(shape[1:]))
        return self._bundle.read_box(name, box, verify=self.verify_crc)


_SPEC_ITEM = re.compile(r"^\s*(-|(\d+)\s*,\s*(\d+))\s*$")


def parse_slice_spec(spec, shape, name="tensor") -> tuple[Box, tuple[int, ...]]:
    """A region given as Box / TF slice string / NumPy index tuple -> ``(Box, axes to squeeze)``."""
    shape = tuple(shape)
    if isinstance(spec, Box):
        if spec.rank != len(shape) or not spec.within(shape):
            raise ValueError(f"box {spec} is not inside tensor {name!r} of shape {list(shape)}")
        return spec, ()
    if isinstance(spec, str):
        tokens = spec.split(" ")
        if len(tokens) > 1:  # "d0 d1 ... slice" (ParseShapeAndSlice)
            try:
                full = tuple(int(t) for t in tokens[:-1])
            except ValueError:
                raise ValueError(f"bad shape_and_slice {spec!r}") from None
            if full != shape:
                raise ValueError(
                    f"shape in shape_and_slice spec {list(full)} does not match the shape stored in "
                    f"checkpoint: {list(shape)} (tensor {name!r})"
                )
            spec = tokens[-1]
        items = [t for t in spec.split(":") if t != ""]
        if not items and not shape:
            return Box((), ()), ()
        if len(items) != len(shape):
            raise ValueError(f"slice spec {spec!r} has {len(items)} dimensions; tensor {name!r} has {len(shape)}")
        starts, sizes = [], []
        for item, dim in zip(items, shape):
            m = _SPEC_ITEM.match(item)
            if not m:
                raise ValueError(f"bad slice spec item {item!r} in {spec!r} (expected '-' or 'start,length')")
            if m.group(1) == "-":
                starts.append(0)
                sizes.append(dim)
            else:
                starts.append(int(m.group(2)))
                sizes.append(int(m.group(3)))
        box = Box(tuple(starts), tuple(sizes))
        if not box.within(shape):
            raise ValueError(f"slice {spec!r} is not inside tensor {name!r} of shape {list(shape)}")
        return box, ()
    idx = spec if isinstance(spec, tuple) else (spec,)
    if len(idx) > len(shape):
        raise ValueError(f"too many indices ({len(idx)}) for tensor {name!r} of rank {len(shape)}")
    starts, sizes, squeeze = [], [], []
    for d, dim in enumerate(shape):
        ix = idx[d] if d < len(idx) else slice(None)
        if isinstance(ix, slice):
            lo, hi, step = ix.indices(dim)
            if step != 1:
                raise ValueError(f"slices with step {step} are not supported (axis {d})")
            starts.append(lo)
            sizes.append(max(0, hi - lo))
        elif isinstance(ix, (int, np.integer)) and not isinstance(ix, bool):
            i = int(ix) + dim if ix < 0 else int(ix)
            if not 0 <= i < dim:
                raise IndexError(f"index {int(ix)} is out of bounds for axis {d} with size {dim}")
            starts.append(i)
            sizes.append(1)
            squeeze.append(d)
        else:
            raise TypeError(f"unsupported index {ix!r} (use slices with step 1 or ints)")
    return Box(tuple(starts), tuple(sizes)), tuple(squeeze)


def load_checkpoint(ckpt_dir_or_file) -> CheckpointReader:
    """A :class:`CheckpointReader` for a checkpoint directory or prefix (``tf.train.load_checkpoint``).

    Raises
    ------
    CheckpointNotFoundError
        Nothing there; the message says what was looked for.
    """
    return CheckpointReader(ckpt_dir_or_file)


def list_variables(ckpt_dir_or_file) -> list[tuple[str, list[int]]]:
    """``[(name, shape), ...]`` sorted by name (``tf.train.list_variables``)."""
    with CheckpointReader(ckpt_dir_or_file) as reader:
        shapes = reader.get_variable_to_shape_map()
    return [(n, shapes[n]) for n in sorted(shapes)]


def load_variable(ckpt_dir_or_file, name: str) -> np.ndarray:
    """One tensor's value (``tf.train.load_variable``; a trailing ``":0"`` is stripped)."""
    if name.endswith(":0"):
        name = name[:-2]
    with CheckpointReader(ckpt_dir_or_file) as reader:
        return reader.get_tensor(name)
