"""The exceptions gpuload raises.

Every error is a :class:`GpuloadError`. Each also derives from the builtin that a caller
who does not know gpuload would catch: a bad or missing checkpoint and a bad assignment
map are ``ValueError`` (as in TensorFlow), a failed read is ``OSError``, a missing device
is ``RuntimeError``.

Messages name the file, the tensor, what was expected and what was found.
"""

from __future__ import annotations

__all__ = [
    "GpuloadError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointFormatError",
    "ChecksumError",
    "UnsupportedCheckpointError",
    "AssignmentMapError",
    "PlanError",
    "ShardReadError",
    "DeviceUnavailableError",
    "UninitializedVariableError",
    "DeviceError",
    "DeviceMemoryError",
]


class GpuloadError(Exception):
    """Base class of every gpuload error."""


class CheckpointError(GpuloadError, ValueError):
    """A checkpoint cannot be used (missing, malformed, or unsupported)."""


class CheckpointNotFoundError(CheckpointError):
    """No checkpoint at the path given, or no tensor of that name in it."""


class CheckpointFormatError(CheckpointError):
    """The bytes on disk do not follow the TensorBundle V2 format.

    Parameters
    ----------
    message:
        What is wrong: what was expected and what was found.
    path:
        The file in which the problem was found.
    tensor:
        The tensor concerned, when there is one.
    offset:
        The byte offset in ``path`` where the problem is, when known.
    """

    def __init__(self, message: str, *, path=None, tensor=None, offset=None):
        self.path = None if path is None else str(path)
        self.tensor = tensor
        self.offset = offset
        where = []
        if self.path is not None:
            where.append(self.path)
        if tensor is not None:
            where.append(f"tensor {tensor!r}")
        if offset is not None:
            where.append(f"offset {offset}")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ChecksumError(CheckpointFormatError):
    """A stored CRC32C does not match the bytes read."""


class UnsupportedCheckpointError(CheckpointFormatError):
    """A valid checkpoint that uses a feature gpuload does not read (V1, snappy, ...)."""


class AssignmentMapError(GpuloadError, ValueError):
    """``init_from_checkpoint``'s assignment map does not fit the checkpoint or the variables."""


class PlanError(GpuloadError, ValueError):
    """A load cannot be planned: the stored slices do not cover what a variable needs."""


class ShardReadError(GpuloadError, OSError):
    """Reading a checkpoint data file failed during a load (missing, truncated, I/O error)."""


class DeviceUnavailableError(GpuloadError, RuntimeError):
    """A device was asked for that is not there (no CUDA device, no CuPy, bad index)."""


class UninitializedVariableError(GpuloadError, RuntimeError):
    """A variable's value was asked for before any initializer ran (TF's FailedPrecondition)."""


class DeviceError(GpuloadError, RuntimeError):
    """A CUDA call failed on a device; the message names the device, ``__cause__`` is CuPy's error.

    Attributes
    ----------
    device:
        The canonical device string, e.g. ``"/device:GPU:1"``.
    """

    def __init__(self, message: str, *, device: str | None = None):
        super().__init__(message)
        self.device = device


class DeviceMemoryError(DeviceError, MemoryError):
    """A device (or pinned host) allocation failed: out of memory on ``device``."""
