"""One opened checkpoint prefix: its index (:mod:`gpuload.format.index`) and reads of its entries.

Reads go through the one shard reader (:class:`~gpuload.format.files.ShardFiles`),
straight from the data file into the destination array, in pieces of at most 64 MiB with
the CRC32C computed on each piece while it is still in cache. A whole-entry read checks
the stored CRC (:func:`~gpuload.format.crc.check_entry`, the check a load makes too); a
partial read (a row range or a box that cuts through a stored entry) cannot, because the
CRC covers the whole entry, and is therefore unverified. String tensors are decoded by
:mod:`gpuload.format.strings`.
"""

from __future__ import annotations

import errno
import math
import sys

import numpy as np

from gpuload.errors import CheckpointFormatError, OutOfMemoryError, UnsupportedCheckpointError
from gpuload.format import dtypes as _dt
from gpuload.format import strings as _strings
from gpuload.format.crc import check_entry, crc32c, unmask
from gpuload.format.files import ShardFiles
from gpuload.format.index import BundleIndex, IndexId, StoredPiece, TensorEntry, data_filename
from gpuload.format.slices import Box

__all__ = ["Bundle", "TensorEntry", "StoredPiece", "IndexId", "data_filename", "READ_PIECE_BYTES"]

READ_PIECE_BYTES = 64 << 20  # bound on one pread and one CRC call
_NUMPY_MAX_RANK = 64
_HOST_BIG = sys.byteorder == "big"


class Bundle(BundleIndex):
    """One checkpoint prefix: ``P.index`` plus ``P.data-*-of-*``, readable.

    Use :meth:`open` (see :meth:`BundleIndex.open <gpuload.format.index.BundleIndex.open>`:
    every entry is validated there). Reads are thread-safe (``pread`` on shared
    descriptors). Close with :meth:`close` or a ``with`` block; descriptors are also closed
    when the object is garbage-collected. Attributes: those of
    :class:`~gpuload.format.index.BundleIndex` (``prefix``, ``num_shards``, ``big_endian``,
    ``shard_paths``).
    """

    def __init__(self, prefix, num_shards, big_endian, index_path):
        super().__init__(prefix, num_shards, big_endian, index_path)
        self._files = ShardFiles(self.shard_paths)

    def close(self) -> None:
        """Close the data files (the bundle can still be read: they reopen on demand).

        Not while other threads are reading from this bundle.
        """
        self._files.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_crc(self, entry: TensorEntry, computed: int) -> None:
        if computed == unmask(entry.crc32c):  # the usual case, without formatting the path
            return
        check_entry(
            computed,
            masked_crc=entry.crc32c,
            path=self.shard_path(entry.shard_id),
            key=entry.key,
            offset=entry.offset,
            size=entry.size,
        )

    def _pread(self, entry: TensorEntry, dest: np.ndarray, start: int, *, crc: int | None) -> int | None:
        """Fill uint8 array ``dest`` from ``entry.offset + start``; extend ``crc`` unless None."""
        n = dest.size
        mv = memoryview(dest)
        tensor, part = self.describe(entry)  # a slice's errors name the slice; .tensor is its tensor
        what = None if part is None else f"tensor {tensor!r} slice {part}"
        pos = 0
        while pos < n:
            want = min(n - pos, READ_PIECE_BYTES)
            self._files.pread(
                entry.shard_id,
                entry.offset + start + pos,
                mv[pos : pos + want] if want < n else mv,
                tensor=tensor,
                what=what,
            )
            if crc is not None:
                crc = crc32c(dest[pos : pos + want], crc)
            pos += want
        return crc

    def _read_dtype(self, e: TensorEntry, name: str) -> np.dtype:
        dt = self._dtype_of(e, name)
        if len(e.shape) > _NUMPY_MAX_RANK:
            raise UnsupportedCheckpointError(
                f"rank {len(e.shape)} is above NumPy's limit of {_NUMPY_MAX_RANK} dimensions",
                path=self.prefix,
                tensor=name,
            )
        return dt

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
        if crc is not None:
            self._check_crc(entry, crc)
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
        """Decode a ``DT_STRING`` entry (:mod:`gpuload.format.strings`), checking its CRC if ``verify``."""
        buf = _empty((entry.size,), np.dtype(np.uint8), self.tensor_of(entry), self.prefix)
        self._pread(entry, buf, 0, crc=None)
        data = buf.tobytes()
        del buf
        tensor, part = self.describe(entry)
        values, crc = _strings.decode(
            data,
            entry.num_elements,
            big_endian=self.big_endian,
            path=self.shard_path(entry.shard_id),
            tensor=tensor,
            part=part,
            offset=entry.offset,
            crc=verify,
        )
        if crc is not None:
            self._check_crc(entry, crc)
        out = np.empty(entry.shape, dtype=object)
        flat = out.reshape(-1)
        for i, value in enumerate(values):
            flat[i] = value
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
        self._check_crc(entry, crc)

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
