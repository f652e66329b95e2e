"""Loads with ``allow_cast=True`` convert as TensorFlow's Cast does, bit for bit.

TensorFlow (Eigen) converts float64 to bfloat16 and float16 through float32: two roundings.
ml_dtypes >= 0.7 rounds float64 -> bfloat16 once, and NumPy rounds float64 -> float16 once,
so these values tell the two apart. The expected bits are written out here, not computed
with the library under test.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import gpuload

BF16 = np.dtype(ml_dtypes.bfloat16)

# (float64 value, bfloat16 bits, float16 bits) as TensorFlow's Cast gives them.
NAMED = [
    (1 + 2**-8 + 2**-40, 0x3F80, 0x3C04),  # bfloat16: one rounding gives 0x3F81
    (1 + 2**-11 + 2**-52, 0x3F80, 0x3C00),  # float16: one rounding gives 0x3C01
    (-(1 + 2**-8 + 2**-40), 0xBF80, 0xBC04),
    (1 + 3 * 2**-8, 0x3F82, 0x3C0C),  # exact in float32, a bfloat16 tie (to even), exact in float16
    (2.0**-140, 0x0000, 0x0000),  # below float32's range: 0 through float32 as well
    (1.5, 0x3FC0, 0x3E00),  # exact everywhere
]


@pytest.fixture
def prefix(tmp_path):
    values = np.array([v for v, _, _ in NAMED] * 2, dtype=np.float64).reshape(4, -1)
    p = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(p, {"t": values})
    gpuload.reset_default_graph()
    yield p, values
    gpuload.reset_default_graph()


@pytest.mark.parametrize(("dtype", "column"), [("bfloat16", 1), ("float16", 2)])
@pytest.mark.parametrize("parts", [None, [2, 1]])
def test_float64_checkpoint_into_16bit_variable(prefix, dtype, column, parts):
    p, values = prefix
    want = np.array([row[column] for row in NAMED] * 2, np.uint16).reshape(values.shape)
    partitioner = (lambda s, d: parts) if parts else None
    v = gpuload.get_variable("v", shape=list(values.shape), dtype=dtype, partitioner=partitioner, device="/cpu:0")
    gpuload.init_from_checkpoint(p, {"t": "v"}, allow_cast=True)
    gpuload.global_variables_initializer().run()
    got = np.asarray(v).view(np.uint16)
    np.testing.assert_array_equal(got, want)


def test_named_value_differs_from_a_single_rounding():
    # Guards the test above: the value really tells one rounding from two. ml_dtypes < 0.7
    # rounds through float32 itself; then only the float32 route is checked.
    x = np.array([1 + 2**-8 + 2**-40])
    assert x.astype(np.float32).astype(BF16).view(np.uint16)[0] == 0x3F80
    assert np.array([1 + 2**-11 + 2**-52]).astype(np.float16).view(np.uint16)[0] == 0x3C01
