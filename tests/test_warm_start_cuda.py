"""The CUDA backend's gather path: orchestration on the fake CuPy (no GPU), and GPU tests.

The fake (tests/fake_cupy.py) gives host memory as "device" memory and runs launches
through the host harness, so the staging range, the packing of gather descriptors and
offset pairs, and the launch arguments are checked against the NumPy twin. The
``gpu``-marked tests run the whole warm start on a real device.
"""

from __future__ import annotations

import sys

import fake_cupy
import numpy as np
import pytest
from kernel_harness import build_harness
from test_warm_start import remap_reference, save_old, write_vocab

import gpuload
from gpuload import config, loader
from gpuload.device import host, kernels
from gpuload.plan.copies import BoxCopy, GatherCopy


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


# -- on a GPU ----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("axis, partitions, crc", [(0, [4, 1], True), (0, [1, 2], False), (1, [1, 3], False),
                                                    (1, [2, 1], True)])
def test_warm_start_on_the_gpu(tmp_path, axis, partitions, crc):
    import cupy

    rng = np.random.default_rng(axis)
    old_tokens = [b"w%05d" % i for i in range(3000)]
    perm = rng.permutation(3000)
    new_tokens = [old_tokens[i] for i in perm[:2000]] + [b"fresh%d" % i for i in range(500)]
    old_shape = (3000, 24) if axis == 0 else (24, 3000)
    old = rng.standard_normal(old_shape).astype(np.float32)
    prefix = save_old(tmp_path, old, 0, 3)
    old_v = write_vocab(tmp_path / "old.txt", old_tokens)
    new_v = write_vocab(tmp_path / "new.txt", new_tokens)
    gpuload.reset_default_graph()
    new_shape = list(old_shape)
    new_shape[axis] = 2502
    var = gpuload.get_variable("emb", new_shape, "float32", partitioner=lambda shape, dtype: partitions,
                               device="/gpu:0")
    info = gpuload.VocabInfo(new_v, 2500, 2, old_v, backup_initializer=gpuload.constant_initializer(0.5), axis=axis)
    with config.set(verify_crc=crc, chunk_bytes="64KiB"):
        gpuload.warm_start(prefix, ".*", {"emb": info})
        gpuload.global_variables_initializer().run()
    parts = var._get_variable_list()
    assert all(isinstance(p.value(), cupy.ndarray) for p in parts)
    want = remap_reference(old, old_tokens, new_tokens[:2500], 2, axis, 0.5)
    np.testing.assert_array_equal(var.numpy(), want)
    (stats,) = loader.last_stats()
    assert stats.vocab_bytes > 0


@pytest.mark.gpu
def test_gather_kernel_bf16_cast_on_the_gpu(tmp_path):
    gpuload.reset_default_graph()
    old = np.random.default_rng(5).standard_normal((50, 9)).astype(np.float32)
    prefix = save_old(tmp_path, old)
    toks = [b"t%d" % i for i in range(50)]
    old_v = write_vocab(tmp_path / "old.txt", toks)
    new_v = write_vocab(tmp_path / "new.txt", toks[::-2])
    var = gpuload.get_variable("emb", [25, 9], "bfloat16", device="/gpu:0")
    gpuload.warm_start(prefix, ".*", {"emb": gpuload.VocabInfo(new_v, 25, 0, old_v)}, {"emb": "old/emb"},
                       allow_cast=True)
    gpuload.global_variables_initializer().run()
    np.testing.assert_array_equal(var.numpy().view(np.uint16), old[::-2].astype(var.dtype).view(np.uint16))
