"""``save_checkpoint``: write a TensorBundle V2 checkpoint TensorFlow can read.

Data files hold the tensors' bytes back to back in the order given (no padding, TF's
default ``data_alignment`` of 1). Numeric tensors are their raw little-endian row-major
buffers; ``DT_STRING`` tensors are encoded by :mod:`gpuload.format.strings`.

The index is written with the same table layout and separator keys as TensorFlow's
``TableBuilder``, so for the same tensors in the same order every file is byte-identical
to what TensorFlow writes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping

import numpy as np

from gpuload.errors import ArgumentTypeError, InvalidArgumentError
from gpuload.format import commit as _commit
from gpuload.format import dtypes as _dt
from gpuload.format import strings as _strings
from gpuload.format.crc import crc32c, mask
from gpuload.format.index import data_filename
from gpuload.format.keys import encode_tensor_name_slice
from gpuload.format.proto import encode_entry, encode_header
from gpuload.format.slices import Box, find_overlap
from gpuload.format.sstable import TableWriter
from gpuload.format.state import update_checkpoint_state

__all__ = ["save_checkpoint", "WRITE_PIECE_BYTES"]

WRITE_PIECE_BYTES = 64 << 20  # bound on one write and one CRC call


class _Item:
    """One data entry to write."""

    __slots__ = ("key", "label", "code", "shape", "array", "strings", "size", "shard", "offset", "crc")

    def __init__(self, key: bytes, label: str, code: int, shape, array=None, strings=None):
        self.key, self.label, self.code, self.shape = key, label, code, tuple(shape)
        self.array, self.strings = array, strings
        if strings is not None:
            self.size = _strings.encoded_size(strings)
        else:
            self.size = array.nbytes
        self.shard = self.offset = self.crc = 0


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {type(name).__name__}: {name!r}")
    if not name:
        raise ValueError("tensor name is empty (the empty key is reserved for the bundle header)")
    if name.startswith("\x00"):
        raise ValueError(f"tensor name {name!r} starts with NUL, which is reserved for slice keys")
    return name


def _to_bytes(x, name) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    raise TypeError(f"tensor {name!r}: string tensor element {x!r} is not bytes or str")


def _as_array(value, name) -> np.ndarray:
    """``value`` as a contiguous native-endian array (copies only when it must)."""
    if isinstance(value, (str, bytes)):
        arr = np.empty((), dtype=object)
        arr[()] = value
    else:
        arr = np.asarray(value)
    if arr.dtype.kind in "SU":
        arr = np.array(arr.tolist(), dtype=object).reshape(arr.shape) if arr.ndim else _scalar_obj(arr.item())
    try:
        code = _dt.tf_code(arr.dtype)
    except ValueError as e:
        raise ValueError(f"tensor {name!r}: {e}") from None
    if code != _dt.DT_STRING:
        if arr.dtype.byteorder not in "=|":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")  # (np.ascontiguousarray would turn a scalar into shape (1,))
    return arr


def _scalar_obj(x):
    arr = np.empty((), dtype=object)
    arr[()] = x
    return arr


def _item_for(key: bytes, label: str, arr: np.ndarray) -> _Item:
    code = _dt.tf_code(arr.dtype)
    if code == _dt.DT_STRING:
        strings = [_to_bytes(x, label) for x in arr.reshape(-1).tolist()]
        return _Item(key, label, code, arr.shape, strings=strings)
    return _Item(key, label, code, arr.shape, array=arr)


def _parse_sliced(name, spec):
    """``[(Box, array), ...]`` or ``(full_shape, [(Box, array), ...])`` -> (shape, pairs)."""
    if (
        isinstance(spec, tuple)
        and len(spec) == 2
        and not isinstance(spec[0], Box)
        and isinstance(spec[1], (list, tuple))
    ):
        full_shape, pairs = tuple(int(d) for d in spec[0]), list(spec[1])
    else:
        pairs = list(spec)
        full_shape = None
    if not pairs:
        raise ValueError(f"sliced tensor {name!r}: no slices given")
    out = []
    for i, pair in enumerate(pairs):
        try:
            box, value = pair
        except (TypeError, ValueError):
            raise TypeError(f"sliced tensor {name!r}: slice {i} must be a (Box, array) pair") from None
        if not isinstance(box, Box):
            raise TypeError(f"sliced tensor {name!r}: slice {i}: expected a Box, got {type(box).__name__}")
        arr = _as_array(value, name)
        if arr.shape != box.shape:
            raise ValueError(f"sliced tensor {name!r}: slice {box} has data of shape {arr.shape}, expected {box.shape}")
        out.append((box, arr))
    if full_shape is None:
        rank = out[0][0].rank
        if any(b.rank != rank for b, _ in out):
            raise ValueError(f"sliced tensor {name!r}: slices of different ranks")
        full_shape = tuple(max(b.stop[d] for b, _ in out) for d in range(rank))
    return full_shape, out


def save_checkpoint(
    prefix,
    tensors=None,
    *,
    update_state: bool = True,
    max_shard_bytes: int | None = None,
    slices=None,
    global_step=None,
) -> str:
    """Write ``tensors`` as the checkpoint ``prefix`` (``prefix.index`` + data files).

    Parameters
    ----------
    prefix:
        Checkpoint prefix, e.g. ``"/ckpt/model.ckpt-100"``; missing directories are made.
    tensors:
        Mapping name -> array (NumPy arrays of any supported dtype including
        ``ml_dtypes.bfloat16``, bool and complex; object arrays of ``bytes``/``str`` or
        ``S``/``U`` arrays for ``DT_STRING``; scalars; empty arrays). Written in mapping
        order. Non-contiguous or big-endian arrays are copied first; contiguous ones are
        streamed from their own buffer in pieces of at most 64 MiB.
    update_state:
        Update the directory's ``checkpoint`` state file, as ``Saver.save`` does.
    max_shard_bytes:
        Start a new data file when the next tensor would take the current one past this
        size (a tensor never spans files), giving the layout of a sharded ``Saver``
        (``.data-0000K-of-0000N``). ``None``: one data file.
    slices:
        Mapping name -> partitioned ("sliced save") tensor, written as TF's
        ``BundleWriter::AddSlice`` does: a full entry listing the slices, and each slice's
        data under its slice key. The value is a list of ``(Box, array)`` pairs, or
        ``(full_shape, [(Box, array), ...])`` when the slices do not reach the end of every
        dimension. Written after ``tensors``.

    global_step:
        When given, the checkpoint is written as ``f"{prefix}-{global_step}"``, as
        TensorFlow's ``Saver.save(sess, prefix, global_step=N)`` does, and that name is
        returned. With ``update_state`` (the default), the usual way to write checkpoints
        a trainer and :func:`~gpuload.latest_checkpoint` agree on::

            gpuload.save_checkpoint("/ckpt/model.ckpt", tensors, global_step=step)
            gpuload.latest_checkpoint("/ckpt")   # "/ckpt/model.ckpt-<step>"

    Returns
    -------
    str
        The prefix written (``prefix``, or ``prefix-global_step``).

    Notes
    -----
    Saving over an existing checkpoint never loses it: every file is written and fsynced
    under a temporary name, then a journal commits the save and the files are renamed into
    place (the index last). Interrupted or killed at any point, the prefix holds the old or
    the new checkpoint, complete (an interrupted, committed save is finished when the prefix
    is next opened or saved). Saves to one prefix from several threads or processes run one
    at a time (a lock file beside it, removed afterwards). Data files of the old checkpoint
    that the new one does not have are removed. The ``checkpoint`` state file is replaced
    atomically. See :mod:`gpuload.format.commit`.

    Raises
    ------
    ArgumentTypeError
        ``prefix`` is not a path, ``tensors``/``slices`` not mappings, ``global_step`` or
        ``max_shard_bytes`` not integers (a ``TypeError``).
    InvalidArgumentError
        Bad values (a ``ValueError``): a directory as prefix, duplicate keys, bad slices.
    """
    prefix = _path_arg(prefix, "prefix")
    if global_step is not None:
        prefix = f"{prefix}-{_int_arg(global_step, 'global_step')}"  # TF's Saver: "%s-%d"
    if not prefix or prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        raise InvalidArgumentError(f"checkpoint prefix {prefix!r} must name a file prefix, not a directory")
    tensors = {} if tensors is None else tensors
    slices = {} if slices is None else slices
    for arg, value in (("tensors", tensors), ("slices", slices)):
        if not isinstance(value, Mapping):
            hint = " (a list of (name, array) pairs: pass dict(pairs))" if isinstance(value, (list, tuple)) else ""
            raise ArgumentTypeError(
                f"save_checkpoint: {arg} must be a mapping of tensor name -> "
                f"{'array' if arg == 'tensors' else 'slices'}, got {type(value).__name__}{hint}"
            )
    if max_shard_bytes is not None:
        max_shard_bytes = _int_arg(max_shard_bytes, "max_shard_bytes")
        if max_shard_bytes < 1:
            raise InvalidArgumentError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")

    items: list[_Item] = []
    full_entries: dict[bytes, bytes] = {}  # partitioned full entries, no data
    seen = set()
    for name, value in tensors.items():
        _check_name(name)
        seen.add(name)
        items.append(_item_for(name.encode("utf-8", "surrogateescape"), name, _as_array(value, name)))
    for name, spec in slices.items():
        _check_name(name)
        if name in seen:
            raise ValueError(f"tensor {name!r} is given both in tensors and in slices")
        seen.add(name)
        full_shape, pairs = _parse_sliced(name, spec)
        codes = {_dt.tf_code(a.dtype) for _, a in pairs}
        if len(codes) != 1:
            raise ValueError(
                f"sliced tensor {name!r}: slices have different dtypes {sorted(_dt.tf_name(c) for c in codes)}"
            )
        code = codes.pop()
        boxes = [b for b, _ in pairs]
        for b in boxes:
            if b.rank != len(full_shape) or not b.within(full_shape):
                raise ValueError(f"sliced tensor {name!r}: slice {b} is not inside shape {list(full_shape)}")
        found = find_overlap(boxes)
        if found is not None:
            a, b = sorted(found)
            raise InvalidArgumentError(f"sliced tensor {name!r}: slices {a} and {b} overlap")
        key = name.encode("utf-8", "surrogateescape")
        if len(pairs) == 1 and boxes[0].is_full(full_shape):
            items.append(_item_for(key, name, pairs[0][1]))  # AddSlice of a full slice is a plain Add
            continue
        full_entries[key] = encode_entry(code, full_shape, slices=[list(zip(b.start, b.shape)) for b in boxes])
        for box, arr in pairs:
            items.append(_item_for(encode_tensor_name_slice(name, box), f"{name} slice {box}", arr))

    # shard assignment: fill data files in order
    shard, used = 0, 0
    for it in items:
        if max_shard_bytes is not None and used and used + it.size > max_shard_bytes:
            shard, used = shard + 1, 0
        it.shard, it.offset = shard, used
        used += it.size
    num_shards = shard + 1

    dirname = os.path.dirname(prefix)
    if dirname:
        os.makedirs(dirname, exist_ok=True)
    # Built before any file is touched: a bad input fails with nothing written.
    table = TableWriter()
    table.add(b"", encode_header(num_shards=num_shards))
    owner: dict[bytes, str] = {k: f"partitioned tensor {k.decode('utf-8', 'surrogateescape')!r}" for k in full_entries}
    for it in items:
        if it.key in owner:
            raise InvalidArgumentError(
                f"{it.label!r} and {owner[it.key]!r} would be stored under the same table key {it.key!r} "
                f"(a slice given twice, or a tensor name that equals a slice key)"
            )
        owner[it.key] = it.label
    with _commit.prefix_lock(prefix):  # one save of this prefix at a time, across threads and processes
        _commit.recover_locked(prefix)  # finish or undo a save that was interrupted
        tag = secrets.token_hex(8)
        temps: list[tuple[str, str]] = []
        committed = False
        try:
            for sh in range(num_shards):
                final = data_filename(prefix, sh, num_shards)
                tmp = _commit.temp_name(final, tag)
                temps.append((tmp, final))
                with open(tmp, "wb", buffering=1 << 20) as f:
                    for it in items:
                        if it.shard == sh:
                            it.crc = _write_item(f, it)
                    f.flush()
                    os.fsync(f.fileno())
            entries = {it.key: encode_entry(it.code, it.shape, it.shard, it.offset, it.size, it.crc) for it in items}
            entries.update(full_entries)
            for key in sorted(entries):
                table.add(key, entries[key])
            index_tmp = _commit.temp_name(prefix + ".index", tag)
            temps.append((index_tmp, prefix + ".index"))
            with open(index_tmp, "wb") as f:
                f.write(table.finish())
                f.flush()
                os.fsync(f.fileno())
            committed = True  # from here on, recovery finishes this save rather than undoing it
            _commit.commit(prefix, temps)  # the index goes last: readers never see it before its data
        except BaseException:
            try:
                if committed:
                    _commit.recover_locked(prefix)  # roll forward now if the journal made it to disk
                else:
                    for tmp, _ in temps:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp)
                    _commit.recover_locked(prefix)
            except BaseException:  # noqa: B036 (the next open or save of the prefix recovers)
                pass
            raise
    if update_state:
        update_checkpoint_state(dirname or ".", prefix)
    return prefix


def _path_arg(value, arg: str) -> str:
    """A ``str``/``bytes``/``os.PathLike`` argument as ``str``; anything else a clear TypeError."""
    try:
        return os.fsdecode(os.fspath(value))
    except TypeError:
        raise ArgumentTypeError(
            f"{arg} must be a path (str, bytes or os.PathLike), got {type(value).__name__}: {value!r}"
        ) from None


def _int_arg(value, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{arg} must be an integer, got {type(value).__name__}: {value!r}")
    return int(value)


def _write_item(f, it: _Item) -> int:
    """Write one entry's bytes; return its masked CRC32C."""
    if it.strings is not None:
        return _strings.write(f, it.strings)
    flat = it.array.reshape(-1).view(np.uint8)
    crc = 0
    for start in range(0, flat.size, WRITE_PIECE_BYTES):
        piece = flat[start : start + WRITE_PIECE_BYTES]
        f.write(piece)
        crc = crc32c(piece, crc)
    return mask(crc)
