"""HostBackend, the NumPy twin's errors and speed, device strings and GPU discovery.

Everything here runs without a GPU and without CuPy.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from box_cases import BF16, F32, edge_cases, raw

from gpuload.backend import contract, placement
from gpuload.backend.host import HostBackend, box_copy
from gpuload.errors import DeviceUnavailableError, PlanError
from gpuload.plan.copies import BoxCopy

# -- HostBackend ----------------------------------------------------------------------------


def test_submit_runs_every_case_of_the_edge_table():
    backend = HostBackend()
    cases = edge_cases()
    for case in cases:
        dest = case.fresh_dest()
        token = backend.submit(0, case.chunk, case.copies, [dest], [(case.src_dtype, case.dst_dtype)])
        assert token.done()
        token.wait()
        np.testing.assert_array_equal(raw(dest), raw(case.expected), err_msg=case.name)
    assert backend.stats["submits"] == len(cases)
    assert backend.stats["copies"] == sum(len(c.copies) for c in cases)


def test_submit_many_destinations_and_dtypes():
    backend = HostBackend()
    tensor = np.arange(8 * 12, dtype=np.float32).reshape(8, 12)
    chunk = np.frombuffer(tensor.tobytes(), np.uint8)
    dests = [backend.empty((8, 4), F32), backend.empty((8, 4), BF16), backend.empty((8, 4), np.float64)]
    dtypes = [(F32, F32), (F32, BF16), (F32, np.float64)]
    copies = [BoxCopy(p, 16 * p, (12, 1), 0, (4, 1), (8, 4)) for p in range(3)]
    backend.submit(3, chunk, copies, dests, dtypes).wait()
    for p, d in enumerate(dests):
        np.testing.assert_array_equal(backend.to_host(d), tensor[:, 4 * p : 4 * p + 4].astype(d.dtype))
    assert backend.stats["bytes_written"] == 32 * (4 + 2 + 8)


def test_alloc_host_slots_are_page_aligned_and_disjoint():
    backend = HostBackend()
    slots = backend.alloc_host_slots(3, 10_000)
    assert [s.nbytes for s in slots] == [10_000] * 3
    assert all(s.dtype == np.uint8 and s.flags.writeable and s.flags.c_contiguous for s in slots)
    assert all(s.ctypes.data % mmap.PAGESIZE == 0 for s in slots)
    for i, s in enumerate(slots):
        s[:] = i + 1
    assert [int(s[0]) for s in slots] == [1, 2, 3] and [int(s[-1]) for s in slots] == [1, 2, 3]
    backend.free_host_slots(slots)
    with pytest.raises(ValueError):
        backend.alloc_host_slots(0, 10)


def test_backend_interface_is_complete():
    backend = HostBackend()
    for name in ("empty", "to_host", "alloc_host_slots", "free_host_slots", "submit", "synchronize", "close"):
        assert callable(getattr(backend, name))
    assert backend.device == "/device:CPU:0"
    a = backend.empty((2, 3), BF16)
    assert a.dtype == BF16 and a.flags.c_contiguous and a.shape == (2, 3)
    backend.synchronize()
    backend.close()


# -- twin errors ------------------------------------------------------------------------------


def _chunk(n=64):
    return np.zeros(n, np.uint8)


def test_unsupported_cast_is_a_plan_error():
    with pytest.raises(PlanError, match="no box-copy kernel converts int32 to float32"):
        box_copy(_chunk(), np.int32, np.zeros(4, np.float32), np.float32, BoxCopy(0, 0, (1,), 0, (1,), (4,)))
    assert not contract.converts(np.int8, np.int16)
    assert contract.converts(np.float64, BF16)
    with pytest.raises(PlanError, match="1, 2, 4, 8 or 16 bytes"):
        contract.cast_code(np.dtype("S3"), np.dtype("S3"))


@pytest.mark.parametrize(
    ("copy", "match"),
    [
        (BoxCopy(0, 60, (1,), 0, (1,), (2,)), r"reads chunk bytes \[60, 68\) but the chunk holds 64 bytes"),
        (BoxCopy(0, 0, (1,), 3, (1,), (2,)), r"writes elements \[3, 5\) but the destination holds 4 elements"),
        (BoxCopy(0, 0, (3, 1), 0, (2, 1), (2, 3)), r"writes elements \[0, 5\)"),
        (BoxCopy(0, 0, (1,), 0, (1,), (-1,)), "negative"),
        (BoxCopy(0, 0, (1,) * 9, 0, (1,) * 9, (1,) * 9), "rank 9"),
        (BoxCopy(0, 0, (1, 1), 0, (1,), (1, 1)), "one stride per axis"),
    ],
)
def test_bad_copies_are_plan_errors(copy, match):
    with pytest.raises(PlanError, match=match):
        box_copy(_chunk(), np.float32, np.zeros(4, np.float32), np.float32, copy)


def test_bad_buffers_are_type_errors():
    c = BoxCopy(0, 0, (1,), 0, (1,), (2,))
    with pytest.raises(TypeError, match="C-contiguous"):
        box_copy(_chunk(), np.float32, np.zeros((4, 4), np.float32)[:, 0], np.float32, c)
    with pytest.raises(TypeError, match="chunk must be"):
        box_copy(_chunk().view(np.uint16), np.float32, np.zeros(4, np.float32), np.float32, c)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        box_copy(_chunk(), np.float32, ro, np.float32, c)


def test_destination_viewed_as_raw_bytes():
    """A uint8 destination buffer is addressed as dst_dtype elements."""
    dst = np.zeros(16, np.uint8)
    src = np.frombuffer(np.array([1.5, -2.0], np.float32).tobytes(), np.uint8)
    box_copy(src, np.float32, dst, BF16, BoxCopy(0, 0, (1,), 3, (1,), (2,)))
    np.testing.assert_array_equal(dst.view(BF16)[3:5], np.array([1.5, -2.0], BF16))


def test_contiguous_copy_runs_at_memcpy_speed():
    n = 32 << 20
    chunk = np.ones(n, np.uint8)
    dst = np.empty(n // 4, np.float32)
    c = BoxCopy(0, 0, (1,), 0, (1,), (n // 4,))

    def best(fn):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    base = best(lambda: np.copyto(dst.view(np.uint8), chunk))
    twin = best(lambda: box_copy(chunk, np.float32, dst, np.float32, c))
    assert twin < 3 * base + 0.01, (twin, base)


# -- device strings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("cpu", "/device:CPU:0"), ("CPU:0", "/device:CPU:0"), ("/cpu:0", "/device:CPU:0"),
        ("/device:CPU:0", "/device:CPU:0"), ("/job:localhost/replica:0/task:0/device:CPU:0", "/device:CPU:0"),
        ("gpu", "/device:GPU:0"), ("cuda", "/device:GPU:0"), ("gpu:1", "/device:GPU:1"), ("/gpu:1", "/device:GPU:1"),
        ("/GPU:1", "/device:GPU:1"), ("/device:GPU:1", "/device:GPU:1"), ("cuda:1", "/device:GPU:1"),
        ("/job:localhost/replica:0/task:0/device:GPU:1", "/device:GPU:1"), ("/physical_device:GPU:2", "/device:GPU:2"),
        ("  /device:gpu:3 ", "/device:GPU:3"), ("/device:GPU", "/device:GPU:0"),
    ],
)  # fmt: skip
def test_canonical_device(given, want):
    assert placement.canonical_device(given) == want


@pytest.mark.parametrize("bad", ["tpu", "gpu:", "gpu:-1", "cpu:1", "gpu:1:2", "", "/job:x/gpu:0/extra"])
def test_bad_device_strings(bad):
    with pytest.raises(ValueError):
        placement.canonical_device(bad)


def test_non_string_device():
    with pytest.raises(TypeError):
        placement.canonical_device(1)


@pytest.fixture
def probe(monkeypatch):
    """Pretend the GPU probe saw ``count`` devices."""

    def set_count(count: int, seen: str = "test probe"):
        monkeypatch.setattr(placement, "_probe", lambda: (count, seen))

    return set_count


def test_no_gpu_raises_with_a_fix(probe):
    probe(0, "CuPy could not be imported (ImportError: no cupy)")
    assert not placement.is_gpu_available() and placement.gpu_count() == 0
    assert placement.default_device() == "/device:CPU:0"
    assert placement.check_device("cpu") == "/device:CPU:0"
    with pytest.raises(DeviceUnavailableError) as info:
        placement.check_device("gpu:0")
    msg = str(info.value)
    assert "'gpu:0' (/device:GPU:0) requested but no CUDA device is usable: CuPy could not be imported" in msg
    assert "pip install -e '.[cuda13]'" in msg and "pip install -e '.[cuda12]'" in msg and "CUDA_VISIBLE_DEVICES" in msg
    assert isinstance(info.value, RuntimeError)


def test_gpu_index_out_of_range(probe):
    probe(2)
    assert placement.default_device() == "/device:GPU:0"
    assert placement.check_device("/gpu:1") == "/device:GPU:1"
    with pytest.raises(DeviceUnavailableError, match=r"only GPUs 0\.\.1 are visible"):
        placement.check_device("cuda:2")


def test_backend_for_cpu_is_cached(probe):
    probe(0)
    b = placement.backend_for("/cpu:0")
    assert isinstance(b, HostBackend)
    assert placement.backend_for("cpu") is b
    with pytest.raises(DeviceUnavailableError):
        placement.backend_for("gpu")


def _run_python(code: str, env_extra: dict | None = None) -> str:
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_imports_and_cpu_path_work_without_cupy():
    out = _run_python(
        "import sys; sys.modules['cupy'] = None\n"
        "from gpuload.backend import contract, host, placement, kernels\n"
        "import gpuload.plan.copies\n"
        "assert not placement.is_gpu_available()\n"
        "assert placement.default_device() == '/device:CPU:0'\n"
        "b = placement.backend_for('cpu'); assert type(b).__name__ == 'HostBackend'\n"
        "import numpy as np\n"
        "d = b.empty((4,), np.float32)\n"
        "b.submit(0, np.zeros(16, np.uint8), [gpuload.plan.copies.BoxCopy(0, 0, (1,), 0, (1,), (4,))], [d], [(np.float32, np.float32)])\n"
        "src = kernels.source(); assert 'gpuload_box_copy_' in src\n"
        "try:\n"
        "    placement.check_device('gpu')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
        "assert sys.modules['cupy'] is None\n"
    )  # fmt: skip
    assert out.startswith("DeviceUnavailableError ") and "CuPy could not be imported" in out


def test_empty_cuda_visible_devices_means_no_gpu():
    out = _run_python(
        "from gpuload.backend import placement\n"
        "print(placement.is_gpu_available(), placement.gpu_count(), placement.default_device())\n",
        {"CUDA_VISIBLE_DEVICES": ""},
    )
    assert out.split() == ["False", "0", "/device:CPU:0"]


def test_empty_large_destinations_are_their_own_mappings():
    import mmap

    from gpuload.backend.host import HostBackend

    b = HostBackend()
    big = b.empty((1024, 1024), np.float32)  # 4 MiB: anonymous mapping with huge pages asked for
    assert big.shape == (1024, 1024) and big.dtype == np.float32
    assert big.flags.c_contiguous and big.flags.writeable
    base = big
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert isinstance(getattr(base, "obj", base), mmap.mmap)
    assert big.ctypes.data % 4096 == 0
    big[...] = 3.0
    assert float(big.sum()) == 3.0 * big.size
    small = b.empty((3, 4), np.float64)
    assert small.shape == (3, 4) and small.base is None
    strings = b.empty((2 << 20,), object)
    assert strings.dtype == object
