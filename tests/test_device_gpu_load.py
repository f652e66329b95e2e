"""Whole GPU loads through ``init_from_checkpoint`` and the scheduler (needs a CUDA device,
or ``GPULOAD_SIMULATE_CUDA=1|early``: tests/cuda_sim.py).

Row and column parts, casts, O_DIRECT, CRC on and off, parts over two GPUs, a tensor over
2^31 elements (real hardware only), a corrupt chunk, two loads at once in two threads.
Every value is compared bit for bit with NumPy. CuPy is imported inside the tests only.
"""

from __future__ import annotations

import os
import threading

import ml_dtypes
import numpy as np
import pytest

import gpuload
from gpuload import config
from gpuload.errors import ChecksumError

pytestmark = pytest.mark.gpu

BF16 = np.dtype(ml_dtypes.bfloat16)
SMALL = {"chunk_bytes": 8192, "ring_bytes": 3 * 8192}


@pytest.fixture(autouse=True)
def fresh_graph():
    from gpuload.backend.cuda import pinned_pool_bytes

    gpuload.reset_default_graph()
    lent = pinned_pool_bytes()["lent"]
    yield
    gpuload.reset_default_graph()
    assert pinned_pool_bytes()["lent"] == lent, "a load kept pinned ring slots or descriptors"


def _ckpt(tmp_path, arrays, name="model.ckpt"):
    prefix = str(tmp_path / name)
    gpuload.save_checkpoint(prefix, arrays)
    return prefix


def _load(prefix, name, shape, dtype, parts, devices, **cfg):
    v = gpuload.get_variable(
        name, shape=list(shape), dtype=dtype, partitioner=(lambda s, d: parts) if parts else None, device=devices
    )
    gpuload.init_from_checkpoint(prefix, {name: name}, allow_cast=True)
    with config.set(**cfg):
        gpuload.global_variables_initializer().run()
    return v


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _check_parts(v, want, device_ids=None):
    import cupy

    parts = v._get_variable_list() if hasattr(v, "_get_variable_list") else [v]
    for i, part in enumerate(parts):
        x = part.value()
        assert isinstance(x, cupy.ndarray)
        if device_ids is not None:
            assert x.device.id == device_ids[i % len(device_ids)], part.name
        info = getattr(part, "_save_slice_info", None)
        sl = info.box.as_slices() if info is not None else tuple(slice(None) for _ in want.shape)
        np.testing.assert_array_equal(_bits(part.numpy()), _bits(want[sl]), err_msg=part.name)


@pytest.mark.parametrize("parts", [[1, 1], [8, 1], [7, 1], [1, 4], [3, 5]], ids=lambda p: "x".join(map(str, p)))
@pytest.mark.parametrize("verify", [True, False], ids=["crc", "nocrc"])
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_row_and_column_parts(tmp_path, parts, verify, direct):
    table = np.random.default_rng(0).standard_normal((1000, 24)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"emb": table, "other": np.arange(5.0)})
    v = _load(prefix, "emb", table.shape, "float32", parts, "/gpu:0", verify_crc=verify, direct_io=direct, **SMALL)
    _check_parts(v, table, [0])


@pytest.mark.parametrize(
    ("src", "dst"),
    [(np.float32, BF16), (np.float32, np.float16), (np.float64, np.float32)],
    ids=["f32-bf16", "f32-f16", "f64-f32"],
)
@pytest.mark.parametrize("parts", [[1, 1], [4, 1], [1, 3]], ids=lambda p: "x".join(map(str, p)))
def test_casts(tmp_path, src, dst, parts):
    rng = np.random.default_rng(1)
    table = (rng.standard_normal((517, 12)) * 1000).astype(src)
    table[0, :4] = [np.inf, -np.inf, np.nan, 0.0]
    prefix = _ckpt(tmp_path, {"t": table})
    v = _load(prefix, "t", table.shape, np.dtype(dst).name, parts, "/gpu:0", **SMALL)
    _check_parts(v, table.astype(dst), [0])


def test_default_config_single_chunk(tmp_path):
    table = np.random.default_rng(2).standard_normal((4096, 64)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    v = _load(prefix, "t", table.shape, "float32", [8, 1], "/gpu:0")
    _check_parts(v, table, [0])
    from gpuload import loader

    st = loader.last_stats()[0]
    assert st.bytes_read >= table.nbytes and st.pin_s >= 0


def test_parts_over_two_gpus(tmp_path):
    from gpuload.backend.placement import gpu_count

    if gpu_count() < 2:
        pytest.skip(f"needs 2 GPUs, {gpu_count()} visible")
    table = np.random.default_rng(3).standard_normal((800, 40)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    v = _load(prefix, "t", table.shape, "bfloat16", [8, 1], ["/gpu:0", "/gpu:1"] * 4, **SMALL)
    _check_parts(v, table.astype(BF16), [0, 1])
    gpuload.reset_default_graph()
    w = _load(prefix, "t", table.shape, "float32", [1, 4], ["/gpu:1", "/gpu:0"] * 2, **SMALL)
    _check_parts(w, table, [1, 0])


def test_corrupt_chunk_fails_whole_load(tmp_path):
    table = np.random.default_rng(4).standard_normal((2000, 8)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    path = prefix + ".data-00000-of-00001"
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x10]))
    v = gpuload.get_variable(
        "t", shape=list(table.shape), dtype="float16", partitioner=lambda s, d: [4, 1], device="/gpu:0"
    )
    gpuload.init_from_checkpoint(prefix, {"t": "t"}, allow_cast=True)
    with config.set(**SMALL), pytest.raises(ChecksumError, match="crc32c mismatch in tensor 't'"):
        gpuload.global_variables_initializer().run()
    assert all(p._value is None for p in v._get_variable_list())


def test_cuda_oom_mid_load(tmp_path):
    """The device runs out of memory once the destinations are allocated (the staging does
    not fit): DeviceMemoryError naming the device, and no device memory is left behind."""
    import gc

    import cupy

    from gpuload.errors import DeviceMemoryError

    table = np.random.default_rng(6).standard_normal((1024, 16)).astype(np.float32)
    prefix = _ckpt(tmp_path, {"t": table})
    pool = cupy.get_default_memory_pool()
    with cupy.cuda.Device(0):
        gc.collect()
        pool.free_all_blocks()
        before = pool.used_bytes()
        pool.set_limit(size=pool.total_bytes() + table.size * 2 + 2048)  # the bf16 parts fit, staging not
        try:
            with pytest.raises(DeviceMemoryError, match=r"/device:GPU:0: out of memory") as info:
                _load(prefix, "t", table.shape, "bfloat16", [1, 4], "/gpu:0", chunk_bytes=8192, ring_bytes=3 * 8192)
        finally:
            pool.set_limit(size=0)
        assert isinstance(info.value, MemoryError)
        del info
        gc.collect()
        assert pool.used_bytes() == before
    gpuload.reset_default_graph()
    v = _load(prefix, "t", table.shape, "bfloat16", [1, 4], "/gpu:0", chunk_bytes=8192, ring_bytes=3 * 8192)
    _check_parts(v, table.astype(BF16), [0])


def test_two_concurrent_loads(tmp_path):
    """Two threads load at once onto the same GPU (shared backend, separate sessions)."""
    rng = np.random.default_rng(5)
    tables = [rng.standard_normal((900, 16)).astype(np.float32) for _ in range(2)]
    prefixes = [_ckpt(tmp_path, {"t": t}, name=f"m{i}.ckpt") for i, t in enumerate(tables)]
    specs = [("float32", [5, 1]), ("bfloat16", [1, 4])]
    variables = []
    for i, (dtype, parts) in enumerate(specs):
        with gpuload.variable_scope(f"load{i}"):
            v = gpuload.get_variable(
                "t", shape=list(tables[i].shape), dtype=dtype, partitioner=lambda s, d, p=parts: p, device="/gpu:0"
            )
        gpuload.init_from_checkpoint(prefixes[i], {"t": f"load{i}/t"}, allow_cast=True)
        variables.append(v)
    barrier = threading.Barrier(2)
    results: dict = {}

    def work(i):
        try:
            want = tables[i].astype(specs[i][0])
            barrier.wait()
            for _ in range(3):
                with config.set(chunk_bytes=4096, ring_bytes=3 * 4096):
                    gpuload.variables_initializer([variables[i]]).run()
                got = np.concatenate([p.numpy() for p in variables[i]._get_variable_list()], axis=i)
                np.testing.assert_array_equal(_bits(got), _bits(want))
            results[i] = "ok"
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,), name=f"load-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: "ok", 1: "ok"}, results


@pytest.mark.hardware
@pytest.mark.slow
def test_tensor_over_2_pow_31_elements(tmp_path):
    """A float16 vector of 2^31 + 2^16 elements into a float32 variable (8 GiB on the GPU).

    The cast runs in the kernels: destination offsets pass 2^31 elements and 2^32 bytes.
    """
    import cupy

    n = (1 << 31) + (1 << 16)
    pattern = (np.arange(1 << 16) % 2039).astype(np.float16)
    big = np.tile(pattern, n >> 16)
    assert big.size == n
    prefix = _ckpt(tmp_path, {"big": big})
    del big
    v = _load(prefix, "big", (n,), "float32", None, "/gpu:0")
    x = v.value()
    assert x.shape == (n,) and x.dtype == np.float32
    for start in (0, (1 << 31) - 5, n - (1 << 16)):
        got = cupy.asnumpy(x[start : start + 1000])
        idx = np.arange(start, start + min(1000, n - start)) % (1 << 16)
        np.testing.assert_array_equal(got, pattern[idx].astype(np.float32))
