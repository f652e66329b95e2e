"""The bounded ring of host staging buffers.

All the host memory a load stages through comes from here, as ``nslots`` buffers of
``slot_bytes``: page-aligned anonymous memory on the host backend, pinned memory on CUDA
(pinning costs ~1-3 GB/s, so it is never done per tensor; the CUDA backend keeps pinned
slots in a process-wide pool, so only the first GPU load of a process pins). A slot is
acquired by a reader thread, filled, handed to the device backend, and comes back when
the backend's token says the device no longer reads it.
"""

from __future__ import annotations

import queue
import threading
import time

__all__ = ["Ring", "RingClosed"]


class RingClosed(Exception):
    """Raised in a thread waiting on the ring after the load was aborted."""


class Ring:
    """``nslots`` reusable staging buffers allocated by ``backend.alloc_host_slots``.

    Parameters
    ----------
    backend:
        The backend whose memory the slots are (pinned for CUDA, page-aligned on the host).
    nslots:
        Number of slots; the memory cost is ``nslots * slot_bytes``.
    slot_bytes:
        Usable bytes per slot (chunk size plus O_DIRECT slack).
    """

    def __init__(self, backend, nslots: int, slot_bytes: int):
        self.backend = backend
        self.slot_bytes = slot_bytes
        self.nslots = nslots
        # Memory is allocated when a slot is first used: a load whose chunks all land in
        # place (row parts on the host) never allocates any.
        self.slots: list = [None] * nslots
        self._alloc_lock = threading.Lock()
        # LIFO: the most recently freed slot is reused first, so only as many slots as are
        # ever in flight at once get allocated, and the one reused is still warm in cache.
        self._free: queue.LifoQueue[int] = queue.LifoQueue()
        for i in reversed(range(nslots)):
            self._free.put(i)
        self._closed = threading.Event()
        self._retired: set[int] = set()
        #: Seconds spent in ``backend.alloc_host_slots`` (pinning, on CUDA).
        self.alloc_s = 0.0

    def allocate_all(self) -> None:
        """Allocate every slot now (in the calling thread) rather than on first use."""
        for i in range(self.nslots):
            self.buffer(i)

    @property
    def nbytes(self) -> int:
        """Bytes of staging memory allocated so far."""
        return sum(self.slot_bytes for s in self.slots if s is not None)

    def buffer(self, index: int):
        """The memory of slot ``index`` (allocated on first use)."""
        buf = self.slots[index]
        if buf is None:
            with self._alloc_lock:
                buf = self.slots[index]
                if buf is None:
                    t = time.perf_counter()
                    buf = self.slots[index] = self.backend.alloc_host_slots(1, self.slot_bytes)[0]
                    self.alloc_s += time.perf_counter() - t
        return buf

    def acquire(self) -> int:
        """Block until a slot is free and return its index; raise RingClosed after abort()."""
        while True:
            if self._closed.is_set():
                raise RingClosed()
            try:
                return self._free.get(timeout=0.05)
            except queue.Empty:
                continue

    def release(self, index: int) -> None:
        self._free.put(index)

    def retire(self, index: int) -> None:
        """Never lend slot ``index`` again (a failed device may still read it).

        It is not put back on the free list, and :meth:`close` drops it as
        ``close(reuse=False)`` drops every slot.
        """
        with self._alloc_lock:
            self._retired.add(index)

    def abort(self) -> None:
        """Wake every waiter with RingClosed (the load failed)."""
        self._closed.set()

    def check_open(self) -> None:
        """Raise RingClosed once :meth:`abort` or :meth:`close` ran (for work between acquires)."""
        if self._closed.is_set():
            raise RingClosed()

    def close(self, reuse: bool = True) -> None:
        """Hand the slots back to the backend. Idempotent.

        ``reuse=False`` (a device failed and may still read them) only drops them, so
        that a pooling backend never lends them to another load; so are the slots passed
        to :meth:`retire`.
        """
        self._closed.set()
        with self._alloc_lock:
            slots, self.slots = [(i, s) for i, s in enumerate(self.slots) if s is not None], []
        freed = [s for i, s in slots if reuse and i not in self._retired]
        dropped = [s for i, s in slots if not reuse or i in self._retired]
        if dropped:
            forget = getattr(self.backend, "forget_host_slots", None)
            if forget is not None:
                forget(dropped)
        if freed:
            self.backend.free_host_slots(freed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
