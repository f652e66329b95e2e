"""Which rank a device belongs to: the task of TensorFlow's full device names.

``/job:worker/task:3/device:GPU:0`` and ``/job:worker/replica:0/task:3/device:CPU:0``
belong to task 3, which gpuload maps to rank 3 of the communicator. A device string
without a task (``/gpu:0``, ``/device:CPU:0``) belongs to every rank: each rank holds its
own copy (replicated). As in TensorFlow, a partial name (``/job:worker/task:3``) or one
of another device type (``/job:w/task:3/device:TPU:0``) still names its task. The string
is parsed by :meth:`gpuload.devices.Device.parse_task`; this module imports no MPI.
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
        task), of any device type and with any part left out (``"/job:worker/task:1"``), a
        :class:`~gpuload.devices.Device`, or anything else (``None``, a callable): no task.

    Returns
    -------
    int or None

    Raises
    ------
    ValueError
        Not a TensorFlow device name (see :meth:`gpuload.devices.Device.parse_task`),
        e.g. one that names two different tasks.
    """
    if not isinstance(device, (str, Device)):
        return None
    return Device.parse_task(device)
