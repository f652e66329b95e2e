"""Just enough protobuf for TensorBundle: wire decoding and encoding of five messages.

Decoded: ``BundleHeaderProto``, ``BundleEntryProto``, ``TensorShapeProto``,
``TensorSliceProto`` and ``VersionDef`` (all proto3). Decoding follows the C++ parser's
rules: unknown fields (every wire type, groups included) are skipped, a known field with
an unexpected wire type is treated as unknown, the last value of a scalar field wins and
repeated occurrences of a singular message field merge. Anything truncated or overlong is
a :class:`~gpuload.errors.CheckpointFormatError` naming the file, the key and the offset.

Encoding writes what TensorFlow's serializer writes: fields in number order, proto3
defaults omitted, so the bytes match TensorFlow's for the same message.
"""

from __future__ import annotations

import dataclasses

from gpuload.errors import CheckpointFormatError

__all__ = [
    "Context",
    "VersionDef",
    "BundleHeader",
    "TensorShape",
    "TensorSlice",
    "BundleEntry",
    "decode_varint",
    "encode_varint",
    "decode_header",
    "decode_entry",
    "encode_header",
    "encode_entry",
    "encode_shape",
    "encode_slice",
]

_U64 = (1 << 64) - 1
WT_VARINT, WT_I64, WT_LEN, WT_SGROUP, WT_EGROUP, WT_I32 = 0, 1, 2, 3, 4, 5
_MAX_GROUP_DEPTH = 100  # protobuf's default recursion limit


@dataclasses.dataclass(frozen=True)
class Context:
    """Where the bytes being decoded came from, for error messages."""

    path: str | None = None
    base: int | None = None  # file offset of the first byte of the buffer
    key: str | None = None  # the table key (tensor name) whose value this is

    def error(self, message: str, pos: int | None = None) -> CheckpointFormatError:
        offset = None if self.base is None or pos is None else self.base + pos
        return CheckpointFormatError(message, path=self.path, tensor=self.key, offset=offset)


_NO_CONTEXT = Context()


def decode_varint(
    buf, pos: int, end: int, ctx: Context = _NO_CONTEXT, what: str = "varint", max_bytes: int = 10
) -> tuple[int, int]:
    """Decode an unsigned LEB128 varint at ``buf[pos:end]``; returns ``(value, next_pos)``.

    At most ``max_bytes`` bytes are consumed (10 for 64-bit values, 5 for varint32), so a
    run of continuation bytes can never loop or grow a huge integer.
    """
    if pos < end and buf[pos] < 0x80:  # one byte: most tags, lengths and small values
        return buf[pos], pos + 1
    result = 0
    shift = 0
    start = pos
    limit = min(end, pos + max_bytes)
    while pos < limit:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            bits = 32 if max_bytes == 5 else 64
            if result >> bits:
                raise ctx.error(f"{what}: varint overflows {bits} bits", start)
            return result, pos
        shift += 7
    if limit < start + max_bytes:
        raise ctx.error(
            f"{what}: truncated varint (the {end - start} byte(s) left all have the "
            f"continuation bit set; expected a final byte < 0x80)",
            start,
        )
    raise ctx.error(f"{what}: varint longer than {max_bytes} bytes", start)


def encode_varint(value: int) -> bytes:
    """LEB128 encoding; negative values as 64-bit two's complement (10 bytes), like protobuf."""
    if value < 0:
        value &= _U64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def _iter_fields(buf, pos: int, end: int, ctx: Context, msg: str):
    """Yield ``(field_number, wire_type, value, value_pos)`` for each field in ``buf[pos:end]``.

    ``value`` is an int for varint/fixed fields and a ``(start, stop)`` pair for
    length-delimited ones. Groups are skipped whole and never yielded.
    """
    # (one-byte varints are decoded inline: this loop runs for every field of every entry
    # of the index, and building decode_varint's message arguments costs more than the decode)
    while pos < end:
        tag_pos = pos
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = decode_varint(buf, pos, end, ctx, f"{msg} field tag", 5)
        field, wt = tag >> 3, tag & 7
        if field == 0:
            raise ctx.error(f"{msg}: invalid field number 0 (tag byte 0x{buf[tag_pos]:02x})", tag_pos)
        if wt == WT_VARINT:
            if pos < end and buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            else:
                value, pos = decode_varint(buf, pos, end, ctx, f"{msg} field {field}")
            yield field, wt, value, tag_pos
        elif wt == WT_I64:
            if pos + 8 > end:
                raise ctx.error(f"{msg} field {field}: truncated fixed64 (need 8 bytes, {end - pos} left)", pos)
            yield field, wt, int.from_bytes(buf[pos : pos + 8], "little"), tag_pos
            pos += 8
        elif wt == WT_I32:
            if pos + 4 > end:
                raise ctx.error(f"{msg} field {field}: truncated fixed32 (need 4 bytes, {end - pos} left)", pos)
            yield field, wt, int.from_bytes(buf[pos : pos + 4], "little"), tag_pos
            pos += 4
        elif wt == WT_LEN:
            if pos < end and buf[pos] < 0x80:
                n = buf[pos]
                pos += 1
            else:
                n, pos = decode_varint(buf, pos, end, ctx, f"{msg} field {field} length")
            if n > end - pos:
                raise ctx.error(
                    f"{msg} field {field}: length {n} runs past the end of the message ({end - pos} bytes left)", pos
                )
            yield field, wt, (pos, pos + n), tag_pos
            pos += n
        elif wt == WT_SGROUP:
            pos = _skip_group(buf, pos, end, field, ctx, msg)
        elif wt == WT_EGROUP:
            raise ctx.error(f"{msg}: end-group tag for field {field} without a matching start-group", tag_pos)
        else:
            raise ctx.error(f"{msg}: invalid wire type {wt} for field {field} (expected 0, 1, 2, 3, 4 or 5)", tag_pos)


def _skip_group(buf, pos: int, end: int, field: int, ctx: Context, msg: str) -> int:
    stack = [field]
    while stack:
        if pos >= end:
            raise ctx.error(f"{msg}: group for field {stack[-1]} not terminated", pos)
        tag_pos = pos
        tag, pos = decode_varint(buf, pos, end, ctx, f"{msg} field tag", 5)
        f, wt = tag >> 3, tag & 7
        if f == 0:
            raise ctx.error(f"{msg}: invalid field number 0 inside a group", tag_pos)
        if wt == WT_VARINT:
            _, pos = decode_varint(buf, pos, end, ctx, f"{msg} field {f}")
        elif wt in (WT_I64, WT_I32):
            n = 8 if wt == WT_I64 else 4
            if pos + n > end:
                raise ctx.error(f"{msg} field {f}: truncated fixed{8 * n}", pos)
            pos += n
        elif wt == WT_LEN:
            n, pos = decode_varint(buf, pos, end, ctx, f"{msg} field {f} length")
            if n > end - pos:
                raise ctx.error(f"{msg} field {f}: length {n} runs past the end ({end - pos} bytes left)", pos)
            pos += n
        elif wt == WT_SGROUP:
            if len(stack) >= _MAX_GROUP_DEPTH:
                raise ctx.error(f"{msg}: groups nested deeper than {_MAX_GROUP_DEPTH}", tag_pos)
            stack.append(f)
        elif wt == WT_EGROUP:
            if f != stack[-1]:
                raise ctx.error(f"{msg}: end-group for field {f} inside group {stack[-1]}", tag_pos)
            stack.pop()
        else:
            raise ctx.error(f"{msg}: invalid wire type {wt} for field {f}", tag_pos)
    return pos


def _repeated_ints(buf, wt, value, ctx, msg, field, out: list, conv):
    """Append a repeated integer field, accepting both packed and unpacked encodings."""
    if wt == WT_VARINT:
        out.append(conv(value))
    elif wt == WT_LEN:
        p, stop = value
        while p < stop:
            v, p = decode_varint(buf, p, stop, ctx, f"{msg} packed field {field}")
            out.append(conv(v))


# --- messages ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VersionDef:
    producer: int = 0
    min_consumer: int = 0
    bad_consumers: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class BundleHeader:
    num_shards: int = 0
    endianness: int = 0  # 0 little, 1 big
    version: VersionDef = VersionDef()


@dataclasses.dataclass(frozen=True)
class TensorShape:
    dims: tuple[int, ...] = ()
    unknown_rank: bool = False


@dataclasses.dataclass(frozen=True)
class TensorSlice:
    """Extents ``(start, length)``; ``length is None`` means the whole dimension."""

    extents: tuple[tuple[int, int | None], ...] = ()


@dataclasses.dataclass(frozen=True)
class BundleEntry:
    dtype: int = 0
    shape: TensorShape = TensorShape()
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0
    slices: tuple[TensorSlice, ...] = ()
    has_shape: bool = False


def _decode_version(buf, pos, end, ctx) -> VersionDef:
    producer = min_consumer = 0
    bad: list[int] = []
    for field, wt, value, _ in _iter_fields(buf, pos, end, ctx, "VersionDef"):
        if field == 1 and wt == WT_VARINT:
            producer = _int32(value)
        elif field == 2 and wt == WT_VARINT:
            min_consumer = _int32(value)
        elif field == 3:
            _repeated_ints(buf, wt, value, ctx, "VersionDef", 3, bad, _int32)
    return VersionDef(producer, min_consumer, tuple(bad))


def decode_header(buf, ctx: Context = _NO_CONTEXT) -> BundleHeader:
    """Decode a serialized ``BundleHeaderProto``."""
    num_shards = endianness = 0
    version_parts = []
    for field, wt, value, _ in _iter_fields(buf, 0, len(buf), ctx, "BundleHeaderProto"):
        if field == 1 and wt == WT_VARINT:
            num_shards = _int32(value)
        elif field == 2 and wt == WT_VARINT:
            endianness = _int32(value)
        elif field == 3 and wt == WT_LEN:
            version_parts.append(bytes(buf[value[0] : value[1]]))
    # repeated occurrences of a message field merge: parse their concatenation
    vbuf = b"".join(version_parts)
    version = _decode_version(vbuf, 0, len(vbuf), Context(ctx.path, None, ctx.key))
    return BundleHeader(num_shards, endianness, version)


def _decode_shape(buf, ctx) -> TensorShape:
    dims = []
    unknown_rank = False
    for field, wt, value, _ in _iter_fields(buf, 0, len(buf), ctx, "TensorShapeProto"):
        if field == 2 and wt == WT_LEN:
            size = 0
            for f2, wt2, v2, _ in _iter_fields(buf, value[0], value[1], ctx, "TensorShapeProto.Dim"):
                if f2 == 1 and wt2 == WT_VARINT:
                    size = _int64(v2)
            dims.append(size)
        elif field == 3 and wt == WT_VARINT:
            unknown_rank = value != 0
    return TensorShape(tuple(dims), unknown_rank)


def _decode_slice(buf, pos, end, ctx) -> TensorSlice:
    extents = []
    for field, wt, value, _ in _iter_fields(buf, pos, end, ctx, "TensorSliceProto"):
        if field == 1 and wt == WT_LEN:
            start, length = 0, None
            for f2, wt2, v2, _ in _iter_fields(buf, value[0], value[1], ctx, "TensorSliceProto.Extent"):
                if f2 == 1 and wt2 == WT_VARINT:
                    start = _int64(v2)
                elif f2 == 2 and wt2 == WT_VARINT:
                    length = _int64(v2)
            extents.append((start, length))
    return TensorSlice(tuple(extents))


def decode_entry(buf, ctx: Context = _NO_CONTEXT) -> BundleEntry:
    """Decode a serialized ``BundleEntryProto`` (values are not validated here)."""
    dtype = shard_id = offset = size = crc = 0
    shape_parts = []
    slices = []
    for field, wt, value, _ in _iter_fields(buf, 0, len(buf), ctx, "BundleEntryProto"):
        if wt == WT_VARINT and field in (1, 3, 4, 5):
            if field == 1:
                dtype = _int32(value)
            elif field == 3:
                shard_id = _int32(value)
            elif field == 4:
                offset = _int64(value)
            else:
                size = _int64(value)
        elif field == 2 and wt == WT_LEN:
            shape_parts.append(bytes(buf[value[0] : value[1]]))
        elif field == 6 and wt == WT_I32:
            crc = value
        elif field == 7 and wt == WT_LEN:
            slices.append(_decode_slice(buf, value[0], value[1], ctx))
    sbuf = b"".join(shape_parts)
    shape = _decode_shape(sbuf, Context(ctx.path, None, ctx.key))
    return BundleEntry(dtype, shape, shard_id, offset, size, crc, tuple(slices), bool(shape_parts))


# --- encoding ---------------------------------------------------------------------------


def _tag(field: int, wt: int) -> bytes:
    return encode_varint((field << 3) | wt)


def _len_field(field: int, payload: bytes) -> bytes:
    return _tag(field, WT_LEN) + encode_varint(len(payload)) + payload


def _int_field(field: int, value: int) -> bytes:
    return _tag(field, WT_VARINT) + encode_varint(value) if value else b""


def encode_header(
    num_shards: int = 1, endianness: int = 0, producer: int = 1, min_consumer: int = 0, bad_consumers=()
) -> bytes:
    """Serialize a ``BundleHeaderProto`` (TF's writer: ``08 01 1a 02 08 01``)."""
    version = _int_field(1, producer) + _int_field(2, min_consumer)
    if bad_consumers:
        packed = b"".join(encode_varint(b) for b in bad_consumers)
        version += _len_field(3, packed)
    return _int_field(1, num_shards) + _int_field(2, endianness) + _len_field(3, version)


def encode_shape(dims) -> bytes:
    """Serialize a ``TensorShapeProto``; a zero-size dim is an empty ``Dim`` (``12 00``)."""
    return b"".join(_len_field(2, _int_field(1, int(d))) for d in dims)


def encode_slice(extents) -> bytes:
    """Serialize a ``TensorSliceProto`` from ``(start, length)`` pairs (``length`` None or -1: full)."""
    out = []
    for start, length in extents:
        if length is None or length == -1:
            out.append(_len_field(1, _int_field(1, start)))  # full dim: start 0, so empty
        else:
            # start is a plain proto3 scalar (0 omitted); length sits in a oneof, always written
            out.append(_len_field(1, _int_field(1, start) + _tag(2, WT_VARINT) + encode_varint(length)))
    return b"".join(out)


def encode_entry(
    dtype: int, shape, shard_id: int = 0, offset: int = 0, size: int = 0, crc32c: int = 0, slices=()
) -> bytes:
    """Serialize a ``BundleEntryProto``. ``slices`` is a list of extent lists."""
    out = [
        _int_field(1, dtype),
        _len_field(2, encode_shape(shape)),
        _int_field(3, shard_id),
        _int_field(4, offset),
        _int_field(5, size),
    ]
    if crc32c:
        out.append(_tag(6, WT_I32) + (crc32c & 0xFFFFFFFF).to_bytes(4, "little"))
    for extents in slices:
        out.append(_len_field(7, encode_slice(extents)))
    return b"".join(out)
