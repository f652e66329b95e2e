"""Slice keys: TensorFlow's ``EncodeTensorNameSlice`` / ``DecodeTensorNameSlice``.

A tensor saved partitioned keeps each stored slice's data under the key::

    NumInc(0) + Str(name) + NumInc(rank) + for each dim: SignedInc(start) + SignedInc(length)

with a whole ("full") dimension written as start 0, length -1
(``tensorflow/core/util/saved_tensor_slice_util.cc``, helpers from
``tensorflow/core/lib/strings/ordered_code.cc``). Every such key starts with ``0x00``, so
slice entries sort right after the header and before every tensor name.
"""

from __future__ import annotations

from gpuload.errors import CheckpointFormatError
from gpuload.format.slices import Box

__all__ = ["encode_tensor_name_slice", "decode_tensor_name_slice", "is_slice_key", "extents_of", "describe_key"]

# kLengthToHeaderBits[len] for WriteSignedNumIncreasing
_HEADER = [
    (0, 0),
    (0x80, 0),
    (0xC0, 0),
    (0xE0, 0),
    (0xF0, 0),
    (0xF8, 0),
    (0xFC, 0),
    (0xFE, 0),
    (0xFF, 0),
    (0xFF, 0x80),
    (0xFF, 0xC0),
]
# kBitsToLength[bit_length] for bit lengths 0..63
_BITS_TO_LENGTH = [1] * 7 + [2] * 7 + [3] * 7 + [4] * 7 + [5] * 7 + [6] * 7 + [7] * 7 + [8] * 7 + [9] * 7 + [10]


def _num_increasing(u: int) -> bytes:
    """``OrderedCode::WriteNumIncreasing``: length byte, then big-endian significant bytes."""
    if u < 0:
        raise ValueError(f"WriteNumIncreasing takes an unsigned value, got {u}")
    n = (u.bit_length() + 7) // 8
    return bytes([n]) + u.to_bytes(n, "big")


def _string(s: bytes) -> bytes:
    """``OrderedCode::WriteString``: escape 0x00 and 0xff, terminate with ``00 01``."""
    return _escape(s) + b"\x00\x01"


def _escape(s: bytes) -> bytes:
    out = bytearray()
    for b in s:
        if b == 0x00:
            out += b"\x00\xff"
        elif b == 0xFF:
            out += b"\xff\x00"
        else:
            out.append(b)
    return bytes(out)


def _signed_increasing(v: int) -> bytes:
    """``OrderedCode::WriteSignedNumIncreasing`` for a signed 64-bit ``v``."""
    if not -(1 << 63) <= v < (1 << 63):
        raise ValueError(f"slice extent {v} does not fit in int64")
    x = ~v if v < 0 else v
    if x < 64:
        return bytes([(0x80 ^ v) & 0xFF])
    n = _BITS_TO_LENGTH[x.bit_length()]
    buf = bytearray((v & ((1 << 80) - 1)).to_bytes(10, "big")[10 - n :])  # sign-extended to 10 bytes
    buf[0] ^= _HEADER[n][0]
    buf[1] ^= _HEADER[n][1]
    return bytes(buf)


def extents_of(box_or_extents, shape=None) -> list[tuple[int, int]]:
    """``(start, length)`` pairs, ``length == -1`` for a full dimension.

    A :class:`Box` always gives explicit lengths, as a parsed ``SaveSliceInfo`` spec does
    (``"0,100"`` on a dimension of 100 is *not* written as full). Sequences of pairs may
    use ``None`` or ``-1`` for a full dimension.
    """
    if isinstance(box_or_extents, Box):
        return list(zip(box_or_extents.start, box_or_extents.shape))
    return [(int(s), -1 if n is None else int(n)) for s, n in box_or_extents]


def encode_tensor_name_slice(name, box_or_extents) -> bytes:
    """The table key of one stored slice of tensor ``name``.

    Parameters
    ----------
    name:
        Full tensor name (``str``, UTF-8 encoded; or ``bytes``).
    box_or_extents:
        A :class:`~gpuload.format.slices.Box`, or ``(start, length)`` pairs with
        ``length`` -1 / ``None`` for a full dimension (as stored in a ``TensorSliceProto``).

    Examples
    --------
    >>> encode_tensor_name_slice("new_scope_2/var3", Box((20, 0), (20, 100))).hex(" ")[-17:]
    '02 94 94 80 c0 64'
    """
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    extents = extents_of(box_or_extents)
    parts = [_num_increasing(0), _string(name), _num_increasing(len(extents))]
    for start, length in extents:
        parts.append(_signed_increasing(start))
        parts.append(_signed_increasing(length))
    return b"".join(parts)


def is_slice_key(key) -> bool:
    """Whether a table key is a slice key (they all start with ``0x00``)."""
    return bool(key) and (key[0] == 0 if isinstance(key, (bytes, bytearray)) else key[0] == "\x00")


def _read_signed(key: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(key):
        raise ValueError("truncated signed number")
    neg = not key[pos] & 0x80
    flip = 0xFF if neg else 0
    b0 = key[pos] ^ flip
    ones = 0
    while ones < 8 and b0 & (0x80 >> ones):
        ones += 1
    if ones == 8:
        if pos + 1 >= len(key):
            raise ValueError("truncated signed number")
        b1 = key[pos + 1] ^ flip
        while ones < 11 and b1 & (0x80 >> (ones - 8)):
            ones += 1
    n = ones
    if not 1 <= n <= 10 or pos + n > len(key):
        raise ValueError("bad signed number")
    raw = bytearray(b ^ flip for b in key[pos : pos + n])
    raw[0] ^= _HEADER[n][0]
    if n > 1:
        raw[1] ^= _HEADER[n][1]
    x = int.from_bytes(raw, "big")
    v = ~x if neg else x
    if _signed_increasing(v) != key[pos : pos + n]:
        raise ValueError("non-canonical signed number")
    return v, pos + n


def decode_tensor_name_slice(key: bytes) -> tuple[str, list[tuple[int, int]]]:
    """Inverse of :func:`encode_tensor_name_slice`: ``(name, [(start, length), ...])``.

    Raises
    ------
    CheckpointFormatError
        If ``key`` is not a well-formed slice key.
    """
    key = bytes(key)
    try:
        if not key.startswith(b"\x00"):
            raise ValueError("does not start with NumIncreasing(0)")
        pos = 1
        name = bytearray()
        while True:
            if pos + 1 >= len(key):
                raise ValueError("unterminated name")
            b = key[pos]
            if b == 0x00:
                nxt = key[pos + 1]
                if nxt == 0x01:
                    pos += 2
                    break
                if nxt != 0xFF:
                    raise ValueError("bad escape in name")
                name.append(0)
                pos += 2
            elif b == 0xFF:
                if key[pos + 1] != 0x00:
                    raise ValueError("bad escape in name")
                name.append(0xFF)
                pos += 2
            else:
                name.append(b)
                pos += 1
        if pos >= len(key):
            raise ValueError("missing rank")
        nlen = key[pos]
        if nlen > 8 or pos + 1 + nlen > len(key):
            raise ValueError("bad rank")
        rank = int.from_bytes(key[pos + 1 : pos + 1 + nlen], "big")
        pos += 1 + nlen
        if rank == 0 or rank > 254:
            raise ValueError(f"rank {rank} out of range")
        extents = []
        for _ in range(rank):
            start, pos = _read_signed(key, pos)
            length, pos = _read_signed(key, pos)
            extents.append((start, length))
        if pos != len(key):
            raise ValueError(f"{len(key) - pos} trailing bytes")
    except ValueError as e:
        raise CheckpointFormatError(f"malformed slice key {key!r}: {e}") from None
    return bytes(name).decode("utf-8", "surrogateescape"), extents


def describe_key(key: str) -> tuple[str, str | None]:
    """``(tensor, slice)`` that table key ``key`` holds, for messages.

    ``slice`` is ``None`` for a tensor stored whole, else the stored slice as a box,
    ``"[0:2, 0:8]"`` (``":"`` for a dimension stored whole). A NUL-led key that is not a
    well-formed slice key (no partitioned tensor refers to it) is its own tensor: a message
    about its bytes must not fail on its name.
    """
    if not is_slice_key(key):
        return key, None
    try:
        name, extents = decode_tensor_name_slice(key.encode("utf-8", "surrogateescape"))
    except CheckpointFormatError:
        return key, None
    return name, "[" + ", ".join(":" if n == -1 else f"{s}:{s + n}" for s, n in extents) + "]"
