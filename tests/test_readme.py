"""The README stays true: its "Use" example runs as written, its commands are what CI runs,
and it points to nothing outside the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def test_use_example_runs_as_written(tmp_path):
    (code,) = _blocks(_section("Use"), "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULOAD_")}
    env["TMPDIR"] = str(tmp_path)  # the example's mkdtemp() lands under pytest's tmp dir
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == [f"new_scope/emb/part_{i}:0" for i in range(4)], proc.stdout
    assert "_get_variable_list" not in code  # the public way to the parts


def _run_block(code, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULOAD_")}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_load_api_numpy_example_runs_as_written(tmp_path):
    blocks = _blocks(_section("PyTorch, JAX and NumPy: `gpuload.load`"), "python")
    (code,) = [b for b in blocks if "import torch" not in b]
    out = _run_block(code, tmp_path)
    assert "Plan for" in out and "dest 0: top <- 'emb'" in out, out


def test_load_api_torch_example_runs_as_written(tmp_path):
    pytest.importorskip("torch")
    blocks = _blocks(_section("PyTorch, JAX and NumPy: `gpuload.load`"), "python")
    (code,) = [b for b in blocks if "import torch" in b]
    out = _run_block(code, tmp_path)
    assert out.strip() == "64000 bytes read; 4 destinations", out


def test_readme_commands_are_what_ci_runs():
    # .ci/run has each command on a line of its own, pip quieted (-q).
    ci = [line.replace(" -q ", " ") for line in (REPO / ".ci" / "run").read_text().splitlines()]
    (test_cmd,) = [b for b in _blocks(_section("Two commands"), "bash") if "pytest" in b]
    for part in test_cmd.strip().split(" && "):
        assert part in ci, f"README's {part!r} is not a line of .ci/run"


def test_readme_points_inside_the_repository():
    assert not re.search(r"issue #?\d", README, re.I)
    assert "../" not in README and "/work/" not in README
    for path in re.findall(r"`((?:bench|tests|gpuload|kernels|\.ci)/[\w./-]*)`", README):
        if "*" not in path and "{" not in path:
            assert (REPO / path).exists(), f"README names {path}, which is not in the repository"
