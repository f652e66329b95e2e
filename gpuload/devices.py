"""Device names: :class:`Device`, the one parser of every device string gpuload accepts.

Every device string TensorFlow users write is accepted and has one canonical form,
``"/device:CPU:0"`` or ``"/device:GPU:N"`` (``str(device)``):

=================================================  ======================
accepted                                           canonical
=================================================  ======================
``cpu``, ``cpu:0``, ``/cpu:0``, ``/device:CPU:0``  ``/device:CPU:0``
``gpu``, ``cuda``, ``/device:GPU``                 ``/device:GPU:0``
``gpu:1``, ``/gpu:1``, ``cuda:1``,                 ``/device:GPU:1``
``/device:GPU:1``, ``/physical_device:GPU:1``,
``/job:localhost/replica:0/task:0/device:GPU:1``
=================================================  ======================

Matching ignores case and surrounding blanks. A full name's task
(``/job:worker/task:3/device:GPU:0``) is kept as :attr:`Device.task`: in a multi-process
load it says which rank holds the variable. This module imports nothing of gpuload (every
layer may use it) and probes no hardware: whether a GPU exists is
:func:`gpuload.backend.placement.check_device`'s question.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["CPU", "Device"]

_DEVICE_RE = re.compile(
    r"""^
    (?P<prefix>(?:/job:[^/]+)?(?:/replica:\d+)?(?:/task:(?P<task>\d+))?)   # TF's full name prefix
    (?P<sep>/?(?:physical_)?device:|/)?                                     # /device:, /physical_device:, / or nothing
    (?P<kind>cpu|gpu|cuda)
    (?::(?P<index>\d+))?
    $""",
    re.IGNORECASE | re.VERBOSE,
)
_TASK_RE = re.compile(r"(?:^|/)task:(\d+)(?=/|$)", re.IGNORECASE)

_EXPECTED = (
    "expected e.g. 'cpu', '/cpu:0', 'gpu:1', 'cuda:1', '/device:GPU:1' or "
    "'/job:localhost/replica:0/task:0/device:GPU:1'"
)


@dataclasses.dataclass(frozen=True)
class Device:
    """One device: the CPU or GPU ``index``, optionally of a task of a multi-process job.

    Parameters
    ----------
    kind:
        ``"CPU"`` or ``"GPU"``.
    index:
        The GPU's index (as CuPy numbers devices); always 0 for the CPU.
    task:
        The task a full device name names (``/job:w/task:2/device:GPU:0``), else ``None``
        (a device of every process).

    Examples
    --------
    >>> d = Device.parse("/job:worker/task:2/device:gpu:1")
    >>> d.kind, d.index, d.task, str(d)
    ('GPU', 1, 2, '/device:GPU:1')
    >>> str(Device.parse("cpu"))
    '/device:CPU:0'
    """

    kind: str
    index: int = 0
    task: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("CPU", "GPU"):
            raise ValueError(f"device kind must be 'CPU' or 'GPU', got {self.kind!r}")
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0:
            raise ValueError(f"device index must be an integer >= 0, got {self.index!r}")
        if self.kind == "CPU" and self.index != 0:
            raise ValueError(f"/device:CPU:{self.index}: gpuload has a single CPU device, /device:CPU:0")
        if self.task is not None and (not isinstance(self.task, int) or self.task < 0):
            raise ValueError(f"device task must be an integer >= 0 or None, got {self.task!r}")

    @classmethod
    def parse(cls, spec: str | Device) -> Device:
        """The device a string names, in any spelling of the module table.

        Parameters
        ----------
        spec:
            A device string, or a :class:`Device` (returned as it is).

        Raises
        ------
        TypeError
            ``spec`` is not a string.
        ValueError
            Not a device string (the message names it and what is accepted), a CPU index
            other than 0, or two different tasks.
        """
        if isinstance(spec, Device):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"device must be a string such as 'cpu' or '/device:GPU:0', got {spec!r}")
        m = _DEVICE_RE.match(spec.strip())
        # A full name's prefix is followed by "/": "/task:0gpu" names no device.
        if m is None or (m.group("prefix") and not (m.group("sep") or "").startswith("/")):
            tasks = sorted({int(t) for t in _TASK_RE.findall(spec)})
            if len(tasks) > 1:
                raise ValueError(f"device {spec!r} names more than one task: {tasks}")
            raise ValueError(f"not a device string: {spec!r}; {_EXPECTED}")
        index = int(m.group("index") or 0)
        task = None if m.group("task") is None else int(m.group("task"))
        if m.group("kind").lower() == "cpu":
            if index != 0:
                raise ValueError(f"{spec!r}: gpuload has a single CPU device, /device:CPU:0")
            return cls("CPU", 0, task)
        return cls("GPU", index, task)

    @classmethod
    def gpu(cls, index: int) -> Device:
        """``/device:GPU:<index>`` (no task)."""
        return cls("GPU", int(index))

    @property
    def is_gpu(self) -> bool:
        """Whether this is a GPU."""
        return self.kind == "GPU"

    def __str__(self) -> str:
        """The canonical device string, ``"/device:CPU:0"`` or ``"/device:GPU:N"`` (no task)."""
        return f"/device:{self.kind}:{self.index}"


#: The CPU (of this process).
CPU = Device("CPU")
