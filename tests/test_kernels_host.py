"""The kernels' own C++ (kernels/box_copy.cuh) run on the host, against NumPy.

tests/kernel_host_harness.cpp is built with g++ into a temporary shared library and driven
through ctypes. It runs the kernels' plan, per-thread loop, index arithmetic and
conversions on the CPU; every result is compared bit for bit with the NumPy twin
(gpuload.backend.host.box_copy) and with an independent fancy-indexing reference
(tests/box_cases.py). Missing g++ skips this file; any other build problem fails it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from box_cases import (
    ALL_PAIRS,
    BF16,
    F32,
    FLOATS,
    SPECIAL_BITS,
    UINT,
    convert,
    edge_cases,
    make_case,
    raw,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_harness import Harness, build_harness

from gpuload.backend import contract, host, kernels
from gpuload.errors import PlanError
from gpuload.plan.copies import BoxCopy

EDGE = edge_cases()


@pytest.fixture(scope="session")
def harness(tmp_path_factory) -> Harness:
    return build_harness(tmp_path_factory.mktemp("harness"))


def _twin(case) -> np.ndarray:
    dest = case.fresh_dest()
    for c in case.copies:
        host.box_copy(case.chunk, case.src_dtype, dest, case.dst_dtype, c)
    return dest


# -- the tables agree with each other ----------------------------------------------------


def test_variant_lists_agree(harness):
    assert harness.variants() == contract.VARIANTS
    src = kernels.source()
    for v in contract.VARIANTS:
        assert f"X({v}, gl_conv_{v})" in src


def test_descriptor_layout_matches_dtype(harness):
    size, max_rank, *offsets = harness.layout()
    assert size == contract.DESC_DTYPE.itemsize
    assert max_rank == contract.MAX_RANK
    assert offsets == [contract.DESC_DTYPE.fields[name][1] for name in contract.DESC_DTYPE.names]


def test_every_pair_has_a_case():
    assert {contract.cast_code(s, d) for s, d in ALL_PAIRS} == set(contract.VARIANTS)


# -- index arithmetic --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (2,) * 8])
def test_map_matches_unravel(harness, shape):
    rng = np.random.default_rng(len(shape))
    src_strides = tuple(int(x) for x in rng.integers(0, 50, len(shape)))
    dst_strides = tuple(int(x) for x in rng.integers(0, 50, len(shape)))
    c = BoxCopy(0, 12, src_strides, 7, dst_strides, shape)
    desc = contract.pack_descriptors([c], [0])
    for idx in range(int(np.prod(shape))):
        multi = np.unravel_index(idx, shape)
        want = (12 + 4 * int(np.dot(multi, src_strides)), 7 + int(np.dot(multi, dst_strides)))
        assert harness.map(desc, 4, idx) == want


def test_pack_descriptors_fields():
    c = BoxCopy(dest=3, src_offset=300, src_strides=(10, 1), dst_offset=5, dst_strides=(4, 1), shape=(2, 3))
    d = contract.pack_descriptors([c], [0xDEAD00], src_base=256)[0]
    assert (d["rank"], d["count"], d["src_offset"], d["dst_offset"], d["dst"]) == (2, 6, 44, 5, 0xDEAD00)
    assert d["shape"].tolist() == [2, 3, 0, 0, 0, 0, 0, 0]
    assert d["src_strides"][:2].tolist() == [10, 1] and d["dst_strides"][:2].tolist() == [4, 1]


# -- conversions ---------------------------------------------------------------------------


def _numpy_convert(bits: np.ndarray, src: np.dtype, dst: np.dtype) -> np.ndarray:
    """TensorFlow's Cast of the bit patterns (box_cases.convert: NumPy, twice where TF rounds twice)."""
    return convert(bits.view(src), dst).view(UINT[dst.itemsize])


@pytest.mark.parametrize("variant", [v for v in contract.VARIANTS if v.split("_")[0] in ("f16", "bf16")])
def test_convert_exhaustive_16bit_sources(harness, variant):
    s, d = (FLOATS[x] for x in variant.split("_"))
    bits = np.arange(1 << 16, dtype=np.uint16)
    np.testing.assert_array_equal(harness.convert(variant, bits, d.itemsize), _numpy_convert(bits, s, d))


def _f32_probe_bits(rng) -> np.ndarray:
    """Random bits plus, for every exponent, mantissas around the bf16/f16 rounding points."""
    exps = np.arange(256, dtype=np.uint32) << 23
    low = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000, 0x8001, 0x18000,
                    0x17FFF, 0x7FFFFF, 0x7FE000, 0x7FF000, 0x400000, 0x400001], dtype=np.uint32)  # fmt: skip
    grid = (exps[:, None] | low[None, :]).ravel()
    grid = np.concatenate([grid, grid | np.uint32(0x80000000)])
    rand = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([grid, rand, np.array(SPECIAL_BITS["f32"], np.uint32)])


def _f64_probe_bits(rng) -> np.ndarray:
    n = 1 << 17
    r = rng.integers(0, 1 << 63, n, dtype=np.uint64) | (rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(63))
    # Exponents near the float32/float16/bfloat16 ranges, and mantissas cut to hit ties.
    e = rng.integers(1023 - 160, 1023 + 132, n).astype(np.uint64) << np.uint64(52)
    near = (r & ~np.uint64(0x7FF << 52)) | e
    ties = near & ~np.uint64((1 << 30) - 1) | (rng.integers(0, 4, n).astype(np.uint64) << np.uint64(28))
    ties42 = near & ~np.uint64((1 << 43) - 1) | (rng.integers(0, 4, n).astype(np.uint64) << np.uint64(41))
    return np.concatenate([r, near, ties, ties42, np.array(SPECIAL_BITS["f64"], np.uint64)])


@pytest.mark.parametrize("variant", [v for v in contract.VARIANTS if v.split("_")[0] in ("f32", "f64")])
def test_convert_wide_sources(harness, variant):
    s, d = (FLOATS[x] for x in variant.split("_"))
    rng = np.random.default_rng(7)
    bits = _f32_probe_bits(rng) if s == F32 else _f64_probe_bits(rng)
    np.testing.assert_array_equal(harness.convert(variant, bits, d.itemsize), _numpy_convert(bits, s, d))


@pytest.mark.parametrize(
    ("variant", "src_bits", "want"),
    [
        ("f32_bf16", 0x00010000, 0x0001),  # subnormal kept (CuPy's -ftz=true would flush it)
        ("f32_bf16", 0x7F800001, 0x7FC0),  # signalling NaN -> canonical quiet NaN
        ("f32_bf16", 0xFFC00001, 0xFFC0),  # sign of a NaN kept
        ("f32_bf16", 0x7F7F8000, 0x7F80),  # rounds up past the largest finite: inf
        ("f32_bf16", 0x3F808000, 0x3F80),  # tie -> even
        ("f32_f16", 0x477FF000, 0x7C00),  # 65520 -> inf
        ("f32_f16", 0x33000000, 0x0000),  # 2^-25: tie between 0 and the smallest subnormal
        ("f32_f16", 0x7F800001, 0x7C01),  # NumPy keeps a NaN a NaN without quieting it
        ("f64_f32", 0x36A0000000000000, 0x00000001),  # smallest float32 subnormal
        ("f64_f32", 0x7FF0000000000001, 0x7FC00000),  # signalling -> quiet (SSE semantics)
        ("f32_f64", 0x00000001, 0x36A0000000000000),
        ("f64_bf16", 0x3FF0100000400000, 0x3F80),  # TF's Cast rounds twice, through float32
        ("f64_bf16", 0x3FF0100000001000, 0x3F80),  # 1 + 2^-8 + 2^-40: once would give 0x3F81
        ("f64_f16", 0x3FF0020000000001, 0x3C00),  # 1 + 2^-11 + 2^-52: once would give 0x3C01
        ("f64_f16", 0x3FF0020000000000, 0x3C00),  # an exact tie: to even either way
        ("f64_f16", 0x3FF0060000000001, 0x3C02),  # 1 + 3*2^-11 + 2^-52: tie up to even, once or twice
        ("bf16_f16", 0x4780, 0x7C00),  # 65536 -> inf
        ("bf16_f16", 0x3300, 0x0000),  # 2^-25 tie -> 0
        ("f16_bf16", 0x0001, 0x3380),  # 2^-24 is a normal bfloat16
        ("bf16_f32", 0x8000, 0x80000000),  # -0.0
    ],
)
def test_convert_named_values(harness, variant, src_bits, want):
    s, d = (FLOATS[x] for x in variant.split("_"))
    bits = np.array([src_bits], UINT[s.itemsize])
    assert int(harness.convert(variant, bits, d.itemsize)[0]) == want
    assert int(_numpy_convert(bits, s, d)[0]) == want
    dest = np.zeros(1, d)
    host.box_copy(bits.view(np.uint8), s, dest, d, BoxCopy(0, 0, (1,), 0, (1,), (1,)))
    assert int(dest.view(UINT[d.itemsize])[0]) == want, "NumPy twin"


# -- whole box copies ------------------------------------------------------------------------


@pytest.mark.parametrize("case", EDGE, ids=lambda c: c.name)
def test_edge_table(harness, case):
    want = raw(case.expected)
    np.testing.assert_array_equal(raw(_twin(case)), want, err_msg="NumPy twin")
    dest = case.fresh_dest()
    harness.execute(case, dest)
    np.testing.assert_array_equal(raw(dest), want, err_msg="kernel harness")


@pytest.mark.parametrize(
    ("grid", "block", "force64"), [((1, 1), 1, False), ((1, 1), 32, False), ((2, 3), 64, False), ((5, 1), 7, True)]
)
def test_launch_shapes_and_index_width_do_not_matter(harness, grid, block, force64):
    for case in EDGE[::5]:
        dest = case.fresh_dest()
        harness.execute(case, dest, grid, block, force64)
        np.testing.assert_array_equal(raw(dest), raw(case.expected), err_msg=case.name)


@pytest.mark.parametrize(
    ("name", "head", "body"),
    [("vector rows u8 aligned", 0, 2), ("vector rows u8 head+tail", 13, 2), ("vector rows u16 head+tail", 7, 3),
     ("vector rows u64", 0, 4), ("vector rows 3d u8", 0, 8)],
)  # fmt: skip
def test_vector_path_is_taken(harness, name, head, body):
    case = next(c for c in EDGE if c.name == name)
    dest = case.fresh_dest()
    desc = contract.pack_descriptors(case.copies[:1], [dest.ctypes.data])
    plan = harness.plan(contract.cast_code(case.src_dtype, case.dst_dtype), case.chunk, desc)
    assert (plan["vec"], plan["aligned"], plan["head"], plan["body"]) == (1, 1, head, body)


@pytest.mark.parametrize(
    ("why", "args"),
    [
        ("destination rows not 16-byte multiples", {"tshape": (4, 64), "bstart": (0, 0), "bshape": (4, 48), "pad": 1, "dst_origin": (0, 0)}),
        ("source rows not 16-byte multiples", {"tshape": (4, 40), "bstart": (0, 0), "bshape": (4, 32), "pad": 0}),
        ("source and destination not congruent mod 16", {"tshape": (4, 64), "bstart": (0, 1), "bshape": (4, 32), "pad": 0}),
        ("rows shorter than 32 bytes", {"tshape": (4, 64), "bstart": (0, 0), "bshape": (4, 16), "pad": 0}),
    ],
)  # fmt: skip
def test_vector_path_is_not_taken(harness, why, args):
    u8 = np.dtype(np.uint8)
    case = make_case(why, src=u8, dst=u8, **args)
    assert len(case.copies) == 1
    dest = case.fresh_dest()
    desc = contract.pack_descriptors(case.copies, [dest.ctypes.data])
    assert harness.plan("b1_b1", case.chunk, desc)["vec"] == 0, why
    harness.execute(case, dest)
    np.testing.assert_array_equal(raw(dest), raw(case.expected))


def test_misaligned_chunk_takes_bytewise_path(harness):
    case = make_case("m", (4, 6), (0, 0), (4, 6), F32, F32, prefix=1, misalign=0)
    dest = case.fresh_dest()
    desc = contract.pack_descriptors(case.copies[:1], [dest.ctypes.data])
    assert harness.plan("b4_b4", case.chunk, desc)["aligned"] == 0


def test_rank0_copy_is_one_element(harness):
    """An unnormalised scalar copy (shape ()) moves one element everywhere."""
    chunk = np.frombuffer(np.array([0.0, 1.5, -3.25], np.float32).tobytes(), np.uint8)
    c = BoxCopy(0, 8, (), 2, (), ())
    twin, kern = np.zeros(4, BF16), np.zeros(4, BF16)
    host.box_copy(chunk, np.float32, twin, BF16, c)
    harness.run("f32_bf16", chunk, contract.pack_descriptors([c], [kern.ctypes.data]))
    np.testing.assert_array_equal(twin, np.array([0, 0, -3.25, 0], BF16))
    np.testing.assert_array_equal(kern, twin)


def test_batch_with_many_destinations(harness):
    """32 column partitions of one chunk: one launch, 32 descriptors, 32 destinations."""
    rng = np.random.default_rng(3)
    tensor = rng.standard_normal((16, 96)).astype(np.float32)
    chunk = tensor.view(np.uint8).reshape(-1).copy()
    parts = [np.full((16, 3), -1, BF16) for _ in range(32)]
    copies = [BoxCopy(p, 4 * 3 * p, (96, 1), 0, (3, 1), (16, 3)) for p in range(32)]
    descs = contract.pack_descriptors(copies, [a.ctypes.data for a in parts])
    harness.run("f32_bf16", chunk, descs, grid=(2, 5), block=16)
    for p, a in enumerate(parts):
        np.testing.assert_array_equal(a.view(np.uint16), tensor[:, 3 * p : 3 * p + 3].astype(BF16).view(np.uint16))


def test_64bit_loop_is_chosen_above_2_31_items(harness):
    n = (1 << 31) + 5
    c = BoxCopy(0, 0, (0, 0), 0, (0, 0), (n, 1))
    desc = contract.pack_descriptors([c], [0])
    assert harness.plan("b4_b4", np.zeros(4, np.uint8), desc)["items"] == n


# -- property test --------------------------------------------------------------------------


@st.composite
def random_case(draw):
    rank = draw(st.integers(1, 4))
    tshape = tuple(draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank)))
    bstart, bshape = [], []
    for n in tshape:
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(a + 1, n))
        bstart.append(a)
        bshape.append(b - a)
    src, dst = draw(st.sampled_from(ALL_PAIRS))
    total = int(np.prod(tshape))
    e0 = draw(st.integers(0, total - 1))
    e1 = draw(st.integers(e0 + 1, total))
    prefix = draw(st.integers(0, 3)) * src.itemsize + draw(st.sampled_from([0, 0, 0, 1]))
    case = make_case(
        "hypothesis", tshape, tuple(bstart), tuple(bshape), src, dst,
        elems=(e0, e1), prefix=prefix, misalign=draw(st.integers(0, 15)), pad=draw(st.integers(0, 2)),
        seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip
    grid = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return case, grid, draw(st.sampled_from([1, 5, 32]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case())
def test_random_boxes(harness, drawn):
    case, grid, block = drawn
    want = raw(case.expected)
    np.testing.assert_array_equal(raw(_twin(case)), want)
    dest = case.fresh_dest()
    harness.execute(case, dest, grid, block, force64=grid == (3, 3))
    np.testing.assert_array_equal(raw(dest), want)


# -- the kernel source loader (no CuPy needed) ------------------------------------------------


def test_source_inlines_local_includes():
    src = kernels.source()
    assert '#include "' not in src
    assert '#line 1 "box_copy.cuh"' in src and '#line 1 "box_copy.cu"' in src
    assert "struct gpuload_box_desc" in src and "gpuload_box_copy_" in src


def test_kernel_dir_override(tmp_path, monkeypatch):
    for f in kernels.kernel_dir().iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "box_copy.cuh").write_text((tmp_path / "box_copy.cuh").read_text() + "\n// edited header\n")
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(tmp_path))
    assert kernels.kernel_dir() == tmp_path
    assert "// edited header" in kernels.source()  # the header's text reaches CuPy's cache key
    (tmp_path / "box_copy.cuh").unlink()
    with pytest.raises(FileNotFoundError, match="box_copy.cuh"):
        kernels.source()
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="GPULOAD_KERNEL_DIR"):
        kernels.kernel_dir()


def test_options_and_names():
    opts = kernels.options("f32_bf16")
    assert opts[0] == "-std=c++17"
    assert '-DGPULOAD_ONLY="f32_bf16"' in opts
    assert "-DGPULOAD_MAX_RANK=8" in opts
    assert kernels.kernel_name(np.float32, BF16) == "gpuload_box_copy_f32_bf16"
    assert kernels.kernel_name(np.int32, np.int32) == "gpuload_box_copy_b4_b4"
    with pytest.raises(ValueError, match="unknown box-copy variant"):
        kernels.options("f32_i8")
    with pytest.raises(PlanError, match="no box-copy kernel converts int32 to float32"):
        kernels.kernel_name(np.int32, np.float32)


@pytest.mark.parametrize(
    ("counts", "sms", "grid"),
    [([10], 132, (1, 1)), ([1 << 30], 132, (1056, 1)), ([5000] * 32, 132, (10, 32)),
     ([1 << 24] * 32, 132, (33, 32)), ([1] * 70000, 132, (1, 65535)), ([0], 1, (1, 1))],
)  # fmt: skip
def test_launch_geometry(counts, sms, grid):
    assert kernels.launch_geometry(counts, sms) == (grid, (kernels.BLOCK_THREADS,))
