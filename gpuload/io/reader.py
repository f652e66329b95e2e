"""Large positional reads from checkpoint data files straight into staging memory."""

from __future__ import annotations

import os
import threading

from gpuload.errors import CheckpointFileError, ShardReadError, TruncatedCheckpointError
from gpuload.format.files import NotRegularFileError, open_regular
from gpuload.io.ring import ALIGN

__all__ = ["ShardFiles", "DIRECT_REQUEST"]

#: Largest single O_DIRECT request. Measured on a virtual disk (bench/results, 2026-11-25):
#: 8-16 MiB requests were served about twice as fast as 32 MiB ones.
DIRECT_REQUEST = 8 << 20


class ShardFiles:
    """Open file descriptors for a plan's data files, shared by the reader threads.

    ``os.preadv`` is positional, so threads share a descriptor without seeking, and it
    fills the caller's buffer directly: no intermediate ``bytes`` objects.

    Parameters
    ----------
    paths:
        The files, indexed as in ``Plan.files``.
    direct:
        Open with ``O_DIRECT`` (bypass the page cache) where the OS has it; reads are
        then widened to 4096-byte alignment by :meth:`read`.
    """

    def __init__(self, paths, *, direct: bool = False):
        self.paths = list(paths)
        self.direct = bool(direct) and hasattr(os, "O_DIRECT")
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def _fd(self, index: int) -> int:
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
                        raise CheckpointFileError(
                            f"checkpoint data file {exc.strerror}", path=path, errno=exc.errno
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

    def read(self, index: int, offset: int, size: int, slot) -> memoryview:
        """Read ``size`` bytes at ``offset`` of file ``index`` into ``slot``; return their view.

        With ``O_DIRECT`` the read covers the aligned superset and the returned view starts
        inside the slot at the requested byte.
        """
        fd = self._fd(index)
        buf = memoryview(slot).cast("B")
        if self.direct:
            start = offset - offset % ALIGN
            stop = -(-(offset + size) // ALIGN) * ALIGN
            got = 0
            while start + got < stop:
                n = min(DIRECT_REQUEST, stop - start - got)
                piece = self._pread_full(fd, index, buf[got : got + n], start + got, allow_short=True)
                got += piece
                if piece < n:
                    break
            if got < offset + size - start:
                self._short(index, offset, size, start + got)
            skip = offset - start
            return buf[skip : skip + size]
        self._pread_full(fd, index, buf[:size], offset)
        return buf[:size]

    def read_into(self, index: int, offset: int, buffers) -> None:
        """Read consecutive bytes at ``offset`` of file ``index`` into ``buffers``, in order.

        The scatter form lets a chunk that lands whole in destination memory skip the ring
        (the host backend's zero-copy path). Not used with ``O_DIRECT``, whose alignment
        rules destination buffers do not meet.
        """
        fd = self._fd(index)
        for buf in buffers:
            view = memoryview(buf).cast("B")
            self._pread_full(fd, index, view, offset)
            offset += len(view)

    def _pread_full(self, fd, index, view, offset, allow_short=False) -> int:
        done = 0
        total = len(view)
        while done < total:
            try:
                n = os.preadv(fd, [view[done:]], offset + done)
            except OSError as exc:
                raise ShardReadError(
                    exc.errno, f"read of {total} bytes at offset {offset} failed: {exc.strerror}", self.paths[index]
                ) from exc
            if n == 0:
                if allow_short:
                    return done
                self._short(index, offset, total, offset + done)
            done += n
        return done

    def _short(self, index, offset, size, end):
        raise TruncatedCheckpointError(
            f"expected {size} bytes at offset {offset}, but the file ends at byte {end} "
            f"(truncated or replaced during the load?)",
            path=self.paths[index],
            offset=offset,
        )

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
