"""CudaBackend's orchestration on a machine without a GPU.

tests/fake_cupy.py stands in for CuPy (host memory as "device" memory, memmove as
cudaMemcpyAsync) and the host harness runs the kernels' own C++ for each launch. This
checks what the backend decides and computes (which copies go direct, which bytes are
staged and at what offset, how descriptors are packed and batched, slot reuse) against
the edge table. It says nothing about real CUDA behaviour; tests/test_device_gpu.py does.
"""

from __future__ import annotations

import sys

import fake_cupy
import numpy as np
import pytest
from box_cases import BF16, F32, edge_cases, raw
from kernel_harness import build_harness

from gpuload.device import host, kernels
from gpuload.plan.copies import BoxCopy


@pytest.fixture
def backend(monkeypatch, tmp_path_factory):
    harness = build_harness(tmp_path_factory.mktemp("harness"))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(kernels, "get_kernel", lambda s, d: fake_cupy.harness_kernel(harness, host.cast_code(s, d)))
    fake_cupy.calls.clear()
    from gpuload.device.cuda import CudaBackend

    return CudaBackend(0)


def _dest(case):
    d = fake_cupy.empty(case.fill.nbytes, np.uint8)
    d[:] = case.fill.reshape(-1).view(np.uint8)
    return d


def test_edge_table_through_submit(backend):
    cases = edge_cases()
    slots = backend.alloc_host_slots(3, max(c.chunk.size for c in cases))
    assert all(s.ctypes.data % 4096 == 0 for s in slots)
    for i, case in enumerate(cases):
        k = i % 3
        slots[k][: case.chunk.size] = case.chunk
        dest = _dest(case)
        token = backend.submit(k, slots[k][: case.chunk.size], case.copies, [dest], [(case.src_dtype, case.dst_dtype)])
        token.wait()
        got = np.asarray(dest).view(np.ndarray).view(case.dst_dtype).reshape(case.fill.shape)
        np.testing.assert_array_equal(raw(got), raw(case.expected), err_msg=case.name)
    st = backend.stats
    assert st["submits"] == len(cases) and st["direct_copies"] > 0 and st["kernel_launches"] > 0
    backend.free_host_slots(slots)


def test_batching_staging_and_direct_copies(backend):
    """A chunk with 32 column partitions (cast), 2 dense copies and one int8 box."""
    rng = np.random.default_rng(0)
    prefix = 1000  # the kernel copies start here: staging begins at 768 (256-aligned)
    tensor = rng.standard_normal((8, 64)).astype(np.float32)
    dense = rng.integers(0, 1 << 31, 100, dtype=np.int32)
    int8 = rng.integers(-128, 128, (4, 10), dtype=np.int8)
    body = np.concatenate([tensor.view(np.uint8).ravel(), dense.view(np.uint8), int8.view(np.uint8).ravel()])
    slots = backend.alloc_host_slots(1, prefix + body.size)
    slots[0][prefix:] = body
    n_t = tensor.nbytes
    parts = [backend.empty((8, 2), BF16) for _ in range(32)]
    d_dense = [backend.empty((60,), np.int32), backend.empty((40,), np.int32)]
    d_int8 = backend.empty((4, 3), np.int8)
    dests = [*parts, *d_dense, d_int8]
    dtypes = [(F32, BF16)] * 32 + [(np.int32, np.int32)] * 2 + [(np.int8, np.int8)]
    copies = [BoxCopy(p, prefix + 8 * p, (64, 1), 0, (2, 1), (8, 2)) for p in range(32)]
    copies += [BoxCopy(32, prefix + n_t, (1,), 0, (1,), (60,)), BoxCopy(33, prefix + n_t + 240, (1,), 0, (1,), (40,))]
    copies += [BoxCopy(34, prefix + n_t + 400 + 5, (10, 1), 0, (3, 1), (4, 3))]
    backend.submit(0, slots[0], copies, dests, dtypes).wait()

    for p in range(32):
        np.testing.assert_array_equal(np.asarray(parts[p]).view(np.uint16), tensor[:, 2 * p : 2 * p + 2].astype(BF16).view(np.uint16))
    np.testing.assert_array_equal(np.asarray(d_dense[0]), dense[:60])
    np.testing.assert_array_equal(np.asarray(d_dense[1]), dense[60:])
    np.testing.assert_array_equal(np.asarray(d_int8), int8[:, 5:8])

    launches = [c for c in fake_cupy.calls if c[0] == "launch"]
    assert sorted((v, n) for _, v, _, _, n in launches) == [("b1_b1", 1), ("f32_bf16", 32)]
    memcpys = [c for c in fake_cupy.calls if c[0] == "memcpy"]
    host_base = slots[0].ctypes.data
    staged = memcpys[0]
    stage_end = prefix + n_t + 400 + 5 + 3 * 10 + 3  # last int8 byte read, plus one
    assert staged[2] == host_base + 768 and staged[3] == stage_end - 768
    direct = [(c[2] - host_base, c[3]) for c in memcpys if c[1] in (d_dense[0].data.ptr, d_dense[1].data.ptr)]
    assert direct == [(prefix + n_t, 240), (prefix + n_t + 240, 160)]
    assert backend.stats["direct_bytes"] == 400 and backend.stats["staged_bytes"] == stage_end - 768
    backend.free_host_slots(slots)


def test_staging_grows_and_slots_are_independent(backend):
    slots = backend.alloc_host_slots(2, 1 << 18)
    for k, n in [(0, 100), (1, 5000), (0, 60000), (1, 10)]:
        data = np.arange(n, dtype=np.float32)
        slots[k][: data.nbytes] = data.view(np.uint8)
        dest = backend.empty((n,), BF16)
        backend.submit(k, slots[k][: data.nbytes], [BoxCopy(0, 0, (1,), 0, (1,), (n,))], [dest], [(F32, BF16)]).wait()
        np.testing.assert_array_equal(np.asarray(dest).view(np.uint16), data.astype(BF16).view(np.uint16))
    assert backend._slots[0].staging.nbytes >= 240000 and backend._slots[1].staging.nbytes >= 20000
    backend.close()
    assert backend._slots == {}
