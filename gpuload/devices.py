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
load it says which rank holds the variable. :meth:`Device.parse_task` reads the task of
any TensorFlow device name, also a partial one (``/job:worker/task:3``) or one of a device
gpuload does not fill (``/job:w/task:3/device:TPU:0``). This module imports nothing of gpuload (every
layer may use it) and probes no hardware: whether a GPU exists is
:func:`gpuload.backend.placement.check_device`'s question.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["CPU", "CPU_NAME", "Device"]

# TensorFlow's device name grammar, in gpuload's order: job, replica and task (all optional),
# then the device. The device part is optional and its type is any name, so that a partial
# spec ("/job:worker/task:1", "/job:w/task:1/device:TPU:0") still yields its task
# (Device.parse_task); Device.parse then takes only a CPU or GPU.
_SPEC_RE = re.compile(
    r"""^
    (?P<prefix>(?:(?:^|/)job:[^/]+)?(?:(?:^|/)replica:\d+)?(?:(?:^|/)task:(?P<task>\d+))?)  # TF's prefix
    (?:
      (?P<sep>/?(?:physical_)?device:|/)?                                   # /device:, /physical_device:, / or nothing
      (?P<kind>(?!(?:job|replica|task)\b)[a-z_]+)                          # a device type, not a misplaced part
      (?::(?P<index>\d+))?
    )?
    $""",
    re.IGNORECASE | re.VERBOSE,
)
_TASK_RE = re.compile(r"(?:^|/)task:(\d+)(?=/|$)", re.IGNORECASE)

_EXPECTED_PARTIAL = "expected TensorFlow's /job:<name>/replica:<n>/task:<n>/device:<type>:<n>, any part left out"
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
        m = _match(spec, _EXPECTED)
        kind = (m.group("kind") or "").lower()
        if kind not in ("cpu", "gpu", "cuda"):  # a partial spec, or a device gpuload does not fill
            raise ValueError(f"not a device string: {spec!r}; {_EXPECTED}")
        index = int(m.group("index") or 0)
        task = None if m.group("task") is None else int(m.group("task"))
        if kind == "cpu":
            if index != 0:
                raise ValueError(f"{spec!r}: gpuload has a single CPU device, /device:CPU:0")
            return cls("CPU", 0, task)
        return cls("GPU", index, task)

    @staticmethod
    def parse_task(spec: str | Device) -> int | None:
        """The task a device name names, also in a partial TensorFlow spec; ``None`` for none.

        As TensorFlow's ``DeviceSpec``, every part may be left out and the device may be of
        any type: ``"/job:worker/task:1"`` and ``"/job:w/task:1/device:TPU:0"`` name task 1,
        ``"/job:ps"`` and ``"/device:TPU:0"`` none. Only :meth:`parse` insists on a CPU or GPU.

        Parameters
        ----------
        spec:
            A device string, or a :class:`Device` (its :attr:`task`).

        Raises
        ------
        TypeError
            ``spec`` is not a string.
        ValueError
            Not a device name (the message names it), e.g. two different tasks.
        """
        if isinstance(spec, Device):
            return spec.task
        if not isinstance(spec, str):
            raise TypeError(f"device must be a string such as '/job:worker/task:1', got {spec!r}")
        task = _match(spec, _EXPECTED_PARTIAL).group("task")
        return None if task is None else int(task)

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


def _match(spec: str, expected: str) -> re.Match[str]:
    """``spec`` matched against the device name grammar; a ValueError naming it if it is not one."""
    m = _SPEC_RE.match(spec.strip())
    # A full name's prefix is followed by "/": "/task:0gpu" names no device.
    if m is None or (m.group("prefix") and m.group("kind") and not (m.group("sep") or "").startswith("/")):
        tasks = sorted({int(t) for t in _TASK_RE.findall(spec)})
        if len(tasks) > 1:
            raise ValueError(f"device {spec!r} names more than one task: {tasks}")
        raise ValueError(f"not a device string: {spec!r}; {expected}")
    return m


#: The CPU (of this process).
CPU = Device("CPU")

#: Its canonical name, ``"/device:CPU:0"`` (``str(CPU)``).
CPU_NAME = str(CPU)
