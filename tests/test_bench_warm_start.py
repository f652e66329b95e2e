"""The warm-start benchmark row runs end to end at a tiny size (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_warm_start_quick(tmp_path):
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "bench_load.py"),
        "--warm-start",
        "--quick",
        "--ws-rows",
        "3000",
        "--crc",
        "both",
        "--peers",
        "none",
        "--dir",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--timeout",
        "60",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    log = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, log
    (json_path,) = out.glob("*warm-start-3000.json")
    info = json.loads(json_path.read_text())
    assert info["kind"] == "warm_start" and info["config"]["rows"] == 3000
    rows = {r["what"]: r for r in info["summary"]}
    assert set(rows) == {"gpuload crc=on", "gpuload crc=off"}, log
    for r in rows.values():
        assert r["ok"] and r["best_s"] > 0 and r["stats"]["vocab_bytes"] > 0
    for runs in info["runs"].values():
        assert all(run["verify"]["ok"] and run["verify"]["detail"] == "all values" for run in runs)
    # CRC off reads only the rows the new vocabulary keeps (80% of them, in coalesced runs).
    assert rows["gpuload crc=off"]["stats"]["bytes_read"] <= rows["gpuload crc=on"]["stats"]["bytes_read"]
    assert (out / info["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json_path.with_suffix(".md").exists()
