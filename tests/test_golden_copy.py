"""The in-repo golden data (tests/data/golden) stays identical to the shared original.

The TensorFlow-written reference data ships with the tests so that a plain clone passes.
Where the original (``../shared/golden``, beside the repository) exists, every file of it
must be in the copy byte for byte, and the copy must hold nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import IN_REPO_GOLDEN, SHARED_GOLDEN


def _files(root: Path) -> dict[str, Path]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = path
    return out


def test_in_repo_golden_data_is_complete():
    files = _files(IN_REPO_GOLDEN)
    for needed in (
        "README.md",
        "cases.json",
        "warm_start_cases.json",
        "checkpoints/dtypes/manifest.json",
        "checkpoints/ws_prev_v/checkpoint",
        "checkpoints/ws_prev_partitioned_v/checkpoint",
    ):
        assert needed in files, f"{IN_REPO_GOLDEN / needed} is missing"
    assert any(k.startswith("vocabs/") for k in files)
    assert any(k.startswith("warm_start_cases/") for k in files)
    assert any(k.startswith("cases/") for k in files)


def test_in_repo_golden_data_equals_shared_original():
    if not SHARED_GOLDEN.is_dir():
        pytest.skip(
            f"no shared original beside the repository ({SHARED_GOLDEN} does not exist): "
            f"nothing to compare the in-repo copy with"
        )
    shared, ours = _files(SHARED_GOLDEN), _files(IN_REPO_GOLDEN)
    assert sorted(set(shared) - set(ours)) == [], "files of the shared original missing from tests/data/golden"
    assert sorted(set(ours) - set(shared)) == [], "files in tests/data/golden that the shared original lacks"
    differ = [k for k in sorted(shared) if shared[k].read_bytes() != ours[k].read_bytes()]
    assert differ == [], f"tests/data/golden differs from {SHARED_GOLDEN} in these files"
