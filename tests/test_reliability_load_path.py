"""Review fixes of the merged load path (scheduler, ring, distributed slots, API planning).

Each test fails on the code before its fix: fake backends (HostBackend subclasses that
are asynchronous, fail, or record what happens) drive ``scheduler.execute`` and the
collective ``_execute`` through the exact interleaving of the defect; the CUDA simulator
(``sim``) stands in for the pinned pool.
"""

from __future__ import annotations

import sys
import threading
import time
import types

import numpy as np
import pytest

import gpuload
from gpuload import scheduler as sched_mod
from gpuload.api import Request, Spec, plan_load
from gpuload.backend.host import HostBackend
from gpuload.config import Config
from gpuload.errors import ChecksumError, DeviceError
from gpuload.io.ring import Ring
from gpuload.scheduler import execute

TABLE = np.arange(256 * 16, dtype=np.float32).reshape(256, 16)  # 16 KiB: 4 chunks
CFG = Config(chunk_bytes=4096, ring_bytes=4 * 4096, reader_threads=1, progress=False)


class Injected(RuntimeError):
    pass


def _ckpt(tmp_path, arrays=None):
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, arrays if arrays is not None else {"t": TABLE})
    return prefix


def _two_gpu_plan(prefix):
    """Each chunk has copies for two devices (no GPU is probed: the backends are fakes)."""
    return plan_load(
        prefix,
        {
            "a": Request("t", columns=(0, 8), target=Spec(device="gpu:0")),
            "b": Request("t", columns=(8, 16), target=Spec(device="gpu:1")),
        },
        config=CFG,
    )


# ---- item 1: an error added while the load is being stopped is not what surfaces


def test_an_echo_error_added_during_cleanup_does_not_replace_the_failure(tmp_path, monkeypatch):
    prefix = _ckpt(tmp_path, {"t": np.arange(4096 * 4, dtype=np.float32)})
    cfg = Config(chunk_bytes=4096, ring_bytes=4096 * 8, reader_threads=1, progress=False)
    plan = plan_load(prefix, {"t": ("t", Spec(dtype="float64"))}, config=cfg, allow_cast=True)
    stopping = threading.Event()
    real_abort = Ring.abort

    def abort(self):  # the first step of _stop: the failure has been caught by then
        stopping.set()
        real_abort(self)

    monkeypatch.setattr(Ring, "abort", abort)

    class Tok:
        def wait(self):
            stopping.wait(5)
            raise DeviceError("ECHO: the sticky error, seen while stopping", device="x")

    class Fake(HostBackend):
        synchronous = False
        n = 0

        def submit(self, slot, chunk, copies, dests, dtypes):
            Fake.n += 1
            if Fake.n == 2:
                raise DeviceError("ORIGINAL: launch failed", device="x")
            return Tok()

    with pytest.raises(DeviceError) as info:
        execute(plan, {plan.destinations[0].device: Fake()}, config=cfg)
    assert str(info.value).startswith("ORIGINAL"), repr(info.value)


# ---- item 2: every device's token is waited for before the slot is free again


def test_every_device_is_waited_for_before_a_slot_is_reused(tmp_path, monkeypatch):
    plan = _two_gpu_plan(_ckpt(tmp_path))
    assert all(len({plan.destinations[c.dest].device for c in ch.copies}) == 2 for ch in plan.chunks)
    failing = plan.destinations[plan.chunks[0].copies[0].dest].device  # its token comes first
    log = []
    lock = threading.Lock()

    class Tok:
        def __init__(self, dev, slot, fail):
            self.dev, self.slot, self.fail = dev, slot, fail

        def wait(self):
            with lock:
                log.append(("wait", self.dev, self.slot))
            if self.fail:
                raise DeviceError(f"{self.dev} failed", device=self.dev)

    class Fake(HostBackend):
        synchronous = False

        def __init__(self, dev):
            super().__init__()
            self.dev, self.n = dev, 0

        def submit(self, slot, chunk, copies, dests, dtypes):
            super().submit(slot, chunk, copies, dests, dtypes)
            self.n += 1
            return Tok(self.dev, slot, fail=self.dev == failing and self.n == 1)

    real_release = Ring.release

    def release(self, index):
        with lock:
            log.append(("release", index))
        real_release(self, index)

    monkeypatch.setattr(Ring, "release", release)
    backends = {d.device: Fake(d.device) for d in plan.destinations}
    with pytest.raises(DeviceError, match=f"{failing} failed"):
        execute(plan, backends, config=CFG)
    fail_at = next(i for i, e in enumerate(log) if e[0] == "wait" and e[1] == failing)
    slot = log[fail_at][2]
    other = next(d for d in backends if d != failing)
    assert ("wait", other, slot) in log[fail_at:], log  # the other GPU still read that slot
    assert ("release", slot) not in log[fail_at:], log  # and it was never lent again


def test_a_retired_slot_is_dropped_not_freed():
    got = {}

    class Pool:
        def alloc_host_slots(self, n, nbytes):
            return [np.zeros(nbytes, np.uint8) for _ in range(n)]

        def free_host_slots(self, slots):
            got["freed"] = [s.ctypes.data for s in slots]

        def forget_host_slots(self, slots):
            got["forgotten"] = [s.ctypes.data for s in slots]

    ring = Ring(Pool(), 3, 64)
    ring.allocate_all()
    addr = [ring.buffer(i).ctypes.data for i in range(3)]
    ring.retire(1)
    ring.close()
    assert got == {"freed": [addr[0], addr[2]], "forgotten": [addr[1]]}


# ---- item 3: an interrupt between pinning the ring and the cleanup block


@pytest.mark.parametrize("where", ["ShardFiles", "_direct_targets", "allocate_all"])
def test_interrupt_while_setting_up_the_stream_leaks_no_pinned_slot(tmp_path, sim, monkeypatch, where):
    from gpuload.backend.cuda import pinned_pool_bytes

    prefix = _ckpt(tmp_path)
    pinned = []
    real_alloc = Ring.allocate_all

    def allocate_all(self):
        real_alloc(self)
        pinned.append(self.nbytes)
        if where == "allocate_all":
            raise KeyboardInterrupt  # right after the slots were pinned

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    # A context of its own: the sim fixture's patches (same monkeypatch) must stay.
    with monkeypatch.context() as m:
        m.setattr(Ring, "allocate_all", allocate_all)
        if where != "allocate_all":
            m.setattr(sched_mod, where, interrupt)
        with pytest.raises(KeyboardInterrupt):
            gpuload.load(prefix, {"t": Request("t", columns=(0, 8), target=Spec(device="gpu:0"))}, config=CFG)
    assert pinned_pool_bytes()["lent"] == 0, (where, pinned)
    out = gpuload.load(prefix, {"t": Request("t", columns=(0, 8), target=Spec(device="gpu:0"))}, config=CFG)
    np.testing.assert_array_equal(out["t"].get(), TABLE[:, :8])
    assert pinned_pool_bytes()["lent"] == 0


# ---- item 4: a second Ctrl-C while waiting for the devices after a failure


def test_interrupt_while_waiting_for_the_devices_is_retried(tmp_path, monkeypatch):
    plan = plan_load(_ckpt(tmp_path), {"t": Request("t", columns=(0, 8))}, config=CFG)
    syncs = []

    class Fake(HostBackend):
        synchronous = False

        def submit(self, slot, chunk, copies, dests, dtypes):
            raise Injected("submit failed")

        def synchronize(self):
            syncs.append(1)
            if len(syncs) == 1:
                raise KeyboardInterrupt

    closes = []
    real_close = Ring.close

    def close(self, reuse=True):
        closes.append(reuse)
        real_close(self, reuse=reuse)

    monkeypatch.setattr(Ring, "close", close)
    with pytest.raises(Injected) as info:
        execute(plan, {plan.destinations[0].device: Fake()}, config=CFG)
    assert len(syncs) == 2  # the interrupted wait was done again ...
    assert closes == [True]  # ... so the ring is reusable: no device failed
    assert any(isinstance(e, KeyboardInterrupt) for e in info.value.cleanup_errors)


# ---- item 5: the collective load frees its slots only once no copy reads them


@pytest.mark.parametrize("sync_fails", [False, True])
def test_collective_failure_waits_for_copies_before_freeing_slots(tmp_path, sync_fails):
    pytest.importorskip("mpi4py")  # gpuload.distributed.load imports it
    from gpuload.distributed.assign import collective_plan
    from gpuload.distributed.load import CollectiveStats, _execute
    from gpuload.format.bundle import Bundle
    from gpuload.format.slices import Box
    from gpuload.plan import Request as PlanRequest
    from gpuload.plan import build_plan

    prefix = _ckpt(tmp_path)
    req = PlanRequest("a", "t", Box((0, 0), (256, 8)), np.dtype(np.float32), "/device:GPU:0")
    plan = build_plan(Bundle.open(prefix), [req], chunk_bytes=4096, verify_crc=True)
    cplan = collective_plan(plan, [0], 1)
    log = []

    class Tok:
        def __init__(self, backend):
            self.backend = backend

        def done(self):
            return self.backend.synced  # the copy out of the slot is still running

        def wait(self):
            pass

    class Fake(HostBackend):
        synchronous = False
        synced = False
        n = 0

        def submit(self, slot, chunk, copies, dests, dtypes):
            self.n += 1
            if self.n == 2:
                raise Injected("second submit failed")
            return Tok(self)

        def synchronize(self):
            log.append("sync")
            if sync_fails:
                raise DeviceError("sticky", device="/device:GPU:0")
            self.synced = True

        def free_host_slots(self, slots):
            log.append("free")

        def forget_host_slots(self, slots):
            log.append("forget")

    fake = Fake()
    dests = [fake.empty(d.shape, d.dtype) for d in plan.destinations]
    co = types.SimpleNamespace(rank=0, size=1, progressed=lambda: None, idle=lambda what: time.sleep(0.001))
    with pytest.raises(Injected):
        _execute(co, CFG, cplan, dests, {"/device:GPU:0": fake}, CollectiveStats(), None)
    if sync_fails:
        assert log == ["sync", "forget"], log  # never lent again
    else:
        assert log == ["sync", "free"], log


# ---- item 6: the caller's own exception keeps its frames


def test_a_failed_load_keeps_the_callers_exception_frames(tmp_path):
    prefix = _ckpt(tmp_path)
    with open(prefix + ".data-00000-of-00001", "r+b") as f:
        f.seek(100)
        byte = f.read(1)[0]
        f.seek(100)
        f.write(bytes([byte ^ 0xFF]))

    def users_code():
        precious = "the caller's state"  # noqa: F841
        raise LookupError("the caller's own error")

    try:
        users_code()
    except LookupError as user_error:
        with pytest.raises(ChecksumError) as info:
            gpuload.load(prefix, {"t": Request("t", columns=(0, 8))}, config=CFG)
        assert info.value.__context__ is user_error
        tb = user_error.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        assert tb.tb_frame.f_code.co_name == "users_code"
        assert tb.tb_frame.f_locals.get("precious") == "the caller's state"


# ---- item 7: a session that fails to open closes the ones opened before it


def test_a_session_that_fails_to_open_closes_those_opened_before(tmp_path):
    plan = _two_gpu_plan(_ckpt(tmp_path))
    closed = []

    class Session(HostBackend):
        def close(self):
            closed.append(self)

    class Opens(HostBackend):
        def session(self):
            return Session()

    class Fails(HostBackend):
        def session(self):
            raise DeviceError("cannot open a session", device="/device:GPU:1")

    with pytest.raises(DeviceError, match="cannot open a session"):
        execute(plan, {"/device:GPU:0": Opens(), "/device:GPU:1": Fails()}, config=CFG)
    assert len(closed) == 1


# ---- item 9: ring allocation is pin_s, not read_s


def test_ring_allocation_counts_in_pin_s_not_read_s(tmp_path, monkeypatch):
    prefix = _ckpt(tmp_path)
    real = HostBackend.alloc_host_slots
    n = []

    def slow(self, k, nbytes):
        n.append(k)
        time.sleep(0.5)
        return real(self, k, nbytes)

    monkeypatch.setattr(HostBackend, "alloc_host_slots", slow)
    # Whole chunks staged in the ring (column parts otherwise stream through a small buffer).
    monkeypatch.setattr(HostBackend, "stream", lambda self, *a: None)
    out = gpuload.load(prefix, {"t": Request("t", columns=(0, 8))}, config=CFG)
    np.testing.assert_array_equal(out["t"], TABLE[:, :8])
    stats = out.stats
    assert n and stats.pin_s >= 0.5 * len(n)
    assert stats.read_s < 0.25, stats  # 16 KiB read; the allocation is not in it


# ---- item 10: planning allocates nothing


def test_plan_load_allocates_no_torch_tensor(tmp_path, monkeypatch):
    """A stand-in torch module: ``torch.empty`` must not be called to build a plan."""

    def empty(*a, **k):
        raise AssertionError("plan_load allocated a torch tensor")

    def device_init(self, type, index=None):
        self.type, self.index = type, index

    device = type("device", (), {"__module__": "torch", "__init__": device_init})
    torch = types.ModuleType("torch")
    torch.device, torch.empty, torch.float32 = device, empty, object()
    torch.cuda = types.SimpleNamespace(current_device=lambda: 1)
    monkeypatch.setitem(sys.modules, "torch", torch)
    plan = plan_load(
        _ckpt(tmp_path),
        {
            "g1": ("t", Spec(device=device("cuda", 1))),
            "cur": ("t", Spec(device=device("cuda"))),
            "cpu": ("t", Spec(device=device("cpu"))),
        },
    )
    assert {d.name: d.device for d in plan.destinations} == {
        "g1": "/device:GPU:1",
        "cur": "/device:GPU:1",
        "cpu": "/device:CPU:0",
    }
