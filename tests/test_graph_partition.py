"""TensorFlow's split rule, part boxes and the three partitioners.

Expected values are worked out by hand from ``tensorflow/python/ops/partitioned_variables.py``
and ``variable_scope._iter_slices``; the arithmetic is written next to each case.
"""

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuload.format.slices import Box
from gpuload.graph.partition import (
    fixed_size_partitioner,
    min_max_variable_partitioner,
    part_boxes,
    split_sizes,
    validate_partitions,
    variable_axis_size_partitioner,
)

F32 = np.dtype(np.float32)


# ---------------------------------------------------------------- split rule


@pytest.mark.parametrize(
    "n, k, sizes",
    [
        (103, 5, [21, 21, 21, 20, 20]),  # 103 = 5*20 + 3: the first 3 parts get 21
        (100, 5, [20] * 5),
        (10, 3, [4, 3, 3]),
        (1000, 3, [334, 333, 333]),
        (7, 1, [7]),
        (3, 5, [1, 1, 1, 0, 0]),  # more parts than rows: TF makes empty trailing parts
        (0, 2, [0, 0]),
    ],
)
def test_split_sizes(n, k, sizes):
    assert split_sizes(n, k) == sizes
    assert sum(sizes) == n


@pytest.mark.parametrize("n, k", [(5, 0), (5, -1), (-1, 2)])
def test_split_sizes_rejects(n, k):
    with pytest.raises(ValueError):
        split_sizes(n, k)


# ---------------------------------------------------------------- part boxes


def test_part_boxes_one_axis():
    boxes = part_boxes((103, 8), [5, 1])
    assert [b.spec() for b in boxes] == ["0,21:0,8", "21,21:0,8", "42,21:0,8", "63,20:0,8", "83,20:0,8"]
    assert part_boxes((100, 100), [1, 4])[2] == Box((0, 50), (100, 25))


def test_part_boxes_all_ones_is_one_full_part():
    assert part_boxes((4, 3), [1, 1]) == [Box((0, 0), (4, 3))]


def test_part_boxes_multi_axis_row_major():
    shape, parts = (5, 7), [2, 3]
    boxes = part_boxes(shape, parts)
    # rows 5 -> [3, 2]; cols 7 -> [3, 2, 2]
    assert boxes[0] == Box((0, 0), (3, 3))
    assert boxes[1] == Box((0, 3), (3, 2))
    assert boxes[2] == Box((0, 5), (3, 2))
    assert boxes[3] == Box((3, 0), (2, 3))
    assert boxes[5] == Box((3, 5), (2, 2))
    # Part K sits at grid index unravel_index(K, parts).
    row_starts, col_starts = [0, 3], [0, 3, 5]
    for k, box in enumerate(boxes):
        i, j = np.unravel_index(k, parts)
        assert box.start == (row_starts[i], col_starts[j])
        assert np.ravel_multi_index((i, j), parts) == k


@pytest.mark.parametrize(
    "shape, parts", [((5, 7), [2, 3]), ((12, 5, 6), [2, 1, 4]), ((3,), [5]), ((9, 4, 2), [4, 3, 2])]
)
def test_part_boxes_tile_exactly(shape, parts):
    count = np.zeros(shape, dtype=np.int64)
    boxes = part_boxes(shape, parts)
    assert len(boxes) == math.prod(parts)
    for b in boxes:
        count[b.as_slices()] += 1
    assert (count == 1).all()


@pytest.mark.parametrize(
    "shape, parts, match",
    [
        ((4, 3), [2], "does not match the Variable's rank"),
        ((4, 3), [2, 0], "zero partitions"),
        ((4, 3), [2, -1], "zero partitions"),
        ((), [], "rank at least 1"),
        ((4, 3), "21", "must return a sequence"),
        ((4, 3), 2, "must return a sequence"),
        ((4, 3), [2.0, 1], "sequence of integers"),
    ],
)
def test_validate_partitions_rejects(shape, parts, match):
    with pytest.raises(ValueError, match=match):
        validate_partitions(shape, parts)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 5)), min_size=1, max_size=3))
def test_part_boxes_property(dims):
    shape = tuple(d for d, _ in dims)
    parts = [k for _, k in dims]
    boxes = part_boxes(shape, parts)
    count = np.zeros(shape, dtype=np.int64)
    for k, b in enumerate(boxes):
        assert b.within(shape)
        count[b.as_slices()] += 1
        # Per axis, the box is piece unravel_index(k)[d] of TF's split of that axis.
        grid = np.unravel_index(k, parts)
        for d, (n, p) in enumerate(zip(shape, parts)):
            sizes = split_sizes(n, p)
            assert b.shape[d] == sizes[grid[d]] and b.start[d] == sum(sizes[: grid[d]])
    assert (count == 1).all()


def test_validate_partitions_accepts_numpy_ints():
    assert validate_partitions((4, 3), np.array([2, 1])) == [2, 1]


# ---------------------------------------------------------------- fixed_size_partitioner


def test_fixed_size_partitioner():
    # partitions[axis] = min(num_shards, shape[axis])
    assert fixed_size_partitioner(4)(shape=(10, 3), dtype=F32) == [4, 1]
    assert fixed_size_partitioner(20)(shape=(10, 3), dtype=F32) == [10, 1]
    assert fixed_size_partitioner(2, axis=1)(shape=(10, 3), dtype=F32) == [1, 2]
    # TF's signature is (shape, **unused_args): dtype may be left out.
    assert fixed_size_partitioner(3)((9,)) == [3]
    # A zero-length axis gives 0, which get_variable rejects as TF does.
    assert fixed_size_partitioner(3)(shape=(0, 4), dtype=F32) == [0, 1]
    with pytest.raises(ValueError, match="axis 2"):
        fixed_size_partitioner(2, axis=2)(shape=(10, 3), dtype=F32)


# ---------------------------------------------------------------- min_max_variable_partitioner


def test_min_max_partitioner_docstring_example():
    # TF's docstring: float32 [1024, 1024] = 4194304 bytes; / (256 << 10) = 16 partitions.
    shape = (1024, 1024)
    assert min_max_variable_partitioner(max_partitions=16)(shape, F32) == [16, 1]
    assert min_max_variable_partitioner(max_partitions=100)(shape, F32) == [16, 1]
    # max_partitions < 16 caps it.
    assert min_max_variable_partitioner(max_partitions=8)(shape, F32) == [8, 1]
    # Default max_partitions=1: never split.
    assert min_max_variable_partitioner()(shape, F32) == [1, 1]


def test_min_max_partitioner_rounds_up_and_caps_by_dim():
    # [10, 10] float32 = 400 bytes; 400 / 262144 = 0.0015 -> ceil 1.
    assert min_max_variable_partitioner(max_partitions=50)((10, 10), F32) == [1, 1]
    # [3, 1000000] float32 = 12e6 bytes; / 262144 = 45.78 -> ceil 46; min(dim 3, 100, 46) = 3.
    assert min_max_variable_partitioner(max_partitions=100)((3, 1000000), F32) == [3, 1]
    # axis=1: [1000, 300] float64 = 2,400,000 bytes; / 262144 = 9.155 -> ceil 10; min(300, 50, 10).
    p = min_max_variable_partitioner(max_partitions=50, axis=1)
    assert p((1000, 300), np.dtype(np.float64)) == [1, 10]
    # bfloat16 is 2 bytes: [1024, 1024] -> 2 MiB / 256 KiB = 8.
    assert min_max_variable_partitioner(max_partitions=64)((1024, 1024), ml_dtypes.bfloat16) == [8, 1]


def test_min_max_partitioner_strings_and_min_slice_size():
    p = min_max_variable_partitioner(max_partitions=200, min_slice_size=1000, bytes_per_string_element=16)
    # [1000, 10] strings at 16 bytes = 160000 bytes; / 1000 = 160; min(1000, 200, 160) = 160.
    assert p((1000, 10), np.dtype(object)) == [160, 1]
    assert p((1000, 10), "string") == [160, 1]
    # 12 bytes per string element: 120000 / 1000 = 120.
    p12 = min_max_variable_partitioner(max_partitions=200, min_slice_size=1000, bytes_per_string_element=12)
    assert p12((1000, 10), np.dtype(object)) == [120, 1]


def test_min_max_partitioner_axis_out_of_range():
    with pytest.raises(ValueError, match="Cannot partition variable along axis 2"):
        min_max_variable_partitioner(max_partitions=4, axis=2)((10, 10), F32)


# ---------------------------------------------------------------- variable_axis_size_partitioner


def test_variable_axis_size_partitioner():
    # [100, 10] float32, max 1000 bytes: bytes_per_slice = (1000 / 100) * 4 = 40;
    # slices_per_shard = floor(1000 / 40) = 25; shards = ceil(100 / 25) = 4.
    assert variable_axis_size_partitioner(1000)((100, 10), F32) == [4, 1]
    # max_shards caps it: min(3, 4) = 3.
    assert variable_axis_size_partitioner(1000, max_shards=3)((100, 10), F32) == [3, 1]
    # One slice (4000 bytes) over the limit: slices_per_shard = max(1, floor(0.025)) = 1;
    # shards = ceil(10 / 1) = 10.
    assert variable_axis_size_partitioner(100)((10, 1000), F32) == [10, 1]
    # axis=1: [6, 50] float64, max 100: bytes_per_slice = (300 / 50) * 8 = 48;
    # slices_per_shard = floor(100 / 48) = 2; shards = ceil(50 / 2) = 25.
    assert variable_axis_size_partitioner(100, axis=1)((6, 50), np.dtype(np.float64)) == [1, 25]
    # bfloat16 [64, 8], max 100: bytes_per_slice = 8 * 2 = 16; floor(100 / 16) = 6;
    # ceil(64 / 6) = 11.
    assert variable_axis_size_partitioner(100)((64, 8), ml_dtypes.bfloat16) == [11, 1]
    # Everything fits: [10, 10] float32 = 400 bytes, max 1 MiB: one shard.
    assert variable_axis_size_partitioner(1 << 20)((10, 10), F32) == [1, 1]


def test_variable_axis_size_partitioner_strings():
    # [100, 4] strings at 16 bytes: bytes_per_slice = 4 * 16 = 64; floor(640 / 64) = 10;
    # ceil(100 / 10) = 10.
    assert variable_axis_size_partitioner(640)((100, 4), np.dtype(object)) == [10, 1]
    # bytes_per_string_element=32: 128 bytes per slice; floor(640 / 128) = 5; ceil(100/5) = 20.
    p = variable_axis_size_partitioner(640, bytes_per_string_element=32)
    assert p((100, 4), "string") == [20, 1]


def test_variable_axis_size_partitioner_empty_axes():
    # TF divides by zero on these; there is nothing to split: one part.
    assert variable_axis_size_partitioner(100)((0, 4), F32) == [1, 1]
    assert variable_axis_size_partitioner(100)((10, 0), F32) == [1, 1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_shard_bytes": 0}, "must be positive"),
        ({"max_shard_bytes": 10, "bytes_per_string_element": 0}, "must be positive"),
        ({"max_shard_bytes": 10, "max_shards": -1}, "max_shards must be positive"),
    ],
)
def test_variable_axis_size_partitioner_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        variable_axis_size_partitioner(**kwargs)
