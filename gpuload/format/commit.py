"""Saving a checkpoint prefix atomically, durably, and one saver at a time.

TensorFlow's file names are fixed (``P.index``, ``P.data-0000K-of-0000N``), so a save over
an existing prefix must replace several files, and no single rename can do that. A save
therefore goes through a small journal (``P.gpuload-commit``):

1. take the prefix's lock (``fcntl.flock`` on ``P.gpuload-lock``): saves to one prefix,
   from threads or processes, run one after the other;
2. finish or undo whatever an earlier, interrupted save left (see 6.);
3. write every file under a temporary name (``<final name>.tempstate<hex>``, as TF names
   its own temporaries) and ``fsync`` it, then ``fsync`` the directory;
4. **commit**: write the journal (the list of ``(temporary, final)`` names) to a temporary
   file, ``fsync`` it and rename it to ``P.gpuload-commit``, ``fsync`` the directory.
   Before this point the old checkpoint is untouched; after it, the new one is complete
   on disk;
5. apply the journal: rename the data files into place, then the index; delete data files
   of ``P`` that the new checkpoint does not have (a re-save with fewer shards); delete the
   journal; ``fsync`` the directory; drop the lock (its file is removed);
6. recovery, when the prefix is next saved or opened (:func:`recover`): a journal present
   means a save was committed but not applied: apply it (roll forward); no journal means
   any temporary files of ``P`` belong to a save that never committed: delete them (roll
   back). Either way the old or the new checkpoint is what remains, complete.

A completed save leaves exactly TensorFlow's files (plus the ``checkpoint`` state file).
A save killed before step 5 ended can leave the lock file and temporaries beside the
checkpoint; the next save of that prefix removes them. Opening a prefix whose journal
exists rolls it forward first (this needs write access to the directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re

from gpuload.errors import CheckpointFormatError
from gpuload.format.files import NotRegularFileError, read_regular

__all__ = [
    "JOURNAL_SUFFIX",
    "LOCK_SUFFIX",
    "prefix_lock",
    "recover",
    "recover_locked",
    "fsync_dir",
    "commit",
    "temp_name",
    "needs_recovery",
]

JOURNAL_SUFFIX = ".gpuload-commit"
LOCK_SUFFIX = ".gpuload-lock"
_TEMP = r"\.tempstate[0-9a-f]+"


def _patterns(base: str):
    b = re.escape(base)
    final = re.compile(rf"^{b}\.(?:index|data-\d{{5}}-of-\d{{5}})$")
    temp = re.compile(rf"^{b}\.(?:index|data-\d{{5}}-of-\d{{5}}){_TEMP}$")
    data = re.compile(rf"^{b}\.data-\d{{5}}-of-\d{{5}}$")
    return final, temp, data


def temp_name(final: str, tag: str) -> str:
    """The temporary name ``final`` is written under."""
    return f"{final}.tempstate{tag}"


def fsync_dir(directory: str) -> None:
    """Make the directory's entries (renames, new and deleted files) durable."""
    fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def prefix_lock(name: str):
    """Hold the exclusive lock of ``name`` (a prefix or a state file path) for a ``with`` block.

    The lock is ``flock`` on ``name + LOCK_SUFFIX``, so it serialises threads (each opens
    its own descriptor) and processes alike and is released by the kernel if the holder
    dies. The holder removes the file when done; a waiter that then gets the lock of the
    removed file notices (the path no longer names the file it locked) and tries again.
    """
    path = name + LOCK_SUFFIX
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(path)  # while still holding it: see above
        except OSError:
            pass
        finally:
            os.close(fd)  # whatever happened: a leaked descriptor would hold the lock forever


def needs_recovery(prefix: str) -> bool:
    """Whether a committed save of ``prefix`` was interrupted before it was applied."""
    return os.path.exists(prefix + JOURNAL_SUFFIX)


def recover(prefix: str) -> None:
    """Roll an interrupted save of ``prefix`` forward or back, under the prefix's lock."""
    with prefix_lock(prefix):
        recover_locked(prefix)


def _read_journal(prefix: str):
    path = prefix + JOURNAL_SUFFIX
    try:
        text, _ = read_regular(path)
    except FileNotFoundError:
        return None
    except NotRegularFileError as e:
        raise CheckpointFormatError(f"save journal {e.strerror}", path=path) from None
    base = os.path.basename(prefix)
    final_re, temp_re, _ = _patterns(base)
    try:
        pairs = json.loads(text)["files"]
        pairs = [(str(t), str(f)) for t, f in pairs]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointFormatError(
            f"save journal is unreadable ({e}); the save it records cannot be finished. "
            f"Delete it to keep the files as they are",
            path=path,
        ) from None
    for t, f in pairs:  # names only, of this prefix: a journal never makes us touch other files
        if not (temp_re.match(t) and final_re.match(f) and t.startswith(f + ".tempstate")):
            raise CheckpointFormatError(
                f"save journal names {t!r} -> {f!r}, which are not files of checkpoint {base!r}", path=path
            )
    return pairs


def recover_locked(prefix: str) -> bool:
    """:func:`recover` for a caller that holds the lock. Returns whether anything was done."""
    directory, base = os.path.split(prefix)
    d = directory or "."
    _, temp_re, data_re = _patterns(base)
    pairs = _read_journal(prefix)
    changed = False
    if pairs is not None:  # committed: roll forward (data files first, the index last, as written)
        for t, f in pairs:
            tp = os.path.join(directory, t)
            if os.path.exists(tp):
                os.replace(tp, os.path.join(directory, f))
        finals = {f for _, f in pairs}
        for name in os.listdir(d):
            if data_re.match(name) and name not in finals:
                os.unlink(os.path.join(directory, name))  # a shard of the replaced checkpoint
        fsync_dir(d)
        os.unlink(prefix + JOURNAL_SUFFIX)
        changed = True
    for name in os.listdir(d):  # never committed (or leftovers): roll back
        if temp_re.match(name) or name == base + JOURNAL_SUFFIX + ".tmp":
            os.unlink(os.path.join(directory, name))
            changed = True
    if changed:
        fsync_dir(d)
    return changed


def commit(prefix: str, pairs) -> None:
    """Write the journal for ``pairs`` (full paths ``(temporary, final)``, data files first, index
    last) durably: from then on the save is done, whatever happens. Then apply it."""
    directory = os.path.dirname(prefix)
    d = directory or "."
    fsync_dir(d)  # the temporaries' names are durable before the journal that names them
    path = prefix + JOURNAL_SUFFIX
    tmp = path + ".tmp"
    body = json.dumps({"version": 1, "files": [(os.path.basename(t), os.path.basename(f)) for t, f in pairs]})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as f:
            f.write(body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(d)
    recover_locked(prefix)
