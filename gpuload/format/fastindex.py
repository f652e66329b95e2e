"""Vectorised (NumPy) parsing of a TensorBundle ``.index``: the fast path of ``Bundle.open``.

A checkpoint index can hold millions of entries. Parsing it one entry at a time in Python
(tuples, ``TensorEntry`` objects, dicts) costs ~15 µs and ~600 bytes an entry, so this
module parses it into *columns* instead:

* :func:`parse_table` walks every data block's restart intervals in lock step (all
  intervals advance one entry per NumPy step; TF writes 16 entries per interval), and
  returns one key buffer with offsets plus each value's position in the raw file bytes;
* :func:`decode_entries` decodes the ``BundleEntryProto`` values in the layout every
  TensorFlow writer produces (fields 1..6 in order, each at most once, one-byte tags,
  shape dims ``12 len [08 varint]``) and computes, vectorised, every check that
  ``Bundle`` makes of an entry.

Neither function raises for bad input. They *defer*: :func:`parse_table` returns ``None``
for anything it is not sure of (a compressed block, any structural error, any key-order
doubt), and :func:`decode_entries` marks a value ``unusual`` (decode it one at a time
with :func:`~gpuload.format.proto.decode_entry`) or ``bad`` (it fails a check). The
caller then runs the per-entry reference code, which is what defines the behaviour and
the exact error message; this module only has to never *accept* what the reference
rejects, and to agree with it on what it accepts (``tests/test_format_fastindex.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpuload.format import dtypes as _dt
from gpuload.format.crc import crc32c, unmask
from gpuload.format.sstable import _MAGIC_BYTES, BLOCK_TRAILER_SIZE, FOOTER_SIZE

__all__ = ["TableColumns", "EntryColumns", "parse_table", "decode_entries", "ITEMSIZE"]

_MAX_STEPS = 64  # entries per restart interval walked in lock step (TF writes 16)
_MAX_FAST_RANK = 32  # deeper shapes go through the per-entry decoder
_CHUNK = 1 << 16  # entries decoded per batch: bounds the temporaries
_COPY_BYTES = 1 << 17  # key bytes copied per batch (their int64 indices: 8 bytes each, twice)
_EXACT = float(1 << 50)  # element counts below this are exact in float64 and int64 * 16

# itemsize by TF DataType code (0: unsupported or DT_STRING, handled apart)
ITEMSIZE = np.zeros(256, np.int64)
_SUPPORTED = np.zeros(256, bool)
for _code in range(1, 100):
    if _dt.is_supported(_code):
        _SUPPORTED[_code] = True
        if _code != _dt.DT_STRING:
            ITEMSIZE[_code] = _dt.itemsize(_code)


@dataclasses.dataclass
class TableColumns:
    """A parsed table: entry ``i`` has key ``keys[key_off[i]:key_off[i+1]]`` and value
    ``data[value_pos[i]:value_pos[i] + value_len[i]]`` (``value_pos`` is a file offset)."""

    keys: bytearray
    key_off: np.ndarray
    value_pos: np.ndarray
    value_len: np.ndarray

    def __len__(self):
        return len(self.value_pos)

    def key(self, i: int) -> bytes:
        return bytes(self.keys[int(self.key_off[i]) : int(self.key_off[i + 1])])


@dataclasses.dataclass
class EntryColumns:
    """What :func:`decode_entries` found; ``ok`` entries were fully checked."""

    ok: np.ndarray  # decoded here and every check passed
    unusual: np.ndarray  # another layout: decode with the per-entry decoder
    shard: np.ndarray  # of ok entries; -1 elsewhere


def _varints(d: np.ndarray, pos: np.ndarray, limit: np.ndarray, nbytes: int):
    """Decode LEB128 varints at ``d[pos]`` (``< limit``); returns ``(value, next, bad)``.

    ``value`` is uint64; ``bad`` marks truncated, overlong or overflowing varints, which
    :func:`~gpuload.format.proto.decode_varint` rejects.
    """
    n = len(d)
    value = np.zeros(len(pos), np.uint64)
    length = np.zeros(len(pos), np.int64)
    bad = np.zeros(len(pos), bool)
    more = np.ones(len(pos), bool)
    for k in range(nbytes):
        at = pos + k
        inside = at < limit
        bad |= more & ~inside  # truncated
        take = more & inside
        if not take.any():
            break
        b = d[np.minimum(at, n - 1)].astype(np.uint64)
        value |= np.where(take, (b & np.uint64(0x7F)) << np.uint64(7 * k), np.uint64(0))
        length += take
        more = take & (b >= 0x80)
        if k == nbytes - 1:
            bad |= more  # longer than nbytes
            bad |= take & (b > (1 if nbytes == 10 else 0x0F))  # overflows 64 (32) bits
    return value, pos + length, bad


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each pair."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    out = np.ones(total, np.int64)
    nz = lengths > 0
    s = starts.astype(np.int64)[nz]
    e = ends[nz]
    ln = lengths[nz]
    out[0] = s[0]
    # at each range start, jump from the previous range's last index to this start
    out[(e - ln)[1:]] = s[1:] - (s[:-1] + ln[:-1] - 1)
    return np.cumsum(out)


def _spans(lengths: np.ndarray, limit: int = _COPY_BYTES):
    """``(lo, hi)`` runs of ``lengths`` adding up to at most ``limit`` (or one item)."""
    total = len(lengths)
    lo = 0
    while lo < total:
        c = np.cumsum(lengths[lo : lo + _CHUNK // 4], dtype=np.int64)
        hi = lo + max(1, int(np.searchsorted(c, limit, side="right")))
        yield lo, hi
        lo = hi


def _walk_block_index(data, path):
    """``[(block offset, size, separator)]`` from the footer and index block, or None."""
    from gpuload.errors import CheckpointFormatError, UnsupportedCheckpointError
    from gpuload.format.proto import Context
    from gpuload.format.sstable import _parse_block, _read_block, _read_handle

    n = len(data)
    if n < FOOTER_SIZE or data[n - 8 :] != _MAGIC_BYTES:
        return None
    try:
        ctx = Context(path, 0)
        meta_off, meta_size, pos = _read_handle(data, n - FOOTER_SIZE, n - 8, ctx, "footer")
        index_off, index_size, pos = _read_handle(data, pos, n - 8, ctx, "footer")
        _read_block(data, meta_off, meta_size, path, "metaindex block")
        index_block = _read_block(data, index_off, index_size, path, "index block")
        if data[index_off + index_size] != 0:
            return None
        out = []
        prev = None
        for sep, handle, hpos in _parse_block(index_block, path, index_off, "index block"):
            if prev is not None and sep <= prev:
                return None
            boff, bsize, used = _read_handle(handle, 0, len(handle), Context(path, hpos), "handle")
            if used != len(handle):
                return None
            out.append((boff, bsize, sep))
            prev = sep
        return out
    except (CheckpointFormatError, UnsupportedCheckpointError):
        return None


def parse_table(data: bytes, path=None) -> TableColumns | None:
    """Parse a whole uncompressed table into columns; ``None``: use ``sstable.read_table``."""
    blocks = _walk_block_index(data, path)
    if blocks is None:
        return None
    n = len(data)
    limit = n - FOOTER_SIZE
    d = np.frombuffer(data, np.uint8)
    starts, ends, block_end, block_ids = [], [], [], []
    for bi, (boff, bsize, _) in enumerate(blocks):
        if boff > limit or bsize + BLOCK_TRAILER_SIZE > limit - boff:
            return None
        end = boff + bsize
        if data[end] != 0:  # compressed (or a bad type): the reference handles it
            return None
        if unmask(int.from_bytes(data[end + 1 : end + 5], "little")) != crc32c(memoryview(data)[boff : end + 1]):
            return None
        if bsize < 4:
            return None
        nr = int.from_bytes(data[end - 4 : end], "little")
        if nr == 0 or nr > (bsize - 4) // 4:
            return None
        at = end - 4 * (nr + 1)
        r = np.frombuffer(data, "<u4", nr, at).astype(np.int64)
        if r[0] != 0 or (nr > 1 and not (np.diff(r) > 0).all()) or r[-1] >= at - boff:
            return None
        starts.append(r + boff)
        e = np.empty(nr, np.int64)
        e[:-1] = r[1:] + boff
        e[-1] = at
        ends.append(e)
        block_end.append(np.full(nr, at, np.int64))
        block_ids.append(np.full(nr, bi, np.int64))
    if not starts:
        return None
    pos = np.concatenate(starts)
    iend = np.concatenate(ends)
    bend = np.concatenate(block_end)
    block_of = np.concatenate(block_ids)
    del starts, ends, block_end, block_ids
    nint = len(pos)

    # lock step: every interval decodes its next entry header
    steps = []  # per step: (intervals still walking, shared, non_shared, value_len, key literal position)
    idx = np.arange(nint, dtype=np.int32 if nint < (1 << 31) else np.int64)
    for step in range(_MAX_STEPS + 1):
        idx = idx[pos[idx] < iend[idx]]  # an interval that ends stays ended
        if not len(idx):
            break
        if step == _MAX_STEPS:
            return None
        p = pos[idx]
        lim = bend[idx]
        shared, p, b1 = _varints(d, p, lim, 5)
        nonshared, p, b2 = _varints(d, p, lim, 5)
        vlen, p, b3 = _varints(d, p, lim, 5)
        if (b1 | b2 | b3).any():
            return None
        shared = shared.astype(np.int64)
        nonshared = nonshared.astype(np.int64)
        vlen = vlen.astype(np.int64)
        if (nonshared + vlen > lim - p).any():
            return None
        if step == 0 and shared.any():
            return None
        small = np.uint32 if n < (1 << 32) else np.int64
        steps.append((idx, shared.astype(small), nonshared.astype(small), vlen.astype(small), p.astype(small)))
        pos[idx] = p + nonshared + vlen
    if (pos != iend).any():  # a walk ran past the next restart point
        return None
    del pos, iend, bend
    nsteps = len(steps)
    count = np.zeros(nint, np.int64)
    for st in steps:
        count[st[0]] += 1
    per_block = np.bincount(block_of, weights=count, minlength=len(blocks)).astype(np.int64)
    first_of = np.zeros(nint, np.int64)
    np.cumsum(count[:-1], out=first_of[1:])
    total = int(count.sum())
    del count, block_of
    small = steps[0][1].dtype
    shared = np.empty(total, small)
    nonshared = np.empty(total, small)
    vlen = np.empty(total, small)
    kpos = np.empty(total, small)
    step_of = np.empty(total, np.uint8)
    for s_i, (idx, a1, a2, a3, a4) in enumerate(steps):
        at = first_of[idx] + s_i
        shared[at], nonshared[at], vlen[at], kpos[at] = a1, a2, a3, a4
        step_of[at] = s_i
    del steps, first_of, idx
    # a key shares at most the previous key's length: checked before sizing the key buffer,
    # so that a hostile share count cannot make it huge (by induction from the restart
    # entries, which share nothing, every key is then made of its interval's bytes)
    for lo in range(1, total, _CHUNK):
        hi = min(total, lo + _CHUNK)
        later = step_of[lo:hi] > 0
        prev_len = shared[lo - 1 : hi - 1].astype(np.int64) + nonshared[lo - 1 : hi - 1]
        if (shared[lo:hi][later] > prev_len[later]).any():
            return None
    key_off = np.zeros(total + 1, np.int64)
    keylen = shared + nonshared
    np.cumsum(keylen, dtype=np.int64, out=key_off[1:])
    del keylen
    keys = bytearray(int(key_off[-1]))
    kb = np.frombuffer(keys, np.uint8)
    # the literal part of every key
    for lo, hi in _spans(nonshared):
        dst = _ranges(key_off[lo:hi] + shared[lo:hi], nonshared[lo:hi])
        src = _ranges(kpos[lo:hi], nonshared[lo:hi])
        kb[dst] = d[src]
    # the shared part, copied from the previous key: one step at a time
    for step in range(1, nsteps):
        ids = np.nonzero(step_of == step)[0]
        ids = ids[shared[ids] > 0]
        for lo, hi in _spans(shared[ids]):
            sel = ids[lo:hi]
            dst = _ranges(key_off[sel], shared[sel])
            src = _ranges(key_off[sel - 1], shared[sel])
            kb[dst] = kb[src]
        del ids
    # keys strictly increasing: within an interval from the first differing byte
    for lo in range(1, total, _CHUNK):
        hi = min(total, lo + _CHUNK)
        r = np.nonzero(step_of[lo:hi])[0] + lo
        s, ns = shared[r].astype(np.int64), nonshared[r]
        plen = key_off[r] - key_off[r - 1]
        if ((ns == 0) & (s <= plen)).any():  # the key is a prefix of (or equals) the previous
            return None
        c = r[s < plen]
        mine = kb[key_off[c] + shared[c]]
        theirs = kb[key_off[c - 1] + shared[c]]
        if (mine <= theirs).any():  # smaller, or a non-canonical share: let the reference decide
            return None
    del kb
    value_pos = kpos
    value_pos += nonshared
    del shared, nonshared
    # ... and across interval boundaries and blocks, and against the separators
    f = np.nonzero(step_of == 0)[0]
    f = f[f > 0]
    for a, b, c in zip(key_off[f - 1].tolist(), key_off[f].tolist(), key_off[f + 1].tolist()):
        if not keys[a:b] < keys[b:c]:
            return None
    del f
    del step_of
    first = 0
    prev_sep = None
    for bi, (_, _, sep) in enumerate(blocks):
        cnt = int(per_block[bi])
        if cnt:
            k0 = keys[int(key_off[first]) : int(key_off[first + 1])]
            k1 = keys[int(key_off[first + cnt - 1]) : int(key_off[first + cnt])]
            if (prev_sep is not None and not k0 > prev_sep) or k1 > sep:
                return None
        first += cnt
        prev_sep = sep
    pos_dtype = np.uint32 if n < (1 << 32) else np.int64
    if len(keys) < (1 << 32):
        key_off = key_off.astype(np.uint32)
    return TableColumns(keys, key_off, value_pos.astype(pos_dtype, copy=False), vlen.astype(pos_dtype, copy=False))


def decode_entries(data: bytes, value_pos: np.ndarray, value_len: np.ndarray, num_shards: int):
    """Decode and check the values ``data[value_pos[i]:value_pos[i] + value_len[i]]``.

    Returns
    -------
    ok, unusual, bad, shard_used, shard_end
        Boolean masks (an entry is in exactly one) and, per shard, whether an ``ok``
        entry is in it and the largest ``offset + size`` of those (to compare with the
        file sizes).
        ``ok``: the usual layout and every check of an unpartitioned entry passed.
        ``unusual``: another layout, decode it one at a time. ``bad``: a check failed.
    """
    d = np.frombuffer(data, np.uint8)
    m = len(value_pos)
    ok = np.zeros(m, bool)
    unusual = np.zeros(m, bool)
    bad = np.zeros(m, bool)
    shard_end = np.zeros(max(num_shards, 1), np.uint64)
    shard_used = np.zeros(max(num_shards, 1), bool)
    for lo in range(0, m, _CHUNK):
        hi = min(m, lo + _CHUNK)
        o, u, b, sh, end = _decode_chunk(
            d, value_pos[lo:hi].astype(np.int64), value_len[lo:hi].astype(np.int64), num_shards
        )
        ok[lo:hi], unusual[lo:hi], bad[lo:hi] = o, u, b
        if o.any():
            np.maximum.at(shard_end, sh[o], end[o])
            shard_used[sh[o]] = True
    return ok, unusual, bad, shard_used, shard_end


# (tag byte -> field) of the usual layout: dtype, shape, shard_id, offset, size, crc32c
_FIELD_OF_TAG = np.zeros(256, np.int64)
for _f, _t in ((1, 0x08), (2, 0x12), (3, 0x18), (4, 0x20), (5, 0x28), (6, 0x35)):
    _FIELD_OF_TAG[_t] = _f


def _decode_chunk(d, p, vlen, num_shards):
    m = len(p)
    end = p + vlen
    unusual = np.zeros(m, bool)
    bad = np.zeros(m, bool)
    last = np.zeros(m, np.int64)
    vals = np.zeros((6, m), np.uint64)  # fields 1, 3, 4, 5 (0, 2, 3, 4); shape start/end (1, 5)
    for _ in range(7):
        act = np.nonzero((p < end) & ~unusual & ~bad)[0]
        if not len(act):
            break
        fld = _FIELD_OF_TAG[d[p[act]]]
        good = fld > last[act]  # known tag (fld > 0), in order, once
        unusual[act[~good]] = True
        act, fld = act[good], fld[good]
        pp = p[act] + 1
        nxt = pp.copy()
        var = fld != 6
        if var.any():
            i = act[var]
            v, n2, b = _varints(d, pp[var], end[i], 10)
            bad[i] |= b
            isshape = fld[var] == 2
            ln = v[isshape].astype(np.int64)
            over = (v[isshape] > np.uint64(1 << 62)) | (ln > end[i[isshape]] - n2[isshape])
            bad[i[isshape]] |= over
            vals[1, i[isshape]] = n2[isshape].astype(np.uint64)
            vals[5, i[isshape]] = (n2[isshape] + np.where(over, 0, ln)).astype(np.uint64)
            n2 = n2.copy()
            n2[isshape] += np.where(over, 0, ln)
            nonshape = ~isshape
            vals[fld[var][nonshape] - 1, i[nonshape]] = v[nonshape]
            nxt[var] = n2
        fx = ~var
        if fx.any():
            i = act[fx]
            bad[i] |= pp[fx] + 4 > end[i]
            nxt[fx] = pp[fx] + 4
        p[act] = nxt
        last[act] = fld
    unusual |= (p < end) & ~bad  # more fields than the usual six
    # field rows: dtype in 0, shard in 2, offset in 3, size in 4 (row = field - 1)
    dtype = (vals[0] & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32).astype(np.int64)
    shard = (vals[2] & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32).astype(np.int64)
    offset = vals[3].view(np.int64)
    size = vals[4].view(np.int64)
    q = vals[1].astype(np.int64)
    qe = vals[5].astype(np.int64)
    del vals
    # the shape: a run of Dim messages, 12 len [08 varint]
    nelem = np.ones(m, np.int64)
    fprod = np.ones(m, np.float64)
    for r in range(_MAX_FAST_RANK + 1):
        act = np.nonzero((q < qe) & ~unusual & ~bad)[0]
        if not len(act):
            break
        if r == _MAX_FAST_RANK:
            unusual[act] = True
            break
        odd = d[q[act]] != 0x12
        unusual[act[odd]] = True
        act = act[~odd]
        ln, n2, b = _varints(d, q[act] + 1, qe[act], 10)
        ln = ln.astype(np.int64)
        b |= (ln < 0) | (ln > qe[act] - n2)
        bad[act[b]] = True
        act, ln, n2 = act[~b], ln[~b], n2[~b]
        dim = np.zeros(len(act), np.int64)
        has = ln > 0
        if has.any():
            i = act[has]
            s2 = n2[has]
            tagged = d[s2] == 0x08
            unusual[i[~tagged]] = True
            v, n3, b2 = _varints(d, s2 + 1, s2 + ln[has], 10)
            bad[i[tagged & b2]] = True
            unusual[i[tagged & ~b2 & (n3 != s2 + ln[has])]] = True  # more fields in the Dim
            dim[has] = np.where(tagged & ~b2, v.view(np.int64), 0)
        neg = dim < 0
        bad[act[neg]] = True
        nelem[act] *= np.where(neg, 1, dim)
        fprod[act] *= np.where(dim > 0, dim, 1).astype(np.float64)
        q[act] = n2 + ln
    unusual[(fprod >= _EXACT) & ~bad] = True  # exact (Python int) element checks for these
    live = ~unusual & ~bad
    bad |= live & ((dtype <= 0) | (dtype >= 100))
    bad |= live & ((shard < 0) | (shard >= num_shards) | (offset < 0) | (size < 0))
    live = ~unusual & ~bad
    code = np.where(live, dtype, 0)
    isstr = code == _dt.DT_STRING
    sized = _SUPPORTED[code] & ~isstr
    bad |= live & isstr & (size < nelem + 4)
    bad |= live & sized & (size != nelem * ITEMSIZE[code])
    ok = ~unusual & ~bad
    return ok, unusual, bad, shard, offset.view(np.uint64) + size.view(np.uint64)
