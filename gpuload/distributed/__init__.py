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

Importing this package does not import mpi4py; the first collective load does.
"""

from __future__ import annotations

from gpuload.distributed.placement import task_of
from gpuload.errors import GpuloadError

__all__ = ["NotLocalError", "local_variables", "task_of"]


class NotLocalError(GpuloadError, ValueError):
    """A variable placed on another task's device was read on this rank, which holds no buffer for it."""


def _not_local(task: int, rank: int, size: int):
    def make(var):
        return NotLocalError(
            f"variable {var.name!r} is placed on task {task} (rank {task}); this process is rank {rank} "
            f"of {size} and holds no buffer for it: read it on rank {task}, or place it on a device "
            f"without a task ('/device:GPU:0') to have a copy on every rank"
        )

    return make


def local_variables(variables):
    """The variables this rank holds under the active communicator; marks the others.

    A variable whose device names task ``k`` is held by rank ``k`` only; on the other
    ranks it keeps no value and reading it raises :class:`NotLocalError`.

    Raises
    ------
    ValueError
        A variable names a task outside the communicator's ranks.
    """
    from gpuload import config

    comm = config.get().communicator
    rank, size = comm.Get_rank(), comm.Get_size()
    out = []
    for v in variables:
        task = v._task
        if task is not None and not 0 <= task < size:
            raise ValueError(
                f"variable {v.name!r} is placed on task {task}, but the communicator has {size} "
                f"ranks (tasks 0..{size - 1})"
            )
        if task is None or task == rank:
            v._not_local = None
            out.append(v)
        else:
            v._not_local = _not_local(task, rank, size)
            v._value = None
    return out
