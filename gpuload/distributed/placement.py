"""Which rank a device belongs to: the task of TensorFlow's full device names.

``/job:worker/task:3/device:GPU:0`` and ``/job:worker/replica:0/task:3/device:CPU:0``
belong to task 3, which gpuload maps to rank 3 of the communicator. A device string
without a task (``/gpu:0``, ``/device:CPU:0``) belongs to every rank: each rank holds its
own copy (replicated). This module is pure string handling and imports no MPI.
"""

from __future__ import annotations

import re

__all__ = ["task_of"]

_TASK_RE = re.compile(r"(?:^|/)task:(\d+)(?=/|$)", re.IGNORECASE)


def task_of(device) -> int | None:
    """The task a device string names, or ``None`` when it names none (every rank).

    Parameters
    ----------
    device:
        A device string as written by the user (before canonicalisation, which drops the
        task), or ``None``.

    Returns
    -------
    int or None

    Raises
    ------
    ValueError
        The string names two different tasks.
    """
    if not isinstance(device, str):
        return None
    tasks = {int(m) for m in _TASK_RE.findall(device)}
    if len(tasks) > 1:
        raise ValueError(f"device {device!r} names more than one task: {sorted(tasks)}")
    return tasks.pop() if tasks else None
