"""Opening checkpoint files: regular files only, never a FIFO, a device or a directory.

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
import stat

__all__ = ["open_regular", "read_regular", "file_kind", "NotRegularFileError"]


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
            raise NotRegularFileError(22, f"is {file_kind(st.st_mode)}, not a regular file", os.fsdecode(path))
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
