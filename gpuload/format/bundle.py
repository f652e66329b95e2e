"""One opened checkpoint prefix: its validated entries and reads of their bytes.

:meth:`Bundle.open` parses the whole ``.index`` and checks every entry against the format
and against the real data files *before* anything is allocated: a corrupt index fails
with a :class:`~gpuload.errors.CheckpointFormatError` that names the file, the tensor and
what was expected, never with ``MemoryError``, ``IndexError`` or a hang. The index is kept
as columns (one key buffer, value positions in the raw index bytes; parsed and checked
vectorised by :mod:`gpuload.format.fastindex`), and a :class:`TensorEntry` is built when an
entry is asked for, so a 10^6-entry index opens in well under a second in about 3x its
size. Indexes that the vectorised path does not take (a bad one, a compressed block, an
unusual encoding) are parsed one entry at a time by the reference code, which defines
every error message.

Reads go straight from the data file into the destination array (``os.preadv`` in pieces
of at most 64 MiB) with the CRC32C computed on each piece while it is still in cache. A
whole-entry read checks the stored CRC; a partial read (a row range or a box that cuts
through a stored entry) cannot, because the CRC covers the whole entry, and is therefore
unverified.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import stat
import sys
import threading
import weakref

import numpy as np

from gpuload.errors import (
    CheckpointFileError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    ChecksumError,
    OutOfMemoryError,
    ShardReadError,
    TruncatedCheckpointError,
    UnsupportedCheckpointError,
)
from gpuload.format import dtypes as _dt
from gpuload.format.crc import crc32c, unmask
from gpuload.format.fastindex import decode_entries, parse_table
from gpuload.format.files import NotRegularFileError, file_kind, open_regular, read_regular
from gpuload.format.keys import encode_tensor_name_slice
from gpuload.format.names import close_matches
from gpuload.format.proto import Context, decode_entry, decode_header, decode_varint
from gpuload.format.slices import Box, find_overlap
from gpuload.format.sstable import read_table
from gpuload.format.state import resolve_prefix

__all__ = ["Bundle", "TensorEntry", "StoredPiece", "IndexId", "data_filename", "READ_PIECE_BYTES"]

READ_PIECE_BYTES = 64 << 20  # bound on one pread and one CRC call
_MAX_RANK = 254  # TensorShape::MaxDimensions()
_MAX_ELEMENTS = (1 << 63) - 1
_NUMPY_MAX_RANK = 64
_HOST_BIG = sys.byteorder == "big"


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
        :meth:`Bundle.read_entry` or :meth:`Bundle.verify_entry`, not a raw byte CRC.
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


def _close_fds(fds: dict):
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class Bundle:
    """One checkpoint prefix: ``P.index`` plus ``P.data-*-of-*``.

    Use :meth:`open`. Reads are thread-safe (``pread`` on shared descriptors).
    Close with :meth:`close` or a ``with`` block; descriptors are also closed when the
    object is garbage-collected.

    Attributes
    ----------
    prefix:
        The checkpoint prefix.
    num_shards:
        Number of data files.
    big_endian:
        Whether tensor bytes are stored big-endian (swapped to native on read).
    """

    def __init__(self, prefix, num_shards, big_endian, index_path):
        self.prefix: str = prefix
        self.num_shards: int = num_shards
        self.big_endian: bool = big_endian
        self.index_path: str = index_path
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
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        #: Which ``.index`` file was read (set by :meth:`open`): tells a replaced checkpoint.
        self.index_id: IndexId | None = None
        self._finalizer = weakref.finalize(self, _close_fds, self._fds)

    # --- opening and validation -------------------------------------------------------

    @classmethod
    def open(cls, prefix) -> Bundle:
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
            raise CheckpointFileError(f"checkpoint index {e.strerror}", path=index_path, errno=e.errno) from None
        index_id = IndexId(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        data = bytes(data)
        cols = parse_table(data, index_path)
        if cols is not None and len(cols) and cols.key(0) == b"":
            pos0 = int(cols.value_pos[0])
            header = decode_header(data[pos0 : pos0 + int(cols.value_len[0])], Context(index_path, pos0, None))
            _check_header(header, index_path)
            bundle = cls(prefix, header.num_shards, header.endianness == 1, index_path)
            bundle.index_id = index_id
            if bundle._load_columns(data, cols):
                return bundle
            bundle.close()
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
        bundle = cls(prefix, header.num_shards, header.endianness == 1, index_path)
        bundle.index_id = index_id
        bundle._load_entries(rows[1:])
        return bundle

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
            self._check_data_entry(e, slice_owner.get(key, (key, None))[0], offsets[key])
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

    def _check_data_entry(self, e: TensorEntry, tensor: str, voff: int):
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
        shard_size = self.shard_size(e.shard_id, tensor=tensor)
        if e.offset + e.size > shard_size:
            raise TruncatedCheckpointError(
                f"entry bytes [{e.offset}, {e.offset + e.size}) run past the end of "
                f"{os.path.basename(self.shard_path(e.shard_id))} ({shard_size} bytes); the data file may be truncated",
                path=self.index_path,
                tensor=tensor,
                offset=voff,
            )

    # --- metadata ---------------------------------------------------------------------

    def __repr__(self):
        return f"Bundle({self.prefix!r}, tensors={len(self)}, shards={self.num_shards})"

    def shard_path(self, shard_id: int) -> str:
        """Path of data file ``shard_id``."""
        return data_filename(self.prefix, shard_id, self.num_shards)

    def shard_size(self, shard_id: int, *, tensor: str | None = None) -> int:
        """Real size in bytes of data file ``shard_id`` (``os.stat``, cached).

        Raises
        ------
        CheckpointNotFoundError
            The data file is missing.
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
                    raise CheckpointFileError(
                        f"checkpoint data file is {file_kind(st.st_mode)}, not a regular file",
                        path=path,
                        tensor=tensor,
                        errno=22,
                    )
                size = st.st_size
            except FileNotFoundError:
                who = f", which holds tensor {tensor!r}," if tensor is not None else ""
                raise CheckpointNotFoundError(
                    f"data file {path!r} (shard {shard_id} of {self.num_shards}){who} is missing; "
                    f"checkpoint {self.prefix!r} is incomplete"
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

    def _read_dtype(self, e: TensorEntry, name: str) -> np.dtype:
        dt = self._dtype_of(e, name)
        if len(e.shape) > _NUMPY_MAX_RANK:
            raise UnsupportedCheckpointError(
                f"rank {len(e.shape)} is above NumPy's limit of {_NUMPY_MAX_RANK} dimensions",
                path=self.prefix,
                tensor=name,
            )
        return dt

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

    def tensor_of(self, entry: TensorEntry) -> str:
        """Public tensor name (plus slice, for slice entries) for messages."""
        owner = self._slice_owner.get(entry.key)
        return entry.key if owner is None else f"{owner[0]} slice {owner[1]}"

    # --- reading ----------------------------------------------------------------------

    def _fd(self, shard_id: int) -> int:
        fd = self._fds.get(shard_id)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard_id)
                if fd is None:
                    path = self.shard_path(shard_id)
                    try:
                        fd = open_regular(path)
                    except FileNotFoundError:
                        raise CheckpointNotFoundError(
                            f"data file {path!r} (shard {shard_id} of {self.num_shards}) is missing"
                        ) from None
                    except NotRegularFileError as e:
                        raise CheckpointFileError(
                            f"checkpoint data file {e.strerror}", path=path, errno=e.errno
                        ) from None
                    self._fds[shard_id] = fd
        return fd

    def close(self) -> None:
        """Close the data files (the bundle can still be read: they reopen on demand).

        Not while other threads are reading from this bundle.
        """
        with self._lock:
            _close_fds(self._fds)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def crc_error(self, entry: TensorEntry, computed: int) -> ChecksumError:
        """The :class:`ChecksumError` for ``entry`` whose bytes have unmasked CRC ``computed``."""
        return ChecksumError(
            f"{os.path.basename(self.shard_path(entry.shard_id))}: tensor {self.tensor_of(entry)!r} "
            f"(offset {entry.offset}, {entry.size} bytes): crc32c mismatch: stored 0x{unmask(entry.crc32c):08x}, "
            f"computed 0x{computed:08x}. The shard may be truncated or corrupt.",
            path=self.shard_path(entry.shard_id),
        )

    def _pread(self, entry: TensorEntry, dest: np.ndarray, start: int, *, crc: int | None) -> int | None:
        """Fill uint8 array ``dest`` from ``entry.offset + start``; extend ``crc`` unless None."""
        fd = self._fd(entry.shard_id)
        n = dest.size
        mv = memoryview(dest)
        pos = 0
        while pos < n:
            want = min(n - pos, READ_PIECE_BYTES)
            try:
                got = os.preadv(fd, [mv[pos : pos + want]], entry.offset + start + pos)
            except OSError as e:
                raise ShardReadError(
                    f"{self.shard_path(entry.shard_id)}: reading tensor {self.tensor_of(entry)!r} "
                    f"({want} bytes at offset {entry.offset + start + pos}) failed: {e}"
                ) from e
            if got <= 0:
                raise TruncatedCheckpointError(
                    f"unexpected end of file: read {pos} of {n} bytes at offset {entry.offset + start}; the data file "
                    f"was truncated after the checkpoint was opened",
                    path=self.shard_path(entry.shard_id),
                    tensor=self.tensor_of(entry),
                    offset=entry.offset + start + pos,
                )
            if crc is not None:
                crc = crc32c(dest[pos : pos + got], crc)
            pos += got
        return crc

    def _swap(self, arr: np.ndarray):
        if arr.dtype.itemsize == 1 or arr.size == 0:
            return
        if arr.dtype.kind == "c":  # swap each component, not the pair
            unit = arr.dtype.itemsize // 2
        else:
            unit = arr.dtype.itemsize
        arr.reshape(-1).view(f"u{unit}").byteswap(inplace=True)

    @property
    def _need_swap(self) -> bool:
        return self.big_endian != _HOST_BIG

    def read_entry(self, entry: TensorEntry, out: np.ndarray | None = None, *, verify: bool = True) -> np.ndarray:
        """Read one whole data entry into an array of ``entry.shape``.

        Parameters
        ----------
        entry:
            A data entry (not a partitioned full entry).
        out:
            Optional destination: C-contiguous, writable, of the entry's shape and dtype.
        verify:
            Check the stored CRC32C (raises :class:`~gpuload.errors.ChecksumError`).
        """
        if entry.slices:
            raise ValueError(f"entry {entry.key!r} is partitioned: read its pieces")
        name = self.tensor_of(entry)
        dt = self._read_dtype(entry, name)
        if entry.dtype == _dt.DT_STRING:
            arr = self._read_strings(entry, verify)
            if out is not None:
                _check_out(out, entry.shape, dt)
                out[...] = arr
                return out
            return arr
        if out is None:
            out = _empty(entry.shape, dt, name, self.prefix)
        else:
            _check_out(out, entry.shape, dt)
        flat = out.reshape(-1).view(np.uint8)
        crc = self._pread(entry, flat, 0, crc=0 if verify else None)
        if verify and crc != unmask(entry.crc32c):
            raise self.crc_error(entry, crc)
        if self._need_swap:
            self._swap(out)
        return out

    def read_piece(self, piece: StoredPiece, out: np.ndarray | None = None, *, verify: bool = True) -> np.ndarray:
        """Read a whole stored piece; the result has the piece's box shape."""
        return self.read_entry(piece.entry, out, verify=verify)

    def _read_entry_rows(self, entry: TensorEntry, r0: int, r1: int, out=None) -> np.ndarray:
        """Rows ``[r0, r1)`` of a memcpy-able entry (dim 0); unverified partial read."""
        dt = self._read_dtype(entry, self.tensor_of(entry))
        shape = (r1 - r0,) + entry.shape[1:]
        if out is None:
            out = _empty(shape, dt, self.tensor_of(entry), self.prefix)
        else:
            _check_out(out, shape, dt)
        row_bytes = math.prod(entry.shape[1:]) * dt.itemsize
        if out.size:
            self._pread(entry, out.reshape(-1).view(np.uint8), r0 * row_bytes, crc=None)
            if self._need_swap:
                self._swap(out)
        return out

    def _read_strings(self, entry: TensorEntry, verify: bool) -> np.ndarray:
        """Decode a ``DT_STRING`` entry (layout in the module docstring of :mod:`.writer`).

        The entry CRC is not a CRC of the stored bytes: it starts from the CRC of the
        lengths as fixed-width integers, then covers the stored length checksum and the
        string bytes; the varints themselves are not hashed.
        """
        name = self.tensor_of(entry)
        path = self.shard_path(entry.shard_id)
        buf = _empty((entry.size,), np.dtype(np.uint8), name, self.prefix)
        self._pread(entry, buf, 0, crc=None)
        data = buf.tobytes()
        del buf
        n = entry.num_elements
        ctx = Context(path, entry.offset, name)
        pos = 0
        lengths = []
        end = len(data)
        for _ in range(n):
            length, pos = decode_varint(data, pos, end, ctx, "string length")
            lengths.append(length)
        order = "big" if self.big_endian else "little"
        if pos + 4 > end:
            raise CheckpointFormatError(
                f"string tensor: no room for the 4-byte length checksum after {n} lengths",
                path=path,
                tensor=name,
                offset=entry.offset + pos,
            )
        stored = int.from_bytes(data[pos : pos + 4], order)
        if all(x <= 0xFFFFFFFF for x in lengths):
            lcrc = crc32c(np.asarray(lengths, dtype=">u4" if self.big_endian else "<u4").tobytes())
        else:
            lcrc = 0
            for x in lengths:
                lcrc = crc32c(x.to_bytes(4 if x <= 0xFFFFFFFF else 8, order), lcrc)
        if unmask(stored) != lcrc:
            raise ChecksumError(
                f"string tensor: the length checksum does not match: stored 0x{unmask(stored):08x}, computed "
                f"0x{lcrc:08x}; the shard may be truncated or corrupt",
                path=path,
                tensor=name,
                offset=entry.offset + pos,
            )
        total = sum(lengths)
        if total > end - pos - 4:
            raise CheckpointFormatError(
                f"string tensor: lengths add up to {total} bytes but only {end - pos - 4} follow the lengths",
                path=path,
                tensor=name,
                offset=entry.offset + pos + 4,
            )
        if verify:
            crc = crc32c(memoryview(data)[pos : pos + 4 + total], lcrc)
            if crc != unmask(entry.crc32c):
                raise self.crc_error(entry, crc)
        pos += 4
        out = np.empty(entry.shape, dtype=object)
        flat = out.reshape(-1)
        for i, length in enumerate(lengths):
            flat[i] = data[pos : pos + length]
            pos += length
        return out

    def verify_entry(self, entry: TensorEntry, *, progress=None, chunk_bytes: int = READ_PIECE_BYTES) -> None:
        """Check one data entry's CRC32C streaming through a small buffer.

        Parameters
        ----------
        progress:
            Optional callable receiving the number of bytes checked so far, per chunk.

        Raises
        ------
        ChecksumError, CheckpointFormatError
        """
        if entry.dtype == _dt.DT_STRING:  # its CRC is not over the raw bytes; decode it
            self._read_strings(entry, True)
            if progress is not None:
                progress(entry.size)
            return
        buf = np.empty(max(1, min(entry.size, chunk_bytes)), np.uint8)
        crc = 0
        pos = 0
        while pos < entry.size:
            n = min(buf.size, entry.size - pos)
            crc = self._pread(entry, buf[:n], pos, crc=crc)
            pos += n
            if progress is not None:
                progress(n)
        if crc != unmask(entry.crc32c):
            raise self.crc_error(entry, crc)

    def data_entries(self) -> list[TensorEntry]:
        """Every entry that holds bytes (unpartitioned tensors and slice entries), by file position."""
        out = [e for e in map(self._entry_at, range(1, len(self._key_off) - 1)) if not e.slices]
        out.sort(key=lambda e: (e.shard_id, e.offset, e.key))
        return out

    def read_rows(self, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` (along dimension 0) of tensor ``name``, reading only those rows.

        Unverified: a CRC covers a whole entry, so a partial read cannot check it.
        """
        e = self.entry(name)
        if not e.shape:
            raise ValueError(f"tensor {name!r} is a scalar: it has no rows")
        box = Box((start,) + (0,) * (len(e.shape) - 1), (stop - start,) + e.shape[1:]) if 0 <= start <= stop else None
        if box is None or stop > e.shape[0]:
            raise ValueError(f"row range [{start}, {stop}) is outside tensor {name!r} of {e.shape[0]} rows")
        return self.read_box(name, box, out, verify=True)

    def read_box(self, name: str, box: Box, out: np.ndarray | None = None, *, verify: bool = True) -> np.ndarray:
        """The region ``box`` (full-tensor coordinates) of tensor ``name``.

        Assembled from the stored pieces that intersect ``box``, as TensorFlow's
        ``GetSliceValue`` does. A piece needed whole is read whole (and verified when
        ``verify``); from a piece needed in part only the rows that hold the region are
        read, unverified.

        Raises
        ------
        CheckpointFormatError
            The stored slices do not cover ``box``.
        ValueError
            ``box`` is not inside the tensor.
        """
        e = self.entry(name)
        dt = self._read_dtype(e, name)
        if box.rank != len(e.shape) or not box.within(e.shape):
            raise ValueError(f"box {box} is not inside tensor {name!r} of shape {list(e.shape)}")
        parts = []
        covered = 0
        for piece in self.pieces(name):
            inter = piece.box.intersect(box)
            if inter is not None and inter.size:
                parts.append((piece, inter))
                covered += inter.size
        # checked before allocating: a partitioned entry may claim a shape far larger than
        # the bytes its slices hold
        if covered != box.size:
            raise CheckpointFormatError(
                f"does not have sufficient slices for partitioned tensor to restore {box}: the stored slices "
                f"{[str(p.box) for p in self.pieces(name)]} cover {covered} of its {box.size} elements",
                path=self.index_path,
                tensor=name,
            )
        if out is None:
            out = _empty(box.shape, dt, name, self.prefix)
        else:
            _check_out(out, box.shape, dt, contiguous=False)
        for piece, inter in parts:
            src = inter.relative_to(piece.box).as_slices()
            dst = out[inter.relative_to(box).as_slices() or ...]  # `...` keeps a 0-d view
            if inter == piece.box:
                if dst.flags.c_contiguous and dst.dtype != object:
                    self.read_entry(piece.entry, dst, verify=verify)
                else:
                    dst[...] = self.read_entry(piece.entry, verify=verify)
            elif e.dtype == _dt.DT_STRING:
                dst[...] = self.read_entry(piece.entry, verify=verify)[src]
            else:
                r0, r1 = src[0].start, src[0].stop
                rest_full = all(s.start == 0 and s.stop == n for s, n in zip(src[1:], piece.box.shape[1:]))
                if rest_full and dst.flags.c_contiguous:
                    self._read_entry_rows(piece.entry, r0, r1, dst)
                else:
                    rows = self._read_entry_rows(piece.entry, r0, r1)
                    dst[...] = rows[(slice(None),) + src[1:]]
        return out

    def read_tensor(self, name: str, *, verify: bool = True) -> np.ndarray:
        """The whole tensor ``name``, assembled from its pieces when partitioned; all verified."""
        e = self.entry(name)
        if not e.slices:
            return self.read_entry(e, verify=verify)
        return self.read_box(name, Box.full(e.shape), verify=verify)


def _name(code: int) -> str:
    try:
        return _dt.tf_name(code)
    except (UnsupportedCheckpointError, TypeError):
        return f"dtype code {code}"


def _empty(shape, dt, tensor, prefix) -> np.ndarray:
    """``np.empty``, with running out of memory named: the tensor and the bytes asked for."""
    try:
        return np.empty(shape, dt)
    except (MemoryError, OSError) as e:
        if isinstance(e, OSError) and e.errno != errno.ENOMEM:
            raise
        raise OutOfMemoryError(
            f"cannot allocate {math.prod(shape) * dt.itemsize} bytes (shape {list(shape)}, {dt}) for tensor "
            f"{tensor!r} of checkpoint {prefix!r}: out of host memory ({e})"
        ) from None


def _check_out(out, shape, dt, contiguous=True):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or out.dtype != dt:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; expected {tuple(shape)} and {dt}")
    if contiguous and not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writable")


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


def _check_no_overlap(full: TensorEntry, bundle: Bundle, voff: int):
    if not full.shape:
        if len(full.slices) > 1:
            raise bundle._format_error("scalar with more than one stored slice", full.key, voff)
        return
    found = find_overlap(full.slices)
    if found is not None:
        a, b = sorted(found)
        raise bundle._format_error(f"stored slices {a} and {b} overlap", full.key, voff)
