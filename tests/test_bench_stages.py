"""The benchmark's stages on their own, without a real benchmark run.

config (options + facts -> BenchConfig) -> jobs (one per row) -> run (interleaved, on a
fake worker) -> report (summary, targets, markdown, JSON). The read+CRC limit itself runs
on a few MiB of temporary files and is checked byte for byte and CRC for CRC.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import google_crc32c
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import _config  # noqa: E402
import _jobs  # noqa: E402
import _report  # noqa: E402
import _runner  # noqa: E402
import _summary  # noqa: E402
import _workers  # noqa: E402
import bench_load  # noqa: E402

_MIB = 1 << 20


def _args(*argv):
    return bench_load.build_parser().parse_args(list(argv))


def _facts(gpu_ids=(), peers=None):
    return _config.Facts(
        gpuinfo={"count": len(gpu_ids), "reason": "no CUDA device (test)"},
        gpu_ids=list(gpu_ids),
        gpu_reason=None if gpu_ids else "no CUDA device (test)",
        peer_probe=peers or {},
    )


def _data_for(config):
    return {
        "ckpt_dir": "/ckpt",
        "data_files": ["/ckpt/model.ckpt.data-00000-of-00001"],
        "safetensors": "/d/emb.safetensors",
        "npy": "/d/emb.npy",
        "crcs": {lay: [i + 1] for i, lay in enumerate(config.layouts)},
    }


# --- config ----------------------------------------------------------------------------------


def test_config_from_options_and_facts():
    peers = {
        "tensorflow": {"ok": False, "reason": "tensorflow not importable"},
        "safetensors": {"ok": True},
    }
    args = _args(
        "--size", "64MiB", "--devices", "cpu,gpu", "--peers", "tensorflow,safetensors",
        "--crc", "on", "--cold", "--cold-modes", "direct", "--reader-threads", "3", "--dir", "/tmp/x",
    )  # fmt: skip
    c = _config.make_config(args, facts=_facts(peers=peers), argv=["--size", "64MiB"])
    assert c.shape == (262144, 64) and c.nbytes == 64 * _MIB
    assert c.devices == ["cpu"] and c.gpu_ids == []
    assert "gpu: skipped: no CUDA device (test)" in c.skipped
    assert "tensorflow: skipped: tensorflow not importable" in c.skipped
    assert c.peers == ["safetensors"]
    assert c.caches == ["warm", "cold-direct"] and c.crc_modes == [True]
    assert c.gpuload_overrides == {"reader_threads": 3}
    assert c.gpuload_config["reader_threads"] == 3 and c.gpuload_config["chunk_bytes"] > 0
    assert c.bench_dir == Path("/tmp/x") and c.repeat == 3
    rec = c.as_json()
    assert rec["bytes"] == 64 * _MIB and rec["argv"] == ["--size", "64MiB"] and rec["caches"] == c.caches
    json.dumps(rec)  # the results JSON must be able to hold it


def test_quick_config_is_small_and_runs_once_unless_told():
    c = _config.make_config(_args("--quick"), facts=_facts())
    assert c.shape == _config.QUICK_SHAPE and c.repeat == 1
    assert c.gpuload_overrides == {"chunk_bytes": 512 * 1024, "ring_bytes": 2 * _MIB}
    assert _config.make_config(_args("--quick", "--repeat", "2"), facts=_facts()).repeat == 2
    assert _config.make_config(_args("--shape", "100x8"), facts=_facts()).shape == (100, 8)


def test_config_gpus_and_bad_options():
    c = _config.make_config(_args("--devices", "cpu,gpu"), facts=_facts(gpu_ids=[0, 1]))
    assert c.devices == ["cpu", "gpu x2"] and c.gpu_ids == [0, 1]
    # The GPUs exist but no GPU row runs: the limits do not measure them either.
    assert _config.make_config(_args("--devices", "cpu"), facts=_facts(gpu_ids=[0])).gpu_ids == []
    with pytest.raises(SystemExit, match="unknown device 'tpu'"):
        _config.make_config(_args("--devices", "tpu"), facts=_facts())
    with pytest.raises(SystemExit, match="unknown cold mode"):
        _config.make_config(_args("--cold", "--cold-modes", "frozen"), facts=_facts())
    with pytest.raises(ValueError):
        _config.make_config(_args("--shape", "10x64", "--layouts", "rows:32"), facts=_facts())


def test_parse_size_and_human():
    assert _config.parse_size("1GiB") == 1 << 30 and _config.parse_size("512MiB") == 512 * _MIB
    assert _config.parse_size("4096") == 4096
    assert _config.human(1 << 30) == "1GiB" and _config.human(64 * _MIB) == "64MiB"
    with pytest.raises(Exception, match="not a size"):
        _config.parse_size("lots")


# --- jobs ---------------------------------------------------------------------------------------


def test_jobs_cover_every_row_once():
    peers = {"safetensors": {"ok": True}, "dali": {"ok": True}}
    args = _args(
        "--devices", "cpu,gpu", "--cold", "--layouts", "rows:1,cols:4", "--peers", "safetensors,dali",
        "--peer-python", "/peers/python", "--chunk-bytes", "8MiB",
    )  # fmt: skip
    c = _config.make_config(args, facts=_facts(gpu_ids=[0, 1], peers=peers))
    data = _data_for(c)
    jobs = _jobs.make_jobs(c, data)
    g = [j for j in jobs if j.what == "gpuload"]
    assert len(g) == 2 * 3 * 2 * 2  # devices x caches x layouts x crc
    for j in g:
        assert j.spec["config"] == {"chunk_bytes": 8 * _MIB, "verify_crc": j.crc, "direct_io": j.cache == "cold-direct"}
        assert j.spec["expected_crcs"] == data["crcs"][j.layout] and j.python == sys.executable
        assert j.spec["gpus"] == ([] if j.device == "cpu" else [0, 1]) and j.spec["device_label"] == j.device
    peer = [j for j in jobs if j.what != "gpuload"]
    # safetensors load_file (1 layout) + get_slice (2) + dali cpu and gpu (2 x 2), warm and cold
    # (O_DIRECT is gpuload's alone).
    assert len(peer) == (1 + 2 + 4) * 2
    assert {j.cache for j in peer} == {"warm", "cold"} and {j.python for j in peer} == {"/peers/python"}
    assert {j.device for j in peer if j.what == "dali numpy gpu"} == {"gpu"}
    assert len({j.key for j in jobs}) == len(jobs)
    spec = _jobs.limits_spec(c, data)
    assert spec["gpus"] == [0, 1] and spec["repeat"] == 3 and spec["chunk_bytes"] == 8 * _MIB and spec["cold"]


def test_runner_interleaves_repeats_and_tags_rows(capsys):
    c = _config.make_config(_args("--layouts", "rows:1,cols:4", "--crc", "on", "--cold"), facts=_facts())
    jobs = _jobs.make_jobs(c, _data_for(c))
    calls, warmed = [], []

    def fake_run(spec, python, timeout):
        calls.append((spec["layout"], spec["cache"]))
        return {"ok": True, "gbps": 1.0 + len(calls), "seconds": 1.0}

    ms = _runner.run_jobs(jobs, 2, 5.0, run=fake_run, warm=warmed.append)
    order = [(j.layout, j.cache) for j in jobs]
    assert calls == order + order  # round 1 of every row, then round 2
    assert len(warmed) == 2 * sum(j.cache == "warm" for j in jobs)
    assert [_summary.group_key(m) for m in ms] == [j.key for j in jobs] * 2
    assert "cols:4" in capsys.readouterr().out


def test_limit_rounds_interleave_and_keep_going_after_a_failure():
    order = []

    def make(key, fail_on=None):
        def run():
            order.append(key)
            if len([k for k in order if k == key]) == fail_on:
                raise OSError("disk on fire")
            return 0.5

        return (key, f"limit {key}", 1_000_000_000, run)

    L, errors = {}, {}
    _workers._rounds([make("a"), make("b", fail_on=2), make("c")], 3, L, errors, before_each=lambda: True)
    assert order == ["a", "b", "c", "a", "b", "c", "a", "c"]
    assert errors == {"b": "OSError: disk on fire"} and set(L) == {"a", "c"}
    assert L["a"]["gbps_runs"] == [2.0, 2.0, 2.0] and L["a"]["eviction_ok"] is True


# --- the read+CRC limit -----------------------------------------------------------------------


@pytest.fixture
def data_files(tmp_path):
    rng = np.random.default_rng(9)
    paths = []
    for i, n in enumerate((5 * _MIB + 123, 3 * _MIB)):
        p = tmp_path / f"model.ckpt.data-0000{i}-of-00002"
        p.write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("alloc", [_workers.fresh_numpy, _workers.fresh_gpuload])
def test_read_crc_limit_reads_everything_and_checksums_each_piece(data_files, alloc):
    blob = b"".join(Path(p).read_bytes() for p in data_files)
    seconds, dest, crcs = _workers.read_crc_threads(data_files, 2, _MIB, alloc)
    assert seconds > 0 and dest.nbytes == len(blob) and dest.tobytes() == blob
    pieces, _ = _workers._pieces(data_files, _MIB)
    assert len(crcs) == len(pieces) == 6 + 3  # pieces never straddle two files
    for (path, off, n, _at), crc in zip(pieces, crcs):
        with open(path, "rb") as f:
            f.seek(off)
            assert crc == google_crc32c.value(f.read(n)), (path, off)


def test_limits_worker_measures_read_crc_in_rounds(data_files):
    out = _workers.run_limits({"files": data_files, "repeat": 2, "chunk_bytes": 256 * 1024, "threads": [2]})
    assert out["errors"] == {}
    L = out["limits"]
    for key in (_summary.READ_CRC, _summary.READ_CRC_HUGE, "readinto_1t", "pread_dest_2t"):
        assert len(L[key]["gbps_runs"]) == 2 and L[key]["best"] >= L[key]["median"] > 0, key
        assert L[key]["bytes"] == sum(os.path.getsize(p) for p in data_files)
    assert "CRC32C" in L[_summary.READ_CRC]["name"] and "MADV_HUGEPAGE" in L[_summary.READ_CRC_HUGE]["name"]


# --- summary and report ---------------------------------------------------------------------


LIMITS = {
    "readinto_1t": {"name": "r", "best": 10.0, "median": 9.0},
    "pread_dest_2t": {"name": "p", "best": 9.0, "median": 8.0},
    _summary.READ_CRC: {"name": "read+crc", "best": 8.0, "median": 7.5},
    _summary.READ_CRC_HUGE: {"name": "read+crc huge", "best": 12.0, "median": 11.0},
}


def _m(layout, crc, gbps, cache="warm", what="gpuload"):
    return {
        "what": what, "layout": layout, "device": "cpu", "crc": crc, "cache": cache, "ok": True,
        "gbps": gbps, "seconds": 1.0 / gbps, "rss_peak_delta": 10, "dest_bytes": 100, "stats": {"ring_bytes": 0},
    }  # fmt: skip


def _rows():
    ms = [
        _m("cols:4", True, 7.0),
        _m("cols:4", True, 7.2),  # best of the two: 7.2 / 8.0 = 0.9 -> PASS (the threshold is inclusive)
        _m("cols:4", False, 7.5),
        _m("rows:1", True, 7.1),  # 0.8875 -> FAIL
        _m("rows:1", True, 7.1, cache="cold"),
        _m("rows:1", None, 3.0, what="tensorflow"),
    ]
    return {(g["layout"], g["crc"], g["cache"], g["what"]): g for g in _summary.summarize(ms, LIMITS, [])}


def test_read_crc_target_on_crc_on_warm_cpu_rows():
    rows = _rows()
    cols = rows[("cols:4", True, "warm", "gpuload")]
    t = cols["targets"]["read+crc>=0.9x"]
    assert t["value"] == pytest.approx(0.9) and t["pass"] and t["limit"] == _summary.READ_CRC
    assert cols["ratio_read_crc_huge"] == pytest.approx(7.2 / 12.0)
    assert cols["gbps_median"] == pytest.approx(7.1)
    row1 = rows[("rows:1", True, "warm", "gpuload")]
    assert row1["targets"]["read+crc>=0.9x"]["pass"] is False
    assert {"warm>=0.8x", "rss", "crc<=15%"} <= set(cols["targets"])  # the old targets stay
    # No read+CRC target where the limit does not apply: CRC off, cold, peers.
    for key in (("cols:4", False, "warm", "gpuload"), ("rows:1", True, "cold", "gpuload")):
        assert "read+crc>=0.9x" not in rows[key]["targets"] and "ratio_read_crc" not in rows[key]
    assert "ratio_read_crc" not in rows[("rows:1", None, "warm", "tensorflow")]


def test_read_crc_target_absent_without_the_limit():
    limits = {k: v for k, v in LIMITS.items() if k != _summary.READ_CRC}
    (g,) = _summary.summarize([_m("cols:4", True, 7.0)], limits, [])
    assert "read+crc>=0.9x" not in g["targets"] and "warm>=0.8x" in g["targets"]
    assert "not measured" in _report.headline_text([g], limits)


def _info(summary, quick=True):
    argv = ["--quick"] if quick else []
    c = _config.make_config(_args(*argv), facts=_facts(), argv=argv)
    info = _report.new_info(c, date="2026-12-02T12:00:00+00:00")
    info.update(
        machine={
            "cpu": "Test CPU", "cores": 2, "ram_bytes": 1 << 33, "os": "Linux", "loadavg_start": [0.1, 0.2, 0.3],
            "loadavg_end": [0.1, 0.2, 0.3], "filesystem": {"fstype": "ext4", "device": "/dev/x"},
        },
        versions={"gpuload": "0.1.0"},
        limits=LIMITS,
        summary=summary,
        skipped=[],
    )  # fmt: skip
    return info


def test_report_shows_the_limit_the_target_and_the_headline(tmp_path):
    summary = list(_rows().values())
    info = _info(summary)
    md = _report.markdown(info)
    assert "| read_crc_dest_2t | 8.00 | 7.50 | read+crc |" in md
    assert "| read_crc_dest_2t_huge | 12.00 | 11.00 |" in md
    assert "read+crc>=0.9x:PASS" in md and "read+crc>=0.9x:FAIL" in md
    head = _report.headline_text(summary, LIMITS)
    assert "cols:4" in head and "0.90 x read_crc_dest_2t" in head and "PASS" in head and "0.60 x" in head
    assert head in md and head in _report.console(info)
    cols = _report.COLUMNS.index("vs read+crc")
    (row,) = [r for r in _report.rows(summary) if r[:5] == ["gpuload", "cols:4", "cpu", "on", "warm"]]
    assert row[cols] == "0.90" and row[cols + 1] == "0.60"

    written = _report.write(info, tmp_path, plot_png=False)
    assert [p.suffix for p in written] == [".json", ".md"]  # quick: no latest.md
    back = json.loads(written[0].read_text())
    assert back["limits"][_summary.READ_CRC]["best"] == 8.0
    assert any("read+crc>=0.9x" in (g.get("targets") or {}) for g in back["summary"])


def test_replot_redraws_from_the_json(tmp_path):
    pytest.importorskip("matplotlib")
    info = _info(list(_rows().values()), quick=False)
    written = _report.write(info, tmp_path, plot_png=False)
    assert (tmp_path / "latest.md") in written
    (tmp_path / "latest.md").unlink()
    assert bench_load.main(["--replot", str(written[0]), "--out", str(tmp_path)]) == 0
    assert written[0].with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "read+crc>=0.9x:PASS" in (tmp_path / "latest.md").read_text()


def test_baseline_checkout_rows_alternate_and_are_compared(tmp_path):
    (tmp_path / "gpuload").mkdir()
    (tmp_path / "gpuload" / "__init__.py").write_text("")
    args = _args("--layouts", "rows:1,cols:4", "--crc", "on", "--baseline-checkout", str(tmp_path))
    c = _config.make_config(args, facts=_facts())
    assert c.baseline == tmp_path.resolve() and c.baseline_label.startswith("gpuload@")
    assert c.as_json()["baseline"] == {"checkout": str(tmp_path.resolve()), "label": c.baseline_label}
    jobs = _jobs.make_jobs(c, _data_for(c))
    assert [j.what for j in jobs] == ["gpuload", c.baseline_label] * 2  # twins alternate
    assert jobs[0].spec == jobs[1].spec and jobs[0].env == {} and jobs[1].env == {"PYTHONPATH": str(c.baseline)}
    envs = []

    def fake_run(spec, python, timeout, env=None):
        envs.append(env)
        return {"ok": True, "gbps": 8.0 if env else 6.0, "seconds": 1.0}

    ms = _runner.run_jobs(jobs, 1, 5.0, run=fake_run, warm=lambda files: None)
    assert envs == [None, {"PYTHONPATH": str(c.baseline)}] * 2
    rows = {(g["what"], g["layout"]): g for g in _summary.summarize(ms, LIMITS, [])}
    assert rows[("gpuload", "cols:4")]["ratio_base"] == pytest.approx(0.75)
    assert "ratio_base" not in rows[(c.baseline_label, "cols:4")]
    assert "targets" not in rows[(c.baseline_label, "cols:4")]  # the targets judge this checkout only
    with pytest.raises(SystemExit, match="no gpuload"):
        _config.make_config(_args("--baseline-checkout", str(tmp_path / "nowhere")), facts=_facts())


def test_measure_limits_reports_failures(capsys):
    def fake_run(spec, python, timeout):
        assert spec["kind"] == "limits" and python == sys.executable
        return {
            "limits": {"memcpy_1t": {"name": "m", "best": None, "median": None}, **LIMITS},
            "errors": {"odirect_seq": "OSError: no O_DIRECT"},
            "error": "worker exited 1",
        }

    limits, errors = _runner.measure_limits({"kind": "limits"}, 5.0, run=fake_run)
    assert limits[_summary.READ_CRC]["best"] == 8.0
    assert errors == {"odirect_seq": "OSError: no O_DIRECT", "worker": "worker exited 1"}
    out = capsys.readouterr().out
    assert "read_crc_dest_2t " in out and "odirect_seq" in out and "failed: worker exited 1" in out
