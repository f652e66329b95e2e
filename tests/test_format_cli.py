"""`gpuload inspect`: the table, --tensor, --verify exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from format_helpers import copy_golden, overwrite

from gpuload.cli import main
from gpuload.format import Bundle


def test_inspect_table(golden_ckpts, capsys):
    assert main(["inspect", str(golden_ckpts / "partitioned_save")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split() == ["name", "dtype", "shape", "bytes", "shard", "slices"]
    row = next(line for line in lines if line.startswith("emb/uneven"))
    assert row.split() == ["emb/uneven", "float32", "[103,", "8]", "3296", "0", "4"]
    assert "4 tensors, 70176 bytes" in lines[-1] and "1 data file" in lines[-1]
    assert "\x00" not in out  # slice keys hidden


def test_inspect_sharded_and_strings(golden_ckpts, capsys):
    assert main(["inspect", str(golden_ckpts / "sharded")]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:1] == ["tower_2/w"] and line.split()[-2] == "2" for line in out.splitlines())
    assert "in 3 data file(s)" in out
    assert main(["inspect", str(golden_ckpts / "dtypes"), "--tensor", "string_t", "--tensor", "int8_t"]) == 0
    out = capsys.readouterr().out
    assert "string_t: string [3, 4]" in out and "'grüße'" in out and r"b'start\x00bytes'" in out
    assert "...(300 bytes)" in out and "int8_t: int8 [3, 4]" in out


def test_inspect_unknown_tensor_and_missing_checkpoint(golden_ckpts, tmp_path, capsys):
    assert main(["inspect", str(golden_ckpts / "dtypes"), "--tensor", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_verify_ok_and_corrupt(golden_ckpts, tmp_path, capsys):
    d = copy_golden("partitioned_save", tmp_path)
    assert main(["inspect", str(d), "--verify", "--no-progress"]) == 0
    assert "verify: all 14 stored entries ok" in capsys.readouterr().out
    b = Bundle.open(d)
    shard = b.shard_path(0)
    data = bytearray(Path(shard).read_bytes())
    bad = [b.pieces("emb/table")[1], b.pieces("deep/cube")[0]]
    for p in bad:
        data[p.entry.offset + 3] ^= 0xFF
    overwrite(shard, data)
    assert main(["inspect", str(d), "--verify"]) == 1
    captured = capsys.readouterr()
    corrupt = [line for line in captured.out.splitlines() if line.startswith("CORRUPT")]
    assert len(corrupt) == 2  # every corrupt entry is reported, not just the first
    assert "emb/table slice [250:500, 0:16]" in corrupt[1] or "emb/table slice [250:500, 0:16]" in corrupt[0]
    assert any("deep/cube slice [0:4, 0:5, 0:6]" in c for c in corrupt)
    assert "2 of 14 stored entries are corrupt" in captured.out


def test_verify_corrupt_index_exits_nonzero(golden_ckpts, tmp_path, capsys):
    d = copy_golden("seed_example", tmp_path)
    index = d / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    data[5] ^= 1
    overwrite(index, data)
    assert main(["inspect", str(d), "--verify"]) == 2
    assert "block checksum mismatch" in capsys.readouterr().err


def test_python_dash_m(golden_ckpts):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "gpuload", "inspect", str(golden_ckpts / "seed_example")],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "old_scope_2/var3" in proc.stdout and "3 tensors" in proc.stdout


def test_usage_errors():
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_a_data_file_gone_after_opening_is_reported_per_tensor(golden_ckpts, tmp_path, capsys, monkeypatch):
    """--tensor and --verify report the tensors of a data file deleted after opening, and go on."""
    d = copy_golden("sharded", tmp_path)
    with Bundle.open(d) as b:
        gone = b.shard_path(2)
        lost = [e for e in b.data_entries() if e.shard_id == 2]
        kept = next(n for n in b.names() if b.entry(n).shard_id != 2 and not b.entry(n).slices)
        lost_name = b.tensor_of(lost[0])
        n_entries = len(b.data_entries())
    opened = Bundle.open.__func__

    def open_then_lose(cls, *args, **kwargs):
        bundle = opened(cls, *args, **kwargs)
        if os.path.exists(gone):
            os.rename(gone, gone + ".moved")
        return bundle

    monkeypatch.setattr(Bundle, "open", classmethod(open_then_lose))
    assert lost and not lost[0].key.startswith("\x00")
    assert main(["inspect", str(d), "--tensor", lost_name, "--tensor", kept]) == 1
    captured = capsys.readouterr()
    assert f"{lost_name}: error: data file {gone!r} (shard 2 of 3), which holds tensor {lost_name!r}, is missing" in (
        captured.err
    )
    assert f"{kept}: " in captured.out  # printed after the error: the command went on
    os.rename(gone + ".moved", gone)
    assert main(["inspect", str(d), "--verify", "--no-progress"]) == 1
    out = capsys.readouterr().out
    unreadable = [line for line in out.splitlines() if line.startswith("UNREADABLE")]
    assert len(unreadable) == len(lost) and all("(shard 2 of 3)" in line for line in unreadable)
    assert f"verify: {len(lost)} of {n_entries} stored entries are corrupt or unreadable" in out
