"""The bounded ring of host staging buffers.

All the host memory a load stages through is allocated here, once per load, as
``nslots`` buffers of ``slot_bytes``: page-aligned anonymous memory on the host backend,
pinned memory on CUDA (pinning costs ~1-3 GB/s, so it is never done per tensor). A slot
is acquired by a reader thread, filled, handed to the device backend, and comes back when
the backend's token says the device no longer reads it.
"""

from __future__ import annotations

import queue
import threading

__all__ = ["Ring", "RingClosed"]

#: O_DIRECT needs 4096-aligned file offsets, sizes and buffers: a slot holds this much
#: slack on each side of a chunk so an aligned superset of the chunk fits.
ALIGN = 4096


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
        self.slots = backend.alloc_host_slots(nslots, slot_bytes)
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(nslots):
            self._free.put(i)
        self._closed = threading.Event()

    @property
    def nbytes(self) -> int:
        return len(self.slots) * self.slot_bytes

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

    def abort(self) -> None:
        """Wake every waiter with RingClosed (the load failed)."""
        self._closed.set()

    def close(self) -> None:
        """Free the slots' memory. Idempotent."""
        self._closed.set()
        if self.slots:
            slots, self.slots = self.slots, []
            self.backend.free_host_slots(slots)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
