"""The README's first command: ``gpuload demo`` writes, loads and checks a checkpoint."""

import subprocess
import sys

from gpuload.cli import main


def test_demo_small(tmp_path, capsys):
    assert main(["demo", "--rows", "5000", "--cols", "8", "--parts", "3", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "loaded 3 parts of new_scope/embedding" in out
    assert "bit for bit" in out
    assert (tmp_path / "checkpoint").exists()


def test_demo_as_module(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpuload",
            "demo",
            "--rows",
            "1000",
            "--cols",
            "4",
            "--parts",
            "2",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "bit for bit" in out.stdout
