"""The row-gather kernel (kernels/gather.cu): its own C++ on the host, its NumPy twin, and
its compile checks.

The g++ host harness runs gather.cuh's per-thread loop and index arithmetic (the very code
the kernel runs) for simulated launches; the NumPy twin (gpuload.backend.host.gather_copy)
and an independent per-element reference must agree with it bit for bit, for every
dtype pair the box copies support, aligned and misaligned, with the 32- and 64-bit loops.
"""

from __future__ import annotations

import numpy as np
import pytest
from box_cases import ALL_PAIRS, BF16, F16, SENTINEL, convert, raw, tensor_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_harness import build_harness
from test_kernels_nvcc import ARCHS, _nvcc, _run_all

from gpuload.backend import contract, host, kernels
from gpuload.errors import PlanError
from gpuload.plan.copies import GatherCopy


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    return build_harness(tmp_path_factory.mktemp("harness"))


def test_gather_descriptor_layout(harness):
    size, box, boxes, index_offset = harness.gather_layout()
    d = contract.GATHER_DESC_DTYPE
    assert size == d.itemsize
    assert [box, boxes, index_offset] == [d.fields[n][1] for n in ("box", "boxes", "index_offset")]
    assert d["box"] == contract.DESC_DTYPE


def reference(chunk, src_dtype, dest, dst_dtype, g):
    """Element by element, from the contract in copies.GatherCopy."""
    out = dest.copy()
    flat = out.reshape(-1)
    s_size = src_dtype.itemsize
    for k in range(g.boxes):
        for idx in np.ndindex(*g.shape):
            sb = int(g.src_offsets[k]) + s_size * sum(i * s for i, s in zip(idx, g.src_strides))
            de = int(g.dst_offsets[k]) + sum(i * s for i, s in zip(idx, g.dst_strides))
            value = np.frombuffer(chunk[sb : sb + s_size].tobytes(), dtype=src_dtype)
            flat[de] = convert(value, dst_dtype)[0]
    return out


@st.composite
def gathers(draw):
    src_dtype, dst_dtype = draw(st.sampled_from(ALL_PAIRS))
    rows, cols = draw(st.integers(1, 9)), draw(st.integers(1, 7))
    axis = draw(st.sampled_from([0, 1]))
    n_old = rows if axis == 0 else cols
    picked = draw(st.lists(st.integers(0, n_old - 1), unique=True, max_size=n_old))
    misalign = draw(st.integers(0, 7)) if draw(st.booleans()) else 0
    dest_extent = len(picked) + draw(st.integers(0, 3))
    positions = draw(st.permutations(range(dest_extent)))[: len(picked)]
    if axis == 0:
        c0 = draw(st.integers(0, cols - 1))
        c1 = draw(st.integers(c0 + 1, cols))
        dshape = (dest_extent, c1 - c0)
        src_off = [misalign + (r * cols + c0) * src_dtype.itemsize for r in picked]
        dst_off = [p * dshape[1] for p in positions]
        shape, sstr, dstr = (c1 - c0,), (1,), (1,)
    else:
        r0 = draw(st.integers(0, rows - 1))
        r1 = draw(st.integers(r0 + 1, rows))
        dshape = (r1 - r0, dest_extent)
        src_off = [misalign + (r0 * cols + c) * src_dtype.itemsize for c in picked]
        dst_off = list(positions)
        shape, sstr, dstr = (r1 - r0,), (cols,), (dest_extent,)
    return dict(
        src_dtype=src_dtype,
        dst_dtype=dst_dtype,
        tshape=(rows, cols),
        misalign=misalign,
        dshape=dshape,
        copy=GatherCopy(0, np.array(src_off, np.int64), np.array(dst_off, np.int64), sstr, dstr, shape),
        grid=(draw(st.integers(1, 3)), draw(st.integers(1, 2))),
        block=draw(st.sampled_from([1, 7, 32])),
        force64=draw(st.booleans()),
        seed=draw(st.integers(0, 1000)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=gathers())
def test_harness_twin_and_reference_agree(harness, case):
    src_dtype, dst_dtype = case["src_dtype"], case["dst_dtype"]
    tensor = tensor_data(case["tshape"], src_dtype, np.random.default_rng(case["seed"]))
    chunk = np.zeros(case["misalign"] + tensor.nbytes, np.uint8)
    chunk[case["misalign"] :] = tensor.reshape(-1).view(np.uint8)
    fill = np.full(int(np.prod(case["dshape"])) * dst_dtype.itemsize, SENTINEL, np.uint8).view(dst_dtype)
    fill = fill.reshape(case["dshape"])
    g = case["copy"]
    want = reference(chunk, src_dtype, fill, dst_dtype, g)

    twin = fill.copy()
    host.gather_copy(chunk, src_dtype, twin, dst_dtype, g)
    np.testing.assert_array_equal(raw(twin), raw(want))

    kern = fill.copy()
    descs, pairs = contract.pack_gather([g], [kern.ctypes.data])
    harness.gather_run(
        contract.cast_code(src_dtype, dst_dtype),
        chunk,
        descs,
        pairs,
        grid=case["grid"],
        block=case["block"],
        force64=case["force64"],
    )
    np.testing.assert_array_equal(raw(kern), raw(want))


@pytest.mark.parametrize("dst", [BF16, F16], ids=["bf16", "f16"])
def test_float64_narrowing_gathers(harness, dst):
    tensor = tensor_data((6, 5), np.dtype(np.float64), np.random.default_rng(3))
    chunk = tensor.reshape(-1).view(np.uint8)
    g = GatherCopy(0, np.array([200, 0, 120]), np.array([0, 10, 5]), (1,), (1,), (5,))
    fill = np.full(15, 7, np.uint16).view(dst).reshape(3, 5)
    want = reference(chunk, np.dtype(np.float64), fill, dst, g)
    twin = fill.copy()
    host.gather_copy(chunk, np.float64, twin, dst, g)
    kern = fill.copy()
    descs, pairs = contract.pack_gather([g], [kern.ctypes.data])
    harness.gather_run(contract.cast_code(np.float64, dst), chunk, descs, pairs)
    np.testing.assert_array_equal(raw(twin), raw(want))
    np.testing.assert_array_equal(raw(kern), raw(want))


def test_batched_launch_with_index_offsets(harness):
    """Several descriptors, several destinations, one offsets buffer, a staged base."""
    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    chunk = np.concatenate([np.zeros(256, np.uint8), table.reshape(-1).view(np.uint8)])
    dests = [np.full((20, 8), -1, np.float32) for _ in range(3)]
    copies = []
    for d in range(3):
        rows = rng.choice(50, 12, replace=False)
        pos = rng.choice(20, 12, replace=False)
        copies.append(GatherCopy(d, 256 + rows * 32, pos * 8, (1,), (1,), (8,)))
    want = [x.copy() for x in dests]
    for c in copies:
        host.gather_copy(chunk, np.float32, want[c.dest], np.float32, c)
    descs, pairs = contract.pack_gather(copies, [x.ctypes.data for x in dests], src_base=128)
    harness.gather_run("b4_b4", chunk[128:], descs, pairs, grid=(2, 2), block=16)
    for got, w in zip(dests, want):
        np.testing.assert_array_equal(got, w)
    assert descs["index_offset"].tolist() == [0, 12, 24]


def test_twin_rejects_what_the_kernel_cannot_do():
    chunk = np.zeros(64, np.uint8)
    dest = np.zeros(8, np.float32)
    with pytest.raises(PlanError, match="reads chunk bytes up to 68"):
        host.gather_copy(chunk, np.float32, dest, np.float32, GatherCopy(0, [60], [0], (1,), (1,), (2,)))
    with pytest.raises(PlanError, match="writes elements up to 9"):
        host.gather_copy(chunk, np.float32, dest, np.float32, GatherCopy(0, [0], [7], (1,), (1,), (2,)))
    with pytest.raises(PlanError, match="negative offset"):
        host.gather_copy(chunk, np.float32, dest, np.float32, GatherCopy(0, [-4], [0], (1,), (1,), (1,)))
    with pytest.raises(PlanError, match="no box-copy kernel converts"):
        host.gather_copy(chunk, np.int32, dest, np.float32, GatherCopy(0, [0], [0], (1,), (1,), (1,)))


def test_gather_compiles_with_loader_options(tmp_path):
    """What kernels.py hands CuPy for gather.cu: the inlined text, -D constants, one variant."""
    nvcc = _nvcc()
    src = tmp_path / "gather_inlined.cu"
    src.write_text(kernels.source("gather.cu"))
    _run_all(
        [
            [
                nvcc,
                *kernels.options(variant),
                "-ftz=true",
                f"-arch={arch}",
                "-Werror",
                "all-warnings",
                "-cubin",
                str(src),
                "-o",
                str(tmp_path / f"{variant}.{arch}.cubin"),
            ]
            for variant, arch in (("b4_b4", ARCHS[0]), ("f32_bf16", ARCHS[1]))
        ]
    )


def test_gather_nvrtc_with_cupy_options():
    """NVRTC (no GPU needed) with the options CuPy adds, as for the box copies."""
    cupy = pytest.importorskip("cupy", reason="CuPy not installed")
    if getattr(cupy, "IS_SIMULATOR", False):
        pytest.skip("GPULOAD_SIMULATE_CUDA: cupy is tests/cuda_sim.py, which has no NVRTC")
    from cupy.cuda import nvrtc

    try:
        nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001 - the NVRTC shared library is not installed
        pytest.skip(f"NVRTC library not loadable: {e}")
    code = kernels.source("gather.cu")
    for variant, arch in (("b4_b4", "sm_90"), ("f64_f32", "sm_80")):
        prog = nvrtc.createProgram(code, "gather.cu", (), ())
        try:
            opts = (*kernels.options(variant), "-ftz=true", "--device-as-default-execution-space", f"-arch={arch}")
            try:
                nvrtc.compileProgram(prog, opts)
            except Exception as e:  # noqa: BLE001 - any NVRTC failure, reported with its log
                pytest.fail(f"NVRTC {arch} {variant}: {e}\n{nvrtc.getProgramLog(prog)}")
            assert "warning" not in nvrtc.getProgramLog(prog).lower()
            assert len(nvrtc.getCUBIN(prog)) > 0
        finally:
            nvrtc.destroyProgram(prog)


def test_gather_variants_are_the_box_copy_variants():
    text = kernels.source("gather.cu")
    assert "GPULOAD_BOX_COPY_VARIANTS(GPULOAD_DEFINE_GATHER)" in text
    assert kernels.gather_kernel_name(np.float32, np.float32) == "gpuload_gather_b4_b4"
