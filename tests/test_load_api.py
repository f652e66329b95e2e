"""gpuload.load / plan_load: requests, boxes, targets filled in place, casts, errors, frameworks."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import gpuload
from gpuload.errors import ArgumentTypeError, CheckpointNotFoundError, TargetError
from gpuload.format.slices import Box

BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture
def ckpt(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    cube = np.arange(4 * 5 * 6, dtype=np.int64).reshape(4, 5, 6)
    words = np.array([b"a", b"bb", b"ccc"], dtype=object)
    # "part" is saved partitioned (two row slices), as a partitioned variable is.
    part = np.arange(40, dtype=np.float32).reshape(10, 4)
    prefix = str(tmp_path / "model.ckpt")
    gpuload.save_checkpoint(
        prefix,
        {"emb": emb, "cube": cube, "words": words},
        slices={"part": [(Box((0, 0), (6, 4)), part[:6]), (Box((6, 0), (4, 4)), part[6:])]},
    )
    return prefix, {"emb": emb, "cube": cube, "words": words, "part": part}


def test_numpy_targets_are_filled_in_place(ckpt):
    prefix, t = ckpt
    out = np.full((50, 8), np.nan, np.float32)
    ptr = out.ctypes.data
    r = gpuload.load(prefix, {"e": ("emb", out)})
    assert r["e"] is out and out.ctypes.data == ptr == out.__array_interface__["data"][0]
    np.testing.assert_array_equal(out, t["emb"])
    assert r.stats.bytes_written == out.nbytes and r.stats.chunks >= 1
    assert r.plan.destinations[0].source == "emb"
    assert gpuload.last_load() is r


def test_spec_targets_keys_and_list_form(ckpt):
    prefix, t = ckpt
    r = gpuload.load(prefix, ["emb", gpuload.Request("cube"), gpuload.Request("words")])
    assert set(r) == {"emb", "cube", "words"}
    np.testing.assert_array_equal(r["emb"], t["emb"])
    np.testing.assert_array_equal(r["cube"], t["cube"])
    assert list(r["words"]) == [b"a", b"bb", b"ccc"]
    r = gpuload.load(prefix, {"x": ("emb", gpuload.Spec((50, 8), "float32", "/cpu:0"))})
    assert r["x"].dtype == np.float32 and r["x"].flags.c_contiguous


def test_boxes_rows_columns_nd_and_partitioned(ckpt):
    prefix, t = ckpt
    r = gpuload.load(
        prefix,
        {
            "rows": gpuload.Request("emb", rows=(10, 20)),
            "cols": gpuload.Request("emb", columns=(2, 5)),
            "nd": gpuload.Request("cube", box=(slice(1, 3), slice(None), slice(2, 5))),
            "nd_box": gpuload.Request("cube", box=Box((3, 1, 0), (1, 4, 6))),
            "across": gpuload.Request("part", rows=(4, 8)),  # spans both stored slices
            "part_cols": ("part", gpuload.Spec((10, 4))),
        },
    )
    np.testing.assert_array_equal(r["rows"], t["emb"][10:20])
    np.testing.assert_array_equal(r["cols"], t["emb"][:, 2:5])
    np.testing.assert_array_equal(r["nd"], t["cube"][1:3, :, 2:5])
    np.testing.assert_array_equal(r["nd_box"], t["cube"][3:4, 1:5, :])
    np.testing.assert_array_equal(r["across"], t["part"][4:8])
    np.testing.assert_array_equal(r["part_cols"], t["part"])
    # A column box into an existing array, in place.
    out = np.zeros((50, 3), np.float32)
    gpuload.load(prefix, {"c": gpuload.Request("emb", columns=(5, 8), target=out)})
    np.testing.assert_array_equal(out, t["emb"][:, 5:8])


def test_casts_follow_init_from_checkpoint(ckpt):
    prefix, t = ckpt
    with pytest.raises(TargetError, match=r"'e'.*'emb' is float32.*Spec\(.*float64.*allow_cast=True"):
        gpuload.load(prefix, {"e": ("emb", gpuload.Spec(dtype="float64"))})
    r = gpuload.load(
        prefix, {"d": ("emb", gpuload.Spec(dtype="float64")), "b": ("emb", np.empty((50, 8), BF16))}, allow_cast=True
    )
    np.testing.assert_array_equal(r["d"], t["emb"].astype(np.float64))
    np.testing.assert_array_equal(r["b"], t["emb"].astype(BF16))
    # allow_cast converts between floating dtypes only, as init_from_checkpoint.
    with pytest.raises(TargetError, match=r"'i'.*'cube'.*int64.*float32"):
        gpuload.load(prefix, {"i": ("cube", gpuload.Spec(dtype="float32"))}, allow_cast=True)


def test_wrong_targets_name_the_key_and_the_target(ckpt):
    prefix, _ = ckpt
    with pytest.raises(TargetError, match=r"request 'e' loads 'emb'\[50, 8\].*numpy\.ndarray\(shape=\[8, 50\]"):
        gpuload.load(prefix, {"e": ("emb", np.empty((8, 50), np.float32))})
    with pytest.raises(TargetError, match=r"'e'.*Spec\(shape=\(3, 8\)\)"):
        gpuload.load(prefix, {"e": ("emb", gpuload.Spec((3, 8)))})
    with pytest.raises(ValueError, match=r"'e'.*not C-contiguous"):
        gpuload.load(prefix, {"e": ("emb", np.empty((8, 50), np.float32).T)})
    ro = np.empty((50, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(TargetError, match="'e'.*read-only"):
        gpuload.load(prefix, {"e": ("emb", ro)})
    with pytest.raises(TargetError, match="'e'.*>f4.*non-native byte order"):
        gpuload.load(prefix, {"e": ("emb", np.empty((50, 8), ">f4"))}, allow_cast=True)
    with pytest.raises(TargetError, match=r"'e'.*'emb' is float32.*numpy\.ndarray\(shape=\[50, 8\], dtype=int32"):
        gpuload.load(prefix, {"e": ("emb", np.empty((50, 8), np.int32))})
    with pytest.raises(TargetError, match=r"'e'.*bad device.*'tpu:0'"):
        gpuload.load(prefix, {"e": ("emb", gpuload.Spec(device="tpu:0"))})
    from gpuload.backend import placement

    if not placement.is_gpu_available():
        with pytest.raises(
            gpuload.errors.DeviceUnavailableError, match=r"request 'e' \(tensor 'emb'\) targets /device:GPU:0"
        ):
            gpuload.load(prefix, {"e": ("emb", gpuload.Spec(device="gpu:0"))})
    with pytest.raises(CheckpointNotFoundError, match=r"'e'.*'embb'.*close names: 'emb'"):
        gpuload.load(prefix, {"e": "embb"})
    with pytest.raises(ValueError, match=r"'e'.*axis 0 is \[40, 60\)"):
        gpuload.load(prefix, {"e": gpuload.Request("emb", rows=(40, 60))})
    with pytest.raises(ArgumentTypeError, match="'e'.*list"):
        gpuload.load(prefix, {"e": ("emb", [1, 2])})
    with pytest.raises(ValueError, match="twice"):
        gpuload.load(prefix, ["emb", "emb"])
    assert issubclass(TargetError, ValueError)


def test_failed_load_hands_out_nothing(ckpt, tmp_path):
    prefix, t = ckpt
    data = [p for p in tmp_path.iterdir() if ".data-" in p.name][0]
    raw = bytearray(data.read_bytes())
    raw[5] ^= 0xFF
    data.write_bytes(bytes(raw))
    before = gpuload.last_load()
    with pytest.raises(gpuload.errors.ChecksumError):
        gpuload.load(prefix, ["emb", "cube"])
    assert gpuload.last_load() is before


def test_plan_load_prints_without_reading(ckpt):
    prefix, _ = ckpt
    plan = gpuload.plan_load(
        prefix,
        {"top": gpuload.Request("emb", rows=(0, 10)), "d": ("emb", gpuload.Spec(dtype="float64"))},
        allow_cast=True,
    )
    text = str(plan)
    assert "dest 0: top <- 'emb'" in text and "float32 -> float64" in text
    assert len(plan.destinations) == 2 and plan.bytes_read > 0


def test_remap_request_overwrites_mapped_rows_only(ckpt):
    from gpuload.plan import Remap

    prefix, t = ckpt
    start = np.full((4, 8), -1.0, np.float32)
    rows = np.array([3, -1, 0, 49])
    r = gpuload.load(prefix, {"v": gpuload.Request("emb", box=Box((0, 0), (4, 8)), target=start, remap=Remap(0, rows))})
    assert r["v"] is start
    np.testing.assert_array_equal(start[[0, 2, 3]], t["emb"][[3, 0, 49]])
    assert (start[1] == -1).all()
    with pytest.raises(ValueError, match="remap request needs an array target"):
        gpuload.load(prefix, {"v": gpuload.Request("emb", box=Box((0, 0), (4, 8)), remap=Remap(0, rows))})


# ---------------------------------------------------------------- CuPy (the CUDA simulator)


def test_cupy_targets_filled_in_place_on_the_simulator(ckpt, sim):  # noqa: F811
    prefix, t = ckpt
    with sim.cuda.Device(1):
        out = sim.zeros((10, 8), np.float32)
    ptr = out.data.ptr
    r = gpuload.load(
        prefix, {"g": gpuload.Request("emb", rows=(5, 15), target=out), "s": ("cube", gpuload.Spec(device="gpu:0"))}
    )
    assert r["g"] is out and out.data.ptr == ptr
    np.testing.assert_array_equal(out.get(), t["emb"][5:15])
    assert isinstance(r["s"], sim.ndarray) and r["s"].device.id == 0
    np.testing.assert_array_equal(r["s"].get(), t["cube"])
    with pytest.raises(TargetError, match=r"'g'.*\[10, 8\].*shape=\[3, 8\]"):
        with sim.cuda.Device(0):
            gpuload.load(prefix, {"g": gpuload.Request("emb", rows=(5, 15), target=sim.zeros((3, 8), np.float32))})


@pytest.mark.gpu
def test_cupy_targets_filled_in_place_on_a_gpu(ckpt):
    import cupy

    prefix, t = ckpt
    out = cupy.zeros((50, 3), np.float32)
    ptr = out.data.ptr
    r = gpuload.load(prefix, {"g": gpuload.Request("emb", columns=(1, 4), target=out)})
    assert r["g"] is out and out.data.ptr == ptr
    np.testing.assert_array_equal(cupy.asnumpy(out), t["emb"][:, 1:4])


# ---------------------------------------------------------------- PyTorch


def test_torch_cpu_tensors_filled_in_place(ckpt):
    torch = pytest.importorskip("torch")
    prefix, t = ckpt
    out = torch.zeros((10, 8), dtype=torch.float32)
    ptr = out.data_ptr()
    r = gpuload.load(prefix, {"e": gpuload.Request("emb", rows=(0, 10), target=out)})
    assert r["e"] is out and out.data_ptr() == ptr
    np.testing.assert_array_equal(out.numpy(), t["emb"][:10])
    bf = torch.zeros((50, 8), dtype=torch.bfloat16)
    ptr = bf.data_ptr()
    gpuload.load(prefix, {"b": ("emb", bf)}, allow_cast=True)
    assert bf.data_ptr() == ptr
    np.testing.assert_array_equal(bf.float().numpy(), t["emb"].astype(BF16).astype(np.float32))
    spec = gpuload.load(prefix, {"s": ("cube", gpuload.Spec(device=torch.device("cpu")))})["s"]
    assert isinstance(spec, torch.Tensor) and spec.dtype == torch.int64
    np.testing.assert_array_equal(spec.numpy(), t["cube"])
    with pytest.raises(TargetError, match=r"'e'.*torch\.Tensor\(shape=\[8, 8\]"):
        gpuload.load(prefix, {"e": gpuload.Request("emb", rows=(0, 10), target=torch.zeros(8, 8))})
    with pytest.raises(TargetError, match="'e'.*requires grad"):
        gpuload.load(prefix, {"e": ("emb", torch.zeros(50, 8, requires_grad=True))})


@pytest.mark.gpu
@pytest.mark.hardware
def test_torch_cuda_tensors_filled_in_place(ckpt):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    prefix, t = ckpt
    out = torch.zeros((50, 8), dtype=torch.float32, device="cuda:0")
    ptr = out.data_ptr()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # the load must wait for this stream's pending write
        out.fill_(7.0)
        r = gpuload.load(prefix, {"e": ("emb", out)})
    assert r["e"] is out and out.data_ptr() == ptr
    np.testing.assert_array_equal(out.cpu().numpy(), t["emb"])
    bf = torch.zeros((50, 3), dtype=torch.bfloat16, device="cuda:0")
    gpuload.load(prefix, {"b": gpuload.Request("emb", columns=(0, 3), target=bf)}, allow_cast=True)
    np.testing.assert_array_equal(bf.float().cpu().numpy(), t["emb"][:, :3].astype(BF16).astype(np.float32))


# ---------------------------------------------------------------- JAX


def test_jax_arrays_handed_over_without_a_copy(ckpt):
    jax = pytest.importorskip("jax")
    prefix, t = ckpt
    cpu = jax.devices("cpu")[0]
    r = gpuload.load(
        prefix,
        {"e": ("emb", gpuload.Spec(device=cpu)), "b": ("emb", gpuload.Spec(dtype="bfloat16", device=cpu))},
        allow_cast=True,
    )
    e = r["e"]
    assert isinstance(e, jax.Array) and e.devices() == {cpu}
    np.testing.assert_array_equal(np.asarray(e), t["emb"])
    # (Zero-copy hand-over: test_jax_cpu_handover_is_zero_copy. bfloat16 is copied: NumPy's
    # DLPack export does not carry ml_dtypes' bfloat16, so jax.device_put takes it.)
    np.testing.assert_array_equal(np.asarray(r["b"], dtype=np.float32), t["emb"].astype(BF16).astype(np.float32))
    with pytest.raises(TargetError, match="'x'.*immutable"):
        gpuload.load(prefix, {"x": ("emb", jax.numpy.zeros((50, 8), jax.numpy.float32))})


def test_jax_cpu_handover_is_zero_copy(tmp_path, monkeypatch):
    """The buffer gpuload filled is the one JAX holds: observe it through a spy on execute.
    Small buffers (malloc'd by the CPU backend) and large ones (its own mappings) both."""
    jax = pytest.importorskip("jax")
    import gpuload.api

    prefix = str(tmp_path / "j.ckpt")
    big = np.arange(700 * 1000, dtype=np.float32).reshape(700, 1000)  # 2.8 MB: a mapped destination
    gpuload.save_checkpoint(prefix, {"emb": big[:5], "big": big})
    filled = []
    real = gpuload.api.execute

    def spy(*a, **k):
        out = real(*a, **k)
        filled.extend(x.ctypes.data for x in out)
        return out

    monkeypatch.setattr(gpuload.api, "execute", spy)
    cpu = jax.devices("cpu")[0]
    r = gpuload.load(prefix, {"e": ("emb", gpuload.Spec(device=cpu)), "b": ("big", gpuload.Spec(device=cpu))})
    assert filled == [r["e"].unsafe_buffer_pointer(), r["b"].unsafe_buffer_pointer()]
    np.testing.assert_array_equal(np.asarray(r["b"]), big)


def test_load_docstring_example_runs(tmp_path, monkeypatch):
    import doctest
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the example's mkdtemp() lands here

    import gpuload.api

    (test,) = [t for t in doctest.DocTestFinder().find(gpuload.api.load, "load") if t.examples]
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test)
    assert result.failed == 0 and result.attempted >= 8


def test_the_tf1_initializer_goes_through_load(ckpt):
    prefix, t = ckpt
    gpuload.reset_default_graph()
    with gpuload.variable_scope("new"):
        v = gpuload.get_variable(
            "emb", shape=[50, 8], dtype="float32", partitioner=gpuload.fixed_size_partitioner(2), device="/cpu:0"
        )
    gpuload.init_from_checkpoint(prefix, {"emb": "new/emb"})
    gpuload.global_variables_initializer().run()
    r = gpuload.last_load()
    assert r is not None and set(r) == {"new/emb/part_0", "new/emb/part_1"}
    parts = list(v)
    assert all(r[p.op.name] is p.value() for p in parts)  # assigned as loaded, not copied
    np.testing.assert_array_equal(v.numpy(), t["emb"])
    assert gpuload.loader.last_stats() == [r.stats]
    gpuload.reset_default_graph()


def test_scalar_and_empty_tensors(tmp_path):
    prefix = str(tmp_path / "s.ckpt")
    gpuload.save_checkpoint(prefix, {"step": np.int64(7), "none": np.zeros((0, 3), np.float32)})
    r = gpuload.load(prefix, ["step", "none"])
    assert r["step"].shape == () and int(r["step"]) == 7 and r["none"].shape == (0, 3)
    out = np.zeros((), np.int64)
    assert gpuload.load(prefix, {"s": ("step", out)})["s"] is out and int(out) == 7
