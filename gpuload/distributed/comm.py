"""MPI coordination with deadlines: no wait in a collective load can block forever.

Every wait is a loop of ``Test`` calls on non-blocking MPI operations (``Iallgather``,
``Ibcast``, ``Isend``/``Irecv``) that also looks for an *abort* message from another rank
and gives up after ``collective_timeout`` seconds without progress. A rank that fails
during a collective load sends every other rank an abort message with its error text;
a rank that never arrives (it raised before ``run()``) is caught by the deadline.

gpuload talks over a private duplicate of the user's communicator (made with the
non-blocking ``Idup``, once per communicator), so its messages never match the
application's. After a failed or timed-out load the ranks may be out of step (one may
still wait in an operation the others abandoned), so the private communicator is retired:
the next collective load over the same communicator raises at once instead of matching
stale messages.
"""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
from mpi4py import MPI

from gpuload.errors import GpuloadError

__all__ = ["CollectiveError", "CollectiveTimeoutError", "Coordinator", "coordinator_for"]

#: Tag of abort messages; chunk messages use tags below it.
ABORT_TAG = 32000


class CollectiveError(GpuloadError, RuntimeError):
    """Another rank failed the collective load (its error text is in the message)."""


class CollectiveTimeoutError(CollectiveError, TimeoutError):
    """The other ranks did not answer within ``collective_timeout`` seconds."""


class Coordinator:
    """Deadline-bounded operations over a private duplicate of one communicator.

    Parameters
    ----------
    comm:
        The user's mpi4py communicator.
    pc:
        Its private duplicate (complete).
    """

    def __init__(self, comm, pc):
        self.comm = comm
        self.pc = pc
        self.rank = pc.Get_rank()
        self.size = pc.Get_size()
        self.broken: str | None = None
        self._keep: list = []  # buffers that abandoned MPI operations may still touch
        self._abort_reqs: list = []  # non-empty once this rank told the others it failed
        self.timeout = 300.0
        self._last = time.monotonic()
        self._nap = 0.0
        self._idle_rounds = 0
        self.nccl: dict = {}  # CUDA device -> NcclTransport, built on first use (collectively)

    # ---- deadlines

    def progressed(self) -> None:
        """Something moved: the deadline restarts."""
        self._last = time.monotonic()
        self._nap = 0.0
        self._idle_rounds = 0

    def idle(self, what: str) -> None:
        """Nothing moved this round: check for aborts and the deadline, then nap briefly."""
        self.check_abort()
        waited = time.monotonic() - self._last
        if waited > self.timeout:
            self.retire(f"timed out {what}")
            raise CollectiveTimeoutError(
                f"collective load: no progress for {waited:.1f} s while {what} on rank {self.rank} of "
                f"{self.size} (collective_timeout={self.timeout:g} s): another rank failed before "
                f"joining, is not calling run(), or is stuck"
            )
        # Poll fast at first (MPI progresses on Test), then back off so that waiting ranks
        # leave the CPU to the ones reading.
        self._nap = min(0.0002, self._nap * 2 or 0.00001) if self._idle_rounds > 50 else 0.0
        self._idle_rounds += 1
        time.sleep(self._nap)

    def wait(self, requests, what: str) -> None:
        """Wait for every request, raising on abort or after the timeout without progress."""
        self.progressed()
        while not MPI.Request.Testall(requests):
            self.idle(what)

    # ---- abort messages

    def check_abort(self) -> None:
        status = MPI.Status()
        if self.pc.Iprobe(source=MPI.ANY_SOURCE, tag=ABORT_TAG, status=status):
            text = self.pc.recv(source=status.Get_source(), tag=ABORT_TAG)
            self.retire(f"rank {status.Get_source()} aborted")
            raise CollectiveError(f"collective load failed on rank {status.Get_source()}: {text}")

    def abort(self, text: str) -> None:
        """Tell every other rank this one failed (non-blocking; best effort; once).

        Sent even when the communicator is already retired by this rank's own failure
        (an abandoned NCCL transfer): the caller does not abort for the others' errors."""
        if not self._abort_reqs:
            for r in range(self.size):
                if r != self.rank:
                    self._abort_reqs.append(self.pc.isend(text, dest=r, tag=ABORT_TAG))
        self.retire(f"rank {self.rank} failed: {text}")

    def retire(self, why: str) -> None:
        """Mark the private communicator unusable (ranks may be out of step)."""
        if self.broken is None:
            self.broken = why

    def keep(self, obj) -> None:
        """Keep ``obj`` alive: an MPI operation that could not be cancelled may still write it."""
        self._keep.append(obj)

    # ---- collectives

    def allgather(self, obj, what: str) -> list:
        """Every rank's ``obj`` (pickled), in rank order, with deadline and abort checks."""
        data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
        mine = np.array([data.size], dtype=np.int64)
        sizes = np.empty(self.size, dtype=np.int64)
        self.wait([self.pc.Iallgather(mine, sizes)], what)
        displs = np.zeros(self.size, dtype=np.int64)
        displs[1:] = np.cumsum(sizes)[:-1]
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        self.wait([self.pc.Iallgatherv(data, [out, (sizes.astype(np.int32), displs.astype(np.int32)), MPI.BYTE])], what)
        return [pickle.loads(out[d : d + n].tobytes()) for d, n in zip(displs, sizes)]


_lock = threading.Lock()
_coordinators: dict[int, tuple[object, Coordinator]] = {}


def coordinator_for(comm, timeout: float) -> Coordinator:
    """The coordinator of ``comm`` (its private duplicate made on first use, collectively).

    Raises
    ------
    CollectiveError
        An earlier collective load over ``comm`` failed or timed out.
    CollectiveTimeoutError
        Not every rank joined within ``timeout`` seconds.
    """
    with _lock:
        entry = _coordinators.get(id(comm))
    if entry is None or entry[0] is not comm:
        pc, req = comm.Idup()
        co = Coordinator(comm, pc)
        co.timeout = timeout
        with _lock:
            _coordinators[id(comm)] = (comm, co)  # holding comm keeps id(comm) from being reused
        co.progressed()
        while not req.Test():
            waited = time.monotonic() - co._last
            if waited > timeout:
                co.retire("the first collective load did not start on every rank")
                co.keep(req)
                raise CollectiveTimeoutError(
                    f"collective load: not every rank of {comm.Get_size()} joined within {timeout:g} s "
                    f"(rank {comm.Get_rank()} waited; collective_timeout={timeout:g} s): a rank failed "
                    f"before run() or does not call it"
                )
            time.sleep(0.0005)
    else:
        co = entry[1]
    if co.broken is not None:
        raise CollectiveError(
            f"an earlier collective load over this communicator failed ({co.broken}); the ranks may be "
            f"out of step, so gpuload does not use it again: restart the job"
        )
    co.timeout = timeout
    co.check_abort()
    return co
