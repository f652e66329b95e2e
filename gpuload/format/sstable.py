"""The ``.index`` file: a LevelDB-style table without filter blocks.

Layout (``tensorflow/core/lib/io/table_format.txt``)::

    [data block][trailer] ... [metaindex block][trailer] [index block][trailer] [footer: 48 bytes]

Index files hold only metadata, so :func:`read_table` parses the whole table into an
ordered list of ``(key, value)`` byte pairs, checking everything a corrupt or hostile file
could get wrong: magic, handles against the file size, block CRCs, restart arrays, varint
lengths, prefix compression, strictly increasing keys, and the index block's separators.
Every problem is a :class:`~gpuload.errors.CheckpointFormatError` with the file and byte
offset and what was expected versus found.

:class:`TableWriter` writes the same format the way TensorFlow's ``TableBuilder`` does
(256 KiB blocks, restart interval 16, shortest separators), so an index written from the
same entries is byte-identical to TensorFlow's.
"""

from __future__ import annotations

import os

from gpuload.errors import CheckpointFormatError, UnsupportedCheckpointError
from gpuload.format.crc import crc32c, mask, unmask
from gpuload.format.proto import Context, decode_varint, encode_varint

__all__ = ["read_table", "read_table_file", "TableWriter", "TABLE_MAGIC", "FOOTER_SIZE", "BLOCK_TRAILER_SIZE"]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # 2 * BlockHandle::kMaxEncodedLength (20) + 8
BLOCK_TRAILER_SIZE = 5  # type byte + fixed32 masked crc
_NO_COMPRESSION, _SNAPPY = 0, 1
_MAGIC_BYTES = (TABLE_MAGIC & 0xFFFFFFFF).to_bytes(4, "little") + (TABLE_MAGIC >> 32).to_bytes(4, "little")


def _err(msg, path, offset=None):
    return CheckpointFormatError(msg, path=path, offset=offset)


def read_table_file(path) -> list[tuple[bytes, bytes]]:
    """Read and parse the table at ``path``; see :func:`read_table`."""
    from gpuload.errors import CheckpointFileError
    from gpuload.format.files import NotRegularFileError, read_regular

    path = os.fspath(path)
    try:
        data, _ = read_regular(path)
    except NotRegularFileError as e:
        raise CheckpointFileError.not_regular("table file", path, e) from None
    return read_table(data, path=path)


def _read_handle(data, pos, end, ctx, what):
    offset, pos = decode_varint(data, pos, end, ctx, f"{what} offset")
    size, pos = decode_varint(data, pos, end, ctx, f"{what} size")
    return offset, size, pos


def _read_block(data, offset, size, path, what) -> bytes:
    """Block contents at ``(offset, size)`` after checking the handle, trailer and CRC."""
    limit = len(data) - FOOTER_SIZE
    if offset > limit or size > limit - offset or size + BLOCK_TRAILER_SIZE > limit - offset:
        raise _err(
            f"{what} handle (offset {offset}, size {size}) + {BLOCK_TRAILER_SIZE}-byte trailer runs past "
            f"the blocks area, which ends at byte {limit} of a {len(data)}-byte file",
            path,
            offset,
        )
    end = offset + size
    block_type = data[end]
    stored = int.from_bytes(data[end + 1 : end + 5], "little")
    actual = crc32c(memoryview(data)[offset : end + 1])
    if unmask(stored) != actual:
        raise _err(
            f"{what}: block checksum mismatch: stored crc32c 0x{unmask(stored):08x} (masked 0x{stored:08x}), "
            f"computed 0x{actual:08x} over {size} bytes + type byte",
            path,
            offset,
        )
    raw = data[offset:end]
    if block_type == _NO_COMPRESSION:
        return raw
    if block_type == _SNAPPY:
        try:
            import cramjam
        except ImportError:
            raise UnsupportedCheckpointError(
                f"{what}: snappy-compressed index block; install cramjam (pip install cramjam)",
                path=path,
                offset=offset,
            ) from None
        try:
            return bytes(cramjam.snappy.decompress_raw(raw))
        except Exception as e:  # cramjam raises its own DecompressionError
            raise _err(f"{what}: corrupt snappy block ({e})", path, offset) from None
    raise _err(f"{what}: bad block type {block_type} (expected 0 = uncompressed or 1 = snappy)", path, end)


def _parse_block(block: bytes, path, base: int, what: str):
    """Yield ``(key, value)`` of one block; ``base`` is the block's file offset."""
    n = len(block)
    ctx = Context(path, base)
    if n < 4:
        raise _err(f"{what}: block of {n} bytes is too short for its restart count (need >= 4)", path, base)
    num_restarts = int.from_bytes(block[n - 4 :], "little")
    max_restarts = (n - 4) // 4
    if num_restarts > max_restarts:
        raise _err(
            f"{what}: restart count {num_restarts} does not fit in a {n}-byte block (at most {max_restarts})",
            path,
            base + n - 4,
        )
    restarts_at = n - 4 * (num_restarts + 1)
    restarts = [
        int.from_bytes(block[restarts_at + 4 * i : restarts_at + 4 * i + 4], "little") for i in range(num_restarts)
    ]
    if num_restarts == 0:
        if restarts_at:
            raise _err(f"{what}: block has {restarts_at} bytes of entries but no restart points", path, base)
        return []
    if restarts[0] != 0:
        raise _err(f"{what}: first restart point is {restarts[0]}, expected 0", path, base + restarts_at)
    for a, b in zip(restarts, restarts[1:]):
        if b <= a:
            raise _err(f"{what}: restart points not increasing ({a} then {b})", path, base + restarts_at)
    if restarts[-1] >= restarts_at and restarts_at:
        raise _err(
            f"{what}: restart point {restarts[-1]} is past the entries (which end at {restarts_at})",
            path,
            base + restarts_at,
        )
    entries = []
    pos = 0
    key = b""
    next_restart = 0  # index into restarts
    while pos < restarts_at:
        entry_pos = pos
        shared, pos = decode_varint(block, pos, restarts_at, ctx, f"{what} entry shared length", 5)
        non_shared, pos = decode_varint(block, pos, restarts_at, ctx, f"{what} entry key length", 5)
        value_len, pos = decode_varint(block, pos, restarts_at, ctx, f"{what} entry value length", 5)
        if shared > len(key):
            raise _err(
                f"{what}: entry shares {shared} key bytes with a previous key of {len(key)} bytes",
                path,
                base + entry_pos,
            )
        if non_shared > restarts_at - pos or value_len > restarts_at - pos - non_shared:
            raise _err(
                f"{what}: entry key ({non_shared} bytes) + value ({value_len} bytes) run past the "
                f"entries area ({restarts_at - pos} bytes left)",
                path,
                base + entry_pos,
            )
        if next_restart < num_restarts and entry_pos == restarts[next_restart]:
            if shared != 0:
                raise _err(
                    f"{what}: entry at restart point shares {shared} key bytes (expected 0)", path, base + entry_pos
                )
            next_restart += 1
        elif next_restart < num_restarts and entry_pos > restarts[next_restart]:
            raise _err(
                f"{what}: restart point {restarts[next_restart]} is not at an entry boundary",
                path,
                base + restarts[next_restart],
            )
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_len], base + pos))
        pos += value_len
    if next_restart != num_restarts:
        raise _err(
            f"{what}: restart point {restarts[next_restart]} is not at an entry boundary", path, base + restarts_at
        )
    return entries


def read_table(data: bytes, path=None, *, with_offsets: bool = False) -> list:
    """Parse a whole table held in memory.

    Parameters
    ----------
    data:
        The file's bytes.
    path:
        The file name, for error messages.
    with_offsets:
        Also return each value's file offset, as ``(key, value, offset)`` triples.

    Returns
    -------
    list
        ``(key, value)`` pairs in key order (``bytes`` each).

    Raises
    ------
    CheckpointFormatError
        Malformed file (bad magic, handle out of range, checksum mismatch, keys out of
        order, ...).
    UnsupportedCheckpointError
        A snappy-compressed block without ``cramjam`` installed.
    """
    path = None if path is None else os.fspath(path)
    data = bytes(data)
    n = len(data)
    if n < FOOTER_SIZE:
        raise _err(
            f"file is too short to be an sstable: {n} bytes, expected at least {FOOTER_SIZE} (the footer)", path, 0
        )
    footer_at = n - FOOTER_SIZE
    magic = data[n - 8 :]
    if magic != _MAGIC_BYTES:
        raise _err(
            f"not an sstable (bad magic number): expected {_MAGIC_BYTES.hex(' ')}, found {magic.hex(' ')}", path, n - 8
        )
    ctx = Context(path, 0)
    pos = footer_at
    meta_off, meta_size, pos = _read_handle(data, pos, n - 8, ctx, "footer metaindex handle")
    index_off, index_size, pos = _read_handle(data, pos, n - 8, ctx, "footer index handle")

    _read_block(data, meta_off, meta_size, path, "metaindex block")  # checked, content unused
    index_block = _read_block(data, index_off, index_size, path, "index block")
    out = []
    prev_key = None
    prev_sep = None
    for sep, handle, hpos in _parse_block(index_block, path, index_off, "index block"):
        if prev_sep is not None and sep <= prev_sep:
            raise _err(f"index block: keys not strictly increasing ({prev_sep!r} then {sep!r})", path, hpos)
        hctx = Context(path, hpos)
        boff, bsize, used = _read_handle(handle, 0, len(handle), hctx, "index block handle")
        if used != len(handle):
            raise _err(f"index block: block handle value has {len(handle) - used} trailing bytes", path, hpos)
        block = _read_block(data, boff, bsize, path, f"data block at offset {boff}")
        entries = _parse_block(block, path, boff, f"data block at offset {boff}")
        for key, value, voff in entries:
            if prev_key is not None and key <= prev_key:
                raise _err(f"keys not strictly increasing: {prev_key!r} then {key!r}", path, voff)
            if prev_sep is not None and key <= prev_sep:
                raise _err(f"key {key!r} is not after the previous block's index key {prev_sep!r}", path, voff)
            if key > sep:
                raise _err(f"key {key!r} is after its block's index key {sep!r}", path, voff)
            prev_key = key
            out.append((key, value, voff) if with_offsets else (key, value))
        prev_sep = sep
    return out


# --- writing ----------------------------------------------------------------------------


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """LevelDB ``BytewiseComparator::FindShortestSeparator``."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n:
        b = start[i]
        if b < 0xFF and b + 1 < limit[i]:
            return start[:i] + bytes([b + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    """LevelDB ``BytewiseComparator::FindShortSuccessor``."""
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


class _BlockBuilder:
    def __init__(self, restart_interval: int):
        self.interval = restart_interval
        self.reset()

    def reset(self):
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""
        self.empty = True

    def add(self, key: bytes, value: bytes):
        shared = 0
        if self.counter < self.interval:
            n = min(len(self.last_key), len(key))
            while shared < n and self.last_key[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        self.buf += key[shared:]
        self.buf += value
        self.last_key = key
        self.counter += 1
        self.empty = False

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        for r in self.restarts:
            self.buf += r.to_bytes(4, "little")
        self.buf += len(self.restarts).to_bytes(4, "little")
        return bytes(self.buf)


class TableWriter:
    """Build a table in memory the way TensorFlow's ``TableBuilder`` does.

    Parameters
    ----------
    block_size:
        Flush a data block once its size estimate reaches this (TF: 256 KiB).
    restart_interval:
        Keys between restart points in data blocks (TF: 16; the index block uses 1).

    Examples
    --------
    >>> w = TableWriter()
    >>> w.add(b"", header_bytes); w.add(b"a", entry_bytes)
    >>> data = w.finish()
    """

    def __init__(self, block_size: int = 262144, restart_interval: int = 16):
        self.block_size = block_size
        self._data = bytearray()
        self._block = _BlockBuilder(restart_interval)
        self._index = _BlockBuilder(1)
        self._last_key: bytes | None = None
        self._pending_handle: bytes | None = None
        self._finished = False

    def add(self, key: bytes, value: bytes) -> None:
        """Append an entry; keys must be strictly increasing (bytewise)."""
        key, value = bytes(key), bytes(value)
        if self._finished:
            raise ValueError("table already finished")
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(f"table keys must be strictly increasing: {self._last_key!r} then {key!r}")
        if self._pending_handle is not None:
            self._index.add(_shortest_separator(self._last_key, key), self._pending_handle)
            self._pending_handle = None
        self._block.add(key, value)
        self._last_key = key
        if self._block.size_estimate() >= self.block_size:
            self._flush()

    def _write_block(self, contents: bytes) -> bytes:
        handle = encode_varint(len(self._data)) + encode_varint(len(contents))
        self._data += contents
        self._data.append(_NO_COMPRESSION)
        self._data += mask(crc32c(contents + b"\x00")).to_bytes(4, "little")
        return handle

    def _flush(self):
        if self._block.empty:
            return
        self._pending_handle = self._write_block(self._block.finish())
        self._block.reset()

    def finish(self) -> bytes:
        """Write the last block, the metaindex and index blocks and the footer; return the file."""
        self._flush()
        self._finished = True
        meta = _BlockBuilder(16)
        meta_handle = self._write_block(meta.finish())
        if self._pending_handle is not None:
            self._index.add(_short_successor(self._last_key), self._pending_handle)
            self._pending_handle = None
        index_handle = self._write_block(self._index.finish())
        footer = meta_handle + index_handle
        footer += b"\x00" * (FOOTER_SIZE - 8 - len(footer)) + _MAGIC_BYTES
        self._data += footer
        return bytes(self._data)
