"""The benchmark runs end to end at a tiny size (a smoke test runs it in CI).

No timing is asserted: only that every layout was measured, every load was checked
correct against the synthetic source, and the JSON and the PNG were written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {"rows:1", "rows:8", "cols:4"}


@pytest.mark.slow
def test_bench_quick_runs_and_checks_every_load(tmp_path):
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "bench_load.py"),
        "--quick",
        "--layouts",
        ",".join(sorted(LAYOUTS)),
        "--devices",
        "cpu",
        "--crc",
        "on",
        "--peers",
        "none",
        "--dir",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--timeout",
        "50",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    log = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, log

    (json_path,) = out.glob("*.json")
    info = json.loads(json_path.read_text())
    for key in ("date", "machine", "versions", "gpus", "config", "limits", "measurements", "summary"):
        assert key in info, key
    assert info["limits"].get("readinto_1t", {}).get("best"), info["limits"]
    # The read+CRC limits are measured in the same run, and the CRC-on rows are judged against them.
    for key in ("read_crc_dest_2t", "read_crc_dest_2t_huge"):
        assert info["limits"].get(key, {}).get("best"), (key, info["limits"], info.get("limit_errors"))
    rows = {(g["what"], g["layout"], g["crc"]): g for g in info["summary"]}
    target = rows[("gpuload", "cols:4", True)]["targets"]["read+crc>=0.9x"]
    assert target["limit"] == "read_crc_dest_2t" and target["value"] > 0
    assert "column-part target: gpuload cols:4 crc on" in proc.stdout

    runs = [m for m in info["measurements"] if m["what"] == "gpuload"]
    assert {m["layout"] for m in runs} == LAYOUTS, log
    for m in runs:
        assert m["ok"], m
        assert m["verify"]["ok"], m["verify"]
        assert m["gbps"] > 0 and m["stats"]["bytes_read"] > 0
        assert m["rss_peak_delta"] >= 0
    expected_parts = {"rows:1": 1, "rows:8": 8, "cols:4": 4}
    assert all(m["verify"]["parts"] == expected_parts[m["layout"]] for m in runs)

    png = out / info["plot"]["path"]
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_quick_against_a_baseline_checkout(tmp_path):
    """--baseline-checkout runs the other checkout's gpuload on every gpuload row, in the same run."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(REPO / "gpuload", base / "gpuload", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "results"
    cmd = [
        sys.executable, str(REPO / "bench" / "bench_load.py"), "--quick", "--layouts", "rows:1,cols:4",
        "--devices", "cpu", "--crc", "on", "--peers", "none", "--dir", str(tmp_path / "data"), "--out", str(out),
        "--timeout", "50", "--baseline-checkout", str(base), "--no-plot",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    (json_path,) = out.glob("*.json")
    info = json.loads(json_path.read_text())
    label = info["config"]["baseline"]["label"]
    files = {(m["what"], m["layout"]): Path(m["gpuload_file"]) for m in info["measurements"]}
    assert set(files) == {(w, lay) for w in ("gpuload", label) for lay in ("rows:1", "cols:4")}
    for (what, _lay), path in files.items():  # each row ran the gpuload it names
        assert path.is_relative_to(base) == (what == label), (what, path)
    assert all(g["ratio_base"] > 0 for g in info["summary"] if g["what"] == "gpuload")
    assert f"vs {label}" in proc.stdout
