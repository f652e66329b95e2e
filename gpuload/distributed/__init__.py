"""Multi-process loads: one checkpoint, many ranks, every needed byte read from storage once.

Set an mpi4py communicator and every initializer run becomes collective over its ranks::

    from mpi4py import MPI
    import gpuload as tf1

    tf1.config.set(communicator=MPI.COMM_WORLD)
    ...  # each rank builds its graph and calls init_from_checkpoint
    tf1.global_variables_initializer().run()  # every rank calls it

A variable (or part) whose device names a task (``/job:worker/task:3/device:GPU:0``)
belongs to rank 3 only; without a task it is replicated on every rank. The ranks plan
their needs together, each needed chunk is read by one rank
(:mod:`gpuload.distributed.assign`, pure) and moved to the others over MPI
(:mod:`gpuload.distributed.load`). No wait lasts longer than ``collective_timeout``
without progress (:mod:`gpuload.distributed.comm`).

The entry point is :func:`gpuload.distributed.load.collective_load`: :func:`gpuload.load`'s
requests (key, box, target, remap), grouped by checkpoint, loaded over every rank. It
sees requests and arrays only; the TF1 initializer op (:mod:`gpuload.graph.ops`) turns
its variables into requests and decides which variables a rank holds.

Importing this package does not import mpi4py; the first collective load does.
"""

from __future__ import annotations

from gpuload.distributed.placement import task_of
from gpuload.errors import GpuloadError

__all__ = ["NotLocalError", "task_of"]


class NotLocalError(GpuloadError, ValueError):
    """A variable placed on another task's device was read on this rank, which holds no buffer for it."""
