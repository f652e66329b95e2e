"""Vocabulary files and the old-to-new index mapping of a warm start, built with NumPy.

A vocabulary file has one token per line; the whole line (without its ``\\n`` or
``\\r\\n``) is the token and the line number (from 0) is its row. :func:`read_vocab`
reads the first ``size`` lines into a fixed-width byte matrix without creating one
Python object per token, and :func:`vocab_mapping` matches the new tokens against the
old ones by sorting 64-bit hashes of those rows (NumPy sorts), checking every match on
the bytes themselves. A 1M-token vocabulary costs ``1M * (longest token + 1)`` bytes for
the matrix plus ``1M * 16`` bytes of hashes and indices, and well under a second.

Encoding: each row is the token's bytes, then one ``0x01`` byte, then zero padding to a
multiple of 8 bytes. Two different tokens never have the same row (the ``0x01`` marks
where a token ends, so a token ending in NUL bytes stays distinct from its prefix).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from gpuload.errors import VocabFileError

__all__ = ["Vocab", "read_vocab", "vocab_mapping"]

#: Lines turned into matrix rows per step: bounds the temporary index arrays.
_BLOCK_LINES = 1 << 16
_MULT = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


@dataclasses.dataclass(frozen=True)
class Vocab:
    """The first ``len(rows)`` tokens of a vocabulary file.

    Attributes
    ----------
    path:
        The file.
    rows:
        ``(n, width)`` ``uint8`` matrix, one encoded token per row (see the module notes).
    """

    path: str
    rows: np.ndarray
    #: ``argsort`` of the rows' 64-bit hashes, and the sorted hashes (built once, by
    #: :func:`read_vocab`, for the duplicate check and the matching).
    order: np.ndarray = dataclasses.field(default=None, repr=False)
    sorted_hashes: np.ndarray = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def nbytes(self) -> int:
        """Host memory held by this vocabulary."""
        extra = sum(a.nbytes for a in (self.order, self.sorted_hashes) if a is not None)
        return int(self.rows.nbytes) + extra

    def token(self, i: int) -> bytes:
        """Token ``i`` (0-based line number) as bytes."""
        row = self.rows[i].tobytes()
        return row[: row.rindex(b"\x01")]


def read_vocab(path, size: int, *, what: str) -> Vocab:
    """Read the first ``size`` lines of a vocabulary file (``size=-1``: every line).

    Parameters
    ----------
    path:
        The file.
    size:
        How many tokens to take, or ``-1`` for the whole file.
    what:
        How the caller names this file in messages (``"new_vocab of variable 'emb'"``).

    Raises
    ------
    VocabFileError
        (a ``ValueError``) the file is missing or shorter than ``size``, has no lines, or
        one of the lines taken is empty or repeats an earlier token. The message names the
        file and the line (1-based).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise VocabFileError(f"cannot read {what}: {e.strerror or e}", path=path) from None
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    total = len(nl) + (1 if len(buf) and (not len(nl) or nl[-1] != len(buf) - 1) else 0)
    if size is None or int(size) == -1:
        n = total
    else:
        n = int(size)
        if n < 0:
            raise VocabFileError(f"{what}: size must be -1 or >= 0, got {size}", path=path)
        if total < n:
            raise VocabFileError(
                f"{what} has {total} line(s), fewer than the {n} tokens asked for "
                f"(line {total + 1} would be the first missing one)",
                path=path,
            )
    if n == 0:
        raise VocabFileError(f"{what} has no tokens to use (empty file or size 0)", path=path)
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = nl[: n - 1] + 1
    ends = np.empty(n, dtype=np.int64)
    k = min(n, len(nl))
    ends[:k] = nl[:k]
    if k < n:  # the last line has no newline
        ends[k:] = len(buf)
    # "\r\n" line ends, as TensorFlow's line reader strips them.
    cr = ends > starts
    cr[cr] = buf[ends[cr] - 1] == 13
    ends -= cr
    lens = ends - starts
    empty = np.flatnonzero(lens == 0)
    if len(empty):
        raise VocabFileError(f"{what}: empty line (every line must hold one token)", path=path, line=int(empty[0]) + 1)
    nwords = (int(lens.max()) + 1 + 7) // 8
    padded = np.zeros(len(buf) + 8 * nwords + 8, dtype=np.uint8)
    padded[: len(buf)] = buf
    # 8-byte little-endian words starting at every byte of the file (an overlapping view),
    # so a token is gathered a word, not a byte, at a time.
    words = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    rows = np.empty((n, nwords), dtype="<u8")
    shifts = np.arange(nwords, dtype=np.int64) * 8
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    for a in range(0, n, _BLOCK_LINES):
        b = min(n, a + _BLOCK_LINES)
        block = words[starts[a:b, None] + shifts[None, :]]
        valid = np.clip(lens[a:b, None] - shifts[None, :], 0, 8)  # token bytes in each word
        keep = np.where(valid >= 8, ones, (np.uint64(1) << (valid.astype(np.uint64) * np.uint64(8))) - np.uint64(1))
        block &= keep
        ln = lens[a:b]
        # The end marker: byte ln of the row.
        block[np.arange(b - a), ln // 8] |= np.uint64(1) << ((ln % 8).astype(np.uint64) * np.uint64(8))
        rows[a:b] = block
    vocab = Vocab(path, rows.view(np.uint8).reshape(n, 8 * nwords))
    h = _hashes(vocab.rows)
    order = np.argsort(h)
    vocab = dataclasses.replace(vocab, order=order, sorted_hashes=h[order])
    _check_unique(vocab, what)
    return vocab


def _hashes(rows: np.ndarray) -> np.ndarray:
    words = rows.view(np.uint64)  # width is a multiple of 8
    h = np.zeros(rows.shape[0], dtype=np.uint64)
    for j in range(words.shape[1]):
        # All-zero words (the padding) leave the hash alone, so that one token hashes the
        # same in vocabularies of different widths.
        w = words[:, j]
        m = (h ^ w) * _MULT
        m ^= m >> np.uint64(31)
        h = np.where(w != 0, m, h) if j else m
    h *= _MIX
    h ^= h >> np.uint64(29)
    return h


def _rows_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise equality of two encoded matrices of possibly different widths."""
    w = min(a.shape[1], b.shape[1])
    eq = np.all(a[:, :w] == b[:, :w], axis=1)
    # The wider one must be all padding beyond the narrower width.
    if a.shape[1] > w:
        eq &= ~np.any(a[:, w:], axis=1)
    if b.shape[1] > w:
        eq &= ~np.any(b[:, w:], axis=1)
    return eq


def _sorted_index(vocab: Vocab):
    """(order, sorted hashes, positions i where sorted hashes i and i + 1 are equal)."""
    order, hs = vocab.order, vocab.sorted_hashes
    if order is None:
        h = _hashes(vocab.rows)
        order = np.argsort(h)
        hs = h[order]
    same = np.flatnonzero(hs[1:] == hs[:-1])
    return order, hs, same


def _check_unique(vocab: Vocab, what: str) -> None:
    order, _, same = _sorted_index(vocab)
    if not len(same):
        return
    a, b = order[same], order[same + 1]
    dup = _rows_equal(vocab.rows[a], vocab.rows[b])
    if not dup.all():
        # Two different tokens share a hash, so equal tokens need not sit side by side in
        # hash order: sort the bytes themselves.
        keys = _as_bytes(vocab.rows, vocab.rows.shape[1])
        order = np.argsort(keys, kind="stable")
        same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
        a, b = order[same], order[same + 1]
        dup = np.ones(len(a), dtype=bool)
    if dup.any():
        first, later = np.minimum(a[dup], b[dup]), np.maximum(a[dup], b[dup])
        i = int(np.argmin(later))
        raise VocabFileError(
            f"{what}: token {vocab.token(int(later[i]))!r} repeats line {int(first[i]) + 1} (tokens must be unique)",
            path=vocab.path,
            line=int(later[i]) + 1,
        )


def vocab_mapping(new: Vocab, old: Vocab) -> np.ndarray:
    """For each new token, its row in the old vocabulary, or -1 if it has none.

    Both vocabularies are duplicate-free (:func:`read_vocab` checks it).

    Returns
    -------
    numpy.ndarray
        ``int64`` array of ``len(new)`` old indices.
    """
    order, hs, same = _sorted_index(old)
    if len(same):
        # Two different old tokens share a 64-bit hash (about 1 in 10^7 for 2M tokens):
        # match on the bytes instead.
        return _exact_mapping(new, old)
    # Sorted queries: searchsorted walks the old hashes in order (cache-friendly).
    n_order, hn, _ = _sorted_index(new)
    pos = np.searchsorted(hs, hn)
    pos[pos == len(hs)] = 0
    hit = np.flatnonzero(hs[pos] == hn)
    cand = order[pos[hit]]
    new_idx = n_order[hit]
    ok = _rows_equal(new.rows[new_idx], old.rows[cand])
    out = np.full(len(new), -1, dtype=np.int64)
    out[new_idx[ok]] = cand[ok]
    return out


def _as_bytes(rows: np.ndarray, width: int) -> np.ndarray:
    """Rows as a NumPy ``S<width>`` array (the row encoding ends in 0x01, so NumPy's
    stripping of trailing NULs cannot merge two tokens)."""
    m = np.zeros((rows.shape[0], width), dtype=np.uint8)
    m[:, : rows.shape[1]] = rows
    return m.view(f"S{width}").ravel()


def _exact_mapping(new: Vocab, old: Vocab) -> np.ndarray:
    w = max(new.rows.shape[1], old.rows.shape[1])
    o, n = _as_bytes(old.rows, w), _as_bytes(new.rows, w)
    order = np.argsort(o, kind="stable")
    so = o[order]
    pos = np.searchsorted(so, n)
    pos[pos == len(so)] = 0
    hit = so[pos] == n
    return np.where(hit, order[pos], -1).astype(np.int64)
