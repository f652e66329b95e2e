"""Shared helpers for the format-layer tests (``test_format_*.py``).

The golden checkpoints live in ``tests/data/golden`` (or in ``$GPULOAD_GOLDEN_DIR``).
Without them the tests fail, unless ``GPULOAD_ALLOW_NO_GOLDEN=1`` turns the failure into a
skip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from gpuload.format import proto
from gpuload.format.sstable import TableWriter, read_table_file

GOLDEN_NAMES = ["seed_example", "partitioned_save", "dtypes", "sharded", "multi_step", "keras_tf2"]


def golden_root() -> Path:
    from conftest import golden_dir  # one place decides where the golden data lives

    return golden_dir()


def golden_checkpoints() -> Path:
    """The golden ``checkpoints/`` directory; fails (or skips, if allowed) when missing."""
    path = golden_root() / "checkpoints"
    if not all((path / n / "manifest.json").is_file() for n in GOLDEN_NAMES):
        if os.environ.get("GPULOAD_ALLOW_NO_GOLDEN") == "1":
            pytest.skip(f"golden checkpoints not found at {path} (GPULOAD_ALLOW_NO_GOLDEN=1)")
        pytest.fail(
            f"golden checkpoints not found at {path} (they ship in tests/data/golden; "
            f"GPULOAD_GOLDEN_DIR overrides the location)",
            pytrace=False,
        )
    return path


def copy_golden(name: str, dest: Path) -> Path:
    """A writable copy of golden checkpoint directory ``name`` under ``dest``."""
    target = Path(dest) / name
    shutil.copytree(golden_checkpoints() / name, target)
    for p in [target, *target.iterdir()]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return target


def expected(ckpt_dir: Path):
    """``(manifest, {name: array}, {name: object array of bytes})`` of a golden directory."""
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    with np.load(ckpt_dir / "expected.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    strings = {}
    sfile = ckpt_dir / "expected.strings.json"
    if sfile.exists():
        for name, spec in json.loads(sfile.read_text()).items():
            flat = [base64.b64decode(s) for s in spec["base64"]]
            arr = np.empty(len(flat), dtype=object)
            arr[:] = flat
            strings[name] = arr.reshape(spec["shape"])
    return manifest, arrays, strings


def overwrite(path, data: bytes) -> None:
    """Replace a file's contents in place.

    ``Path.write_bytes`` truncates to zero first, which on ext4 (``auto_da_alloc``) forces a
    flush at close: thousands of rewrites would take seconds instead of milliseconds.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(data), 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def bits(a: np.ndarray) -> np.ndarray:
    """Raw bytes of an array as uint8 (bitwise comparison incl. NaN payloads, -0.0)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def rewrite_index(prefix, edit) -> None:
    """Replace ``prefix.index`` with a *valid* table holding ``edit(rows)``.

    ``rows`` is the list of ``(key, value)`` pairs; block CRCs and the table structure of
    the result are correct, so only entry-level validation can catch the change.
    """
    path = f"{prefix}.index"
    rows = edit(list(read_table_file(path)))
    w = TableWriter()
    for k, v in sorted(rows):
        w.add(k, v)
    os.chmod(path, 0o644)
    overwrite(path, w.finish())


def entry_kwargs(value: bytes) -> dict:
    """A serialized ``BundleEntryProto`` as ``encode_entry`` keyword arguments."""
    e = proto.decode_entry(value)
    return dict(
        dtype=e.dtype,
        shape=e.shape.dims,
        shard_id=e.shard_id,
        offset=e.offset,
        size=e.size,
        crc32c=e.crc32c,
        slices=[list(s.extents) for s in e.slices],
    )


def edit_entry(prefix, name: str, **changes) -> None:
    """Rewrite one entry of ``prefix.index`` with some fields changed (valid table kept)."""
    key = name.encode() if isinstance(name, str) else name

    def edit(rows):
        out = []
        found = False
        for k, v in rows:
            if k == key:
                kw = entry_kwargs(v)
                kw.update(changes)
                v = proto.encode_entry(**kw)
                found = True
            out.append((k, v))
        assert found, f"no entry {name!r}"
        return out

    rewrite_index(prefix, edit)


def block_ranges(index_bytes: bytes) -> list[tuple[int, int]]:
    """``(offset, size)`` of every block (data, metaindex, index) of a well-formed table."""
    from gpuload.format.proto import decode_varint
    from gpuload.format.sstable import FOOTER_SIZE, _parse_block

    n = len(index_bytes)
    pos = n - FOOTER_SIZE
    mo, pos = decode_varint(index_bytes, pos, n)
    ms, pos = decode_varint(index_bytes, pos, n)
    io, pos = decode_varint(index_bytes, pos, n)
    isz, pos = decode_varint(index_bytes, pos, n)
    out = [(mo, ms), (io, isz)]
    for _, handle, _ in _parse_block(index_bytes[io : io + isz], None, io, "index"):
        bo, p = decode_varint(handle, 0, len(handle))
        bs, _ = decode_varint(handle, p, len(handle))
        out.append((bo, bs))
    return out


def fix_block_crcs(data: bytearray, ranges) -> None:
    """Recompute the trailer CRC of each block in ``ranges`` (after mutating its bytes)."""
    from gpuload.format.crc import crc32c, mask

    for off, size in ranges:
        if off + size + 5 <= len(data):
            data[off + size + 1 : off + size + 5] = mask(crc32c(bytes(data[off : off + size + 1]))).to_bytes(
                4, "little"
            )
