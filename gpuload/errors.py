"""The exceptions gpuload raises.

Every error is a :class:`GpuloadError`. Each also derives from the builtin that a caller
who does not know gpuload would catch: a bad or missing checkpoint and a bad assignment
map are ``ValueError`` (as in TensorFlow), a failed read is ``OSError``, a missing device
is ``RuntimeError``.

Messages name the file, the tensor, what was expected and what was found.
"""

from __future__ import annotations

import errno as _errno

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
    "CheckpointFileError",
    "TruncatedCheckpointError",
    "MissingDataFileError",
    "CheckpointChangedError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "TargetError",
    "OutOfMemoryError",
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
    """A stored CRC32C does not match the bytes read.

    Built by :meth:`mismatch` wherever an entry's CRC is checked (a load or a reader), so
    one corrupt entry gives the same message and the same ``tensor`` either way.
    """

    @classmethod
    def mismatch(
        cls, *, path, tensor: str, part: str | None, offset: int, size: int, stored: int, computed: int
    ) -> ChecksumError:
        """The error for a stored entry whose bytes do not have the stored CRC.

        Parameters
        ----------
        path:
            The data file.
        tensor:
            The checkpoint's tensor name (for a stored slice, the partitioned tensor's name).
        part:
            The stored slice, e.g. ``"[0:2, 0:8]"``; ``None`` for a tensor stored whole.
        offset, size:
            Where the entry's bytes are in ``path``.
        stored, computed:
            The unmasked CRC32C in the index and the one of the bytes read.
        """
        where = f"tensor {tensor!r}" if part is None else f"tensor {tensor!r} slice {part}"
        err = cls(
            f"crc32c mismatch in {where} ({size} bytes at offset {offset}): stored 0x{stored:08x}, "
            f"computed 0x{computed:08x}; the data file may be truncated or corrupt",
            path=path,
        )
        err.tensor, err.offset = tensor, offset  # named in the message already, not in its prefix
        return err


class UnsupportedCheckpointError(CheckpointFormatError):
    """A valid checkpoint that uses a feature gpuload does not read (V1, snappy, ...)."""


class AssignmentMapError(GpuloadError, ValueError):
    """``init_from_checkpoint``'s assignment map does not fit the checkpoint or the variables."""


class PlanError(GpuloadError, ValueError):
    """A load cannot be planned: the stored slices do not cover what a variable needs."""


class ShardReadError(GpuloadError, OSError):
    """Reading a checkpoint data file failed (missing, truncated, I/O error).

    Raised wherever data files are read: by a load's reader threads and by
    :class:`~gpuload.format.bundle.Bundle` (``CheckpointReader``) reads alike.

    Attributes
    ----------
    tensor:
        The tensor whose bytes were being read, when known (else ``None``).
    """

    tensor: str | None = None

    @classmethod
    def failed_read(
        cls, exc: OSError, *, path, offset: int, size: int, tensor=None, what: str | None = None
    ) -> ShardReadError:
        """A read of ``size`` bytes at ``offset`` of ``path`` failed with ``exc`` (an I/O error).

        ``tensor`` is the tensor whose bytes these are (``.tensor``); ``what`` says it in
        the message when it says more than ``tensor 'name'``.
        """
        where = _where(tensor, what)
        who = "" if where is None else f" ({where})"
        err = cls(exc.errno, f"read of {size} bytes at offset {offset}{who} failed: {exc.strerror}", str(path))
        err.tensor = tensor
        return err


class DeviceUnavailableError(GpuloadError, RuntimeError):
    """A device was asked for that is not there (no CUDA device, no CuPy, bad index)."""


class UninitializedVariableError(GpuloadError, RuntimeError):
    """A variable's value was asked for before any initializer ran (TF's FailedPrecondition)."""


class CheckpointFileError(CheckpointFormatError, ShardReadError):
    """A checkpoint file on disk is not what the index says, or not a file at all.

    Truncated data files, files replaced after the index was read, and paths that are not
    regular files (a FIFO, a device). Such a problem can be found when a checkpoint is
    opened (before ``run()``) or while it is read (during ``run()``); so that the same
    problem is the same error whenever it is found, this class is both a
    :class:`CheckpointFormatError` (a ``ValueError``, what opening raises) and a
    :class:`ShardReadError` (an ``OSError``, what reading raises): ``except ValueError``
    and ``except OSError`` both catch it.

    Parameters are those of :class:`CheckpointFormatError`, plus ``errno`` (default EIO).
    """

    def __init__(self, message: str, *, path=None, tensor=None, offset=None, errno: int = 5):
        CheckpointFormatError.__init__(self, message, path=path, tensor=tensor, offset=offset)
        self.errno = errno
        self.filename = self.path

    def __str__(self):
        return self.args[0]

    @classmethod
    def not_regular(cls, what: str, path, exc: OSError, *, tensor=None) -> CheckpointFileError:
        """``path`` is a FIFO, a device, a directory...: ``exc.strerror`` says which.

        ``what`` names the file's role (``"checkpoint data file"``, ``"checkpoint index"``).
        """
        return cls(
            f"{what} {exc.strerror}", path=path, tensor=tensor, errno=exc.errno or 22
        )  # EINVAL, as open_regular reports it


class TruncatedCheckpointError(CheckpointFileError):
    """A data file ends before the bytes the index says it holds.

    Built by :meth:`short_read`, whether the index is checked against the file's size when
    the checkpoint is opened or a read comes back short during a load.
    """

    @classmethod
    def short_read(
        cls, *, path, offset: int, expected: int, end: int, tensor=None, what: str | None = None
    ) -> TruncatedCheckpointError:
        """``expected`` bytes were needed at ``offset`` of ``path``, but the file ends at ``end``.

        ``tensor`` is the tensor whose bytes these are (``.tensor``); ``what`` says it in
        the message when it says more than ``tensor 'name'`` (a stored slice, several
        tensors).
        """
        message = (
            f"expected {expected} bytes at offset {offset}, found {max(0, end - offset)}: the file ends at byte "
            f"{end}; the data file is truncated, or is not the one the index describes"
        )
        where = _where(tensor, what)
        err = cls(f"{where}: {message}" if where else message, path=path)
        err.tensor, err.offset = tensor, offset  # named in the message already, not in its prefix
        return err


class MissingDataFileError(CheckpointNotFoundError, ShardReadError):
    """A data file the index refers to is not there (``errno`` ENOENT).

    Found when the checkpoint is opened, or when a file deleted or renamed after that is
    read (by a load or a reader). Built by :meth:`missing` in both cases, and both a
    :class:`CheckpointNotFoundError` (a ``ValueError``, what opening raises) and a
    :class:`ShardReadError` (an ``OSError``, what a failed read raises).

    Attributes
    ----------
    path:
        The missing data file.
    shard, num_shards:
        Its shard number and the checkpoint's number of shards (``None`` when unknown).
    tensor:
        The tensor whose bytes were wanted from it, when known.
    """

    def __init__(self, message: str, *, path, shard=None, num_shards=None, tensor=None):
        super().__init__(message)
        self.errno = _errno.ENOENT
        self.strerror = "No such file or directory"
        self.path = self.filename = str(path)
        self.shard, self.num_shards, self.tensor = shard, num_shards, tensor

    def __str__(self):
        return self.args[0]

    @classmethod
    def missing(
        cls, *, path, shard=None, num_shards=None, tensor=None, what: str | None = None
    ) -> MissingDataFileError:
        """Data file ``path`` (shard ``shard`` of ``num_shards``), which holds ``tensor``, is missing.

        ``what`` says the tensor in the message when it says more than ``tensor 'name'``.
        """
        which = "" if shard is None else f" (shard {shard} of {num_shards})"
        where = _where(tensor, what)
        holds = f", which holds {where}," if where else ""
        return cls(
            f"data file {str(path)!r}{which}{holds} is missing: the checkpoint is incomplete, or the file was "
            f"deleted or renamed after the checkpoint was opened",
            path=path,
            shard=shard,
            num_shards=num_shards,
            tensor=tensor,
        )


def _where(tensor, what: str | None) -> str | None:
    """How a message names the bytes concerned: ``what``, else ``tensor 'name'``, else nothing."""
    if what is not None:
        return what
    return None if tensor is None else f"tensor {tensor!r}"


class CheckpointChangedError(CheckpointFileError):
    """The checkpoint was replaced or changed between ``init_from_checkpoint`` and ``run()``."""


class InvalidArgumentError(GpuloadError, ValueError):
    """An argument of a public function has a bad value; the message names the argument."""


class TargetError(InvalidArgumentError):
    """A :func:`gpuload.load` target of the wrong shape, dtype, device or layout; the message
    names the request, the checkpoint tensor and the target."""


class ArgumentTypeError(GpuloadError, TypeError):
    """An argument of a public function has the wrong type; the message names the argument."""


class OutOfMemoryError(GpuloadError, MemoryError):
    """Memory for a tensor could not be allocated; the message names the tensor and the size asked for."""


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


class DeviceMemoryError(DeviceError, OutOfMemoryError):
    """A device (or pinned host) allocation failed: out of memory on ``device``.

    An :class:`OutOfMemoryError` too, so one ``except`` catches running out of memory
    wherever it happens.
    """


class WarmStartError(AssignmentMapError):
    """``warm_start`` arguments do not fit the variables, the checkpoint or the vocabularies."""


class VocabFileError(WarmStartError):
    """A vocabulary file is shorter than the size given, has an empty line or a duplicate token.

    Attributes
    ----------
    path:
        The vocabulary file.
    line:
        The 1-based line number concerned (``None`` when the file as a whole is at fault).
    """

    def __init__(self, message: str, *, path, line=None):
        self.path = str(path)
        self.line = line
        where = self.path if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {message}")


__all__ += ["WarmStartError", "VocabFileError"]
