"""The index of one checkpoint prefix: its validated entries, by name.

:meth:`BundleIndex.open` parses the whole ``.index`` and checks every entry against the
format and against the real data files *before* anything is allocated: a corrupt index
fails with a :class:`~gpuload.errors.CheckpointFormatError` that names the file, the
tensor and what was expected, never with ``MemoryError``, ``IndexError`` or a hang. The
index is kept as columns (one key buffer, value positions in the raw index bytes; parsed
and checked vectorised by :mod:`gpuload.format.fastindex`), and a :class:`TensorEntry` is
built when an entry is asked for, so a 10^6-entry index opens in well under a second in
about 3x its size. Indexes that the vectorised path does not take (a bad one, a
compressed block, an unusual encoding) are parsed one entry at a time by the reference
code, which defines every error message.

Reading the entries' bytes is :class:`~gpuload.format.bundle.Bundle`'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from gpuload.errors import (
    CheckpointFileError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    MissingDataFileError,
    TruncatedCheckpointError,
    UnsupportedCheckpointError,
)
from gpuload.format import dtypes as _dt
from gpuload.format.fastindex import decode_entries, parse_table
from gpuload.format.files import NotRegularFileError, not_regular, read_regular
from gpuload.format.keys import encode_tensor_name_slice
from gpuload.format.names import close_matches
from gpuload.format.proto import Context, decode_entry, decode_header
from gpuload.format.slices import Box, find_overlap
from gpuload.format.sstable import read_table
from gpuload.format.state import resolve_prefix

__all__ = ["BundleIndex", "TensorEntry", "StoredPiece", "IndexId", "data_filename"]

_I = TypeVar("_I", bound="BundleIndex")
_MAX_RANK = 254  # TensorShape::MaxDimensions()
_MAX_ELEMENTS = (1 << 63) - 1


def data_filename(prefix: str, shard_id: int, num_shards: int) -> str:
    """``P.data-%05d-of-%05d`` (TensorFlow's ``DataFilename``)."""
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


@dataclasses.dataclass(frozen=True, slots=True)
class TensorEntry:
    """One ``BundleEntryProto``, validated.

    Attributes
    ----------
    key:
        The table key: the tensor name, or a slice key for a slice entry (decoded from
        UTF-8 with ``surrogateescape``, so non-UTF-8 bytes survive a round trip).
    dtype:
        TF ``DataType`` code.
    shape:
        Shape of the stored data (the full shape for a partitioned full entry).
    shard_id, offset, size:
        Where the bytes are. Meaningless (kept as stored) for a partitioned full entry.
    crc32c:
        The *masked* CRC32C as stored.
    slices:
        For a partitioned full entry, the stored slices as concrete boxes; else ``()``.
    """

    key: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    slices: tuple[Box, ...] = ()

    @property
    def is_partitioned(self) -> bool:
        return bool(self.slices)

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def crc_covers_raw_bytes(self) -> bool:
        """Whether ``crc32c`` is the masked CRC of the ``size`` stored bytes.

        True for every numeric type. False for ``DT_STRING``, whose CRC starts from the CRC
        of the lengths as fixed-width integers and skips the varint bytes: check those with
        :meth:`~gpuload.format.bundle.Bundle.read_entry` or
        :meth:`~gpuload.format.bundle.Bundle.verify_entry`, not a raw byte CRC.
        """
        return self.dtype != _dt.DT_STRING


@dataclasses.dataclass(frozen=True)
class IndexId:
    """The identity of the ``.index`` file read, from ``fstat`` of the open descriptor.

    A checkpoint saved again to the same prefix gets a new index file (a new inode, as
    ``save_checkpoint`` and TensorFlow write a temporary file and rename it) or, written
    in place, a new size or modification time.
    """

    dev: int
    inode: int
    size: int
    mtime_ns: int

    def describe(self) -> str:
        return f"{self.size} bytes, inode {self.inode}, mtime_ns {self.mtime_ns}"


@dataclasses.dataclass(frozen=True)
class StoredPiece:
    """Where one stored region of a tensor lives.

    Attributes
    ----------
    box:
        The region in full-tensor coordinates (``Box.full(shape)`` when unpartitioned).
    entry:
        The data entry holding it (a slice entry, or the full entry).
    """

    box: Box
    entry: TensorEntry


class _ShardPaths(Sequence):
    """``data_filename(prefix, i, num_shards)`` for every shard ``i``, computed when asked
    for: ``num_shards`` comes from the index, which may claim billions."""

    def __init__(self, prefix: str, num_shards: int):
        self._prefix, self._n = prefix, num_shards

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not 0 <= i < self._n:
            raise IndexError(i)
        return data_filename(self._prefix, i, self._n)


class BundleIndex:
    """The index of one checkpoint prefix: ``P.index``, checked against ``P.data-*-of-*``.

    Use :meth:`open`. :class:`~gpuload.format.bundle.Bundle` adds reading the entries'
    bytes.

    Attributes
    ----------
    prefix:
        The checkpoint prefix.
    num_shards:
        Number of data files.
    big_endian:
        Whether tensor bytes are stored big-endian (swapped to native on read).
    shard_paths:
        The data files' paths, by shard id.
    """

    def __init__(self, prefix, num_shards, big_endian, index_path):
        self.prefix: str = prefix
        self.num_shards: int = num_shards
        self.big_endian: bool = big_endian
        self.index_path: str = index_path
        self.shard_paths: Sequence[str] = _ShardPaths(prefix, num_shards)
        # The table as columns (see gpuload.format.fastindex): row r has key
        # _keys[_key_off[r]:_key_off[r + 1]] (row 0 is the header); rows in _objs were decoded
        # one at a time at open, every other row is decoded from the raw index bytes
        # _data[_vpos[r]:_vpos[r] + _vlen[r]] when asked for (it was checked at open).
        self._keys = bytearray()
        self._key_off = np.zeros(1, np.int64)
        self._off = memoryview(self._key_off)
        self._data: bytes | None = None
        self._vpos = self._vlen = None
        self._objs: dict[int, TensorEntry] = {}
        self._cache: dict[str, TensorEntry] = {}  # public entries asked for, by name
        self._first_public = 1  # slice keys (leading NUL) sort first and are hidden, as TF hides them
        self._slice_owner: dict[str, tuple[str, Box]] = {}  # slice key -> (tensor, box)
        self._pieces: dict[str, list[StoredPiece]] = {}  # partitioned tensors only
        self._shard_sizes: dict[int, int] = {}
        #: Which ``.index`` file was read (set by :meth:`open`): tells a replaced checkpoint.
        self.index_id: IndexId | None = None

    # --- opening and validation -------------------------------------------------------

    @classmethod
    def open(cls: type[_I], prefix) -> _I:
        """Open and validate a checkpoint.

        Every entry is checked here, before anything is allocated. A valid index in the
        usual layout is parsed and checked in columns (vectorised, see
        :mod:`gpuload.format.fastindex`): a 10^6-entry index opens in about a second and
        holds about its own size in memory; entries are decoded when asked for. Anything
        else (a bad index, a compressed block, an unusual encoding) is parsed one entry
        at a time, which defines the errors.

        Parameters
        ----------
        prefix:
            A prefix, a directory (its latest checkpoint) or one of the checkpoint's files;
            see :func:`~gpuload.format.state.resolve_prefix`.

        Raises
        ------
        CheckpointNotFoundError
            No checkpoint there, or a data file that the index refers to is missing.
        CheckpointFormatError
            The index is malformed or an entry is inconsistent (bad shape, size, offset,
            shard, overlapping or missing slices, ...).
        UnsupportedCheckpointError
            Legacy V1 checkpoint, snappy block without cramjam, incompatible version.
        """
        prefix = resolve_prefix(prefix)
        index_path = prefix + ".index"
        try:
            data, st = read_regular(index_path)
        except NotRegularFileError as e:
            raise CheckpointFileError.not_regular("checkpoint index", index_path, e) from None
        index_id = IndexId(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        data = bytes(data)
        cols = parse_table(data, index_path)
        if cols is not None and len(cols) and cols.key(0) == b"":
            pos0 = int(cols.value_pos[0])
            header = decode_header(data[pos0 : pos0 + int(cols.value_len[0])], Context(index_path, pos0, None))
            _check_header(header, index_path)
            index = cls(prefix, header.num_shards, header.endianness == 1, index_path)
            index.index_id = index_id
            if index._load_columns(data, cols):
                return index
        del cols
        # the reference: one entry at a time; raises the precise error for a bad index
        rows = read_table(data, path=index_path, with_offsets=True)
        del data
        if not rows or rows[0][0] != b"":
            found = repr(rows[0][0]) if rows else "an empty table"
            raise CheckpointFormatError(
                f"missing the header entry (empty key) that every TensorBundle starts with; found {found}",
                path=index_path,
            )
        header = decode_header(rows[0][1], Context(index_path, rows[0][2], None))
        _check_header(header, index_path)
        index = cls(prefix, header.num_shards, header.endianness == 1, index_path)
        index.index_id = index_id
        index._load_entries(rows[1:])
        return index

    def _format_error(self, message, tensor=None, offset=None, path=None):
        return CheckpointFormatError(message, path=path or self.index_path, tensor=tensor, offset=offset)

    def _decode_one(self, key: str, value, voff: int):
        """Decode and check one entry: ``(TensorEntry, stored slice extents or None)``."""
        proto = decode_entry(value, Context(self.index_path, voff, key))
        shape = proto.shape.dims
        if proto.shape.unknown_rank:
            raise self._format_error("invalid tensor shape: unknown rank", key, voff)
        if len(shape) > _MAX_RANK:
            raise self._format_error(f"invalid tensor shape: rank {len(shape)} exceeds {_MAX_RANK}", key, voff)
        if any(d < 0 for d in shape):
            raise self._format_error(f"invalid tensor shape {list(shape)}: negative dimension", key, voff)
        # numpy (like TF's TensorShape) needs the product of the non-zero dims to fit in
        # int64 even for an empty tensor; 16 = the widest element (complex128)
        if math.prod(d for d in shape if d) * 16 > _MAX_ELEMENTS:
            raise self._format_error(f"invalid tensor shape {list(shape)}: too many elements", key, voff)
        if proto.dtype <= 0 or proto.dtype >= 100:
            raise self._format_error(f"invalid dtype code {proto.dtype} (expected a TF DataType, 1..23)", key, voff)
        boxes = []
        raw = None
        if proto.slices:
            raw = []
            for sl in proto.slices:
                box, extents = self._slice_box(key, shape, sl.extents, voff)
                boxes.append(box)
                raw.append(extents)
        return TensorEntry(
            key, proto.dtype, tuple(shape), proto.shard_id, proto.offset, proto.size, proto.crc32c, tuple(boxes)
        ), raw

    def _load_entries(self, rows):
        """The reference: decode and check ``(key, value, offset)`` rows one at a time."""
        all_entries: dict[str, TensorEntry] = {}
        raw_slices: dict[str, list] = {}
        offsets: dict[str, int] = {}
        for key_bytes, value, voff in rows:
            key = key_bytes.decode("utf-8", "surrogateescape")
            offsets[key] = voff
            entry, raw = self._decode_one(key, value, voff)
            if raw is not None:
                raw_slices[key] = raw
            all_entries[key] = entry
        slice_owner, pieces = self._check_partitioned(raw_slices, all_entries.get, offsets.__getitem__)
        # Every entry that holds bytes must point inside an existing shard.
        for key, e in all_entries.items():
            if e.slices:
                continue
            owner = slice_owner.get(key)
            if owner is None:
                self._check_data_entry(e, key, offsets[key])
            else:
                self._check_data_entry(e, owner[0], offsets[key], what=f"tensor {owner[0]!r} slice {owner[1]}")
        key_bytes = [b""] + [r[0] for r in rows]
        self._set_keys(
            bytearray(b"".join(key_bytes)),
            np.concatenate([[0], np.cumsum([len(k) for k in key_bytes])]).astype(np.int64),
        )
        self._objs = {i: e for i, e in enumerate(all_entries.values(), 1)}
        self._slice_owner = slice_owner
        self._pieces = pieces

    def _set_keys(self, keys: bytearray, key_off: np.ndarray):
        self._keys = keys
        self._key_off = key_off
        self._off = memoryview(np.ascontiguousarray(key_off))  # its items index as Python ints, fast
        n = len(key_off) - 1
        if n > 1:
            kb = np.frombuffer(keys, np.uint8)
            first = key_off[1:n].astype(np.int64)
            # keys are sorted and non-empty after the header: the NUL-led ones come first
            self._first_public = 1 + int(np.count_nonzero(kb[np.minimum(first, max(len(kb) - 1, 0))] == 0))
            del kb
        else:
            self._first_public = n

    def _load_columns(self, data: bytes, cols) -> bool:
        """The fast path: check every entry in columns; False: leave it to the reference."""
        n = len(cols)
        ok, unusual, bad, shard_used, shard_end = decode_entries(
            data, cols.value_pos[1:], cols.value_len[1:], self.num_shards
        )
        if bad.any():
            return False
        del ok, bad
        self._data = data
        self._vpos = cols.value_pos
        self._vlen = cols.value_len
        self._set_keys(cols.keys, cols.key_off)
        rows = (np.nonzero(unusual)[0] + 1).tolist()
        del unusual
        try:
            raw_slices = {}
            for r in rows:  # an unusual encoding, or partitioned: one at a time
                key = self._key(r).decode("utf-8", "surrogateescape")
                voff = int(self._vpos[r])
                entry, raw = self._decode_one(key, data[voff : voff + int(self._vlen[r])], voff)
                self._objs[r] = entry
                if raw is not None:
                    raw_slices[key] = raw

            def get(key):
                r = self._find(key.encode("utf-8", "surrogateescape"), 1, n)
                return None if r < 0 else self._entry_at(r)

            def offset_of(key):
                return int(self._vpos[self._find(key.encode("utf-8", "surrogateescape"), 1, n)])

            self._slice_owner, self._pieces = self._check_partitioned(raw_slices, get, offset_of)
            for sid in np.nonzero(shard_used)[0].tolist():
                if int(shard_end[sid]) > self.shard_size(sid):
                    return False
            for r, e in self._objs.items():
                if not e.slices:
                    self._check_data_entry(e, self._slice_owner.get(e.key, (e.key, None))[0], int(self._vpos[r]))
        except (CheckpointFormatError, CheckpointNotFoundError, UnsupportedCheckpointError, OSError):
            return False
        return True

    def _check_partitioned(self, raw_slices, get, offset_of):
        """Partitioned entries: their slices must not overlap and each must have its entry."""
        slice_owner: dict[str, tuple[str, Box]] = {}
        pieces: dict[str, list[StoredPiece]] = {}
        for key, raw in raw_slices.items():
            full = get(key)
            _check_no_overlap(full, self, offset_of(key))
            for box, extents in zip(full.slices, raw):
                skey = encode_tensor_name_slice(key, extents).decode("utf-8", "surrogateescape")
                sentry = get(skey)
                if sentry is None:
                    raw_key = skey.encode("utf-8", "surrogateescape")
                    raise self._format_error(
                        f"partitioned tensor: the entry for its stored slice {box} (key {raw_key!r}) "
                        "is missing from the index",
                        key,
                        offset_of(key),
                    )
                if sentry.slices:
                    raise self._format_error("slice entry is itself partitioned", key, offset_of(skey))
                if sentry.dtype != full.dtype:
                    raise self._format_error(
                        f"slice {box}: stored dtype {_name(sentry.dtype)} differs from the tensor's "
                        f"{_name(full.dtype)}",
                        key,
                        offset_of(skey),
                    )
                if sentry.shape != box.shape:
                    raise self._format_error(
                        f"slice {box}: stored shape {list(sentry.shape)} differs from the slice's {list(box.shape)}",
                        key,
                        offset_of(skey),
                    )
                slice_owner[skey] = (key, box)
                pieces.setdefault(key, []).append(StoredPiece(box, sentry))
            pieces[key].sort(key=lambda p: (p.entry.shard_id, p.entry.offset, p.box.start))
        return slice_owner, pieces

    # --- the table as columns ---------------------------------------------------------

    def _key(self, r: int) -> bytes:
        return bytes(self._keys[int(self._key_off[r]) : int(self._key_off[r + 1])])

    def _find(self, key: bytes, lo: int, hi: int) -> int:
        """Row of ``key`` among rows ``[lo, hi)`` (sorted), or -1."""
        keys, off = self._keys, self._off
        while lo < hi:
            mid = (lo + hi) // 2
            if keys[off[mid] : off[mid + 1]] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(off) - 1 and keys[off[lo] : off[lo + 1]] == key:
            return lo
        return -1

    def _entry_at(self, r: int) -> TensorEntry:
        e = self._objs.get(r)
        if e is None:
            # checked at open (fastindex): this decode cannot fail
            pos = int(self._vpos[r])
            key = self._key(r).decode("utf-8", "surrogateescape")
            p = decode_entry(self._data[pos : pos + int(self._vlen[r])], Context(self.index_path, pos, key))
            e = TensorEntry(key, p.dtype, tuple(p.shape.dims), p.shard_id, p.offset, p.size, p.crc32c)
        return e

    def _public_row(self, name) -> int:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        if not isinstance(name, str):
            return -1
        try:
            key = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate: never a key
            return -1
        return self._find(key, self._first_public, len(self._key_off) - 1)

    def _slice_box(self, key, shape, extents, voff):
        if len(extents) != len(shape):
            raise self._format_error(
                f"stored slice has rank {len(extents)}, tensor shape {list(shape)} has rank {len(shape)}", key, voff
            )
        starts, lengths, raw = [], [], []
        for d, ((start, length), dim) in enumerate(zip(extents, shape)):
            if length is None or length == -1:
                if start != 0:
                    raise self._format_error(f"stored slice: dimension {d} has start {start} but no length", key, voff)
                starts.append(0)
                lengths.append(dim)
                raw.append((0, -1))
                continue
            if start < 0 or length < 0 or start + length > dim:
                raise self._format_error(
                    f"stored slice: dimension {d} extent start {start}, length {length} is outside [0, {dim})",
                    key,
                    voff,
                )
            starts.append(start)
            lengths.append(length)
            raw.append((start, length))
        return Box(tuple(starts), tuple(lengths)), raw

    def _check_data_entry(self, e: TensorEntry, tensor: str, voff: int, *, what: str | None = None):
        if not 0 <= e.shard_id < self.num_shards:
            raise self._format_error(
                f"shard_id {e.shard_id} is out of range: the checkpoint has {self.num_shards} shard(s)", tensor, voff
            )
        if e.offset < 0 or e.size < 0:
            raise self._format_error(f"negative offset {e.offset} or size {e.size}", tensor, voff)
        n = e.num_elements
        if _dt.is_supported(e.dtype):
            if e.dtype == _dt.DT_STRING:
                if e.size < n + 4:
                    raise self._format_error(
                        f"invalid size in bundle entry: stored size {e.size} is below the minimum {n + 4} for "
                        f"{n} strings (1-byte length each + 4-byte checksum)",
                        tensor,
                        voff,
                    )
            else:
                expected = n * _dt.itemsize(e.dtype)
                if e.size != expected:
                    raise self._format_error(
                        f"invalid size in bundle entry: stored size {e.size}, expected {expected} for shape "
                        f"{list(e.shape)} of {_dt.tf_name(e.dtype)}",
                        tensor,
                        voff,
                    )
        shard_size = self.shard_size(e.shard_id, tensor=tensor, what=what)
        if e.offset + e.size > shard_size:
            raise TruncatedCheckpointError.short_read(
                path=self.shard_path(e.shard_id),
                offset=e.offset,
                expected=e.size,
                end=shard_size,
                tensor=tensor,
                what=what,
            )

    # --- metadata ---------------------------------------------------------------------

    def __repr__(self):
        return f"{type(self).__name__}({self.prefix!r}, tensors={len(self)}, shards={self.num_shards})"

    def shard_path(self, shard_id: int) -> str:
        """Path of data file ``shard_id``."""
        return data_filename(self.prefix, shard_id, self.num_shards)

    def shard_size(self, shard_id: int, *, tensor: str | None = None, what: str | None = None) -> int:
        """Real size in bytes of data file ``shard_id`` (``os.stat``, cached).

        ``tensor`` and ``what`` (see :meth:`describe`) name what was wanted from the file in
        the error.

        Raises
        ------
        MissingDataFileError
            The data file is missing (a ``CheckpointNotFoundError``).
        """
        size = self._shard_sizes.get(shard_id)
        if size is None:
            if not 0 <= shard_id < self.num_shards:
                raise CheckpointFormatError(
                    f"shard_id {shard_id} out of range [0, {self.num_shards})", path=self.index_path, tensor=tensor
                )
            path = self.shard_path(shard_id)
            try:
                st = os.stat(path)
                if not stat.S_ISREG(st.st_mode):
                    raise CheckpointFileError.not_regular(
                        "checkpoint data file", path, not_regular(path, st.st_mode), tensor=tensor
                    )
                size = st.st_size
            except FileNotFoundError:
                raise MissingDataFileError.missing(
                    path=path, shard=shard_id, num_shards=self.num_shards, tensor=tensor, what=what
                ) from None
            self._shard_sizes[shard_id] = size
        return size

    def _names_list(self) -> list[str]:
        names = getattr(self, "_names_cache", None)
        if names is None:
            names = self._names_cache = self._decode_names()
        return names

    def _decode_names(self) -> list[str]:
        lo, hi = self._first_public, len(self._key_off) - 1
        if hi <= lo:
            return []
        off = self._key_off[lo : hi + 1].astype(np.int64)
        seg = np.frombuffer(self._keys, np.uint8)[off[0] : off[-1]]
        absent = np.nonzero(np.bincount(seg, minlength=256)[1:128] == 0)[0]
        if not len(absent):
            keys = self._keys
            return [keys[a:b].decode("utf-8", "surrogateescape") for a, b in zip(off[:-1].tolist(), off[1:].tolist())]
        # one decode and one split: an ASCII separator ends any partial UTF-8 sequence, so
        # this decodes each key exactly as decoding it alone would
        sep = int(absent[0]) + 1
        joined = np.insert(seg, off[1:-1] - off[0], np.uint8(sep))
        return joined.tobytes().decode("utf-8", "surrogateescape").split(chr(sep))

    def names(self) -> list[str]:
        """Public tensor names, sorted (slice keys hidden)."""
        return list(self._names_list())

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and (name in self._cache or self._public_row(name) >= 0)

    def __len__(self) -> int:
        return max(0, len(self._key_off) - 1 - self._first_public)

    def entry(self, name: str) -> TensorEntry:
        """The entry of tensor ``name``.

        Raises
        ------
        CheckpointNotFoundError
            No such tensor; the message names it, the prefix and close matches.
        """
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        e = self._cache.get(name) if isinstance(name, str) else None
        if e is not None:
            return e
        r = self._public_row(name)
        if r < 0:
            close = close_matches(str(name), self._names_list())
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise CheckpointNotFoundError(
                f"tensor {name!r} not found in checkpoint {self.prefix!r} ({len(self)} tensors){hint}"
            )
        e = self._cache[name] = self._entry_at(r)
        return e

    def numpy_dtype(self, name: str) -> np.dtype:
        """NumPy dtype of tensor ``name`` (``object`` for strings, ``ml_dtypes.bfloat16``)."""
        return self._dtype_of(self.entry(name), name)

    def _dtype_of(self, e: TensorEntry, name: str) -> np.dtype:
        try:
            return _dt.numpy_dtype(e.dtype)
        except UnsupportedCheckpointError as err:
            raise UnsupportedCheckpointError(f"{err}", path=self.prefix, tensor=name) from None

    def tf_dtype_name(self, name: str) -> str:
        """TensorFlow's dtype name for tensor ``name`` (``"float32"``, ``"variant"``, ...)."""
        return _name(self.entry(name).dtype)

    def shape(self, name: str) -> tuple[int, ...]:
        """Full shape of tensor ``name``."""
        return self.entry(name).shape

    def pieces(self, name: str) -> list[StoredPiece]:
        """The stored regions covering tensor ``name``, sorted by ``(shard_id, offset)``."""
        e = self.entry(name)
        if not e.slices:
            return [StoredPiece(Box.full(e.shape), e)]
        return list(self._pieces[name])

    def describe(self, entry: TensorEntry) -> tuple[str, str | None]:
        """``(tensor, part)`` for errors about ``entry``'s bytes: the tensor that owns them and,
        for a stored slice, the slice (``"[0:4, 0:8]"``; ``None`` for a whole tensor)."""
        owner = self._slice_owner.get(entry.key)
        return (entry.key, None) if owner is None else (owner[0], str(owner[1]))

    def tensor_of(self, entry: TensorEntry) -> str:
        """Public tensor name (plus slice, for slice entries) for messages."""
        owner = self._slice_owner.get(entry.key)
        return entry.key if owner is None else f"{owner[0]} slice {owner[1]}"

    def data_entries(self) -> list[TensorEntry]:
        """Every entry that holds bytes (unpartitioned tensors and slice entries), by file position."""
        out = [e for e in map(self._entry_at, range(1, len(self._key_off) - 1)) if not e.slices]
        out.sort(key=lambda e: (e.shard_id, e.offset, e.key))
        return out


def _name(code: int) -> str:
    try:
        return _dt.tf_name(code)
    except (UnsupportedCheckpointError, TypeError):
        return f"dtype code {code}"


def _check_header(header, index_path):
    v = header.version
    if header.num_shards < 1:
        raise CheckpointFormatError(f"header: num_shards is {header.num_shards}, expected >= 1", path=index_path)
    if header.endianness not in (0, 1):
        raise CheckpointFormatError(
            f"header: endianness {header.endianness}, expected 0 (little) or 1 (big)", path=index_path
        )
    if v.producer < 0:
        raise UnsupportedCheckpointError(
            f"header: producer version {v.producer} is below the minimum 0 that this reader supports", path=index_path
        )
    if v.min_consumer > 1:
        raise UnsupportedCheckpointError(
            f"header: the checkpoint requires reader version >= {v.min_consumer}; gpuload implements "
            f"TensorBundle version 1",
            path=index_path,
        )
    if 1 in v.bad_consumers:
        raise UnsupportedCheckpointError(
            "header: the checkpoint disallows readers of TensorBundle version 1 (bad_consumers)", path=index_path
        )


def _check_no_overlap(full: TensorEntry, index: BundleIndex, voff: int):
    if not full.shape:
        if len(full.slices) > 1:
            raise index._format_error("scalar with more than one stored slice", full.key, voff)
        return
    found = find_overlap(full.slices)
    if found is not None:
        a, b = sorted(found)
        raise index._format_error(f"stored slices {a} and {b} overlap", full.key, voff)
