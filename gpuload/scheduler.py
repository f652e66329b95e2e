"""Run a :class:`~gpuload.plan.Plan`: reads, host-to-device copies and kernels, overlapped.

Threads and hand-offs
---------------------
* ``reader_threads`` readers each take a free ring slot, then the next chunk index (in
  that order, so the lowest unread chunks always own the slots and the in-order consumer
  cannot starve), ``preadv`` the chunk into the slot and CRC the chunk's spans there,
  in parallel.
* The calling thread consumes chunks in plan order: it hands each to the backend of every
  device the chunk has copies for (an async H2D + kernels on CUDA; a NumPy copy on the
  host) and folds the chunk's span CRCs into their entries' running CRCs.
* A releaser thread waits on the backends' tokens (CUDA events) in submission order and
  returns slots to the ring, so a slot is reused only when no device reads it any more.

Host memory is the ring (``ring_bytes``) whatever the checkpoint's size. Destination
buffers are allocated up front and handed back only when every chunk has landed and every
CRC matched: a failed load hands out no buffer it allocated. Caller-provided ``targets``
are written in place, so after a failed load they may hold partial data.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import queue
import sys
import threading
import time
import traceback

import numpy as np

from gpuload.errors import DeviceError, DeviceMemoryError, OutOfMemoryError
from gpuload.format import crc as crcmod
from gpuload.io.reader import ShardFiles
from gpuload.io.ring import ALIGN, Ring, RingClosed

__all__ = ["LoadStats", "execute"]


@dataclasses.dataclass
class LoadStats:
    """What one load did and where its time went (seconds are summed over threads)."""

    bytes_read: int = 0
    bytes_written: int = 0
    chunks: int = 0
    read_s: float = 0.0
    crc_s: float = 0.0
    copy_s: float = 0.0
    submit_s: float = 0.0
    wait_read_s: float = 0.0
    drain_s: float = 0.0
    wall_s: float = 0.0
    ring_bytes: int = 0
    #: Seconds spent getting the ring's slots: pinning them on the first GPU load of the
    #: process, ~0 on later ones (the pinned ring is kept; see
    #: :func:`gpuload.backend.release_pinned_memory`). Not part of ``read_s``.
    pin_s: float = 0.0
    #: Host memory of the warm-start vocabularies and index mappings behind the plan's gathers.
    vocab_bytes: int = 0
    #: Seconds spent reading vocabulary files and building those mappings.
    vocab_s: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def execute(plan, backends, *, config, host_loader=None, stats: LoadStats | None = None, targets=None):
    """Fill every destination of ``plan``; return the destination arrays, in plan order.

    Parameters
    ----------
    plan:
        The :class:`~gpuload.plan.Plan` to run.
    backends:
        Mapping from device string to backend (see :mod:`gpuload.backend`); must have an
        entry for every destination's device.
    config:
        The :class:`~gpuload.config.Config` (ring size, readers, O_DIRECT, progress).
    host_loader:
        ``(source, box) -> np.ndarray`` for the plan's host loads (string tensors).
    stats:
        Filled in with byte counts and per-stage times when given.
    targets:
        Caller-provided destination buffers, one entry per destination (``None``: allocate
        one): a C-contiguous array of the destination's shape and dtype on its device
        (NumPy on the CPU, CuPy on a GPU), or an ``(array, stream)`` pair where ``stream`` is
        the raw ``cudaStream_t`` whose work so far must finish before the load writes the
        array (a framework's current stream; default CuPy's current stream). The array is
        filled in place and returned. A gather destination (``Destination.remap`` set) needs
        one: its values are the starting values (a warm start's backup initializer), and the
        gathers overwrite the rows that come from the checkpoint.

    Raises
    ------
    ChecksumError
        A stored CRC32C did not match the bytes read.
    ShardReadError
        A data file could not be read (missing, truncated, I/O error).
    """
    stats = stats if stats is not None else LoadStats()
    t0 = time.perf_counter()
    # The exception the caller is handling (a load inside an except block): its frames are
    # the caller's, never cleared with this load's.
    callers = _chain(sys.exc_info()[1])
    opened = {}
    failed = False
    try:
        # One session per backend and load: a CUDA backend gives each load its own streams
        # and staging, so that concurrent loads (threads) share no buffer. Opened inside the
        # try: a session that fails to open closes the ones opened before it.
        for b in backends.values():
            if id(b) not in opened:
                make = getattr(b, "session", None)
                opened[id(b)] = (b, make() if callable(make) else b)
        sessions = {dev: opened[id(b)][1] for dev, b in backends.items()}
        dests = []
        for i, d in enumerate(plan.destinations):
            session = sessions[d.device]
            given = None if targets is None else targets[i]
            if given is not None:
                value, stream = given if isinstance(given, tuple) else (given, None)
                _check_target(d, value, "target")
                # Ordered after the caller's work on that memory (its starting values, if any).
                dests.append(session.adopt(value) if stream is None else session.adopt(value, stream=stream))
                continue
            if d.remap is not None:
                raise ValueError(
                    f"destination {i} ({d.name}) is a gather destination but no target holding its starting "
                    f"values was given"
                )
            dests.append(_allocate(session, d))
        dtypes = [(d.src_dtype, d.dtype) for d in plan.destinations]
        for h in plan.host_loads:
            value = host_loader(h.source, h.box)
            dests[h.dest][...] = value
        if plan.chunks:
            _stream(plan, backends, sessions, dests, dtypes, config, stats, callers)
    except BaseException as exc:
        failed = True
        _close_sessions(opened, exc)
        # Finished frames of the failed load (slot views, tokens, destinations) are cleared,
        # so that a caller holding the exception holds no pinned or device memory.
        dests = None  # noqa: F841
        _clear_frames(exc, keep=callers)
        raise
    finally:
        if not failed:
            _close_sessions(opened, None)
    stats.bytes_written = plan.bytes_written
    stats.wall_s = time.perf_counter() - t0
    return dests


def _check_target(d, value, what: str) -> None:
    if tuple(value.shape) != tuple(d.shape) or np.dtype(value.dtype) != d.dtype or not value.flags.c_contiguous:
        raise ValueError(
            f"{what} of {d.name} is a {np.dtype(value.dtype).name}{tuple(value.shape)} "
            f"array (C-contiguous: {value.flags.c_contiguous}); expected "
            f"{d.dtype.name}{tuple(d.shape)}"
        )


def _allocate(backend, d):
    """The destination buffer of ``d``; running out of memory names the variable and the size."""
    try:
        return backend.empty(d.shape, d.dtype)
    except (MemoryError, OSError) as e:  # CuPy's OutOfMemoryError is a MemoryError too
        if isinstance(e, OSError) and e.errno != errno.ENOMEM:
            raise
        what = (
            f"cannot allocate {d.nbytes} bytes (shape {list(d.shape)}, {np.dtype(d.dtype).name}) on "
            f"{d.device} for {d.name!r}, which loads tensor {d.source!r}: out of memory"
        )
        if isinstance(e, DeviceMemoryError):
            raise DeviceMemoryError(f"{what} ({e})", device=e.device) from e
        raise OutOfMemoryError(f"{what} ({type(e).__name__}: {e})") from None


def _close_sessions(opened, exc) -> None:
    """Close every per-load session; with ``exc`` propagating, attach failures to it instead."""
    first = None
    for backend, session in opened.values():
        if session is backend:
            continue
        try:
            session.close()
        except BaseException as e:  # noqa: BLE001
            if exc is not None:
                _attach_cleanup_error(exc, e)
            elif first is None:
                first = e
    if first is not None:
        raise first


def _chain(exc: BaseException | None) -> set[int]:
    """The ids of ``exc`` and of every error chained or attached to it."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        todo += [e.__cause__, e.__context__, *getattr(e, "cleanup_errors", ())]
    return seen


def _clear_frames(exc: BaseException, keep: set[int] = frozenset()) -> None:
    """Clear the finished frames of ``exc`` and of every error chained or attached to it.

    ``keep``: ids of errors that existed before the load (the one its caller was handling,
    and its chain): neither they nor what they chain to are touched, so that the caller's
    own debugging state (locals in its tracebacks) survives a failed load.
    """
    seen = set(keep)
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        todo += [e.__cause__, e.__context__, *getattr(e, "cleanup_errors", ())]


def _attach_cleanup_error(exc: BaseException, cleanup: BaseException) -> None:
    """Keep the first error on top; note the cleanup failure on it (never raise over it)."""
    errs = getattr(exc, "cleanup_errors", None)
    if errs is None:
        errs = []
        try:
            exc.cleanup_errors = errs
        except AttributeError:
            return
    errs.append(cleanup)
    if hasattr(exc, "add_note"):
        exc.add_note(f"while cleaning up after this error: {type(cleanup).__name__}: {cleanup}")


def _ring_backend(plan, backends):
    """Pinned slots as soon as any destination is on a GPU; page-aligned host memory otherwise."""
    for d in plan.destinations:
        b = backends[d.device]
        if not d.device.startswith("/device:CPU"):
            return b
    return backends[plan.destinations[0].device]


def _stream(plan, backends, sessions, dests, dtypes, config, stats, keep=frozenset()):
    chunks = plan.chunks
    largest = max(c.size for c in chunks)
    nslots = max(1, min(config.ring_slots, len(chunks)))
    slot_bytes = largest + (2 * ALIGN if config.direct_io else 0)
    ring_backend = _ring_backend(plan, backends)
    files = ShardFiles(plan.files, direct=config.direct_io)

    # Each chunk's copies grouped by device, computed once.
    by_device = []
    for c in chunks:
        groups = collections.defaultdict(list)
        for cp in c.copies:
            groups[plan.destinations[cp.dest].device].append(cp)
        by_device.append(list(groups.items()))
    direct = [None if config.direct_io else _direct_targets(plan, c, dests) for c in chunks]

    done = {}  # chunk index -> (slot, view, span crcs)
    cond = threading.Condition()
    next_chunk = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()
    read_s = [0.0]
    crc_s = [0.0]
    copy_s = [0.0]

    # Backends that work synchronously on host memory (the CPU backend) apply a chunk's
    # copies in the reader thread that read it: the copies then run in parallel, on data
    # that is still warm in the CPU caches, and the slot is free again at once.
    inline = [all(getattr(backends[dev], "synchronous", False) for dev, _ in groups) for groups in by_device]

    def reader():
        try:
            while True:
                slot = ring.acquire()
                with lock:
                    idx = next_chunk[0]
                    next_chunk[0] += 1
                if idx >= len(chunks):
                    ring.release(slot)
                    return
                c = chunks[idx]
                # The slot's memory is taken (allocated on first use) outside the read's
                # clock: that time is pin_s, not read_s.
                buf = ring.buffer(slot) if direct[idx] is None else None
                t = time.perf_counter()
                if direct[idx] is not None:
                    crcs, tc = _read_crc(files, c, direct[idx])
                    view = None
                elif config.direct_io:
                    view = files.read(c.file, c.offset, c.size, buf)
                    t1 = time.perf_counter()
                    crcs = [crcmod.crc32c(view[s.chunk_offset : s.chunk_offset + s.size]) for s in c.crc_spans]
                    tc = time.perf_counter() - t1
                else:
                    view = memoryview(buf).cast("B")[: c.size]
                    crcs, tc = _read_crc(files, c, [view])
                t2 = time.perf_counter()
                if view is not None and inline[idx]:
                    chunk_bytes = np.frombuffer(view, dtype=np.uint8)
                    for device, copies in by_device[idx]:
                        sessions[device].submit(slot, chunk_bytes, copies, dests, dtypes).wait()
                    view = None
                if view is None:
                    # Nothing reads the slot any more: free it now rather than when the
                    # in-order consumer gets here, so one slow chunk stalls no other reader.
                    ring.release(slot)
                t3 = time.perf_counter()
                with cond:
                    read_s[0] += t2 - t - tc
                    crc_s[0] += tc
                    copy_s[0] += t3 - t2
                    done[idx] = (slot, view, crcs)
                    cond.notify_all()
        except RingClosed:
            return
        except BaseException as exc:  # handed to the consumer, which raises it
            with cond:
                errors.append(exc)
                cond.notify_all()

    release_q: queue.SimpleQueue = queue.SimpleQueue()

    def releaser():
        while True:
            item = release_q.get()
            if item is None:
                return
            slot, tokens = item
            # Every device's token is waited for, even after one failed: the slot is free
            # only when no device reads it any more.
            first = None
            for tok in tokens:
                try:
                    tok.wait()
                except BaseException as exc:  # noqa: BLE001 - the first is handed to the consumer
                    if first is None:
                        first = exc
            if first is None:
                ring.release(slot)
            else:
                # A failed device may still read the slot: it is never lent again.
                ring.retire(slot)
                with cond:
                    errors.append(first)
                    cond.notify_all()

    threads = [
        threading.Thread(target=reader, name=f"gpuload-reader-{i}", daemon=True)
        for i in range(max(1, min(config.reader_threads, len(chunks))))
    ]
    rel_thread = threading.Thread(target=releaser, name="gpuload-releaser", daemon=True)
    running = [0] * len(plan.checks)  # running raw CRC per check
    seen = [0] * len(plan.checks)
    launched: list[threading.Thread] = []  # start() called: to be joined, whether or not it returned
    bar = None
    failure = None
    failed_at = 0  # how many errors were in `errors` when the failure was caught
    # Nothing is allocated until allocate_all() or a reader's first use, both inside the try
    # whose finally frees the ring: an interrupt anywhere leaks no (pinned) slot.
    ring = Ring(ring_backend, nslots, slot_bytes)
    try:
        if not getattr(ring_backend, "synchronous", False):
            # Pinned slots are taken here, in the calling thread, before the readers start:
            # pinning (first load of the process) must not count as read time, and a reader
            # thread never makes CUDA calls.
            ring.allocate_all()
        bar = _progress(config, plan.bytes_read)
        for t in [*threads, rel_thread]:
            launched.append(t)
            t.start()
        for idx, chunk in enumerate(chunks):
            tw = time.perf_counter()
            with cond:
                while idx not in done and not errors:
                    cond.wait()
                if errors:
                    raise errors[0]
                slot, view, crcs = done.pop(idx)
            ts = time.perf_counter()
            stats.wait_read_s += ts - tw
            if view is not None:  # else the reader read in place or copied, and freed the slot
                chunk_bytes = np.frombuffer(view, dtype=np.uint8)
                tokens = []
                for device, copies in by_device[idx]:
                    tokens.append(sessions[device].submit(slot, chunk_bytes, copies, dests, dtypes))
                release_q.put((slot, tokens))
            for span, value in zip(chunk.crc_spans, crcs):
                running[span.check] = (
                    crcmod.crc32c_combine(running[span.check], value, span.size) if seen[span.check] else value
                )
                seen[span.check] += span.size
                check = plan.checks[span.check]
                if seen[span.check] == check.size:
                    _verify(plan, check, running[span.check])
            stats.submit_s += time.perf_counter() - ts
            stats.chunks += 1
            stats.bytes_read += chunk.size
            if bar is not None:
                bar.update(chunk.size)
        td = time.perf_counter()
        release_q.put(None)
        rel_thread.join()
        for s in {id(s): s for s in sessions.values()}.values():
            s.synchronize()
        stats.drain_s += time.perf_counter() - td
        if errors:
            raise errors[0]
    except BaseException as exc:
        failure = exc
        with cond:
            failed_at = len(errors)
        raise
    finally:
        # First, and whatever happened: nothing may skip it.
        late, ring_bytes = _stop(ring, release_q, launched, files, bar, sessions, failure)
        stats.ring_bytes = max(stats.ring_bytes, ring_bytes)
        stats.pin_s += ring.alloc_s
        stats.read_s += read_s[0]
        stats.crc_s += crc_s[0]
        stats.copy_s += copy_s[0]
        if failure is not None:
            for e in errors:
                # Readers' and the releaser's frames hold slot views; clear them so that the
                # exception (kept by the caller) pins no memory.
                _clear_frames(e, keep)
            # Only errors hit before the failure was caught: those added while _stop joined
            # the threads are echoes of the failure itself.
            before = errors[:failed_at]
            earlier = [e for e in before if e is not failure]
            if isinstance(failure, DeviceError) and earlier and not any(e is failure for e in before):
                # A failed device fails every later call too: the consumer's error is then an
                # echo of the one a reader or the releaser hit first, which is what surfaces.
                first = earlier[0]
                _attach_cleanup_error(first, failure)
                raise first from first.__cause__
        elif late is not None:
            raise late


def _stop(ring, release_q, launched, files, bar, sessions, failure):
    """End a stream, successful or not: every step runs, in this order, whatever happens.

    1. abort the ring (readers waiting for a slot leave; after a clean run they are gone);
    2. tell the releaser to stop after the slots already queued (it waits on their tokens,
       so no device still reads a slot when the ring is freed);
    3. join every thread whose ``start()`` was called, also one that was interrupted or
       failed inside ``start()`` (a thread that never came to exist is skipped);
    4. after a failure, wait for every device session: the ring goes back to the process's
       pool only once no device can still read it (a session that cannot be waited for, a
       failed device, means the slots are never reused);
    5. close the data files (no reader is left to use a descriptor, or a reused number);
    6. free the ring, then the progress bar.

    An exception during a step (a second Ctrl-C while joining, a failing close) does not
    skip the later steps. After a failure it is attached to ``failure`` (the first error
    stays on top); otherwise the first one is returned, for the caller to raise, with the
    ring's size before it was freed.
    """
    first = None
    ring_bytes = [0]
    reuse = [True]

    def wait_sessions():
        for session in {id(x): x for x in sessions.values()}.values():
            try:
                session.synchronize()
            except Exception as e:  # noqa: BLE001 - an interrupt goes to the retry loop below
                reuse[0] = False
                if e is not failure:
                    _attach_cleanup_error(failure, e)

    steps = [ring.abort, lambda: release_q.put(None)]
    steps += [(lambda t=t: _join_launched(t)) for t in launched]
    if failure is not None:
        steps.append(wait_sessions)
    steps += [files.close, lambda: ring_bytes.__setitem__(0, ring.nbytes), lambda: ring.close(reuse=reuse[0])]
    if bar is not None:
        steps.append(bar.close)
    for step in steps:
        while True:
            try:
                step()
                break
            except BaseException as exc:  # noqa: B036 (an interrupt must not skip the cleanup)
                if failure is not None:
                    if exc is not failure:
                        _attach_cleanup_error(failure, exc)
                elif first is None:
                    first = exc
                if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    break  # a real failure of this step: go on with the next
                # an interrupt hit the step itself: do it again, it is still needed
    return first, ring_bytes[0]


def _join_launched(thread, timeout: float = 10.0) -> None:
    """Join ``thread`` if ``start()`` created it; return at once if it never existed.

    ``start()`` interrupted between creating the thread and the thread reporting in leaves
    a thread that exists (it is in ``threading.enumerate()``) but that ``join()`` refuses
    ("cannot join thread before it is started") for a moment: wait for it.
    """
    deadline = time.monotonic() + timeout
    while True:
        if thread.ident is None and thread not in threading.enumerate():
            return  # start() failed before the thread existed
        try:
            thread.join()
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def _direct_targets(plan, chunk, dests):
    """Destination byte ranges that tile ``chunk`` exactly, when it can be read in place.

    That is the case when every copy goes, without a dtype change, to host memory as one
    dense run, and the runs cover the chunk in order (row partitions of a tensor saved
    whole): the reader then fills the destinations itself and no copy is needed.
    """
    pos = 0
    out = []
    for cp in chunk.copies:
        d = plan.destinations[cp.dest]
        if (
            d.src_dtype != d.dtype
            or not d.device.startswith("/device:CPU")
            or not cp.is_contiguous()
            or cp.src_offset != pos
            or not isinstance(dests[cp.dest], np.ndarray)
        ):
            return None
        n = cp.size * d.dtype.itemsize
        flat = dests[cp.dest].reshape(-1).view(np.uint8)
        out.append(flat[cp.dst_offset * d.dtype.itemsize : cp.dst_offset * d.dtype.itemsize + n])
        pos += n
    return out if pos == chunk.size and out else None


#: Reads are issued in pieces of this size and each piece is checksummed right after it
#: lands, while it is still in the CPU cache: CRC then costs no extra trip to memory.
#: 4 MiB beat 1 MiB on the benchmark VM (10.0 vs 9.3 GB/s, CRC on): fewer GIL hand-offs.
_PIECE = 4 << 20


def _read_crc(files, chunk, buffers):
    """Read ``chunk`` into ``buffers`` (which tile it) piece by piece, CRCing its spans.

    Returns the raw CRC of each of the chunk's spans, and the seconds spent on CRC.
    """
    spans = chunk.crc_spans
    crcs = [0] * len(spans)
    crc_time = 0.0
    si = 0  # first span not yet complete
    pos = 0  # chunk offset of the current buffer
    for buf in buffers:
        n = len(buf)
        done = 0
        while done < n:
            take = min(_PIECE, n - done)
            files.read_into(chunk.file, chunk.offset + pos + done, [buf[done : done + take]])
            if spans:
                t = time.perf_counter()
                lo, hi = pos + done, pos + done + take
                while si < len(spans) and spans[si].chunk_offset < hi:
                    sp = spans[si]
                    a, b = max(lo, sp.chunk_offset), min(hi, sp.chunk_offset + sp.size)
                    if a < b:
                        crcs[si] = crcmod.crc32c(buf[a - pos : b - pos], crcs[si])
                    if sp.chunk_offset + sp.size <= hi:
                        si += 1
                    else:
                        break
                crc_time += time.perf_counter() - t
            done += take
        pos += n
    return crcs, crc_time


def _verify(plan, check, raw_crc: int) -> None:
    crcmod.check_entry(
        raw_crc,
        masked_crc=check.masked_crc,
        path=plan.files[check.file],
        key=check.key,
        offset=check.offset,
        size=check.size,
    )


def _progress(config, total):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="gpuload", leave=False)
