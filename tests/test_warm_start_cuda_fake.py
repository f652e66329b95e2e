"""The CUDA backend's gather path on the fake CuPy (no GPU).

The fake (tests/fake_cupy.py) gives host memory as "device" memory and runs launches
through the host harness, so the staging range, the packing of gather descriptors and
offset pairs, and the launch arguments are checked against the NumPy twin. Where the fake
has been replaced by the CUDA-ordering simulator (issue 8), this file skips and the
``gpu``-marked tests of tests/test_warm_start_cuda.py run the same path in the simulator.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from kernel_harness import build_harness

from gpuload.device import host, kernels
from gpuload.plan.copies import BoxCopy, GatherCopy

fake_cupy = pytest.importorskip("fake_cupy", reason="tests/fake_cupy.py replaced by the CUDA simulator (issue 8)")


@pytest.fixture
def backend(monkeypatch, tmp_path_factory):
    harness = build_harness(tmp_path_factory.mktemp("harness"))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(kernels, "get_kernel", lambda s, d: fake_cupy.harness_kernel(harness, host.cast_code(s, d)))

    def gather_kernel(s, d):
        variant = host.cast_code(s, d)

        def launch(grid, block, args):
            src, descs, n, offsets = args
            fake_cupy.calls.append(("gather", variant, grid, block, int(n)))
            harness.gather_run(variant, src, descs, offsets, grid=grid, block=block[0], n_desc=int(n))

        return launch

    monkeypatch.setattr(kernels, "get_gather_kernel", gather_kernel)
    fake_cupy.calls.clear()
    from gpuload.device.cuda import CudaBackend

    return CudaBackend(0)


def test_gathers_and_box_copies_in_one_submit(backend):
    rng = np.random.default_rng(0)
    prefix = 1000
    table = rng.standard_normal((40, 16)).astype(np.float32)
    body = table.reshape(-1).view(np.uint8)
    slots = backend.alloc_host_slots(1, prefix + body.size)
    slots[0][prefix:] = body
    d_rows = backend.empty((10, 16), np.float32)
    d_rows[...] = -1
    d_cast = backend.empty((8, 4), np.dtype("float16"))
    d_cast[...] = 0
    d_box = backend.empty((2, 16), np.float32)
    rows = np.array([7, 3, 39, 20])
    g1 = GatherCopy(0, prefix + rows * 64, np.array([0, 9, 4, 5]) * 16, (1,), (1,), (16,))
    cols = np.array([2, 15, 0])
    g2 = GatherCopy(1, prefix + (10 * 16 + cols) * 4, np.array([1, 3, 0]), (16,), (4,), (8,))
    box = BoxCopy(2, prefix + 30 * 64, (1,), 0, (1,), (32,))
    dests = [d_rows, d_cast, d_box]
    dtypes = [(np.float32, np.float32), (np.float32, np.float16), (np.float32, np.float32)]
    want = [np.asarray(d).view(np.ndarray).copy() for d in dests]
    host.gather_copy(slots[0], np.float32, want[0], np.float32, g1)
    host.gather_copy(slots[0], np.float32, want[1], np.float16, g2)
    host.box_copy(slots[0], np.float32, want[2], np.float32, box)
    backend.submit(0, slots[0], [g1, box, g2], dests, dtypes).wait()
    for got, w in zip(dests, want):
        np.testing.assert_array_equal(np.asarray(got).view(np.ndarray), w)
    gathers = [c for c in fake_cupy.calls if c[0] == "gather"]
    assert sorted((v, n) for _, v, _, _, n in gathers) == [("b4_b4", 1), ("f32_f16", 1)]
    assert backend.stats["gather_copies"] == 2 and backend.stats["direct_copies"] == 1
    # Staged from the first byte any kernel reads (row 3), rounded down to 256.
    staged = [c for c in fake_cupy.calls if c[0] == "memcpy"][0]
    first = prefix + 3 * 64
    assert staged[2] == slots[0].ctypes.data + first - first % 256
    backend.free_host_slots(slots)


def test_adopt_orders_the_streams_after_the_prefill(backend):
    arr = fake_cupy.empty((4,), np.float32)
    fake_cupy.calls.clear()
    assert backend.adopt(arr) is arr
    assert [c[0] for c in fake_cupy.calls] == ["wait_event", "wait_event"]
