"""The real kernels and the CUDA backend, against the NumPy twin (needs a CUDA device).

Every test is marked ``gpu``: tests/conftest.py skips them without a device and fails them
when ``GPULOAD_REQUIRE_GPU=1``. CuPy is imported inside the tests only, so that collecting
this file never needs it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from box_cases import BF16, F32, edge_cases, make_case, raw

from gpuload.backend import contract, host, kernels
from gpuload.errors import PlanError
from gpuload.plan.copies import BoxCopy

pytestmark = pytest.mark.gpu

EDGE = edge_cases()


def _launch(cupy, case, d_src, dest_bytes):
    """One batched launch of all of a case's copies, as the CUDA backend does it."""
    copies = case.copies
    descs = contract.pack_descriptors(copies, [dest_bytes.data.ptr] * len(copies))
    d_descs = cupy.asarray(descs.view(np.uint8))
    fn = kernels.get_kernel(case.src_dtype, case.dst_dtype)
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    grid, block = kernels.launch_geometry([c.size for c in copies], sms)
    fn(grid, block, (d_src, d_descs, np.int32(len(copies))))


def _twin(case):
    dest = case.fresh_dest()
    for c in case.copies:
        host.box_copy(case.chunk, case.src_dtype, dest, case.dst_dtype, c)
    return dest


@pytest.mark.parametrize("case", EDGE, ids=lambda c: c.name)
def test_kernel_matches_twin_and_reference(case):
    import cupy

    want = raw(case.expected)
    np.testing.assert_array_equal(raw(_twin(case)), want)
    dest = cupy.asarray(case.fill.reshape(-1).view(np.uint8))
    _launch(cupy, case, cupy.asarray(case.chunk), dest)
    got = cupy.asnumpy(dest).view(case.dst_dtype).reshape(case.fill.shape)
    np.testing.assert_array_equal(raw(got), want)


@pytest.mark.parametrize("shift", [1, 2, 3, 5])
def test_kernel_with_misaligned_device_source(shift):
    """The byte-wise path: a source base that is not element-aligned on the device."""
    import cupy

    for case in [c for c in EDGE if "odd 7x13" in c.name]:
        buf = cupy.zeros(case.chunk.size + 16, cupy.uint8)
        buf[shift : shift + case.chunk.size] = cupy.asarray(case.chunk)
        dest = cupy.asarray(case.fill.reshape(-1).view(np.uint8))
        _launch(cupy, case, buf[shift:], dest)
        got = cupy.asnumpy(dest).view(case.dst_dtype).reshape(case.fill.shape)
        np.testing.assert_array_equal(raw(got), raw(case.expected), err_msg=case.name)


def test_large_random_cast_matches_numpy():
    """1M-element float32 -> bfloat16 / float16 of random bits (NaN payloads, subnormals)."""
    import cupy

    rng = np.random.default_rng(11)
    for dst in (BF16, np.dtype(np.float16)):
        case = make_case("big", (1024, 1024), (0, 0), (1024, 1024), F32, dst, pad=0, seed=int(rng.integers(1 << 16)))
        dest = cupy.asarray(case.fill.reshape(-1).view(np.uint8))
        _launch(cupy, case, cupy.asarray(case.chunk), dest)
        np.testing.assert_array_equal(cupy.asnumpy(dest), case.expected.reshape(-1).view(np.uint8))


def _backend():
    from gpuload.backend.placement import backend_for

    return backend_for("/device:GPU:0")


def test_cuda_backend_end_to_end_over_a_ring():
    """Every edge case through submit(), round-robin over 3 pinned slots, tokens honoured."""
    import cupy

    backend = _backend()
    slots = backend.alloc_host_slots(3, max(c.chunk.size for c in EDGE))
    assert all(s.ctypes.data % 4096 == 0 for s in slots)
    pending = {}
    results = []
    for i, case in enumerate(EDGE):
        k = i % len(slots)
        if k in pending:
            pending.pop(k).wait()
        slots[k][: case.chunk.size] = case.chunk
        dest = cupy.asarray(case.fill.reshape(-1).view(np.uint8))
        token = backend.submit(k, slots[k][: case.chunk.size], case.copies, [dest], [(case.src_dtype, case.dst_dtype)])
        pending[k] = token
        results.append((case, dest))
    backend.synchronize()
    assert all(t.done() for t in pending.values())
    for case, dest in results:
        got = cupy.asnumpy(dest).view(case.dst_dtype).reshape(case.fill.shape)
        np.testing.assert_array_equal(raw(got), raw(case.expected), err_msg=case.name)
    assert backend.stats["direct_copies"] > 0 and backend.stats["kernel_launches"] > 0
    backend.free_host_slots(slots)


def test_cuda_backend_partitions_in_one_launch():
    """32 column partitions of a chunk: one kernel launch, 32 destinations, real dtypes."""
    backend = _backend()
    tensor = np.random.default_rng(5).standard_normal((64, 96)).astype(np.float32)
    slots = backend.alloc_host_slots(1, tensor.nbytes)
    slots[0][:] = tensor.view(np.uint8).reshape(-1)
    dests = [backend.empty((64, 3), BF16) for _ in range(32)]
    copies = [BoxCopy(p, 12 * p, (96, 1), 0, (3, 1), (64, 3)) for p in range(32)]
    before = backend.stats["kernel_launches"]
    backend.submit(0, slots[0], copies, dests, [(F32, BF16)] * 32).wait()
    assert backend.stats["kernel_launches"] == before + 1
    for p, d in enumerate(dests):
        got = backend.to_host(d)
        np.testing.assert_array_equal(got.view(np.uint16), tensor[:, 3 * p : 3 * p + 3].astype(BF16).view(np.uint16))
    backend.free_host_slots(slots)


def test_cuda_backend_dense_copy_skips_staging():
    backend = _backend()
    data = np.arange(1000, dtype=np.int32)
    slots = backend.alloc_host_slots(1, data.nbytes + 8)
    slots[0][8:] = data.view(np.uint8)
    dest = backend.empty((1000,), np.int32)
    staged, direct = backend.stats["staged_bytes"], backend.stats["direct_bytes"]
    backend.submit(0, slots[0], [BoxCopy(0, 8, (1,), 0, (1,), (1000,))], [dest], [(np.int32, np.int32)]).wait()
    np.testing.assert_array_equal(backend.to_host(dest), data)
    assert backend.stats["staged_bytes"] == staged and backend.stats["direct_bytes"] == direct + 4000
    backend.free_host_slots(slots)


def test_cuda_backend_rejects_bad_copies():
    import cupy

    backend = _backend()
    dest = backend.empty((4,), np.float32)
    chunk = np.zeros(16, np.uint8)
    with pytest.raises(PlanError, match="reads chunk bytes"):
        backend.submit(0, chunk, [BoxCopy(0, 8, (1,), 0, (1,), (4,))], [dest], [(F32, F32)])
    with pytest.raises(PlanError, match="no box-copy kernel"):
        backend.submit(0, chunk, [BoxCopy(0, 0, (1,), 0, (1,), (4,))], [dest], [(np.int32, F32)])
    with pytest.raises(TypeError, match="cupy.ndarray"):
        backend.submit(0, chunk, [BoxCopy(0, 0, (1,), 0, (1,), (4,))], [np.zeros(4, np.float32)], [(F32, F32)])
    if cupy.cuda.runtime.getDeviceCount() > 1:
        with cupy.cuda.Device(1):
            other = cupy.empty(4, np.float32)
        with pytest.raises(ValueError, match="lives on /device:GPU:1"):
            backend.submit(0, chunk, [BoxCopy(0, 0, (1,), 0, (1,), (4,))], [other], [(F32, F32)])


def test_every_gpu_gets_its_own_backend():
    import cupy

    from gpuload.backend.placement import backend_for

    n = cupy.cuda.runtime.getDeviceCount()
    backends = [backend_for(f"gpu:{i}") for i in range(n)]
    assert [b.device for b in backends] == [f"/device:GPU:{i}" for i in range(n)]
    ring = backends[0].alloc_host_slots(1, 64)  # portable pinned memory: every GPU reads it
    ring[0][:] = np.arange(64, dtype=np.uint8)
    for b in backends:
        dest = b.empty((16,), np.float32)
        b.submit(0, ring[0], [BoxCopy(0, 0, (1,), 0, (1,), (16,))], [dest], [(F32, F32)]).wait()
        np.testing.assert_array_equal(b.to_host(dest).view(np.uint8), ring[0])
    backends[0].free_host_slots(ring)


def test_warmup_and_compile_error(tmp_path, monkeypatch):
    kernels.warmup(variants=("b4_b4", "f32_bf16"), devices=[0])
    (tmp_path / "box_copy.cu").write_text('#include "box_copy.cuh"\nthis is not C++;\n')
    (tmp_path / "box_copy.cuh").write_text("// empty\n")
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.setattr(kernels, "_functions", {})
    with pytest.raises(kernels.KernelCompileError, match=r"box_copy\.cu: variant 'b4_b4' failed to compile") as info:
        kernels.get_kernel(np.int32, np.int32)
    buf = io.StringIO()
    info.value.dump(buf)
    assert "this is not C++" in buf.getvalue()
