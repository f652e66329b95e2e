"""The collective load under ``mpiexec -n 4`` (tests/mpi_scenarios.py), each with a hard timeout.

Skipped (with the reason) only when mpi4py or mpiexec is missing: ``pip install -e '.[mpi]'``
brings both (the ``mpich`` wheel), and CI installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, next to the venv's python
    return str(here) if here.exists() else shutil.which("mpiexec")


def _missing():
    try:
        import mpi4py

        del mpi4py
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec found (pip install -e '.[mpi]' brings the mpich wheel's)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def run_scenario(name, tmp_path, rows=None, timeout=110, ranks=4):
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable, str(ROOT / "tests" / "mpi_scenarios.py"), name, str(tmp_path)]
    if rows:
        cmd.append(str(rows))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result (rc {proc.returncode})\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["ok"] and proc.returncode == 0, json.dumps(result, indent=1)[:6000] + proc.stderr[-2000:]
    return result


def test_replicated_each_byte_read_once(tmp_path):
    r = run_scenario("replicated", tmp_path)
    tensor = 256 << 20
    assert r["total_read"] <= 1.05 * tensor  # naive: every rank reads it, 4x
    assert all(x["exact"] for x in r["ranks"])
    assert all(x["bytes_read"] <= 0.3 * tensor for x in r["ranks"])  # balanced: ~1/4 each


def test_sharded_by_task_placement(tmp_path):
    r = run_scenario("sharded", tmp_path)
    for k, x in enumerate(r["ranks"]):
        assert x["holds"] == f"emb/part_{k}:0"
        assert x["exact"] and x["others_refuse"]
        assert x["bytes_read"] <= 1.05 * x["part_bytes"]


def test_flipped_byte_fails_every_rank_alike(tmp_path):
    r = run_scenario("corrupt", tmp_path)
    texts = {x["error"] for x in r["ranks"]}
    assert len(texts) == 1 and "crc32c mismatch" in texts.pop()


def test_rank_failing_before_the_load_times_out_the_others(tmp_path):
    r = run_scenario("rank_fails", tmp_path, rows=1 << 16)
    for k, x in enumerate(r["ranks"]):
        if k == 1:
            assert x["raised"] == "AssignmentMapError"
        else:
            assert x["raised"] == "CollectiveTimeoutError"
            assert 10.0 <= x["elapsed_s"] <= 15.0  # collective_timeout=10 s in the scenario


def test_rank_failing_during_the_load_aborts_the_others_at_once(tmp_path):
    r = run_scenario("reader_fails", tmp_path)
    assert r["max_elapsed_s"] < 5  # the timeout is 60 s: the abort message, not the deadline


@pytest.mark.parametrize("scenario", ["plan_interrupted", "own_init_fails"])
def test_rank_failing_before_the_exchange_tells_the_others_at_once(tmp_path, scenario):
    """A KeyboardInterrupt while planning, or an own initializer raising before the load:
    the error travels in the first exchange, so no rank waits for the timeout (30 s)."""
    r = run_scenario(scenario, tmp_path, rows=1 << 16)
    assert r["ranks"][1]["raised"] == ("KeyboardInterrupt" if scenario == "plan_interrupted" else "ValueError")
    assert all(
        x["raised"] == "CollectiveError" and "rank 1" in x["message"] for k, x in enumerate(r["ranks"]) if k != 1
    )
    assert r["max_elapsed_s"] < 10


def test_collective_load_takes_the_load_apis_requests(tmp_path):
    """No graph: a NumPy array filled in place, a Spec, a rank with no requests, a torch target refused."""
    pytest.importorskip("torch")
    r = run_scenario("requests", tmp_path, rows=1 << 14, ranks=3)
    assert r["total_read"] <= 1.05 * (1 << 14) * 64 * 4
    assert [x["raised"] for x in r["ranks"]] == ["CollectiveError", "TargetError", "CollectiveError"]


def test_ranks_with_different_checkpoints_strings_and_nothing_to_load(tmp_path):
    r = run_scenario("mixed", tmp_path, rows=1 << 14)
    assert [x["loaded"] for x in r["ranks"]] == [["emb"], ["emb", "w", "words"], [], ["w", "words"]]


@pytest.mark.parametrize(
    ("scenario", "ranks"), [("warm_start", 4), ("warm_start_sharded", 3), ("warm_start_sharded", 2)]
)
def test_warm_start_with_vocabulary_remap_is_collective(tmp_path, scenario, ranks):
    r = run_scenario(scenario, tmp_path, ranks=ranks)
    for crc in ("crc_True", "crc_False"):
        assert all(x[crc]["exact"] for x in r["ranks"])  # == the single-process warm start, bit for bit
        assert r[crc]["total_read"] <= 1.05 * r[crc]["single_process_read"]
        assert all(x[crc]["vocab_bytes"] > 0 for x in r["ranks"])


def test_warm_start_refuses_a_checkpoint_saved_again_before_run(tmp_path):
    r = run_scenario("warm_start_changed", tmp_path, ranks=2)
    assert all(x["raised"] == "CheckpointChangedError" for x in r["ranks"])


def test_bench_ranks_reports_bytes_per_rank_for_both_loads(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpuload",
            "bench",
            "--ranks",
            "2",
            "--size",
            "2MiB",
            "--dir",
            str(tmp_path),
            "--json",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert sum(res["collective"]["bytes_read"]) == res["tensor_bytes"]  # each byte read once
    assert sum(res["naive"]["bytes_read"]) == 2 * res["tensor_bytes"]  # every rank reads it all
    assert "collective" in out.stdout and "naive" in out.stdout
