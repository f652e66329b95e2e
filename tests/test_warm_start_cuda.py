"""The whole warm start on a GPU (``gpu``-marked: skipped without a device, or run in the
CUDA-ordering simulator with GPULOAD_SIMULATE_CUDA where that exists)."""

from __future__ import annotations

import numpy as np
import pytest
from test_warm_start import remap_reference, save_old, write_vocab

import gpuload
from gpuload import config, loader

# -- on a GPU ----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    "axis, partitions, crc", [(0, [4, 1], True), (0, [1, 2], False), (1, [1, 3], False), (1, [2, 1], True)]
)
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
    var = gpuload.get_variable(
        "emb", new_shape, "float32", partitioner=lambda shape, dtype: partitions, device="/gpu:0"
    )
    info = gpuload.VocabInfo(new_v, 2500, 2, old_v, backup_initializer=gpuload.constant_initializer(0.5), axis=axis)
    with config.set(verify_crc=crc, chunk_bytes="64KiB", ring_bytes="1MiB"):
        gpuload.warm_start(prefix, ".*", {"emb": info}, {"emb": "old/emb"})
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
    gpuload.warm_start(
        prefix, ".*", {"emb": gpuload.VocabInfo(new_v, 25, 0, old_v)}, {"emb": "old/emb"}, allow_cast=True
    )
    gpuload.global_variables_initializer().run()
    np.testing.assert_array_equal(var.numpy().view(np.uint16), old[::-2].astype(var.dtype).view(np.uint16))
