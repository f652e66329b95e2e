"""``DT_STRING`` tensors as TensorBundle stores them: the one encoder and decoder.

A string tensor of ``n`` elements is stored as::

    varint64 len[0] ... len[n-1] | fixed32 mask(crc_L) | bytes[0] ... bytes[n-1]

where ``crc_L`` is the CRC32C of the lengths written as 4-byte integers in the
checkpoint's byte order (8 bytes for lengths >= 2**32), and the entry's CRC continues
from ``crc_L`` over the 4 checksum bytes and the string bytes: the varints themselves
are not hashed (``WriteStringTensor`` / ``ReadStringTensor``, ``tensor_bundle.cc``).
So the entry CRC of a string tensor is not the CRC of its stored bytes.
"""

from __future__ import annotations

import numpy as np

from gpuload.errors import CheckpointFormatError, ChecksumError
from gpuload.format.crc import crc32c, mask, unmask
from gpuload.format.proto import Context, decode_varint, encode_varint

__all__ = ["encoded_size", "write", "decode"]

_U32 = 0xFFFFFFFF


def _lengths_crc(lengths, big_endian: bool) -> int:
    """Unmasked CRC32C of the lengths as fixed-width integers (``crc_L``)."""
    if all(x <= _U32 for x in lengths):
        return crc32c(np.asarray(lengths, dtype=">u4" if big_endian else "<u4").tobytes())
    order = "big" if big_endian else "little"
    crc = 0
    for x in lengths:
        crc = crc32c(x.to_bytes(4 if x <= _U32 else 8, order), crc)
    return crc


def encoded_size(strings) -> int:
    """Stored size in bytes of the ``bytes`` objects ``strings``."""
    return sum(len(encode_varint(len(s))) for s in strings) + 4 + sum(len(s) for s in strings)


def write(f, strings) -> int:
    """Write ``strings`` (``bytes`` objects, row-major) to binary file ``f``, little-endian.

    Returns
    -------
    int
        The entry's masked CRC32C, as the index stores it.
    """
    lengths = [len(s) for s in strings]
    f.write(b"".join(encode_varint(n) for n in lengths))
    crc = _lengths_crc(lengths, False)
    length_checksum = mask(crc).to_bytes(4, "little")
    f.write(length_checksum)
    crc = crc32c(length_checksum, crc)
    for s in strings:
        f.write(s)
        crc = crc32c(s, crc)
    return mask(crc)


def decode(
    data: bytes, count: int, *, big_endian: bool, path, tensor: str, offset: int, crc: bool, part: str | None = None
):
    """Decode the stored bytes ``data`` of a string entry of ``count`` elements.

    The length checksum is always checked (it guards the lengths that the decoding trusts).

    Parameters
    ----------
    path, tensor, offset:
        The data file, the tensor and the entry's offset in the file, for errors.
    part:
        For a stored slice of ``tensor``, the slice (``"[0:2, 0:8]"``), also for errors.
    crc:
        Also compute the entry's CRC (to compare with the index's).

    Returns
    -------
    (list of bytes, int or None)
        The strings, row-major, and the entry's unmasked CRC32C when ``crc``.

    Raises
    ------
    CheckpointFormatError
        A bad length varint, or lengths that do not fit ``data``.
    ChecksumError
        The length checksum does not match the lengths.
    """
    ctx = Context(path, offset, tensor)
    kind = "string tensor" if part is None else f"string tensor slice {part}"
    pos = 0
    lengths = []
    end = len(data)
    what = "string length" if part is None else f"{kind}: string length"
    for _ in range(count):
        length, pos = decode_varint(data, pos, end, ctx, what)
        lengths.append(length)
    if pos + 4 > end:
        raise CheckpointFormatError(
            f"{kind}: no room for the 4-byte length checksum after {count} lengths",
            path=path,
            tensor=tensor,
            offset=offset + pos,
        )
    stored = unmask(int.from_bytes(data[pos : pos + 4], "big" if big_endian else "little"))
    lcrc = _lengths_crc(lengths, big_endian)
    if stored != lcrc:
        raise ChecksumError(
            f"{kind}: the length checksum does not match: stored 0x{stored:08x}, computed "
            f"0x{lcrc:08x}; the data file may be truncated or corrupt",
            path=path,
            tensor=tensor,
            offset=offset + pos,
        )
    total = sum(lengths)
    if total > end - pos - 4:
        raise CheckpointFormatError(
            f"{kind}: lengths add up to {total} bytes but only {end - pos - 4} follow the lengths",
            path=path,
            tensor=tensor,
            offset=offset + pos + 4,
        )
    entry_crc = crc32c(memoryview(data)[pos : pos + 4 + total], lcrc) if crc else None
    pos += 4
    out = []
    for length in lengths:
        out.append(data[pos : pos + length])
        pos += length
    return out, entry_crc
