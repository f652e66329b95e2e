"""The CUDA backend and the GPU load path on the CUDA-ordering simulator, in every run.

tests/cuda_sim.py stands in for CuPy (see there): streams are queues that run late (or
early), copies and kernels read their inputs when they run, kernels are the kernels' own
C++ (host harness), and ordering mistakes are violations that fail the test. These tests
need no GPU and run in the plain suite: the backend's orchestration (staging, batching,
direct copies), the simulator's own ability to fail, and a regression test for each
defect of issue 8 that the simulator can show.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from box_cases import BF16, F32, edge_cases, raw

import gpuload
from gpuload import config
from gpuload.backend import contract, kernels
from gpuload.errors import DeviceError, DeviceMemoryError, DeviceUnavailableError
from gpuload.plan.copies import BoxCopy


@pytest.fixture(autouse=True)
def fresh_graph():
    gpuload.reset_default_graph()
    yield
    gpuload.reset_default_graph()


@pytest.fixture(params=["late", "early"])
def mode_sim(request, sim):  # noqa: F811
    sim.set_mode(request.param)
    return sim


def _backend(index=0):
    from gpuload.backend.placement import backend_for

    return backend_for(f"/device:GPU:{index}")


def _get(a):
    return a.get()


def _ckpt(tmp_path, arrays):
    prefix = str(tmp_path / "model.ckpt")
    gpuload.save_checkpoint(prefix, arrays)
    return prefix


def _load(prefix, name, shape, dtype, parts, devices, src=None, **cfg):
    v = gpuload.get_variable(
        name, shape=list(shape), dtype=dtype, partitioner=(lambda s, d: parts) if parts else None, device=devices
    )
    gpuload.init_from_checkpoint(prefix, {src or name: name}, allow_cast=True)
    with config.set(**cfg):
        gpuload.global_variables_initializer().run()
    return v


# ------------------------------------------------------------------ backend orchestration


def test_edge_table_through_submit(mode_sim):
    backend = _backend()
    cases = edge_cases()
    slots = backend.alloc_host_slots(3, max(c.chunk.size for c in cases))
    assert all(s.ctypes.data % 4096 == 0 for s in slots)
    pending = {}
    results = []
    for i, case in enumerate(cases):
        k = i % 3
        if k in pending:
            pending.pop(k).wait()
        slots[k][: case.chunk.size] = case.chunk
        dest = mode_sim.asarray(case.fill.reshape(-1).view(np.uint8))
        pending[k] = backend.submit(
            k, slots[k][: case.chunk.size], case.copies, [dest], [(case.src_dtype, case.dst_dtype)]
        )
        results.append((case, dest))
    backend.synchronize()
    for case, dest in results:
        got = _get(dest).view(case.dst_dtype).reshape(case.fill.shape)
        np.testing.assert_array_equal(raw(got), raw(case.expected), err_msg=case.name)
    st = backend.stats
    assert st["submits"] == len(cases) and st["direct_copies"] > 0 and st["kernel_launches"] > 0
    backend.close()
    backend.free_host_slots(slots)


def test_batching_staging_and_direct_copies(sim):  # noqa: F811
    """A chunk with 32 column partitions (cast), 2 dense copies and one int8 box."""
    backend = _backend()
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
    sim.state.calls.clear()
    backend.submit(0, slots[0], copies, dests, dtypes).wait()

    for p in range(32):
        np.testing.assert_array_equal(
            _get(parts[p]).view(np.uint16), tensor[:, 2 * p : 2 * p + 2].astype(BF16).view(np.uint16)
        )
    np.testing.assert_array_equal(_get(d_dense[0]), dense[:60])
    np.testing.assert_array_equal(_get(d_dense[1]), dense[60:])
    np.testing.assert_array_equal(_get(d_int8), int8[:, 5:8])

    launches = [c for c in sim.state.calls if c[0] == "launch"]
    assert sorted((v, n) for _, v, _, _, n in launches) == [("b1_b1", 1), ("f32_bf16", 32)]
    memcpys = [c for c in sim.state.calls if c[0] == "memcpy"]
    host_base = slots[0].ctypes.data
    staged = memcpys[0]
    stage_end = prefix + n_t + 400 + 5 + 3 * 10 + 3  # last int8 byte read, plus one
    assert staged[2] == host_base + 768 and staged[3] == stage_end - 768
    direct = [(c[2] - host_base, c[3]) for c in memcpys if c[1] in (d_dense[0].data.ptr, d_dense[1].data.ptr)]
    assert direct == [(prefix + n_t, 240), (prefix + n_t + 240, 160)]
    assert backend.stats["direct_bytes"] == 400 and backend.stats["staged_bytes"] == stage_end - 768
    backend.close()
    backend.free_host_slots(slots)


def test_staging_grows_and_slots_are_independent(sim):  # noqa: F811
    backend = _backend()
    load = backend.session()
    slots = backend.alloc_host_slots(2, 1 << 18)
    for k, n in [(0, 100), (1, 5000), (0, 60000), (1, 10)]:
        data = np.arange(n, dtype=np.float32)
        slots[k][: data.nbytes] = data.view(np.uint8)
        dest = load.empty((n,), BF16)
        load.submit(k, slots[k][: data.nbytes], [BoxCopy(0, 0, (1,), 0, (1,), (n,))], [dest], [(F32, BF16)]).wait()
        np.testing.assert_array_equal(_get(dest).view(np.uint16), data.astype(BF16).view(np.uint16))
    assert load._slots[0].staging.nbytes >= 240000 and load._slots[1].staging.nbytes >= 20000
    load.close()
    assert load._slots == {}
    backend.free_host_slots(slots)


# ------------------------------------------------------------------ the simulator can fail


def _break_backend(monkeypatch, what):
    """Plant a bug in the CUDA backend; returns a counter of the skipped waits.

    ``kernel-wait``: a load's kernel stream no longer waits for the event recorded after the
    staging copy. ``token-wait``: ``CudaToken.wait`` returns at once, so the releaser hands
    a ring slot back while the copies out of it have not run.
    """
    from gpuload.backend import cuda

    skipped = {"n": 0}
    if what == "kernel-wait":
        real_init = cuda.CudaLoad.__init__

        def init(self, backend):
            real_init(self, backend)
            real_wait, copy = self._kernel_stream.wait_event, self._copy_stream

            def wait_event(event):
                if event.op is not None and event.op.stream is copy:
                    skipped["n"] += 1
                    return None
                return real_wait(event)

            self._kernel_stream.wait_event = wait_event

        monkeypatch.setattr(cuda.CudaLoad, "__init__", init)
    else:
        monkeypatch.setattr(cuda.CudaToken, "wait", lambda self: skipped.__setitem__("n", skipped["n"] + 1))
    return skipped


@pytest.mark.parametrize(
    ("what", "mode", "expect"),
    [
        ("kernel-wait", "late", "race: kernel"),
        ("kernel-wait", "early", "race: kernel"),
        ("token-wait", "late", "changed between enqueue and execution"),
    ],
)
def test_simulator_catches_a_broken_wait_in_the_backend(tmp_path, monkeypatch, sim, what, mode, expect):  # noqa: F811
    """Break an event wait in the backend: the simulator must report it (it can fail)."""
    sim.set_mode(mode)
    table = np.random.default_rng(1).standard_normal((256, 32)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    skipped = _break_backend(monkeypatch, what)
    try:
        _load(prefix, "t", table.shape, "bfloat16", [1, 4], "/gpu:0", chunk_bytes=4096, ring_bytes=3 * 4096)
    except Exception:  # noqa: BLE001 - wrong data may also fail the load; the violations are what counts
        pass
    found = sim.finish_test()
    assert skipped["n"] > 0
    assert any(expect in v for v in found), found


def test_the_same_load_without_the_break_is_clean(tmp_path, mode_sim):
    """The control of the test above: the unbroken backend gives no violation (fixture checks)."""
    table = np.random.default_rng(1).standard_normal((256, 32)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    v = _load(prefix, "t", table.shape, "bfloat16", [1, 4], "/gpu:0", chunk_bytes=4096, ring_bytes=3 * 4096)
    np.testing.assert_array_equal(v.as_array().view(np.uint16), table.astype(BF16).view(np.uint16))


def test_simulator_catches_a_slot_refilled_too_early(sim):  # noqa: F811
    """Refill a pinned slot before the copy out of it ran: wrong data and a violation."""
    sim.set_mode("late")
    backend = _backend()
    slots = backend.alloc_host_slots(1, 4096)
    slots[0][:] = 1
    dest = backend.empty((4096,), np.uint8)
    token = backend.submit(0, slots[0], [BoxCopy(0, 0, (1,), 0, (1,), (4096,))], [dest], [(np.uint8, np.uint8)])
    slots[0][:] = 2  # without token.wait()
    token.wait()
    found = sim.finish_test()
    assert (_get(dest) == 2).all()  # late mode: the copy read the slot when it ran
    assert any("changed between enqueue and execution" in v for v in found), found
    backend.close()
    backend.free_host_slots(slots)


def test_simulator_catches_calls_without_a_device(sim):  # noqa: F811
    backend = _backend(1)
    slots = backend.alloc_host_slots(1, 64)
    dest = backend.empty((64,), np.uint8)
    token = backend.submit(0, slots[0], [BoxCopy(0, 0, (1,), 0, (1,), (64,))], [dest], [(np.uint8, np.uint8)])
    ev = token._events[0]
    t = threading.Thread(target=ev.synchronize, name="no-device")
    t.start()
    t.join()
    found = sim.finish_test()
    assert any("no-device" in v and "selected no device" in v for v in found), found
    backend.close()
    backend.free_host_slots(slots)


def test_simulator_catches_wrong_device_pointers(sim):  # noqa: F811
    b0 = _backend(0)
    slots = b0.alloc_host_slots(1, 64)
    with sim.cuda.Device(1):
        other = sim.empty((64,), np.uint8)
    load = b0.session()
    with sim.cuda.Device(0):
        sim.cuda.runtime.memcpyAsync(other.data.ptr, slots[0].ctypes.data, 64, 1, load._copy_stream.ptr)
        ev = sim.cuda.Event()
    with sim.cuda.Device(1):
        s1 = sim.cuda.Stream(non_blocking=True)
        s1.record(ev)  # an event of GPU 0 on a GPU 1 stream
    load.close()
    found = sim.finish_test()
    assert any("memory of GPU 1, the stream is on GPU 0" in v for v in found), found
    assert any("event of GPU 0 recorded on stream" in v for v in found), found
    b0.free_host_slots(slots)


# ------------------------------------------------------------------ issue 8 regressions


def test_empty_load_launches_nothing_harmful(sim):  # noqa: F811
    """Item 1: launch_geometry([]) raised, failing every 'empty' GPU edge case."""
    assert kernels.launch_geometry([], 4) == ((1, 1), (kernels.BLOCK_THREADS,))
    backend = _backend()
    dest = backend.empty((0,), np.float32)
    chunk = np.zeros(16, np.uint8)
    backend.submit(0, chunk, [BoxCopy(0, 0, (1,), 0, (1,), (0,))], [dest], [(F32, BF16)]).wait()
    backend.close()


def test_cupy_13_is_refused_with_its_version(sim, monkeypatch):  # noqa: F811
    """Item 4 of the issue (CuPy 13 has no bfloat16): gpuload requires CuPy >= 14, clearly."""
    from gpuload.backend import placement

    sim.set_version("13.6.0")
    with pytest.raises(ValueError):
        sim.empty((2,), BF16)  # what CuPy 13 does
    count, seen = placement._probe_now()
    assert count == 0 and "CuPy 13.6.0" in seen and ">= 14" in seen
    monkeypatch.setattr(placement, "_probe", lambda: (count, seen))
    with pytest.raises(DeviceUnavailableError, match=r"CuPy 13\.6\.0 is installed but gpuload needs CuPy >= 14"):
        placement.check_device("/gpu:0")
    sim.set_version("14.0.0")
    assert placement._probe_now()[0] == sim.NDEV


def test_gpu_probe_ignores_warning_filters(tmp_path):
    """Item 10: under -W error, a warning while importing CuPy marked the GPU absent."""
    pkg = tmp_path / "cupy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        import types, warnings
        warnings.warn("CUDA path could not be detected", UserWarning)
        __version__ = "14.0.0"
        def _count():
            warnings.warn("driver is old", DeprecationWarning)
            return 3
        cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=_count))
    """)
    )
    code = "from gpuload.backend import placement; print(placement._probe())"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])]))
    env.pop("GPULOAD_SIMULATE_CUDA", None)
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.startswith("(3, "), out.stdout + out.stderr


def test_concurrent_sessions_keep_their_own_staging(mode_sim):
    """Item 3: a load's close() freed the staging of another load using the same slot index."""
    backend = _backend()
    a, b = backend.session(), backend.session()
    slots = backend.alloc_host_slots(2, 4096)
    data = [np.arange(1024, dtype=np.float32) + k for k in range(2)]
    dests = []
    tokens = []
    for k, load in enumerate((a, b)):
        slots[k][:] = data[k].view(np.uint8)
        dest = load.empty((1024,), BF16)
        tokens.append(load.submit(0, slots[k], [BoxCopy(0, 0, (1,), 0, (1,), (1024,))], [dest], [(F32, BF16)]))
        dests.append(dest)
    b.close()  # load b finishes first; a's work is still queued (late mode)
    tokens[0].wait()
    a.close()
    for k in range(2):
        np.testing.assert_array_equal(_get(dests[k]).view(np.uint16), data[k].astype(BF16).view(np.uint16))
    backend.free_host_slots(slots)


def test_staging_is_allocated_on_the_copy_stream(sim):  # noqa: F811
    """Item 4: staging and descriptors came from the caller's stream's pool, used on others."""
    backend = _backend()
    load = backend.session()
    slots = backend.alloc_host_slots(1, 4096)
    dest = load.empty((1024,), BF16)
    load.submit(0, slots[0], [BoxCopy(0, 0, (1,), 0, (1,), (1024,))], [dest], [(F32, BF16)]).wait()
    slot = load._slots[0]
    for buf in (slot.staging, slot.desc_dev):
        assert sim._find(buf.data.ptr).stream is load._copy_stream
    load.close()
    backend.free_host_slots(slots)


def test_load_on_gpu1_only_touches_gpu1(tmp_path, mode_sim):
    """Item 5: the releaser thread waited on events with no device: a context on GPU 0."""
    table = np.random.default_rng(2).standard_normal((300, 16)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    mode_sim.state.contexts.clear()
    v = _load(prefix, "t", table.shape, "float16", [3, 1], "/gpu:1", chunk_bytes=4096, ring_bytes=3 * 4096)
    np.testing.assert_array_equal(v.numpy(), table.astype(np.float16))
    assert mode_sim.state.contexts == {1}


def test_pinned_ring_is_kept_for_the_process(tmp_path, sim):  # noqa: F811
    """Item 6: the ring was pinned in reader threads and unpinned after every load."""
    from gpuload import loader
    from gpuload.backend.cuda import pinned_pool_bytes

    table = np.random.default_rng(3).standard_normal((512, 16)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    gc.collect()
    base = sim.live_pinned_bytes()  # other tests' (e.g. cached backends' default sessions)
    pins = []
    real = sim.PinnedMemory

    class Spy(real):
        def __init__(self, size, flags=0):
            pins.append((size, threading.current_thread().name))
            super().__init__(size, flags)

    sim.cuda.PinnedMemory = Spy
    try:
        for i in range(2):
            gpuload.reset_default_graph()
            v = _load(prefix, "t", table.shape, "float32", [1, 2], "/gpu:0", chunk_bytes=4096, ring_bytes=3 * 4096)
            np.testing.assert_array_equal(v.numpy(), table)
            stats = loader.last_stats()[0]
            if i == 0:
                ring_pins = [p for p in pins if p[0] >= 4096]
                assert ring_pins and all(name == threading.main_thread().name for _, name in ring_pins)
                assert stats.pin_s > 0
                first = len(pins)
            else:
                assert len([p for p in pins[first:] if p[0] >= 4096]) == 0  # reused, not pinned again
                assert stats.pin_s < 0.01
    finally:
        sim.cuda.PinnedMemory = real
    kept = pinned_pool_bytes()
    assert kept["idle"] >= 3 * 4096 and kept["lent"] == 0
    del v
    gc.collect()
    assert sim.live_pinned_bytes() > base
    assert gpuload.backend.release_pinned_memory() == kept["idle"]
    gc.collect()
    assert sim.live_pinned_bytes() == base


def test_fatal_cuda_error_surfaces_first_and_frees_pinned_memory(tmp_path, mode_sim):
    """Item 7: after a fatal error, cleanup raised again, hid it, and kept pinned memory."""
    table = np.random.default_rng(4).standard_normal((2048, 16)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    gc.collect()
    base = mode_sim.live_pinned_bytes()
    mode_sim.inject_fatal(0, after_ops=6)
    with pytest.raises(DeviceError) as info:
        _load(prefix, "t", table.shape, "bfloat16", [4, 1], "/gpu:0", chunk_bytes=4096, ring_bytes=3 * 4096)
    err = info.value
    assert err.device == "/device:GPU:0" and "/device:GPU:0" in str(err)
    assert isinstance(err.__cause__, mode_sim.CUDARuntimeError) and "illegal memory access" in str(err.__cause__)
    # The later failures (the sticky error again, in cleanup) are attached, not raised.
    assert all(isinstance(e, DeviceError) for e in getattr(err, "cleanup_errors", []))
    gc.collect()
    assert mode_sim.live_pinned_bytes() == base, "pinned memory kept alive after the failed load"
    from gpuload.backend.cuda import pinned_pool_bytes

    assert pinned_pool_bytes() == {"idle": 0, "lent": 0}


def test_cuda_oom_mid_load_surfaces_and_leaks_nothing(tmp_path, mode_sim):
    """CUDA OOM mid-load (staging does not fit once the destinations do): nothing leaked."""
    table = np.random.default_rng(5).standard_normal((1024, 16)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    before = mode_sim.live_bytes(0)
    mode_sim.set_memory_limit(0, before + table.size * 2 + 1024)  # the bf16 parts fit, staging not
    with pytest.raises(DeviceMemoryError, match=r"/device:GPU:0: out of memory") as info:
        _load(prefix, "t", table.shape, "bfloat16", [1, 4], "/gpu:0", chunk_bytes=8192, ring_bytes=3 * 8192)
    assert isinstance(info.value, MemoryError)
    gc.collect()
    assert mode_sim.live_bytes(0) == before and mode_sim.pending_ops() == 0
    mode_sim.set_memory_limit(0, None)
    gpuload.reset_default_graph()
    v = _load(prefix, "t", table.shape, "bfloat16", [1, 4], "/gpu:0", chunk_bytes=8192, ring_bytes=3 * 8192)
    np.testing.assert_array_equal(v.numpy().view(np.uint16), table.astype(BF16).view(np.uint16))


@pytest.mark.parametrize("misalign", [0, 512])
def test_o_direct_into_pinned_slots_that_are_not_page_aligned(tmp_path, sim, misalign):  # noqa: F811
    """Item 8: O_DIRECT assumed cudaHostAlloc returns page-aligned memory."""
    sim.misalign_pinned(misalign)
    backend = _backend()
    slots = backend.alloc_host_slots(2, 10000)
    assert all(s.ctypes.data % 4096 == 0 for s in slots)
    table = np.random.default_rng(6).standard_normal((700, 24)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    v = _load(
        prefix, "t", table.shape, "float32", [3, 2], "/gpu:0", chunk_bytes=8192, ring_bytes=3 * 8192, direct_io=True
    )
    np.testing.assert_array_equal(v.numpy(), table)
    backend.free_host_slots(slots)


def test_demo_on_a_gpu_compiles_kernels_before_the_timed_load(tmp_path, capsys, sim, monkeypatch):  # noqa: F811
    """Item 9: NVRTC compiles landed inside the timed load of `gpuload demo`."""
    import gpuload.api
    from gpuload.cli import main

    seen = []
    real = gpuload.api.execute

    def spy(*a, **k):
        seen.append(set(kernels._functions))
        return real(*a, **k)

    monkeypatch.setattr(gpuload.api, "execute", spy)
    assert (
        main(["demo", "--rows", "3000", "--cols", "8", "--parts", "3", "--device", "/gpu:0", "--dir", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert "box-copy kernels ready on /device:GPU:0" in out and "bit for bit" in out
    assert seen and all((0, "box_copy", "b4_b4") in s for s in seen)


def test_simulator_catches_wrong_current_device_and_freed_memory(sim):  # noqa: F811
    """The remaining violation kinds: launch/copy on a stream of a non-current device,
    an H2D copy from pinned memory freed before it ran, a kernel writing freed memory."""
    sim.set_mode("late")
    with sim.cuda.Device(0):
        s0 = sim.cuda.Stream(non_blocking=True)
        dst = sim.empty((4096,), np.uint8)
        fn = sim.RawModule(code=kernels.source(), options=kernels.options("b1_b1")).get_function(
            "gpuload_box_copy_b1_b1"
        )
    pinned = sim.cuda.PinnedMemory(4096)
    host = np.frombuffer(sim.cuda.PinnedMemoryPointer(pinned, 0), np.uint8, count=4096)
    with sim.cuda.Device(1):
        sim.cuda.runtime.memcpyAsync(dst.data.ptr, host.ctypes.data, 4096, 1, s0.ptr)  # GPU 1 current
    ptr = host.ctypes.data
    del host, pinned
    gc.collect()
    with sim.cuda.Device(0):
        sim.cuda.runtime.memcpyAsync(dst.data.ptr, ptr, 4096, 1, s0.ptr)  # freed pinned source
        staged = sim.empty((4096,), np.uint8)
        out = sim.empty((4096,), np.uint8)
        desc = contract.pack_descriptors([BoxCopy(0, 0, (1,), 0, (1,), (4096,))], [out.data.ptr])
        d_desc = sim.asarray(desc.view(np.uint8))
        fn((1, 1), (256,), (staged, d_desc, np.int32(1)), stream=s0)
    with sim.cuda.Device(1):
        fn((1, 1), (256,), (staged, d_desc, np.int32(1)), stream=s0)  # launch while GPU 1 is current
    del out
    gc.collect()
    s0.synchronize()
    found = sim.finish_test()
    assert any("cudaMemcpyAsync on stream" in v and "while GPU 1 is current" in v for v in found), found
    assert any("launched while GPU 1 is current" in v for v in found), found
    assert any("reads freed pinned memory" in v for v in found), found
    assert any("freed device memory of GPU 0" in v or "freed while" in v for v in found), found


def test_pinning_failure_gives_back_the_slots_it_got(tmp_path, sim, monkeypatch):  # noqa: F811
    """Pinning the ring fails half-way (host memory exhausted): the error surfaces as a
    DeviceMemoryError and the pool lends nothing afterwards."""
    from gpuload.backend.cuda import pinned_pool_bytes

    table = np.random.default_rng(7).standard_normal((512, 16)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    real = sim.PinnedMemory
    made = []

    class Flaky(real):
        def __init__(self, size, flags=0):
            if len(made) == 2:
                raise sim.OutOfMemoryError(size, 0)
            made.append(size)
            super().__init__(size, flags)

    monkeypatch.setattr(sim.cuda, "PinnedMemory", Flaky)
    with pytest.raises(DeviceMemoryError, match="/device:GPU:0: out of memory while pinning"):
        _load(prefix, "t", table.shape, "float32", [2, 1], "/gpu:0", chunk_bytes=4096, ring_bytes=4 * 4096)
    assert len(made) == 2 and pinned_pool_bytes()["lent"] == 0


def test_submits_do_not_parse_the_device(tmp_path, monkeypatch, mode_sim):
    """A token takes the load's canonical device string: no ``Device`` is built per submit."""
    from gpuload.backend import cuda

    table = np.random.default_rng(3).standard_normal((1000, 16)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    real = cuda.Device
    made = []

    class Counting:
        @staticmethod
        def gpu(index):
            made.append(index)
            return real.gpu(index)

    monkeypatch.setattr(cuda, "Device", Counting)
    cfg = dict(chunk_bytes=4096, ring_bytes=3 * 4096)
    _load(prefix, "t", table.shape, "float32", None, "/gpu:1", **cfg)  # opens the backend, pins the ring
    gpuload.reset_default_graph()
    made.clear()
    before = _backend(1).stats["submits"]
    v = _load(prefix, "t", table.shape, "float32", None, "/gpu:1", **cfg)
    np.testing.assert_array_equal(v.numpy(), table)
    submits = _backend(1).stats["submits"] - before
    assert submits >= 10
    assert made == [], f"{len(made)} devices parsed for {submits} submits"
