"""Which rank a device belongs to: the task of TensorFlow's full device names.

``/job:worker/task:3/device:GPU:0`` and ``/job:worker/replica:0/task:3/device:CPU:0``
belong to task 3, which gpuload maps to rank 3 of the communicator. A device string
without a task (``/gpu:0``, ``/device:CPU:0``) belongs to every rank: each rank holds its
own copy (replicated). The string is parsed by :class:`gpuload.devices.Device`; this
module imports no MPI.
"""

from __future__ import annotations

from gpuload.devices import Device

__all__ = ["task_of"]


def task_of(device) -> int | None:
    """The task a device string names, or ``None`` when it names none (every rank).

    Parameters
    ----------
    device:
        A device string as written by the user (before canonicalisation, which drops the
        task), a :class:`~gpuload.devices.Device`, or anything else (``None``, a
        callable): no task.

    Returns
    -------
    int or None

    Raises
    ------
    ValueError
        Not a device string (see :meth:`gpuload.devices.Device.parse`), e.g. one that
        names two different tasks.
    """
    if not isinstance(device, (str, Device)):
        return None
    return Device.parse(device).task
