"""The staging ring and the shard reader, without a load around them."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpuload.errors import ShardReadError
from gpuload.io.reader import ShardFiles
from gpuload.io.ring import Ring, RingClosed


class CountingBackend:
    def __init__(self):
        self.allocated = 0
        self.freed = []

    def alloc_host_slots(self, n, nbytes):
        self.allocated += n
        return [np.zeros(nbytes, np.uint8) for _ in range(n)]

    def free_host_slots(self, slots):
        self.freed.extend(slots)


def test_ring_allocates_only_what_is_in_flight_and_reuses_the_warm_slot():
    backend = CountingBackend()
    ring = Ring(backend, nslots=8, slot_bytes=64)
    for _ in range(10):
        i = ring.acquire()
        ring.buffer(i)[:] = 1
        ring.release(i)
    assert backend.allocated == 1, "a slot reused at once is the same slot"
    a, b = ring.acquire(), ring.acquire()
    ring.buffer(a), ring.buffer(b)
    assert backend.allocated == 2 and ring.nbytes == 128
    ring.close()
    assert len(backend.freed) == 2


def test_ring_abort_wakes_a_blocked_reader():
    ring = Ring(CountingBackend(), nslots=1, slot_bytes=8)
    ring.acquire()
    raised = []

    def waiter():
        try:
            ring.acquire()
        except RingClosed:
            raised.append(True)

    t = threading.Thread(target=waiter)
    t.start()
    ring.abort()
    t.join(timeout=5)
    assert raised == [True]


def test_shard_reader_scatter_and_short_file(tmp_path):
    path = tmp_path / "f.bin"
    data = np.arange(10000, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    files = ShardFiles([str(path)])
    a, b = np.zeros(100, np.uint8), np.zeros(50, np.uint8)
    files.read_into(0, 1000, [a, b])
    assert (a == data[1000:1100]).all() and (b == data[1100:1150]).all()
    slot = np.zeros(64, np.uint8)
    view = files.read(0, 9990, 10, slot)
    assert bytes(view) == data[9990:].tobytes()
    with pytest.raises(ShardReadError, match="ends at byte 10000"):
        files.read(0, 9990, 20, slot)
    files.close()


def test_shard_reader_o_direct_unaligned_range(tmp_path):
    path = tmp_path / "f.bin"
    data = (np.arange(3 * 4096 + 123) % 251).astype(np.uint8)
    path.write_bytes(data.tobytes())
    import mmap

    files = ShardFiles([str(path)], direct=True)
    slot = np.frombuffer(mmap.mmap(-1, 5 * 4096), np.uint8)  # O_DIRECT needs page-aligned memory
    view = files.read(0, 5000, 7000, slot)
    assert bytes(view) == data[5000:12000].tobytes()
    files.close()


def _module_constants(name):
    """``(module path, line)`` of every module-level assignment to ``name`` under gpuload/."""
    import ast

    from conftest import REPO

    out = []
    for path in sorted((REPO / "gpuload").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                out.append((str(path.relative_to(REPO)), node.lineno))
    return out


def test_the_o_direct_alignment_is_defined_once():
    """The ring's O_DIRECT slack and the reader's alignment are one number (format.files.ALIGN)."""
    from gpuload import scheduler
    from gpuload.format import files

    assert [p for p, _ in _module_constants("ALIGN")] == ["gpuload/format/files.py"]
    assert scheduler.ALIGN is files.ALIGN
    pytest.importorskip("mpi4py")  # gpuload.distributed.load imports it
    from gpuload.distributed import load as dload

    assert dload.ALIGN is files.ALIGN
