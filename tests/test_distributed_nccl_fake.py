"""The NCCL transport's orchestration on a machine without a GPU.

tests/fake_cupy.py stands in for CuPy (host memory as device memory, the host harness runs
the box-copy kernels' C++), and a fake NCCL moves bytes through a mailbox between two
simulated ranks in this process. This checks what the transport does per chunk (H2D of
the reader's slot, broadcast / send / recv into device staging, dense copies and kernel
launches out of staging) against the values saved. Real NCCL and CUDA semantics are
checked by tests/test_distributed_gpu.py on a multi-GPU machine.
"""

from __future__ import annotations

import collections
import ctypes
import sys
import types

import fake_cupy
import numpy as np
import pytest
from kernel_harness import build_harness

from gpuload.device import host, kernels
from gpuload.distributed.assign import collective_plan
from gpuload.format.bundle import Bundle
from gpuload.format.slices import Box
from gpuload.format.writer import save_checkpoint
from gpuload.plan import Request, build_plan


def _fake_nccl():
    box = collections.defaultdict(collections.deque)
    calls = []

    class Comm:
        def __init__(self, n, uid, rank):
            self.n, self.rank = n, rank

        def broadcast(self, send, recv, count, dtype, root, stream):
            calls.append(("broadcast", self.rank, root, count))
            if self.rank == root:
                for r in range(self.n):
                    if r != root:
                        box[(root, r)].append(ctypes.string_at(send, count))
            else:
                ctypes.memmove(recv, box[(root, self.rank)].popleft(), count)

        def send(self, ptr, count, dtype, peer, stream):
            calls.append(("send", self.rank, peer, count))
            box[(self.rank, peer)].append(ctypes.string_at(ptr, count))

        def recv(self, ptr, count, dtype, peer, stream):
            calls.append(("recv", self.rank, peer, count))
            ctypes.memmove(ptr, box[(peer, self.rank)].popleft(), count)

        def abort(self):
            calls.append(("abort", self.rank))

    mod = types.ModuleType("cupy.cuda.nccl")
    mod.available = True
    mod.NCCL_UINT8 = 7
    mod.get_unique_id = lambda: (1, 2, 3)
    mod.NcclCommunicator = Comm
    mod.groupStart = lambda: calls.append(("groupStart",))
    mod.groupEnd = lambda: calls.append(("groupEnd",))
    return mod, calls, box


@pytest.fixture
def fake(monkeypatch, tmp_path_factory):
    harness = build_harness(tmp_path_factory.mktemp("harness"))
    nccl, calls, box = _fake_nccl()
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake_cupy.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    monkeypatch.setattr(fake_cupy.cuda, "nccl", nccl, raising=False)
    monkeypatch.setattr(fake_cupy.cuda.runtime, "memcpyDeviceToDevice", 3, raising=False)
    monkeypatch.setattr(fake_cupy, "asarray", lambda a: np.array(a).view(fake_cupy.ndarray), raising=False)
    monkeypatch.setattr(kernels, "get_kernel", lambda s, d: fake_cupy.harness_kernel(harness, host.cast_code(s, d)))
    return calls, box


@pytest.mark.parametrize("nranks", [2, 3])
def test_chunks_move_and_land_through_the_nccl_transport(fake, tmp_path, nranks):
    calls, box = fake
    from gpuload.distributed.nccl import NcclTransport

    value = np.arange(96 * 8, dtype=np.float32).reshape(96, 8)
    prefix = str(tmp_path / "ck")
    save_checkpoint(prefix, {"t": value})
    # Rank 0: column halves (kernel copies); rank 1: row thirds (dense device-to-device);
    # rank 2 (when there): the whole tensor as bfloat16 (cast kernels).
    reqs, owners = [], []
    for c in (0, 4):
        reqs.append(Request(f"c{c}", "t", Box((0, c), (96, 4)), np.dtype(np.float32), "/device:GPU:0"))
        owners.append(0)
    for r in (0, 32, 64):
        reqs.append(Request(f"r{r}", "t", Box((r, 0), (32, 8)), np.dtype(np.float32), "/device:GPU:0"))
        owners.append(1)
    if nranks == 3:
        reqs.append(Request("bf", "t", Box((0, 0), (96, 8)), host._BF16, "/device:GPU:0"))
        owners.append(2)
    plan = build_plan(Bundle.open(prefix), reqs, chunk_bytes=1024, verify_crc=True, allow_cast=True)
    cplan = collective_plan(plan, owners, nranks)
    with open(prefix + ".data-00000-of-00001", "rb") as f:
        raw = f.read()
    dtypes = [(d.src_dtype, d.dtype) for d in plan.destinations]

    class Co:  # the MPI coordinator of each simulated rank: the unique id exchange only
        def __init__(self, rank):
            self.rank, self.size = rank, nranks

        def allgather(self, obj, what):
            return [(1, 2, 3)] * nranks

    trs = [NcclTransport(Co(r), 0) for r in range(nranks)]
    dests = [[fake_cupy.empty(d.nbytes, np.uint8) if owners[i] == r else None
              for i, d in enumerate(plan.destinations)] for r in range(nranks)]
    for t in cplan.transfers:
        chunk = plan.chunks[t.chunk]
        host_slot = np.frombuffer(raw[chunk.offset:chunk.offset + chunk.size], np.uint8).copy()
        for r in (t.reader, *t.receivers):  # the reader posts first: the mailbox is not a stream
            mine = [c for c in chunk.copies if owners[c.dest] == r]
            tok = trs[r].post(t, r, 0, host_slot if r == t.reader else None, mine, dests[r], dtypes)
            assert tok.done()
    assert not any(box.values())  # every byte sent was received
    for i, d in enumerate(plan.destinations):
        got = np.asarray(dests[owners[i]][i]).view(np.ndarray).view(d.dtype).reshape(d.shape)
        want = value[d.box.as_slices()].astype(d.dtype)
        assert np.array_equal(got.view(np.uint8), np.ascontiguousarray(want).view(np.uint8)), d.name
    kinds = {c[0] for c in calls}
    assert ("broadcast" in kinds) == (nranks == 3)  # 3 ranks needing a chunk: one broadcast
    assert nranks == 3 or {"send", "recv", "groupStart", "groupEnd"} <= kinds
    assert any(c[0] == "launch" for c in fake_cupy.calls)  # column parts went through the kernels
    for tr in trs:
        tr.close()
