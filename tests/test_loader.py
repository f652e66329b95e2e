"""The streaming load end to end on the host backend: values, bounded memory, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpuload
from gpuload import config
from gpuload.errors import ChecksumError, ShardReadError


def make_ckpt(tmp_path, arrays, **kw):
    prefix = str(tmp_path / "model.ckpt")
    gpuload.save_checkpoint(prefix, arrays, **kw)
    return prefix


def data_file(prefix):
    return prefix + ".data-00000-of-00001"


@pytest.fixture(autouse=True)
def fresh_graph():
    gpuload.reset_default_graph()
    yield
    gpuload.reset_default_graph()


@pytest.mark.parametrize("parts", [[1, 1], [8, 1], [7, 1], [1, 4], [3, 5]])
@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_partitioned_embedding_small_chunks(tmp_path, parts, verify, direct):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((1000, 24)).astype(np.float32)
    prefix = make_ckpt(tmp_path, {"emb": table, "other": np.arange(5.0)})
    v = gpuload.get_variable(
        "e", shape=table.shape, dtype="float32", partitioner=lambda shape, dtype: parts, device="/cpu:0"
    )
    gpuload.init_from_checkpoint(prefix, {"emb": "e"})
    with config.set(chunk_bytes=4096, ring_bytes=3 * 4096, reader_threads=3, verify_crc=verify, direct_io=direct):
        gpuload.global_variables_initializer().run()
    full = v.numpy()
    np.testing.assert_array_equal(full, table)
    for part in v._get_variable_list():
        np.testing.assert_array_equal(part.numpy(), table[part._save_slice_info.box.as_slices()])


def test_sliced_save_into_other_partitioning(tmp_path):
    from gpuload.format.slices import Box

    table = np.arange(60 * 10, dtype=np.int64).reshape(60, 10)
    stored = [(Box((0, 0), (25, 10)), table[:25]), (Box((25, 0), (35, 10)), table[25:])]
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {}, slices={"t": stored})
    v = gpuload.get_variable("t", shape=[60, 10], dtype="int64", partitioner=lambda s, d: [4, 2], device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"t": v})
    with config.set(chunk_bytes=4096, ring_bytes=4 * 4096):
        gpuload.global_variables_initializer().run()
    for part in v:
        np.testing.assert_array_equal(part.numpy(), table[part._save_slice_info.box.as_slices()])


def test_cast_float32_into_bfloat16(tmp_path):
    import ml_dtypes

    table = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    table[0, :4] = [np.nan, np.inf, -np.inf, 1e-40]
    prefix = make_ckpt(tmp_path, {"w": table})
    v = gpuload.get_variable("w", shape=[64, 8], dtype="bfloat16", device="/cpu:0")
    with pytest.raises(ValueError, match="allow_cast"):
        gpuload.init_from_checkpoint(prefix, {"w": "w"})
    gpuload.init_from_checkpoint(prefix, {"w": "w"}, allow_cast=True)
    gpuload.global_variables_initializer().run()
    want = table.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(v.numpy().view(np.uint16), want.view(np.uint16))


def test_corrupt_tensor_fails_whole_run_and_frees_ring(tmp_path, monkeypatch):
    import gpuload.io.ring as ring_mod

    closed = []
    original_close = ring_mod.Ring.close

    def spy_close(self, **kw):
        closed.append(len(self.slots))
        original_close(self, **kw)

    monkeypatch.setattr(ring_mod.Ring, "close", spy_close)
    big = np.arange(4096 * 8, dtype=np.float32).reshape(4096, 8)
    prefix = make_ckpt(tmp_path, {"a": np.ones(16, np.float32), "big": big})
    a = gpuload.get_variable("a", shape=[16], dtype="float32", device="/cpu:0")
    b = gpuload.get_variable("b", shape=big.shape, dtype="float32", partitioner=lambda s, d: [4, 1], device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"a": "a", "big": "b"})
    size = os.path.getsize(data_file(prefix))
    with open(data_file(prefix), "r+b") as f:  # flip one bit near the end of "big"
        f.seek(size - 100)
        byte = f.read(1)
        f.seek(size - 100)
        f.write(bytes([byte[0] ^ 0x04]))
    with config.set(chunk_bytes=4096, ring_bytes=3 * 4096):
        with pytest.raises(ChecksumError) as info:
            gpuload.global_variables_initializer().run()
    msg = str(info.value)
    assert "big" in msg and "data-00000-of-00001" in msg and "crc32c mismatch" in msg
    assert closed and closed[-1] > 0, "the ring was freed"
    for v in [a, *b._get_variable_list()]:
        with pytest.raises(Exception, match="not initialized"):
            v.value()


def test_file_truncated_mid_load(tmp_path, monkeypatch):
    from gpuload.io import reader as reader_mod

    big = np.arange(8192 * 4, dtype=np.float32).reshape(8192, 4)
    prefix = make_ckpt(tmp_path, {"big": big})
    v = gpuload.get_variable("b", shape=big.shape, dtype="float32", partitioner=lambda s, d: [2, 1], device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"big": "b"})
    original = reader_mod.ShardFiles._pread_full
    calls = []

    def pread_full(self, fd, index, view, offset, allow_short=False, **names):
        calls.append(offset)
        if len(calls) == 3:
            os.truncate(self.paths[index], offset + 10)
        return original(self, fd, index, view, offset, allow_short, **names)

    monkeypatch.setattr(reader_mod.ShardFiles, "_pread_full", pread_full)
    with config.set(chunk_bytes=4096, ring_bytes=3 * 4096, reader_threads=1, verify_crc=False):
        with pytest.raises(ShardReadError) as info:
            gpuload.global_variables_initializer().run()
    assert isinstance(info.value, OSError)
    assert "data-00000-of-00001" in str(info.value) and "ends at byte" in str(info.value)
    assert info.value.tensor == "big" and "tensor 'big'" in str(info.value)
    for part in v:
        with pytest.raises(Exception, match="not initialized"):
            part.value()


def test_missing_data_file_at_run(tmp_path):
    prefix = make_ckpt(tmp_path, {"w": np.ones((4, 4), np.float32)})
    gpuload.get_variable("w", shape=[4, 4], dtype="float32", device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"w": "w"})
    os.remove(data_file(prefix))
    with pytest.raises((ValueError, OSError)) as info:
        gpuload.global_variables_initializer().run()
    assert "data-00000-of-00001" in str(info.value)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import gpuload
    from gpuload import config
    prefix, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    parts = [int(x) for x in sys.argv[4].split(",")]
    v = gpuload.get_variable("emb", shape=[rows, cols], dtype="float32",
                             partitioner=lambda s, d: parts, device="/cpu:0")
    gpuload.init_from_checkpoint(prefix, {"emb": "emb"})
    op = gpuload.global_variables_initializer()
    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    # VmHWM, not ru_maxrss: the latter survives exec and would report the parent's peak.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    before = status("VmRSS")
    with config.set(chunk_bytes="4MiB", ring_bytes="12MiB"):
        op.run()
    peak = status("VmHWM")
    ok = all(np.array_equal(p.numpy()[:, 0], np.arange(p._save_slice_info.var_offset[0],
                                                       p._save_slice_info.var_offset[0] + p.shape[0],
                                                       dtype=np.float32))
             for p in v._get_variable_list())
    print(json.dumps({"before": before, "peak": peak, "ok": bool(ok)}))
""")


@pytest.mark.parametrize("parts", ["8,1", "1,4"], ids=["rows-in-place", "columns-through-ring"])
def test_host_memory_bounded_by_ring(tmp_path, parts):
    rows, cols = 3 * 2**18, 32  # 96 MiB, 8 times the 12 MiB ring
    table = np.repeat(np.arange(rows, dtype=np.float32)[:, None], cols, axis=1)
    prefix = make_ckpt(tmp_path, {"emb": table})
    del table
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), prefix, str(rows), str(cols), parts], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ok"]
    dest = rows * cols * 4
    ring = 12 << 20
    growth = r["peak"] - max(r["before"], 0)
    # destinations + ring + a small constant; reading the tensor whole even once more would add 96 MiB
    print(f"peak growth {growth >> 20} MiB for {dest >> 20} MiB of destinations and a {ring >> 20} MiB ring")
    assert growth <= dest + ring + (24 << 20), (growth, dest, ring)


# ---- gpuload.loader.load_checkpoints: the initializer op's load step, requests only


def _two_checkpoints(tmp_path):
    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    b = np.arange(6, dtype=np.int64)
    pa, pb = str(tmp_path / "a" / "m.ckpt"), str(tmp_path / "b" / "m.ckpt")
    gpuload.save_checkpoint(pa, {"a": a})
    gpuload.save_checkpoint(pb, {"b": b})
    return (pa, a), (pb, b)


def test_load_checkpoints_loads_several_checkpoints_as_one_step(tmp_path):
    from gpuload import loader
    from gpuload.format.bundle import Bundle

    (pa, a), (pb, b) = _two_checkpoints(tmp_path)
    out = np.empty((4, 4), np.float32)
    results = loader.load_checkpoints(
        {
            pa: {"top": gpuload.Request("a", rows=(0, 4), target=out), "f64": ("a", gpuload.Spec(dtype="float64"))},
            Bundle.open(pb): ["b"],  # an opened bundle, the list form
        },
        allow_cast=True,
    )
    assert list(results) == [pa, pb]
    assert results[pa]["top"] is out and np.array_equal(out, a[:4])
    assert results[pa]["f64"].dtype == np.float64 and np.array_equal(results[pa]["f64"], a)
    assert np.array_equal(results[pb]["b"], b)
    assert loader.last_stats() == [results[pa].stats, results[pb].stats]
    assert results[pa].stats.bytes_written == 16 * 4 + 40 * 8


def test_load_checkpoints_hands_out_nothing_when_one_checkpoint_fails(tmp_path):
    from gpuload import loader

    (pa, _), (pb, b) = _two_checkpoints(tmp_path)
    loader.load_checkpoints({pb: ["b"]})
    before = loader.last_stats()
    with open(data_file(pb), "r+b") as f:  # flip a bit of "b"
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ChecksumError, match="'b'"):
        loader.load_checkpoints({pa: ["a"], pb: ["b"]})
    assert loader.last_stats() == before  # the failed step reports nothing


def test_load_checkpoints_without_a_communicator_raises_the_callers_error(tmp_path):
    from gpuload import loader
    from gpuload.errors import ArgumentTypeError

    with pytest.raises(KeyError, match="prepared badly"):
        loader.load_checkpoints({}, failed=KeyError("prepared badly"))
    with pytest.raises(ArgumentTypeError, match="must be a dict"):
        loader.load_checkpoints([str(tmp_path)])


def test_normalize_requests_is_the_order_of_plan_loads_destinations(tmp_path):
    from gpuload.api import normalize_requests

    (pa, _), _ = _two_checkpoints(tmp_path)
    requests = ["a", gpuload.Request("a", rows=(2, 5))]
    with pytest.raises(ValueError, match="requested twice"):
        normalize_requests(requests)
    requests = {"x": "a", "y": ("a", gpuload.Spec(dtype="float64")), "z": gpuload.Request("a", rows=(2, 5))}
    items = normalize_requests(requests)
    assert [n for n, _ in items] == ["x", "y", "z"] and all(isinstance(r, gpuload.Request) for _, r in items)
    assert items[1][1].target == gpuload.Spec(dtype="float64")
    plan = gpuload.plan_load(pa, requests, allow_cast=True)
    assert [(d.name, d.shape, d.dtype.name) for d in plan.destinations] == [
        ("x", (10, 4), "float32"),
        ("y", (10, 4), "float64"),
        ("z", (3, 4), "float32"),
    ]


def test_plan_load_takes_a_spec_for_a_remap_requests_starting_values(tmp_path):
    from gpuload.plan import Remap

    (pa, a), _ = _two_checkpoints(tmp_path)
    rows = np.array([3, -1, 0], np.int64)
    spec = gpuload.Request("a", target=gpuload.Spec((3, 4), "float32"), remap=Remap(0, rows), box=(slice(0, 3),))
    plan = gpuload.plan_load(pa, {"v": spec})  # a plan needs no starting values
    assert plan.destinations[0].remap == Remap(0, rows)
    with pytest.raises(ValueError, match="remap request needs an array target"):
        gpuload.load(pa, {"v": spec})
    start = np.full((3, 4), -7, np.float32)
    r = gpuload.load(pa, {"v": gpuload.Request("a", target=start, remap=Remap(0, rows), box=(slice(0, 3),))})
    assert np.array_equal(r["v"], np.stack([a[3], np.full(4, -7, np.float32), a[0]]))


def test_load_checkpoints_refuses_one_checkpoint_given_twice(tmp_path):
    """Results are keyed by prefix: a second entry for the same checkpoint would be dropped silently."""
    from gpuload import loader
    from gpuload.errors import InvalidArgumentError
    from gpuload.format.bundle import Bundle

    (pa, _), (pb, _) = _two_checkpoints(tmp_path)
    loader.load_checkpoints({pb: ["b"]})
    before = loader.last_stats()
    out = np.zeros((10, 4), np.float32)
    with pytest.raises(InvalidArgumentError, match=rf"load_checkpoints: checkpoint {pa} is given twice"):
        loader.load_checkpoints({pa: {"x": ("a", out)}, Bundle.open(pa): ["a"]})
    assert not out.any()  # refused before anything loaded
    assert loader.last_stats() == before


def test_load_checkpoints_allow_cast_is_per_checkpoint(tmp_path):
    """A cast allowed for checkpoint A's requests allows none of checkpoint B's."""
    from gpuload import loader
    from gpuload.errors import TargetError

    (pa, a), (pb, _) = _two_checkpoints(tmp_path)
    pc = str(tmp_path / "c" / "m.ckpt")
    gpuload.save_checkpoint(pc, {"c": np.arange(3, dtype=np.float32)})
    f64 = ("a", gpuload.Spec(dtype="float64"))
    with pytest.raises(TargetError, match=r"tensor 'c' is float32 but the target .* is float16; pass allow_cast"):
        loader.load_checkpoints(
            {pa: {"f64": f64}, pc: {"f16": ("c", gpuload.Spec(dtype="float16"))}}, allow_cast={pa: True}
        )
    with pytest.raises(TargetError, match="pass allow_cast"):
        loader.load_checkpoints(
            {pa: {"f64": f64}, pc: {"f16": ("c", gpuload.Spec(dtype="float16"))}}, allow_cast={pa: True, pc: False}
        )
    r = loader.load_checkpoints({pa: {"f64": f64}, pc: ["c"]}, allow_cast={pa: True})
    assert r[pa]["f64"].dtype == np.float64 and np.array_equal(r[pa]["f64"], a)
    r = loader.load_checkpoints({pa: {"f64": f64}, pc: {"f16": ("c", gpuload.Spec(dtype="float16"))}}, allow_cast=True)
    assert r[pc]["f16"].dtype == np.float16  # one flag still covers every checkpoint


@pytest.mark.parametrize(
    ("allow_cast", "error", "match"),
    [({"elsewhere": True}, "InvalidArgumentError", "allow_cast names checkpoints that are not loaded: elsewhere"),
     ("yes", "ArgumentTypeError", r"allow_cast must be a bool or a dict \{checkpoint: bool\}, got str"),
     (None, "ArgumentTypeError", "allow_cast must be a bool or a dict"),
     ({"A": 1}, "ArgumentTypeError", "allow_cast of checkpoint .* must be a bool, got 1")],
)  # fmt: skip
def test_load_checkpoints_checks_allow_cast(tmp_path, allow_cast, error, match):
    from gpuload import errors, loader

    (pa, _), _ = _two_checkpoints(tmp_path)
    if isinstance(allow_cast, dict) and "A" in allow_cast:
        allow_cast = {pa: allow_cast["A"]}
    with pytest.raises(getattr(errors, error), match=match):
        loader.load_checkpoints({pa: ["a"]}, allow_cast=allow_cast)


def test_last_stats_describe_only_a_step_whose_commit_succeeded(tmp_path):
    from gpuload import loader

    (pa, _), (pb, _) = _two_checkpoints(tmp_path)
    first = loader.load_checkpoints({pb: ["b"]})
    assert loader.last_stats() == [first[pb].stats]

    def assign(results):
        assert list(results) == [pa] and results[pa]["a"].shape == (10, 4)
        raise RuntimeError("assignment failed")

    with pytest.raises(RuntimeError, match="assignment failed"):
        loader.load_checkpoints({pa: ["a"]}, commit=assign)
    assert loader.last_stats() == [first[pb].stats]  # the failed step reports nothing
    seen = []
    r = loader.load_checkpoints({pa: ["a"]}, commit=seen.append)
    assert seen == [r] and loader.last_stats() == [r[pa].stats]


def test_verify_check_is_the_schedulers_public_crc_check(tmp_path):
    """The collective load checks its combined CRCs with the same function as the scheduler."""
    from gpuload import scheduler
    from gpuload.format import crc as crcmod

    (pa, a), _ = _two_checkpoints(tmp_path)
    plan = gpuload.plan_load(pa, ["a"])
    (check,) = plan.checks
    good = crcmod.crc32c(a.tobytes())
    scheduler.verify_check(plan, check, good)
    with pytest.raises(ChecksumError, match=r"'a'"):
        scheduler.verify_check(plan, check, good ^ 1)
    assert "verify_check" in scheduler.__all__
