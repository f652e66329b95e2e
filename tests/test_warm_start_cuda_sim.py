"""The CUDA backend's gather path on the CUDA-ordering simulator (runs in every pytest run).

Ported from tests/test_warm_start_cuda_fake.py (tests/fake_cupy.py is gone, issue 8): the
staging range, the packing of gather descriptors and offset pairs and the launches are
checked against the NumPy twin, from a pinned host chunk (``submit``) and from a chunk
already in device memory (``submit_device``, what the NCCL transport of a collective load
uses). The ``sim`` fixture fails a test on any ordering violation.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuload.backend import host
from gpuload.plan.copies import BoxCopy, GatherCopy


@pytest.mark.parametrize("mode", ["late", "early"])
@pytest.mark.parametrize("source", ["host", "device"])
def test_gathers_and_box_copies_in_one_submit(sim, mode, source):
    from gpuload.backend.cuda import CudaBackend

    sim.set_mode(mode)
    backend = CudaBackend(1)
    rng = np.random.default_rng(0)
    prefix = 1000
    table = rng.standard_normal((40, 16)).astype(np.float32)
    body = table.reshape(-1).view(np.uint8)
    slots = backend.alloc_host_slots(1, prefix + body.size)
    slots[0][prefix:] = body
    with sim.cuda.Device(1):
        d_rows = backend.adopt(sim.full((10, 16), -1, np.float32))
        d_cast = backend.adopt(sim.zeros((8, 4), np.float16))
    d_box = backend.empty((2, 16), np.float32)
    rows = np.array([7, 3, 39, 20])
    g1 = GatherCopy(0, prefix + rows * 64, np.array([0, 9, 4, 5]) * 16, (1,), (1,), (16,))
    cols = np.array([2, 15, 0])
    g2 = GatherCopy(1, prefix + (10 * 16 + cols) * 4, np.array([1, 3, 0]), (16,), (4,), (8,))
    box = BoxCopy(2, prefix + 30 * 64, (1,), 0, (1,), (32,))
    dests = [d_rows, d_cast, d_box]
    dtypes = [(np.float32, np.float32), (np.float32, np.float16), (np.float32, np.float32)]
    want = [np.full((10, 16), -1, np.float32), np.zeros((8, 4), np.float16), np.zeros((2, 16), np.float32)]
    host.gather_copy(slots[0], np.float32, want[0], np.float32, g1)
    host.gather_copy(slots[0], np.float32, want[1], np.float16, g2)
    host.box_copy(slots[0], np.float32, want[2], np.float32, box)
    n = prefix + body.size
    if source == "host":
        tok = backend.submit(0, slots[0][:n], [g1, box, g2], dests, dtypes)
    else:
        with sim.cuda.Device(1):
            stream = sim.cuda.Stream(non_blocking=True)
            with stream:
                chunk = sim.empty(n, np.uint8)
            sim.cuda.runtime.memcpyAsync(
                chunk.data.ptr, slots[0].ctypes.data, n, sim.cuda.runtime.memcpyHostToDevice, stream.ptr
            )
            ready = stream.record()
        tok = backend.submit_device(0, chunk, n, [g1, box, g2], dests, dtypes, ready)
    tok.wait()
    for got, w in zip(dests, want):
        np.testing.assert_array_equal(backend.to_host(got), w)
    gathers = [c for c in sim.state.calls if c[0] == "gather"]
    assert sorted((v, k) for _, v, _, _, k in gathers) == [("b4_b4", 1), ("f32_f16", 1)]
    assert backend.stats["gather_copies"] == 2 and backend.stats["direct_copies"] == 1
    copies = [c for c in sim.state.calls if c[0] == "memcpy"]
    if source == "host":
        # Staged from the first byte any kernel reads (row 3), rounded down to 256.
        first = prefix + 3 * 64
        assert copies[0][2] == slots[0].ctypes.data + first - first % 256
    else:
        # Kernels read the device chunk in place: the dense copy is device to device, and
        # nothing but descriptors goes up (no staging copy of the chunk).
        assert [c for c in copies if c[4] == sim.cuda.runtime.memcpyDeviceToDevice] == [
            ("memcpy", d_box.data.ptr, chunk.data.ptr + prefix + 30 * 64, 128, 3)
        ]
        assert backend.stats["staged_bytes"] == 0
    backend.close()
    backend.free_host_slots(slots)
