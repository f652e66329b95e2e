"""The collective load: every rank's requests planned once, each chunk read by one rank.

:func:`collective_load` is :func:`gpuload.load` over the ranks of an MPI communicator:
requests in the same form, grouped by checkpoint. Every rank runs these steps, in order:

1. Local: each checkpoint's requests are checked and planned with
   :func:`gpuload.plan_load` (a bad request fails here, with the usual error).
2. Exchange (``Iallgather``): each rank's plan requests (key, box, dtype, device and a
   warm start's remap; never the targets), or its error. A failure anywhere now fails
   every rank; the failing rank raises its own error, the others a
   :class:`~gpuload.distributed.comm.CollectiveError` naming it.
3. Plan (pure, identical on every rank): per checkpoint, the global plan of all ranks'
   requests and the reader and receivers of each chunk
   (:func:`gpuload.distributed.assign.collective_plan`).
4. Execute: reader threads read this rank's chunks into ring slots (or straight into a
   destination a chunk exactly fills) and CRC them; the calling thread posts, in chunk
   order, ``Ibcast`` (chunks every rank needs) or ``Isend``/``Irecv`` (the others), and
   applies this rank's box copies to each chunk that arrived, through the usual device
   backends. With every destination on a GPU and one GPU per rank, chunks move GPU to GPU
   with NCCL instead (:mod:`gpuload.distributed.nccl`).
5. Exchange (``Iallgather``): the partial CRCs each reader computed. Every rank combines
   them in order (``crc32c_combine``) and checks every entry: a mismatch raises the same
   :class:`~gpuload.errors.ChecksumError` text on every rank. A rank that failed in step 4
   sent the others an abort message instead (they raise
   :class:`~gpuload.distributed.comm.CollectiveError` with its error text).
6. Only then are the arrays returned: a failed load hands out nothing on any rank.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import sys
import time
from collections.abc import Mapping

import numpy as np
from mpi4py import MPI

from gpuload import config as config_mod
from gpuload.api import LoadResult, Spec, check_remap_target, normalize_requests, open_checkpoints, plan_load
from gpuload.backend.placement import CPU, backend_for
from gpuload.devices import Device
from gpuload.distributed.assign import collective_plan
from gpuload.distributed.comm import ABORT_TAG, CollectiveError, coordinator_for
from gpuload.errors import InvalidArgumentError, TargetError
from gpuload.format import crc as crcmod
from gpuload.format.bundle import Bundle
from gpuload.format.files import ALIGN
from gpuload.format.reader import CheckpointReader
from gpuload.io.reader import ShardFiles
from gpuload.plan import GatherCopy, build_plan
from gpuload.plan import Request as PlanRequest
from gpuload.scheduler import LoadStats, verify_check

__all__ = ["CollectiveStats", "collective_load", "use_nccl_for"]

_PIECE = 4 << 20  # read and CRC in pieces of this size (the CRC runs while the piece is in cache)


@dataclasses.dataclass
class CollectiveStats(LoadStats):
    """:class:`~gpuload.scheduler.LoadStats` of one rank, plus what moved between ranks.

    ``bytes_read`` is what *this* rank read from storage; ``bytes_read_per_rank`` what
    each rank read (from the shared plan), so their sum is the job's storage traffic.
    """

    rank: int = 0
    nranks: int = 1
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_read_per_rank: tuple = ()
    transport: str = "mpi"  # "nccl" when chunks moved GPU to GPU


def collective_load(
    checkpoints, *, config=None, allow_cast: bool | Mapping = False, failed=None
) -> dict[str, LoadResult]:
    """:func:`gpuload.load` over every rank of ``config.communicator``: each needed chunk read once.

    Every rank of the communicator must call this, each with its own requests (an empty
    dict is fine: the rank may still read chunks for others).

    Parameters
    ----------
    checkpoints:
        ``{checkpoint: requests}``: a checkpoint prefix (or an opened
        :class:`~gpuload.format.bundle.Bundle`) and its requests in :func:`gpuload.load`'s
        form. Targets: a :class:`~gpuload.Spec` with a device string (gpuload allocates a
        NumPy or CuPy array), or a NumPy or CuPy array filled in place (a remap request's
        array holds its starting values). Only the plan requests travel to the other ranks
        (a warm start's remap as one int64 per position along its axis), never the arrays.
    config:
        A :class:`gpuload.config.Config` with a ``communicator``; default
        :func:`gpuload.config.get`. ``chunk_bytes``, ``gap_bytes`` and ``verify_crc`` must
        be the same on every rank.
    allow_cast:
        As for :func:`gpuload.load`: one flag for every checkpoint of this rank, or
        ``{checkpoint: bool}`` keyed like ``checkpoints`` (left out: ``False``). Each
        rank's requests are checked against its own flags.
    failed:
        An error this rank hit before the load (e.g. while building its requests); it is
        sent as this rank's answer in the first exchange, so every rank raises at once,
        this one ``failed``.

    Returns
    -------
    dict
        ``{checkpoint prefix: LoadResult}`` for every checkpoint any rank loads, in sorted
        prefix order (the order all ranks process them); each holds this rank's arrays
        (none where it asked for nothing), its :class:`CollectiveStats` and the global plan.

    Raises
    ------
    ChecksumError
        On every rank, with the same text, when any stored CRC32C mismatched.
    CollectiveError
        Another rank failed (its error text is in the message).
    CollectiveTimeoutError
        A rank did not take part within ``cfg.collective_timeout`` seconds.
    TargetError
        A target the collective load does not fill (a torch or JAX one).
    InvalidArgumentError
        A remap request without an array of starting values (as :func:`gpuload.load`), or
        a checkpoint given twice.
    """
    cfg = config or config_mod.get()
    if cfg.communicator is None:
        raise InvalidArgumentError("collective_load needs a communicator: gpuload.config.set(communicator=...)")
    co = coordinator_for(cfg.communicator, cfg.collective_timeout)
    local_error = None
    targets = {}  # prefix -> this rank's targets, in the order of its requests (None: allocate)
    try:
        if failed is not None:
            raise failed  # handled below as a planning error of this rank
        needs = {}
        devices = []
        for bundle, requests, cast in open_checkpoints(checkpoints, allow_cast, caller="collective_load"):
            items = normalize_requests(requests)
            # Planned here too so that a bad request fails on its own rank with the usual error.
            plan = plan_load(bundle, dict(items), config=cfg, allow_cast=cast)
            needs[bundle.prefix] = (
                [PlanRequest(d.name, d.source, d.box, d.dtype, d.device, d.remap) for d in plan.destinations],
                cast,
            )
            targets[bundle.prefix] = [_target(name, r) for name, r in items]
            devices += [d.device for d in plan.destinations]
        payload = {
            "needs": needs,
            "settings": (cfg.chunk_bytes, cfg.gap_bytes, cfg.verify_crc),
            "nccl": _nccl_device(devices) if any(d != CPU for d in devices) or not devices else None,
        }
    except BaseException as exc:  # also KeyboardInterrupt: every error must reach the other ranks
        local_error = exc
        payload = {"error": f"{type(exc).__name__}: {exc}"}
    everyone = co.allgather(payload, "exchanging what each rank needs")
    _raise_if_failed(co, everyone, local_error, "before the load")
    settings = {p["settings"] for p in everyone}
    if len(settings) > 1:
        co.retire("settings differ")
        raise CollectiveError(
            "ranks disagree on (chunk_bytes, gap_bytes, verify_crc): "
            + ", ".join(f"rank {r} {p['settings']}" for r, p in enumerate(everyone))
            + "; set the same gpuload.config on every rank"
        )

    results = {}  # handed out only after every checkpoint loaded
    for prefix in sorted({p for e in everyone for p in e["needs"]}):
        try:
            cplan, arrays, stats, crcs = _load_one(co, cfg, prefix, everyone, targets.get(prefix, []))
            payload = {"crcs": crcs}
        except BaseException as exc:  # also KeyboardInterrupt: the others must not wait for the timeout
            # A CollectiveError came from the others (their abort, or the deadline): nothing to
            # tell. Anything else failed here, even if the communicator is already retired (an
            # abandoned NCCL transfer retires it): tell the others at once.
            if not isinstance(exc, CollectiveError):
                co.abort(f"{type(exc).__name__}: {exc}")
            raise
        # Doubles as the last barrier: a rank that failed sent an abort instead of joining.
        answers = co.allgather(payload, "exchanging the readers' CRCs")
        if cfg.verify_crc:
            _check_crcs(co, cplan.plan, answers)
        mine = [i for i, o in enumerate(cplan.owners) if o == co.rank]
        result = LoadResult((cplan.plan.destinations[i].name, arrays[i]) for i in mine)
        result.stats = stats
        result.plan = cplan.plan
        results[prefix] = result
    return results


def _target(name, request):
    """The array request ``name`` fills in place, ``None`` to allocate one; refuses other kinds.

    A remap request needs its array of starting values, as in :func:`gpuload.load`
    (:func:`~gpuload.api.plan_load`, which planned it, takes a Spec there).
    """
    check_remap_target(name, request)
    target = request.target
    if target is None or (isinstance(target, Spec) and isinstance(target.device, str)):
        return None
    cp = sys.modules.get("cupy")  # a CuPy array exists only once CuPy is imported
    if isinstance(target, np.ndarray) or (cp is not None and isinstance(target, cp.ndarray)):
        return target
    what = f"{type(target).__module__}.{type(target).__name__}"
    if isinstance(target, Spec):
        what = f"a Spec with device {target.device!r}"
    raise TargetError(
        f"request {name!r}: the collective load fills NumPy and CuPy arrays (a Spec with a device "
        f"string, or such an array), got {what}"
    )


def _raise_if_failed(co, answers, local_error, when):
    failed = [(r, a["error"]) for r, a in enumerate(answers) if "error" in a]
    if not failed:
        return
    co.retire("a rank failed")
    if local_error is not None:
        raise local_error
    raise CollectiveError(f"collective load failed {when} on " + "; ".join(f"rank {r}: {e}" for r, e in failed))


def _check_crcs(co, plan, answers) -> None:
    """Combine the readers' partial CRCs in chunk order and check every entry (every rank alike)."""
    parts = {}
    for a in answers:
        parts.update(a["crcs"])
    running = [0] * len(plan.checks)
    seen = [0] * len(plan.checks)
    try:
        for ci, chunk in enumerate(plan.chunks):
            for span, value in zip(chunk.crc_spans, parts.get(ci, ())):
                running[span.check] = (
                    crcmod.crc32c_combine(running[span.check], value, span.size) if seen[span.check] else value
                )
                seen[span.check] += span.size
        for i, check in enumerate(plan.checks):
            if seen[i] != check.size:
                raise CollectiveError(f"internal: {seen[i]} of {check.size} bytes of entry {check.key!r} were CRCed")
            verify_check(plan, check, running[i])
    except Exception:
        co.retire("CRC mismatch")
        raise


def _load_one(co, cfg, prefix, everyone, targets):
    """Plan and execute one checkpoint's share on this rank; return (cplan, arrays, stats, crcs).

    ``targets``: this rank's targets for ``prefix`` (``None``: allocate), in the order of its requests."""
    t0 = time.perf_counter()
    requests, owners = [], []
    allow_cast = False
    for r, e in enumerate(everyone):
        reqs, cast = e["needs"].get(prefix, ([], False))
        requests.extend(reqs)
        owners.extend([r] * len(reqs))
        allow_cast |= cast  # each rank checked its own requests against its own flag (plan_load)
    bundle = Bundle.open(prefix)
    plan = build_plan(
        bundle,
        requests,
        chunk_bytes=cfg.chunk_bytes,
        gap_bytes=cfg.gap_bytes,
        verify_crc=cfg.verify_crc,
        allow_cast=allow_cast,
    )
    cplan = collective_plan(plan, owners, co.size)
    nccl_devs = [e.get("nccl") for e in everyone]
    use_nccl = use_nccl_for(plan, nccl_devs)
    stats = CollectiveStats(
        rank=co.rank,
        nranks=co.size,
        transport="nccl" if use_nccl else "mpi",
        bytes_read_per_rank=tuple(cplan.bytes_read_by(r) for r in range(co.size)),
    )
    mine = [i for i, o in enumerate(owners) if o == co.rank]
    backends = {plan.destinations[i].device: backend_for(plan.destinations[i].device) for i in mine}
    try:
        dests = [None] * len(plan.destinations)
        for j, i in enumerate(mine):
            d = plan.destinations[i]
            # A given array (checked by plan_load) is filled in place; a remap request's
            # holds its starting values, as in the single-process load (scheduler.execute).
            given = targets[j]
            dests[i] = backends[d.device].empty(d.shape, d.dtype) if given is None else backends[d.device].adopt(given)
        reader = None
        try:
            for h in plan.host_loads:  # strings: read by their owner through the reader
                if owners[h.dest] == co.rank:
                    reader = reader or CheckpointReader(prefix, verify_crc=cfg.verify_crc)
                    dests[h.dest][...] = reader.get_slice(h.source, h.box)
        finally:
            if reader is not None:
                reader.close()
        transport = None
        if use_nccl:
            from gpuload.distributed.nccl import NcclTransport

            dev = nccl_devs[co.rank][0]
            transport = co.nccl.get(dev)
            if transport is None:
                transport = co.nccl[dev] = NcclTransport(co, dev)
            gpu = str(Device.gpu(dev))
            backends.setdefault(gpu, backend_for(gpu))
        crcs = _execute(co, cfg, cplan, dests, backends, stats, transport)
        for b in backends.values():
            b.synchronize()
    finally:
        for b in backends.values():
            b.close()
    stats.bytes_written = sum(plan.destinations[i].nbytes for i in mine)
    stats.wall_s = time.perf_counter() - t0
    return cplan, {i: dests[i] for i in mine}, stats, crcs


class _Op:
    __slots__ = ("t", "slot", "view", "reqs", "copied", "tokens")

    def __init__(self, t, slot, view, reqs, copied):
        self.t, self.slot, self.view, self.reqs, self.copied, self.tokens = t, slot, view, reqs, copied, []


def use_nccl_for(plan, nccl_devs) -> bool:
    """Whether a load moves chunks with NCCL: every destination on a GPU, every rank with
    NCCL and a GPU of its own (NCCL refuses two ranks on one GPU).

    ``nccl_devs``: each rank's :func:`gpuload.distributed.nccl.nccl_device` answer. The
    decision uses only exchanged data, so every rank takes the same one.
    """
    return (
        bool(plan.destinations)
        and all(d is not None for d in nccl_devs)
        and len({d[1] for d in nccl_devs}) == len(nccl_devs)
        and all(Device.parse(d.device).is_gpu for d in plan.destinations)
    )


def _nccl_device(devices):
    from gpuload.distributed.nccl import nccl_device  # imports CuPy only when asked

    return nccl_device(devices)


def _execute(co, cfg, cplan, dests, backends, stats, transport=None):
    """Move this rank's chunks: read its own, send and receive the rest; return its CRCs."""
    plan, rank = cplan.plan, co.rank
    involved = [t for t in cplan.transfers if t.reader == rank or rank in t.receivers]
    crcs: dict[int, list[int]] = {}
    if not involved:
        return crcs
    dtypes = [(d.src_dtype, d.dtype) for d in plan.destinations]
    by_device = []
    for t in involved:
        groups = collections.defaultdict(list)
        for cp in plan.chunks[t.chunk].copies:
            if cplan.owners[cp.dest] == rank:
                groups[plan.destinations[cp.dest].device].append(cp)
        by_device.append(list(groups.items()))
    mine_copies = [[c for _, cs in groups for c in cs] for groups in by_device]
    # Pinned slots when this rank loads into a GPU, page-aligned host memory otherwise.
    gpu = [b for dev, b in backends.items() if dev != CPU]
    if transport is not None:
        gpu = [backends[str(Device.gpu(transport.device))]]
    slot_backend = gpu[0] if gpu else backend_for(CPU)
    nslots = max(2, min(cfg.ring_slots, len(involved)))
    slot_bytes = max(t.size for t in involved) + (2 * ALIGN if cfg.direct_io else 0)
    buffers = [None] * nslots
    free = list(range(nslots - 1, -1, -1))
    files = ShardFiles(plan.files, direct=cfg.direct_io)
    pool = concurrent.futures.ThreadPoolExecutor(max(1, cfg.reader_threads), thread_name_prefix="gpuload-reader")
    timings = {"read": 0.0, "crc": 0.0}

    def buffer(slot):
        if buffers[slot] is None:
            buffers[slot] = slot_backend.alloc_host_slots(1, slot_bytes)[0]
        return buffers[slot]

    # A chunk that is exactly one dense run of one host destination is read or received
    # straight into it: no slot, no copy (row parts of a tensor saved whole).
    direct = [
        None if cfg.direct_io or transport is not None else _single_target(plan, t, dests, rank, cplan.owners)
        for t in involved
    ]

    def read(t, slot, target=None):
        chunk = plan.chunks[t.chunk]
        buf = buffer(slot) if target is None else target
        tr = time.perf_counter()
        if cfg.direct_io:
            view = files.read(chunk.file, chunk.offset, chunk.size, buf)
            pieces = [(0, chunk.size)]
        else:
            view = memoryview(buf).cast("B")[: chunk.size]
            pieces = [(a, min(a + _PIECE, chunk.size)) for a in range(0, chunk.size, _PIECE)]
        out = [0] * len(chunk.crc_spans)
        tc = 0.0
        for a, b in pieces:
            if not cfg.direct_io:
                files.read_into(chunk.file, chunk.offset + a, [view[a:b]])
            t1 = time.perf_counter()
            for k, sp in enumerate(chunk.crc_spans):
                lo, hi = max(a, sp.chunk_offset), min(b, sp.chunk_offset + sp.size)
                if lo < hi:
                    out[k] = crcmod.crc32c(view[lo:hi], out[k])
            tc += time.perf_counter() - t1
        timings["read"] += time.perf_counter() - tr - tc
        timings["crc"] += tc
        return view, out

    def apply(op, k):
        tc = time.perf_counter()
        arr = np.frombuffer(op.view, dtype=np.uint8)
        for device, copies in by_device[k]:
            op.tokens.append(backends[device].submit(op.slot, arr, copies, dests, dtypes))
        stats.copy_s += time.perf_counter() - tc

    inflight: dict[int, _Op] = {}  # involved index -> op
    reads: dict[int, tuple] = {}  # involved index -> (future, slot)
    recv_slots: dict[int, int] = {}
    a = p = 0
    ok = False
    try:
        while p < len(involved) or inflight:
            moved = False
            # Reserve slots in chunk order (never out of order: that could starve an earlier
            # receive of the slot it needs while later reads wait to be posted).
            while a < len(involved) and free:
                slot = free.pop()
                t = involved[a]
                if t.reader == rank:
                    reads[a] = (pool.submit(read, t, slot, direct[a]), slot)
                else:
                    recv_slots[a] = slot
                a += 1
                moved = True
            # Post in chunk order (Ibcast calls must be in the same order on every rank).
            while p < a:
                t = involved[p]
                tag = t.chunk % ABORT_TAG
                if t.reader == rank:
                    fut, slot = reads[p]
                    if not fut.done():
                        break
                    del reads[p]
                    view, crcs[t.chunk] = fut.result()
                    stats.bytes_read += t.size
                    if transport is not None:
                        reqs = []
                    elif t.broadcast:
                        reqs = [co.pc.Ibcast([view, MPI.BYTE], root=rank)]
                    else:
                        reqs = [co.pc.Isend([view, MPI.BYTE], dest=r, tag=tag) for r in t.receivers]
                    stats.bytes_sent += t.size * len(t.receivers)
                    op = _Op(t, slot, view, reqs, copied=False)
                    if transport is not None:
                        op.reqs = []
                        op.tokens.extend(
                            transport.post(
                                t,
                                rank,
                                slot,
                                view,
                                mine_copies[p],
                                dests,
                                dtypes,
                                backends[str(Device.gpu(transport.device))],
                            )
                        )
                    elif direct[p] is not None:
                        pass  # read in place: the destination already holds the bytes
                    else:
                        apply(op, p)  # the sends only read the slot too
                    op.copied = True
                else:
                    slot = recv_slots.pop(p)
                    if transport is not None:  # NCCL receives straight into device staging
                        op = _Op(t, slot, None, [], copied=True)
                        op.tokens.extend(
                            transport.post(
                                t,
                                rank,
                                slot,
                                None,
                                mine_copies[p],
                                dests,
                                dtypes,
                                backends[str(Device.gpu(transport.device))],
                            )
                        )
                        stats.bytes_received += t.size
                        inflight[p] = op
                        p += 1
                        moved = True
                        continue
                    view = memoryview(buffer(slot) if direct[p] is None else direct[p]).cast("B")[: t.size]
                    if t.broadcast:
                        reqs = [co.pc.Ibcast([view, MPI.BYTE], root=t.reader)]
                    else:
                        reqs = [co.pc.Irecv([view, MPI.BYTE], source=t.reader, tag=tag)]
                    op = _Op(t, slot, view, reqs, copied=direct[p] is not None)
                inflight[p] = op
                p += 1
                moved = True
            for k in list(inflight):
                op = inflight[k]
                if op.reqs:
                    if not MPI.Request.Testall(op.reqs):
                        continue
                    op.reqs = []
                    if op.t.reader != rank:
                        stats.bytes_received += op.t.size
                if not op.copied:
                    apply(op, k)
                    op.copied = True
                if not all(tok.done() for tok in op.tokens):
                    continue
                free.append(op.slot)
                del inflight[k]
                stats.chunks += 1
                moved = True
            if moved:
                co.progressed()
            else:
                co.idle(f"moving chunk {involved[min(p, len(involved) - 1)].chunk} of {len(plan.chunks)}")
        ok = True
    finally:
        if transport is not None:
            if ok:
                transport.close()
            else:
                co.retire("NCCL transfer abandoned")
                transport.abort()
                co.nccl.clear()
        if not ok and not _abandon(co, inflight, buffers):
            buffers = []  # kept alive by the coordinator: an abandoned MPI operation may touch them
        pool.shutdown(wait=True, cancel_futures=True)
        files.close()
        stats.read_s += timings["read"]
        stats.crc_s += timings["crc"]
        stats.ring_bytes = sum(slot_bytes for b in buffers if b is not None)
        live = [b for b in buffers if b is not None]
        if live:
            _release_slots(slot_backend, live, backends, waited=ok)
    return crcs


def _release_slots(slot_backend, slots, backends, waited: bool) -> None:
    """Give the ring back; after a failure, only once no device reads it any more.

    A failed load leaves copies in flight (their tokens were never waited for): every
    device is waited for first. When one cannot be (a failed device), the slots are
    dropped, never lent to another load, as ``Ring.close(reuse=False)`` drops them.
    """
    reuse = waited
    try:
        if not waited:
            for b in {id(b): b for b in backends.values()}.values():
                b.synchronize()
            reuse = True
    except Exception:  # noqa: BLE001 - a device that cannot be waited for: the slots are dropped
        pass
    finally:
        if reuse:
            slot_backend.free_host_slots(slots)
        else:
            forget = getattr(slot_backend, "forget_host_slots", None)
            if forget is not None:
                forget(slots)


def _single_target(plan, t, dests, rank, owners):
    """The destination bytes that are exactly chunk ``t`` (one dense host copy, no cast), else None."""
    chunk = plan.chunks[t.chunk]
    mine = [c for c in chunk.copies if owners[c.dest] == rank]
    if len(mine) != 1 or isinstance(mine[0], GatherCopy):  # a gather writes around the prefill
        return None
    cp = mine[0]
    d = plan.destinations[cp.dest]
    if (
        d.src_dtype != d.dtype
        or d.device != CPU
        or not cp.is_contiguous()
        or cp.src_offset != 0
        or cp.size * d.dtype.itemsize != chunk.size
        or not isinstance(dests[cp.dest], np.ndarray)
    ):
        return None
    start = cp.dst_offset * d.dtype.itemsize
    return dests[cp.dest].reshape(-1).view(np.uint8)[start : start + chunk.size]


def _abandon(co, inflight, buffers) -> bool:
    """After a failure: cancel the receives; keep alive what uncancellable operations may touch.

    Returns whether every operation ended (the slots may then be freed).
    """
    pending = []
    for op in inflight.values():
        for req in op.reqs:
            if req == MPI.REQUEST_NULL:
                continue
            try:
                req.Cancel()
            except MPI.Exception:
                pass
            pending.append(req)
    deadline = time.monotonic() + 0.1  # a cancelled receive ends at once; a broadcast never will
    while pending and time.monotonic() < deadline:
        pending = [r for r in pending if not r.Test()]
        if pending:
            time.sleep(0.001)
    if pending:
        # An Ibcast or Isend the other ranks never matched: MPI may still read or write
        # these slots, so they are kept (the communicator is retired; at most one ring).
        co.keep((pending, list(buffers)))
        return False
    return True
