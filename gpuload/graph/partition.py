"""Partitioners and TensorFlow's rule for splitting a variable into parts.

TensorFlow 1 splits a partitioned variable along one axis: a dimension of size ``n`` cut
into ``k`` parts gives the first ``n % k`` parts ``n // k + 1`` rows and the others
``n // k`` (``_iter_slices`` in ``tensorflow/python/ops/variable_scope.py``). Part ``i`` is
stored as the variable ``NAME/part_i``.

The three partitioners below reproduce ``tensorflow/python/ops/partitioned_variables.py``
exactly, including its floating-point arithmetic. A partitioner is any callable
``partitioner(shape=..., dtype=...) -> list[int]`` giving a part count per axis;
:func:`gpuload.graph.get_variable` calls it with ``shape`` a tuple of ints and ``dtype`` a
numpy dtype (TensorFlow passes a ``TensorShape`` and a ``DType``).

Unlike TensorFlow, :func:`part_boxes` (and therefore ``get_variable``) accepts part counts
greater than one on several axes; the parts are then numbered row-major over the grid of
per-axis parts (part index = ``numpy.ravel_multi_index(grid_index, partitions)``). With one
partitioned axis this is TensorFlow's numbering.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np

from gpuload.format.dtypes import as_numpy_dtype
from gpuload.format.slices import Box

__all__ = [
    "split_sizes",
    "validate_partitions",
    "part_boxes",
    "fixed_size_partitioner",
    "min_max_variable_partitioner",
    "variable_axis_size_partitioner",
]

Partitioner = Callable[..., Sequence[int]]


def split_sizes(size: int, num_parts: int) -> list[int]:
    """Sizes of the parts TensorFlow cuts a dimension of ``size`` into.

    Parameters
    ----------
    size:
        The dimension's length (``>= 0``).
    num_parts:
        How many parts (``>= 1``). More parts than rows is allowed, as in TensorFlow: the
        trailing parts are then empty.

    Returns
    -------
    list of int
        ``num_parts`` sizes summing to ``size``; the first ``size % num_parts`` are one
        larger than the rest. ``split_sizes(103, 5) == [21, 21, 21, 20, 20]``.
    """
    size = operator.index(size)
    num_parts = operator.index(num_parts)
    if size < 0:
        raise ValueError(f"cannot split a dimension of negative size {size}")
    if num_parts < 1:
        raise ValueError(f"cannot split a dimension into {num_parts} parts; need at least 1")
    base, excess = divmod(size, num_parts)
    return [base + (1 if i < excess else 0) for i in range(num_parts)]


def validate_partitions(full_shape: Sequence[int], partitions) -> list[int]:
    """Check a partitioner's answer for a variable of ``full_shape``; return it as ints.

    Mirrors TensorFlow's ``_call_partitioner`` checks (a sequence, one count per axis,
    every count ``>= 1``, rank ``>= 1``) except its one-axis rule: several axes may be
    split here.

    Raises
    ------
    ValueError
        With TensorFlow's wording where TensorFlow has a message.
    """
    full_shape = tuple(full_shape)
    if len(full_shape) < 1:
        raise ValueError(f"A partitioned Variable must have rank at least 1, shape: {full_shape}")
    if isinstance(partitions, (str, bytes)) or not isinstance(partitions, (Sequence, np.ndarray)):
        raise ValueError(f"Partitioner must return a sequence, but saw: {partitions!r}")
    try:
        parts = [operator.index(p) for p in partitions]
    except TypeError:
        raise ValueError(f"Partitioner must return a sequence of integers, but saw: {partitions!r}") from None
    if len(parts) != len(full_shape):
        raise ValueError(
            f"Partitioner returned a partition list that does not match the Variable's rank: {parts} vs. {full_shape}"
        )
    if any(p < 1 for p in parts):
        raise ValueError(f"Partitioner returned zero partitions for some axes: {parts}")
    return parts


def part_boxes(full_shape: Sequence[int], partitions: Sequence[int]) -> list[Box]:
    """The box each part of a partitioned variable covers, in part order.

    Parameters
    ----------
    full_shape:
        The variable's full shape (rank ``>= 1``).
    partitions:
        Number of parts per axis, e.g. ``[5, 1]``. Several entries may exceed 1; parts are
        then ordered row-major over the grid (last axis fastest), i.e. part ``K`` has grid
        index ``numpy.unravel_index(K, partitions)``.

    Returns
    -------
    list of Box
        ``prod(partitions)`` boxes tiling the full shape. A count larger than its
        dimension gives empty trailing parts, as in TensorFlow.

    Examples
    --------
    >>> [b.spec() for b in part_boxes((103, 8), [5, 1])]
    ['0,21:0,8', '21,21:0,8', '42,21:0,8', '63,20:0,8', '83,20:0,8']
    """
    full_shape = tuple(operator.index(d) for d in full_shape)
    if any(d < 0 for d in full_shape):
        raise ValueError(f"negative dimension in shape {full_shape}")
    parts = validate_partitions(full_shape, partitions)
    per_axis = []  # per axis: list of (offset, length)
    for size, k in zip(full_shape, parts):
        sizes = split_sizes(size, k)
        offsets = itertools.accumulate([0] + sizes[:-1])
        per_axis.append(list(zip(offsets, sizes)))
    # itertools.product varies the last axis fastest: row-major, as ravel_multi_index.
    return [Box(tuple(o for o, _ in cell), tuple(n for _, n in cell)) for cell in itertools.product(*per_axis)]


def _element_size(dtype, bytes_per_string_element: int) -> int:
    """Bytes per element as TensorFlow's ``DType.size`` (strings: the given estimate)."""
    dt = as_numpy_dtype(dtype)
    if dt.kind in "OSU":
        return bytes_per_string_element
    return dt.itemsize


def _check_axis(shape, axis: int) -> None:
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"Cannot partition variable along axis {axis} when shape is only {tuple(shape)}")


def fixed_size_partitioner(num_shards: int, axis: int = 0) -> Partitioner:
    """Partitioner that cuts ``axis`` into ``num_shards`` parts (fewer if the axis is shorter).

    Parameters
    ----------
    num_shards:
        Number of parts wanted along ``axis``.
    axis:
        The axis to split.

    Returns
    -------
    callable
        ``partitioner(shape, dtype=None) -> list[int]``: ``[1, ..., min(num_shards,
        shape[axis]), ..., 1]``, as TensorFlow. For a zero-length axis that is 0, which
        ``get_variable`` rejects exactly as TensorFlow does.
    """

    def _partitioner(shape, dtype=None, **unused_args):
        shape = tuple(shape)
        _check_axis(shape, axis)
        partitions_list = [1] * len(shape)
        partitions_list[axis] = min(num_shards, int(shape[axis]))
        return partitions_list

    return _partitioner


def min_max_variable_partitioner(
    max_partitions: int = 1,
    axis: int = 0,
    min_slice_size: int = 256 << 10,
    bytes_per_string_element: int = 16,
) -> Partitioner:
    """Partitioner giving each part at least ``min_slice_size`` bytes, at most ``max_partitions`` parts.

    Parameters
    ----------
    max_partitions:
        Upper bound on the number of parts.
    axis:
        The axis to split.
    min_slice_size:
        Minimum bytes per part (256 KiB by default).
    bytes_per_string_element:
        Size assumed for each element of a string variable.

    Returns
    -------
    callable
        ``partitioner(shape, dtype) -> list[int]`` with, on ``axis``,
        ``max(1, min(shape[axis], max_partitions, ceil(total_bytes / min_slice_size)))``.
        E.g. float32 ``[1024, 1024]`` (4 MiB) with ``max_partitions >= 16`` gives
        ``[16, 1]``.
    """

    def _partitioner(shape, dtype):
        shape = tuple(shape)
        # TensorFlow checks only the upper bound here (a negative axis indexes from the end).
        if axis >= len(shape):
            raise ValueError(f"Cannot partition variable along axis {axis} when shape is only {shape}")
        bytes_per_element = _element_size(dtype, bytes_per_string_element)
        total_size_bytes = math.prod(int(d) for d in shape) * bytes_per_element
        partitions = total_size_bytes / min_slice_size
        partitions_list = [1] * len(shape)
        # Not beyond what the shape or max_partitions allows.
        partitions_list[axis] = max(1, min(int(shape[axis]), max_partitions, int(math.ceil(partitions))))
        return partitions_list

    return _partitioner


def variable_axis_size_partitioner(
    max_shard_bytes: int,
    axis: int = 0,
    bytes_per_string_element: int = 16,
    max_shards: int | None = None,
) -> Partitioner:
    """Partitioner keeping each part under ``max_shard_bytes`` by splitting ``axis``.

    Parameters
    ----------
    max_shard_bytes:
        Target maximum bytes per part. A single slice (one index of ``axis``) larger than
        this still makes a part of its own.
    axis:
        The axis to split.
    bytes_per_string_element:
        Size assumed for each element of a string variable.
    max_shards:
        Upper bound on the number of parts (``None``: no bound).

    Returns
    -------
    callable
        ``partitioner(shape, dtype) -> list[int]`` with, on ``axis``,
        ``ceil(shape[axis] / max(1, floor(max_shard_bytes / bytes_per_slice)))``
        (capped by ``max_shards``), where ``bytes_per_slice`` is the size of one index of
        ``axis``.

    Raises
    ------
    ValueError
        If ``max_shard_bytes`` or ``bytes_per_string_element`` is below 1, or
        ``max_shards`` is below 1.
    """
    if max_shard_bytes < 1 or bytes_per_string_element < 1:
        raise ValueError(
            "Both max_shard_bytes and bytes_per_string_element must be positive. "
            f"Currently, max_shard_bytes is {max_shard_bytes} and "
            f"bytes_per_string_element is {bytes_per_string_element}"
        )
    if max_shards and max_shards < 1:
        raise ValueError("max_shards must be positive.")

    def _partitioner(shape, dtype):
        shape = tuple(int(d) for d in shape)
        _check_axis(shape, axis)
        element_size = _element_size(dtype, bytes_per_string_element)
        partitions = [1] * len(shape)
        if shape[axis] == 0:
            # TensorFlow divides by zero here; a zero-length axis has nothing to split.
            return partitions
        # Same float arithmetic as TensorFlow, so borderline sizes round the same way.
        bytes_per_slice = 1.0 * (math.prod(shape) / shape[axis]) * element_size
        if bytes_per_slice == 0:
            # Another axis is empty: TensorFlow divides by zero; every slice is empty.
            return partitions
        # How many slices fit on one shard?
        slices_per_shard = max(1, math.floor(max_shard_bytes / bytes_per_slice))
        # How many shards does the axis need at slices_per_shard slices each?
        axis_shards = int(math.ceil(1.0 * shape[axis] / slices_per_shard))
        if max_shards:
            axis_shards = min(max_shards, axis_shards)
        partitions[axis] = axis_shards
        return partitions

    return _partitioner
