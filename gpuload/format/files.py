"""Opening and reading checkpoint files: regular files only, never a FIFO, a device or a directory.

:class:`ShardFiles` is the one reader of data files: the load's reader threads and
:class:`~gpuload.format.bundle.Bundle`'s reads both go through it, so a file that is
missing, not regular, unreadable or shorter than the index says fails the same way
wherever it is read.

A checkpoint path is data an attacker or an accident can point anywhere: a data shard
replaced by a named pipe would block ``open`` (no writer) and then ``read`` forever, a
character device such as ``/dev/zero`` would feed endless bytes. Files are therefore
opened with ``O_NONBLOCK`` (``open`` of a FIFO returns at once) and checked with
``fstat`` on the descriptor itself (no race between a ``stat`` and the ``open``) before
a byte is read.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import threading
import weakref
from collections.abc import Sequence

from gpuload.errors import CheckpointFileError, MissingDataFileError, ShardReadError, TruncatedCheckpointError

__all__ = [
    "open_regular",
    "read_regular",
    "file_kind",
    "NotRegularFileError",
    "ShardFiles",
    "ALIGN",
    "DIRECT_REQUEST",
]

#: Alignment of ``O_DIRECT`` reads (offset, length and memory): the page size.
ALIGN = 4096
#: Largest single O_DIRECT request. Measured on a virtual disk (bench/results, 2026-11-25):
#: 8-16 MiB requests were served about twice as fast as 32 MiB ones.
DIRECT_REQUEST = 8 << 20


class NotRegularFileError(OSError):
    """Internal: the path is not a regular file. Callers turn it into their own error class."""


def file_kind(mode: int) -> str:
    """What a ``st_mode`` describes, in words (for messages)."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return f"not a regular file (mode 0o{mode:o})"


def not_regular(path, mode: int) -> NotRegularFileError:
    """The :class:`NotRegularFileError` for ``path`` whose ``st_mode`` is ``mode``."""
    return NotRegularFileError(22, f"is {file_kind(mode)}, not a regular file", os.fsdecode(path))


def open_regular(path, flags: int = os.O_RDONLY) -> int:
    """``os.open(path, flags)`` that refuses anything but a regular file.

    Returns a blocking descriptor (``O_NONBLOCK`` is cleared again once the file is known
    to be regular; it means nothing for regular files, but is not left on the caller).

    Raises
    ------
    NotRegularFileError
        ``path`` is a FIFO, device, socket or directory; ``strerror`` says which.
    OSError
        ``open`` itself failed (``FileNotFoundError``, ``PermissionError``, ...).
    """
    fd = os.open(path, flags | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(path, st.st_mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path) -> tuple[bytes, os.stat_result]:
    """The whole content of regular file ``path`` and its ``fstat`` (taken before reading)."""
    fd = open_regular(path)
    try:
        st = os.fstat(fd)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    return data, st


_DATA_NAME = re.compile(r"\.data-(\d+)-of-(\d+)$")


def _shard_number(path) -> tuple[int | None, int | None]:
    """``(shard, num_shards)`` of a data file, from its name ``P.data-%05d-of-%05d`` (TF's
    ``DataFilename``); ``(None, None)`` for a name not of that form."""
    m = _DATA_NAME.search(os.fsdecode(path))
    return (int(m[1]), int(m[2])) if m else (None, None)


def _close_all(fds: dict) -> None:
    for fd in list(fds.values()):
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class ShardFiles:
    """Open file descriptors for a checkpoint's data files, shared by reading threads.

    ``os.preadv`` is positional, so threads share a descriptor without seeking, and it
    fills the caller's buffer directly: no intermediate ``bytes`` objects. Files open on
    first use; :meth:`close` closes them (they reopen if read again), as does garbage
    collection.

    Parameters
    ----------
    paths:
        The files, by index (``Plan.files``, or a bundle's shard paths). A sequence is
        used as given (it may compute its items), anything else is listed.
    direct:
        Open with ``O_DIRECT`` (bypass the page cache) where the OS has it; reads are
        then widened to :data:`ALIGN`-byte alignment by :meth:`read`.

    Raises
    ------
    CheckpointFileError
        A file is not a regular file (a FIFO, a device...).
    MissingDataFileError
        A file is missing (both a ``CheckpointNotFoundError`` and a ``ShardReadError``).
    ShardReadError
        A file cannot be opened or read (permissions, I/O error).
    TruncatedCheckpointError
        A file ends before the bytes asked for.
    """

    def __init__(self, paths, *, direct: bool = False):
        self.paths = paths if isinstance(paths, Sequence) else list(paths)
        self.direct = bool(direct) and hasattr(os, "O_DIRECT")
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._fds)

    def _fd(self, index: int, tensor: str | None, what: str | None) -> int:
        fd = self._fds.get(index)
        if fd is None:
            with self._lock:
                fd = self._fds.get(index)
                if fd is None:
                    path = self.paths[index]
                    flags = os.O_RDONLY | (os.O_DIRECT if self.direct else 0)
                    try:
                        fd = self._open(path, flags)
                    except NotRegularFileError as exc:
                        raise CheckpointFileError.not_regular(
                            "checkpoint data file", path, exc, tensor=tensor
                        ) from None
                    except FileNotFoundError:
                        shard, num_shards = _shard_number(path)
                        raise MissingDataFileError.missing(
                            path=path, shard=shard, num_shards=num_shards, tensor=tensor, what=what
                        ) from None
                    except OSError as exc:
                        raise ShardReadError(
                            exc.errno, f"cannot open checkpoint data file: {exc.strerror}", path
                        ) from exc
                    self._fds[index] = fd
        return fd

    def _open(self, path, flags) -> int:
        # Regular files only: a FIFO or device put in place of a shard would block or never end.
        try:
            return open_regular(path, flags)
        except NotRegularFileError:
            raise
        except OSError as exc:
            if self.direct and exc.errno == 22:  # EINVAL: the filesystem has no O_DIRECT
                return open_regular(path)
            raise

    def read(
        self, index: int, offset: int, size: int, slot, *, tensor: str | None = None, what: str | None = None
    ) -> memoryview:
        """Read ``size`` bytes at ``offset`` of file ``index`` into ``slot``; return their view.

        With ``O_DIRECT`` the read covers the aligned superset and the returned view starts
        inside the slot at the requested byte. ``tensor`` (the tensor whose bytes these are,
        the errors' ``.tensor``) and ``what`` (how messages say it, when that is more than
        ``tensor 'name'``: a stored slice, several tensors) are named by the errors, as in
        every read below.
        """
        fd = self._fd(index, tensor, what)
        buf = memoryview(slot).cast("B")
        if self.direct:
            start = offset - offset % ALIGN
            stop = -(-(offset + size) // ALIGN) * ALIGN
            got = 0
            while start + got < stop:
                n = min(DIRECT_REQUEST, stop - start - got)
                piece = self._pread_full(
                    fd, index, buf[got : got + n], start + got, allow_short=True, tensor=tensor, what=what
                )
                got += piece
                if piece < n:
                    break
            if got < offset + size - start:
                raise TruncatedCheckpointError.short_read(
                    path=self.paths[index], offset=offset, expected=size, end=start + got, tensor=tensor, what=what
                )
            skip = offset - start
            return buf[skip : skip + size]
        self._pread_full(fd, index, buf[:size], offset, tensor=tensor, what=what)
        return buf[:size]

    def read_into(
        self, index: int, offset: int, buffers, *, tensor: str | None = None, what: str | None = None
    ) -> None:
        """Read consecutive bytes at ``offset`` of file ``index`` into ``buffers``, in order.

        The scatter form lets a chunk that lands whole in destination memory skip the ring
        (the host backend's zero-copy path). Not used with ``O_DIRECT``, whose alignment
        rules destination buffers do not meet. ``tensor``, ``what``: as for :meth:`read`.
        """
        fd = self._fd(index, tensor, what)
        for buf in buffers:
            view = memoryview(buf).cast("B")
            self._pread_full(fd, index, view, offset, tensor=tensor, what=what)
            offset += len(view)

    def pread(self, index: int, offset: int, buf, *, tensor: str | None = None, what: str | None = None) -> None:
        """Fill ``buf`` (a writable buffer, all its bytes) from ``offset`` of file ``index``.

        ``tensor``, ``what``: as for :meth:`read`.
        """
        view = memoryview(buf).cast("B")  # lengths below are bytes, whatever the buffer's format
        self._pread_full(self._fd(index, tensor, what), index, view, offset, tensor=tensor, what=what)

    def _pread_full(self, fd, index, view, offset, allow_short=False, *, tensor=None, what=None) -> int:
        done = 0
        total = len(view)
        while done < total:
            try:
                n = os.preadv(fd, [view[done:] if done else view], offset + done)
            except OSError as exc:
                raise ShardReadError.failed_read(
                    exc, path=self.paths[index], offset=offset, size=total, tensor=tensor, what=what
                ) from exc
            if n == 0:
                if allow_short:
                    return done
                raise TruncatedCheckpointError.short_read(
                    path=self.paths[index], offset=offset, expected=total, end=offset + done, tensor=tensor, what=what
                )
            done += n
        return done

    def close(self) -> None:
        """Close the files (not while other threads read through this object)."""
        with self._lock:
            _close_all(self._fds)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
