"""The NCCL transport (gpuload/distributed/nccl.py) on the CUDA-ordering simulator.

Simulated ranks live in this process (rank r on simulated GPU r % 2), each with its own
transport, CUDA backend, pinned host slots and destinations; the simulator's NCCL
stand-in (tests/cuda_sim.py) matches sends and receives between them and runs every
transfer under its ordering rules (late: at a wait or the second query; early: as soon as
its dependencies allow), reading and writing simulated device memory. The ``sim`` fixture
fails a test on any violation (race, wrong device, slot reused too early, unmatched
transfer). Real NCCL is checked by tests/test_distributed_gpu.py on GPUs; the same code
across processes by that file under GPULOAD_SIMULATE_CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuload.backend.contract import BF16
from gpuload.distributed.assign import collective_plan
from gpuload.format.bundle import Bundle
from gpuload.format.slices import Box
from gpuload.format.writer import save_checkpoint
from gpuload.plan import Remap, Request, build_plan

VALUE = np.arange(96 * 8, dtype=np.float32).reshape(96, 8)
ROWS = np.array([5, -1, 90, 0, 17, -1, 41, 41, 3, 77] * 4, dtype=np.int64)  # 40 positions, old row or keep


def _requests(nranks):
    # Rank 0: column halves (box-copy kernels); rank 1: row thirds (device-to-device copies)
    # and a remapped part (gather kernel over a prefill); rank 2 (when there): the whole
    # tensor as bfloat16 (cast kernels).
    reqs, owners = [], []
    for c in (0, 4):
        reqs.append(Request(f"c{c}", "t", Box((0, c), (96, 4)), np.dtype(np.float32), "/device:GPU:0"))
        owners.append(0)
    for r in (0, 32, 64):
        reqs.append(Request(f"r{r}", "t", Box((r, 0), (32, 8)), np.dtype(np.float32), "/device:GPU:1"))
        owners.append(1)
    reqs.append(Request("ws", "t", Box((0, 0), (len(ROWS), 8)), np.dtype(np.float32), "/device:GPU:1", Remap(0, ROWS)))
    owners.append(1)
    if nranks == 3:
        reqs.append(Request("bf", "t", Box((0, 0), (96, 8)), BF16, "/device:GPU:0"))
        owners.append(2)
    return reqs, owners


def _want(d):
    if d.remap is None:
        return VALUE[d.box.as_slices()].astype(d.dtype)
    out = np.full(d.shape, -7, np.float32)
    keep = d.remap.rows >= 0
    out[keep] = VALUE[d.remap.rows[keep]]
    return out


class _Co:
    """The MPI coordinator of an in-process rank: only the unique id exchange is used."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.shared = rank, size, shared

    def allgather(self, obj, what):
        if self.rank == 0:
            self.shared["uid"] = obj
        return [self.shared["uid"]] * self.size


def _run_load(sim, tmp_path, nranks, receivers_first=False):
    from gpuload.backend.cuda import CudaBackend
    from gpuload.distributed.nccl import NcclTransport

    prefix = str(tmp_path / "ck")
    save_checkpoint(prefix, {"t": VALUE})
    reqs, owners = _requests(nranks)
    plan = build_plan(Bundle.open(prefix), reqs, chunk_bytes=1024, verify_crc=True, allow_cast=True)
    cplan = collective_plan(plan, owners, nranks)
    assert any(t.receivers for t in cplan.transfers)
    with open(prefix + ".data-00000-of-00001", "rb") as f:
        raw = f.read()
    dtypes = [(d.src_dtype, d.dtype) for d in plan.destinations]
    shared = {}
    trs = [NcclTransport(_Co(r, nranks, shared), r % 2) for r in range(nranks)]
    backends = [CudaBackend(r % 2) for r in range(nranks)]
    dests = [[None] * len(plan.destinations) for _ in range(nranks)]
    for i, d in enumerate(plan.destinations):
        b = backends[owners[i]]
        if d.remap is None:
            dests[owners[i]][i] = b.empty(d.shape, d.dtype)
        else:
            with sim.cuda.Device(b.index):
                dests[owners[i]][i] = b.adopt(sim.full(d.shape, -7, np.float32))
    nslots = 2
    slots = [b.alloc_host_slots(nslots, max(c.size for c in plan.chunks)) for b in backends]
    pending = {}  # (rank, slot) -> tokens of its last use
    for k, t in enumerate(cplan.transfers):
        chunk = plan.chunks[t.chunk]
        slot = k % nslots
        ranks = [t.reader, *t.receivers]
        if receivers_first:  # NCCL matches in enqueue order, whoever enqueues first
            ranks = ranks[1:] + ranks[:1]
        for r in ranks:
            for tok in pending.pop((r, slot), ()):
                tok.wait()  # as the load does before reusing a slot
        buf = slots[t.reader][slot]  # the reader's pinned ring slot
        buf[: chunk.size] = np.frombuffer(raw[chunk.offset : chunk.offset + chunk.size], np.uint8)
        view = memoryview(buf)[: chunk.size]
        for r in ranks:
            mine = [c for c in chunk.copies if owners[c.dest] == r]
            pending[(r, slot)] = trs[r].post(
                t, r, slot, view if r == t.reader else None, mine, dests[r], dtypes, backends[r]
            )
    for toks in pending.values():
        for tok in toks:
            # Polled as the load polls (late mode: unfinished at the first query, run at the second).
            polls = 0
            while not tok.done():
                polls += 1
                assert polls < 3
    for tr in trs:
        tr.close()
    for b in backends:
        b.synchronize()
    got = {}
    for i, d in enumerate(plan.destinations):
        got[d.name] = backends[owners[i]].to_host(dests[owners[i]][i])
    for b in backends:
        b.free_host_slots(slots[backends.index(b)])
        b.close()
    return plan, got


@pytest.mark.parametrize("mode", ["late", "early"])
@pytest.mark.parametrize("nranks", [2, 3])
def test_chunks_move_and_land_through_the_nccl_transport(sim, tmp_path, nranks, mode):
    sim.set_mode(mode)
    plan, got = _run_load(sim, tmp_path, nranks, receivers_first=(nranks == 3))
    for d in plan.destinations:
        want = np.ascontiguousarray(_want(d))
        assert np.array_equal(got[d.name].view(np.uint8), want.view(np.uint8)), d.name
    kinds = {c[0] for c in sim.state.calls}
    assert ("nccl broadcast" in kinds) == (nranks == 3)  # 3 ranks needing a chunk: one broadcast
    assert nranks == 3 or {"nccl send", "nccl recv"} <= kinds
    assert "launch" in kinds and "gather" in kinds  # column parts, the remapped part
    assert any(c[0] == "memcpy" and c[4] == sim.memcpyDeviceToDevice for c in sim.state.calls)  # row parts
    assert {d.name for d in plan.destinations if d.remap is not None} == {"ws"}


@pytest.mark.parametrize("mode", ["late", "early"])
def test_simulator_catches_copies_that_do_not_wait_for_the_transfer(sim, tmp_path, monkeypatch, mode):
    """Planted bug: the backend's copies out of device staging ignore the NCCL transfer's
    event. The simulator must see the kernels and copies race with the receive."""
    from gpuload.backend import cuda

    sim.set_mode(mode)
    real = cuda.CudaLoad.submit_device

    def no_wait(self, slot_index, source, nbytes, copies, dests, dtypes, ready):
        with sim.cuda.Device(self.index):
            unrelated = sim.cuda.Stream(non_blocking=True).record()
        return real(self, slot_index, source, nbytes, copies, dests, dtypes, unrelated)

    monkeypatch.setattr(cuda.CudaLoad, "submit_device", no_wait)
    try:
        _run_load(sim, tmp_path, 2)
    except Exception:  # noqa: BLE001 - wrong values may follow; the violations are the point
        pass
    found = sim.finish_test()
    assert any("race" in v and ("ncclRecv" in v or "ncclSend" in v or "H2D" in v) for v in found), found


def test_unmatched_transfer_and_wrong_device_are_violations(sim):
    """The NCCL stand-in's own checks: a send nobody receives, a buffer of another GPU."""
    nccl = sim.cuda.nccl
    uid = nccl.get_unique_id()
    with sim.cuda.Device(0):
        c0 = nccl.NcclCommunicator(2, uid, 0)
        s0 = sim.cuda.Stream(non_blocking=True)
        buf0 = sim.zeros(16, np.uint8)
    with sim.cuda.Device(1):
        c1 = nccl.NcclCommunicator(2, uid, 1)
        s1 = sim.cuda.Stream(non_blocking=True)
        buf1 = sim.zeros(16, np.uint8)
    with sim.cuda.Device(0):
        c0.send(buf1.data.ptr, 16, nccl.NCCL_UINT8, 1, s0.ptr)  # GPU 1 memory on rank 0 (GPU 0)
        s0.synchronize()
    with sim.cuda.Device(1):
        c1.recv(buf1.data.ptr, 16, nccl.NCCL_UINT8, 0, s1.ptr)
        c1.recv(buf1.data.ptr, 16, nccl.NCCL_UINT8, 0, s1.ptr)  # never sent
    found = sim.finish_test()
    assert any("NCCL send buffer is memory of GPU 1" in v for v in found), found
    assert any("never matched" in v for v in found), found
    del buf0
