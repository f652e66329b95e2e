"""The command line and the small public surface a newcomer meets first.

``gpuload demo`` fails with one line for bad input, labels what it prints, and explains the
staging ring; environment-variable errors name the variable; ``gpuload --version`` and
``gpuload bench --help`` name themselves; a TF2 object-based checkpoint's missing key says
what its keys look like; ``trainable_variables`` is exported; the LICENSE matches the
package metadata.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest
from conftest import REPO

import gpuload
from gpuload.cli import main
from gpuload.config import Config
from gpuload.errors import AssignmentMapError


def _gpuload(*args, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPULOAD_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gpuload", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("gpuload demo: error: "), lines
    for n in needles:
        assert n in lines[0], lines[0]


def test_demo_on_a_missing_gpu_is_one_line(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides every GPU, so this holds on GPU machines too.
    proc = _gpuload(
        "demo", "--device", "gpu", "--rows", "100", "--dir", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""}
    )
    _one_line_error(proc, "no CUDA device is usable", "pip install -e '.[cuda13]'")
    assert not list(tmp_path.iterdir()), "nothing is written before the device is known to work"


@pytest.mark.parametrize(("flag", "value"), [("--rows", "0"), ("--cols", "-1"), ("--parts", "0")])
def test_demo_rejects_empty_sizes(flag, value, tmp_path):
    _one_line_error(_gpuload("demo", flag, value, "--dir", str(tmp_path)), f"{flag} must be at least 1, got {value}")


def test_demo_names_a_bad_environment_variable():
    _one_line_error(
        _gpuload("demo", "--rows", "10", env={"GPULOAD_RING_BYTES": "lots"}), "GPULOAD_RING_BYTES: not a size: 'lots'"
    )


def test_demo_output_is_labelled(tmp_path, capsys):
    assert (
        main(["demo", "--rows", "4096", "--cols", "8", "--parts", "4", "--dir", str(tmp_path), "--device", "cpu"]) == 0
    )
    out = capsys.readouterr().out
    assert "load time: 1st run " in out and ", 2nd run " in out and "GB/s, best run" in out
    # Row parts on the host are read in place: the ring allocates nothing, and says why.
    assert "staging ring: nothing staged: every chunk was read straight into its part" in out
    assert "limit ring_bytes = 256 MiB" in out
    assert "staging ring 0 MiB" not in out


def test_demo_reports_ring_memory_when_it_stages(tmp_path, capsys, monkeypatch):
    # On a GPU every chunk is staged; the host load above stages nothing. Fake the stats
    # of a staged load to check the other wording.
    import gpuload.loader as loader

    real = loader.last_stats

    def staged():
        stats = real()
        stats[0].ring_bytes = 96 << 20
        return stats

    monkeypatch.setattr(loader, "last_stats", staged)
    with gpuload.config.set(ring_bytes="512MiB"):
        assert (
            main(["demo", "--rows", "512", "--cols", "8", "--parts", "2", "--dir", str(tmp_path), "--device", "cpu"])
            == 0
        )
    out = capsys.readouterr().out
    assert "staging ring: 96 MiB used (limit ring_bytes = 512 MiB)" in out


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GPULOAD_RING_BYTES": "lots"}, "GPULOAD_RING_BYTES: not a size: 'lots'"),
        ({"GPULOAD_VERIFY_CRC": "maybe"}, "GPULOAD_VERIFY_CRC: not a boolean: 'maybe'"),
        ({"GPULOAD_READER_THREADS": "0"}, "GPULOAD_READER_THREADS: reader_threads must be >= 1"),
        ({"GPULOAD_CHUNK_BYTES": "128MiB"}, "GPULOAD_CHUNK_BYTES: ring_bytes"),
        ({"GPULOAD_CHUNK_BYTES": "1000", "GPULOAD_GAP_BYTES": "1"}, "GPULOAD_CHUNK_BYTES: chunk_bytes must be"),
    ],
)
def test_environment_errors_name_the_variable(env, message):
    with pytest.raises(ValueError) as info:
        Config.from_env(env)
    assert str(info.value).startswith(message), str(info.value)


def test_version_is_one_value():
    proc = _gpuload("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"gpuload {gpuload.__version__}"
    assert importlib.metadata.version("gpuload") == gpuload.__version__


def test_bench_help_names_the_command():
    proc = _gpuload("bench", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: gpuload bench"), proc.stdout[:200]


def test_object_based_checkpoint_hint(golden):
    ckpt = golden / "checkpoints" / "keras_tf2"
    gpuload.reset_default_graph()
    try:
        gpuload.get_variable("dense/kernel", shape=[3], device="cpu")
        with pytest.raises(
            AssignmentMapError,
            match=r"TF2 object-based checkpoint: its variables are stored "
            r"under object paths ending in '/\.ATTRIBUTES/VARIABLE_VALUE'",
        ):
            gpuload.init_from_checkpoint(str(ckpt), {"dense/kernel": "dense/kernel"})
        with pytest.raises(AssignmentMapError, match=r"did you mean 'save_counter/\.ATTRIBUTES/VARIABLE_VALUE'"):
            gpuload.init_from_checkpoint(str(ckpt), {"save_counter": "dense/kernel"})
    finally:
        gpuload.reset_default_graph()


def test_no_object_hint_for_a_tf1_checkpoint(golden):
    gpuload.reset_default_graph()
    try:
        gpuload.get_variable("x", shape=[20, 2], device="cpu")
        with pytest.raises(AssignmentMapError) as info:
            gpuload.init_from_checkpoint(str(golden / "checkpoints" / "seed_example"), {"nope": "x"})
        assert "object-based" not in str(info.value)
    finally:
        gpuload.reset_default_graph()


def test_trainable_variables_is_exported():
    gpuload.reset_default_graph()
    try:
        a = gpuload.get_variable("a", shape=[2], device="cpu")
        gpuload.get_variable("b", shape=[2], device="cpu", trainable=False)
        assert "trainable_variables" in gpuload.__all__
        assert gpuload.trainable_variables() == [a]
        assert len(gpuload.global_variables()) == 2
    finally:
        gpuload.reset_default_graph()


def test_license_matches_metadata():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    meta = importlib.metadata.metadata("gpuload")
    assert "Apache-2.0" in (meta.get("License") or meta.get("License-Expression") or "")
