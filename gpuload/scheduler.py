"""Run a :class:`~gpuload.plan.Plan`: reads, host-to-device copies and kernels, overlapped.

Threads and hand-offs
---------------------
* ``reader_threads`` readers each take a free ring slot, then the next chunk index (in
  that order, so the lowest unread chunks always own the slots and the in-order consumer
  cannot starve), ``preadv`` the chunk into the slot and CRC the chunk's spans there,
  in parallel.
* Chunks whose copies all go to the CPU are copied out in the reader thread as they
  stream: each cache-sized piece is read into the thread's small buffer, checksummed and
  copied into the destinations while it is still in the CPU cache; such a chunk takes a
  ring slot only as its turn (the slot's memory is never touched). Chunks that land
  whole in their destinations (row parts) are read in place.
* The calling thread consumes chunks in plan order: it hands each to the backend of every
  device the chunk has copies for (an async H2D + kernels on CUDA; a NumPy copy on the
  host) and folds the chunk's span CRCs into their entries' running CRCs.
* A releaser thread waits on the backends' tokens (CUDA events) in submission order and
  returns slots to the ring, so a slot is reused only when no device reads it any more.

Host memory is the ring (``ring_bytes``) whatever the checkpoint's size, plus, for chunks
copied to host destinations as they stream, one window buffer per reader thread (at most
2 MiB each, never more than the largest chunk). Destination
buffers are allocated up front and handed back only when every chunk has landed and every
CRC matched: a failed load hands out no buffer it allocated. Caller-provided ``targets``
are written in place, so after a failed load they may hold partial data.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import queue
import signal
import sys
import threading
import time
import traceback

import numpy as np

from gpuload.devices import Device
from gpuload.errors import DeviceError, DeviceMemoryError, OutOfMemoryError
from gpuload.format import crc as crcmod
from gpuload.format.files import ALIGN
from gpuload.format.keys import describe_key
from gpuload.io.reader import ShardFiles
from gpuload.io.ring import Ring, RingClosed

__all__ = ["LoadStats", "execute", "verify_check"]


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
    #: Staging memory: the ring's slots allocated, plus the readers' streaming buffers.
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
            _Stream(plan, backends, sessions, dests, dtypes, config, stats, callers).run()
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


def _ring_backend(plan, backends, on_cpu):
    """Pinned slots as soon as any destination is on a GPU; page-aligned host memory otherwise.

    ``on_cpu``: whether each destination is on the CPU (its device parsed once).
    """
    for d, cpu in zip(plan.destinations, on_cpu):
        if not cpu:
            return backends[d.device]
    return backends[plan.destinations[0].device]


class _Stream:
    """One run of a plan's chunks: reader threads, the releaser, and the in-order consumer.

    :meth:`run` is the consumer (the calling thread); :meth:`_reader` and
    :meth:`_releaser` run in threads. Readers hand finished chunks to the consumer
    through ``done`` (under ``cond``) and report failures in ``errors``, which the
    consumer raises; :func:`_stop` ends every thread and frees the ring, whatever
    happened.
    """

    def __init__(self, plan, backends, sessions, dests, dtypes, config, stats, keep=frozenset()):
        self.plan = plan
        self.chunks = plan.chunks
        self.sessions = sessions
        self.dests = dests
        self.dtypes = dtypes
        self.config = config
        self.stats = stats
        self.keep = keep
        chunks = self.chunks
        self.nslots = max(1, min(config.ring_slots, len(chunks)))
        self.slot_bytes = max(c.size for c in chunks) + (2 * ALIGN if config.direct_io else 0)
        # Each destination's device parsed once (any spelling a plan carries), not per chunk.
        on_cpu = [Device.parse(d.device).kind == "CPU" for d in plan.destinations]
        self.ring_backend = _ring_backend(plan, backends, on_cpu)
        self.files = ShardFiles(plan.files, direct=config.direct_io)
        # Each chunk's copies grouped by device, computed once.
        self.by_device = []
        for c in chunks:
            groups = collections.defaultdict(list)
            for cp in c.copies:
                groups[plan.destinations[cp.dest].device].append(cp)
            self.by_device.append(list(groups.items()))
        self.direct = [None if config.direct_io else _direct_targets(plan, c, dests, on_cpu) for c in chunks]
        # Backends that work synchronously on host memory (the CPU backend) apply a chunk's
        # copies in the reader thread that read it: the copies then run in parallel, on data
        # that is still warm in the CPU caches, and the slot is free again at once.
        self.inline = [
            all(getattr(backends[dev], "synchronous", False) for dev, _ in groups) for groups in self.by_device
        ]
        self.done: dict = {}  # chunk index -> (slot, view, span crcs)
        self.cond = threading.Condition()
        self.lock = threading.Lock()
        self.next_chunk = 0
        self.errors: list[BaseException] = []
        self.read_s = self.crc_s = self.copy_s = 0.0
        self.scratch_bytes = 0
        self.largest_chunk = max(c.size for c in chunks)
        self.running = [0] * len(plan.checks)  # running raw CRC per check
        self.seen = [0] * len(plan.checks)  # bytes folded into it so far
        self.release_q: queue.SimpleQueue = queue.SimpleQueue()
        self.ring: Ring | None = None

    # -- reader threads ------------------------------------------------------------------------

    def _reader(self) -> None:
        ring = self.ring
        scratch = None  # this thread's window buffer for chunks copied out as they stream
        try:
            while True:
                slot = ring.acquire()
                with self.lock:
                    idx = self.next_chunk
                    self.next_chunk += 1
                if idx >= len(self.chunks):
                    ring.release(slot)
                    return
                streams = self._streams(idx)
                if streams is not None and scratch is None:
                    # A window is a run of one chunk, so a load of small chunks needs no more.
                    scratch = np.empty(min(2 * _STREAM_PIECE, self.largest_chunk), np.uint8)
                    with self.lock:
                        self.scratch_bytes += scratch.nbytes
                view, crcs, times = self._read(idx, slot, streams, scratch)
                if view is None:
                    # Nothing reads the slot any more: free it now rather than when the
                    # in-order consumer gets here, so one slow chunk stalls no other reader.
                    ring.release(slot)
                with self.cond:
                    self.read_s += times[0]
                    self.crc_s += times[1]
                    self.copy_s += times[2]
                    self.done[idx] = (slot, view, crcs)
                    self.cond.notify_all()
        except RingClosed:
            return
        except BaseException as exc:  # handed to the consumer, which raises it
            with self.cond:
                self.errors.append(exc)
                self.cond.notify_all()

    def _streams(self, idx):
        """The chunk's copies as :class:`StreamCopy` objects, when it can be copied out as it is read.

        That is the case for a chunk read through the page cache whose copies all go to
        synchronous backends that can stream (the CPU backend) and that needs no slot
        otherwise (not read in place); ``None`` otherwise.
        """
        if not self.inline[idx] or self.direct[idx] is not None or self.config.direct_io:
            return None
        out = []
        for device, copies in self.by_device[idx]:
            make = getattr(self.sessions[device], "stream", None)
            made = None if make is None else make(self.chunks[idx].size, copies, self.dests, self.dtypes, _STREAM_PIECE)
            if made is None:
                return None
            out.append(made)
        return out

    def _read(self, idx, slot, streams, scratch):
        """Read chunk ``idx`` and CRC its spans; apply its copies when they run in this thread.

        Returns the slot's view of the chunk (``None`` once nothing reads the slot any
        more), the spans' raw CRCs and the (read, crc, copy) seconds.
        """
        c = self.chunks[idx]
        names = _chunk_tensors(self.plan, c)
        if streams is not None:
            crcs, tc, tcopy, total = _read_crc_stream(self.files, c, scratch, streams, names, self.ring.check_open)
            return None, crcs, (total - tc - tcopy, tc, tcopy)
        # The slot's memory is taken (allocated on first use) outside the read's clock: that
        # time is pin_s, not read_s.
        direct = self.direct[idx]
        buf = self.ring.buffer(slot) if direct is None else None
        t = time.perf_counter()
        if direct is not None:
            crcs, tc = _read_crc(self.files, c, direct, names)
            view = None
        elif self.config.direct_io:
            view = self.files.read(c.file, c.offset, c.size, buf, tensor=names[0], what=names[1])
            t1 = time.perf_counter()
            crcs = [crcmod.crc32c(view[s.chunk_offset : s.chunk_offset + s.size]) for s in c.crc_spans]
            tc = time.perf_counter() - t1
        else:
            view = memoryview(buf).cast("B")[: c.size]
            crcs, tc = _read_crc(self.files, c, [view], names)
        t2 = time.perf_counter()
        if view is not None and self.inline[idx]:
            chunk_bytes = np.frombuffer(view, dtype=np.uint8)
            for device, copies in self.by_device[idx]:
                self.sessions[device].submit(slot, chunk_bytes, copies, self.dests, self.dtypes).wait()
            view = None
        return view, crcs, (t2 - t - tc, tc, time.perf_counter() - t2)

    # -- releaser thread -----------------------------------------------------------------------

    def _releaser(self) -> None:
        while True:
            item = self.release_q.get()
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
                self.ring.release(slot)
            else:
                # A failed device may still read the slot: it is never lent again.
                self.ring.retire(slot)
                with self.cond:
                    self.errors.append(first)
                    self.cond.notify_all()

    # -- the consumer (calling thread) ---------------------------------------------------------

    def run(self) -> None:
        config, stats, chunks = self.config, self.stats, self.chunks
        threads = [
            threading.Thread(target=self._reader, name=f"gpuload-reader-{i}", daemon=True)
            for i in range(max(1, min(config.reader_threads, len(chunks))))
        ]
        rel_thread = threading.Thread(target=self._releaser, name="gpuload-releaser", daemon=True)
        launched: list[threading.Thread] = []  # start() called: to be joined, whether or not it returned
        bar = None
        failure = None
        failed_at = 0  # how many errors were in `errors` when the failure was caught
        # Nothing is allocated until allocate_all() or a reader's first use, both inside the
        # try whose finally frees the ring: an interrupt anywhere leaks no (pinned) slot.
        ring = self.ring = Ring(self.ring_backend, self.nslots, self.slot_bytes)
        try:
            if not getattr(self.ring_backend, "synchronous", False):
                # Pinned slots are taken here, in the calling thread, before the readers
                # start: pinning (first load of the process) must not count as read time, and
                # a reader thread never makes CUDA calls.
                ring.allocate_all()
            bar = _progress(config, self.plan.bytes_read)
            _start_all([*threads, rel_thread], launched)
            for idx, chunk in enumerate(chunks):
                self._consume(idx, chunk)
                if bar is not None:
                    bar.update(chunk.size)
            td = time.perf_counter()
            self.release_q.put(None)
            rel_thread.join()
            for s in {id(s): s for s in self.sessions.values()}.values():
                s.synchronize()
            stats.drain_s += time.perf_counter() - td
            if self.errors:
                raise self.errors[0]
        except BaseException as exc:
            failure = exc
            with self.cond:
                failed_at = len(self.errors)
            raise
        finally:
            # First, and whatever happened: nothing may skip it.
            late, ring_bytes = _stop(ring, self.release_q, launched, self.files, bar, self.sessions, failure)
            stats.ring_bytes = max(stats.ring_bytes, ring_bytes + self.scratch_bytes)
            stats.pin_s += ring.alloc_s
            stats.read_s += self.read_s
            stats.crc_s += self.crc_s
            stats.copy_s += self.copy_s
            if failure is not None:
                self._raise_first(failure, failed_at)
            elif late is not None:
                raise late

    def _consume(self, idx, chunk) -> None:
        """Wait for chunk ``idx``, hand it to its devices, fold its CRCs (verifying complete entries)."""
        stats = self.stats
        tw = time.perf_counter()
        with self.cond:
            while idx not in self.done and not self.errors:
                self.cond.wait()
            if self.errors:
                raise self.errors[0]
            slot, view, crcs = self.done.pop(idx)
        ts = time.perf_counter()
        stats.wait_read_s += ts - tw
        if view is not None:  # else the reader read in place or copied, and freed the slot
            chunk_bytes = np.frombuffer(view, dtype=np.uint8)
            tokens = []
            for device, copies in self.by_device[idx]:
                tokens.append(self.sessions[device].submit(slot, chunk_bytes, copies, self.dests, self.dtypes))
            self.release_q.put((slot, tokens))
        plan, running, seen = self.plan, self.running, self.seen
        for span, value in zip(chunk.crc_spans, crcs):
            running[span.check] = (
                crcmod.crc32c_combine(running[span.check], value, span.size) if seen[span.check] else value
            )
            seen[span.check] += span.size
            check = plan.checks[span.check]
            if seen[span.check] == check.size:
                verify_check(plan, check, running[span.check])
        stats.submit_s += time.perf_counter() - ts
        stats.chunks += 1
        stats.bytes_read += chunk.size

    def _raise_first(self, failure: BaseException, failed_at: int) -> None:
        """After ``failure``: clear the threads' frames; raise the error a device hit first, if any."""
        for e in self.errors:
            # Readers' and the releaser's frames hold slot views; clear them so that the
            # exception (kept by the caller) pins no memory.
            _clear_frames(e, self.keep)
        # Only errors hit before the failure was caught: those added while _stop joined the
        # threads are echoes of the failure itself.
        before = self.errors[:failed_at]
        earlier = [e for e in before if e is not failure]
        if isinstance(failure, DeviceError) and earlier and not any(e is failure for e in before):
            # A failed device fails every later call too: the consumer's error is then an
            # echo of the one a reader or the releaser hit first, which is what surfaces.
            first = earlier[0]
            _attach_cleanup_error(first, failure)
            raise first from first.__cause__


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


def _start_all(threads, launched: list) -> None:
    """Start ``threads`` (each appended to ``launched`` first) with SIGINT held until all run.

    CPython's ``Thread.start()`` registers the thread before it creates it; a
    KeyboardInterrupt landing between the two leaves a thread that never runs and that
    ``join()`` refuses forever (and ``threading.active_count()`` counts it for the rest of
    the process). So in the main thread a Ctrl-C during the starts is held back, and
    re-raised through the previous handler as soon as every thread is running.
    """
    # Signals reach only the main thread; a handler installed from C cannot be restored.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        for t in threads:
            launched.append(t)
            t.start()
        return
    held: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    except ValueError:  # the main thread of a subinterpreter: no handler may be set there
        for t in threads:
            launched.append(t)
            t.start()
        return
    try:
        for t in threads:
            launched.append(t)
            t.start()
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # the previous handler: KeyboardInterrupt by default


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


def _direct_targets(plan, chunk, dests, on_cpu):
    """Destination byte ranges that tile ``chunk`` exactly, when it can be read in place.

    That is the case when every copy goes, without a dtype change, to host memory as one
    dense run, and the runs cover the chunk in order (row partitions of a tensor saved
    whole): the reader then fills the destinations itself and no copy is needed.
    ``on_cpu``: whether each destination is on the CPU.
    """
    pos = 0
    out = []
    for cp in chunk.copies:
        d = plan.destinations[cp.dest]
        if (
            d.src_dtype != d.dtype
            or not on_cpu[cp.dest]
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

#: Piece size of chunks copied out as they stream (column parts on the CPU): each piece is
#: read into a per-thread buffer, checksummed and copied into the parts while it is still
#: in the CPU cache (a slab of a copy may span at most this much).
_STREAM_PIECE = 1 << 20


class _SpanCrcs:
    """The running raw CRCs of a chunk's spans, fed the chunk's bytes in order, piece by piece."""

    __slots__ = ("spans", "values", "seconds", "_si")

    def __init__(self, spans):
        self.spans = spans
        self.values = [0] * len(spans)
        self.seconds = 0.0
        self._si = 0  # first span not yet complete

    def feed(self, piece, lo: int) -> None:
        """Fold ``piece``, the chunk's bytes from offset ``lo`` on, into the spans it overlaps."""
        spans = self.spans
        if not spans:
            return
        t = time.perf_counter()
        hi = lo + len(piece)
        si = self._si
        while si < len(spans) and spans[si].chunk_offset < hi:
            sp = spans[si]
            a, b = max(lo, sp.chunk_offset), min(hi, sp.chunk_offset + sp.size)
            if a < b:
                self.values[si] = crcmod.crc32c(piece[a - lo : b - lo], self.values[si])
            if sp.chunk_offset + sp.size <= hi:
                si += 1
            else:
                break
        self._si = si
        self.seconds += time.perf_counter() - t


def _chunk_tensors(plan, chunk) -> tuple[str | None, str | None]:
    """``(tensor, what)`` that a failed read of ``chunk`` names (see :meth:`ShardFiles.read`).

    The tensors are those of the stored entries the chunk's CRC spans check (which know
    the stored slice), else those its copies fill; a chunk of several tensors names the
    first, in file order, and how many more.
    """
    spans = chunk.crc_spans
    if spans:
        tensor, part = describe_key(plan.checks[spans[0].check].key)
        more = len({s.check for s in spans}) - 1  # stored entries
    elif chunk.copies:
        tensor, part = plan.destinations[chunk.copies[0].dest].source, None
        more = len({plan.destinations[cp.dest].source for cp in chunk.copies}) - 1
    else:
        return None, None
    what = None if part is None else f"tensor {tensor!r} slice {part}"
    if more:
        what = f"{what or f'tensor {tensor!r}'} and {more} more"
    return tensor, what


def _read_crc(files, chunk, buffers, names=(None, None)):
    """Read ``chunk`` into ``buffers`` (which tile it) piece by piece, CRCing its spans.

    ``names``: the ``(tensor, what)`` its errors name (:func:`_chunk_tensors`).
    Returns the raw CRC of each of the chunk's spans, and the seconds spent on CRC.
    """
    crcs = _SpanCrcs(chunk.crc_spans)
    pos = 0  # chunk offset of the current buffer
    for buf in buffers:
        n = len(buf)
        done = 0
        while done < n:
            take = min(_PIECE, n - done)
            piece = buf[done : done + take]
            files.read_into(chunk.file, chunk.offset + pos + done, [piece], tensor=names[0], what=names[1])
            crcs.feed(piece, pos + done)
            done += take
        pos += n
    return crcs.values, crcs.seconds


def _read_crc_stream(files, chunk, scratch, streams, names=(None, None), check_open=None):
    """Read ``chunk`` through ``scratch`` piece by piece: CRC each piece, then copy out what it completes.

    ``scratch`` holds a window of the chunk: the bytes still needed by a slab that began
    in an earlier piece (at most ``_STREAM_PIECE``), then the new piece. Every piece is
    checksummed and handed to ``streams`` (:class:`~gpuload.backend.host.StreamCopy`)
    while it is still in the CPU cache, so the chunk never goes through memory on its way
    into the destinations.

    ``check_open`` (the ring's) runs before every piece: a failed or interrupted load stops
    this reader within one piece, not one chunk (RingClosed).

    Returns the spans' raw CRCs, the seconds spent on CRC and on copies, and in all.
    """
    t0 = time.perf_counter()
    crcs = _SpanCrcs(chunk.crc_spans)
    copy_s = 0.0
    base = 0  # chunk offset of scratch[0]
    held = 0  # bytes of the chunk held at the start of scratch
    pos = 0  # chunk bytes read so far
    while pos < chunk.size:
        if check_open is not None:
            check_open()
        take = min(_STREAM_PIECE, chunk.size - pos)
        piece = scratch[held : held + take]
        files.read_into(chunk.file, chunk.offset + pos, [piece], tensor=names[0], what=names[1])
        crcs.feed(piece, pos)
        pos += take
        t = time.perf_counter()
        window = scratch[: held + take]
        need = min([s.feed(window, base) for s in streams], default=pos)
        held = pos - need
        if held:
            scratch[:held] = scratch[need - base : pos - base]
        base = need
        copy_s += time.perf_counter() - t
    for s in streams:
        s.finish()
    return crcs.values, crcs.seconds, copy_s, time.perf_counter() - t0


def verify_check(plan, check, raw_crc: int) -> None:
    """Check one entry's combined raw CRC32C against the index (the plan's ``check``).

    Raises
    ------
    ChecksumError
        The CRC differs from the stored one; the message names the file, tensor and range.
    """
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
