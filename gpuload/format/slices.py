"""N-D boxes: the region of a tensor that a stored slice or a variable part covers.

A :class:`Box` is a start and a shape in full-tensor coordinates. TensorFlow's
``TensorSliceProto`` (with its "full dimension" extents), ``SaveSliceInfo`` specs and
partitioned variables all turn into boxes, and every intersection the loader computes is
an intersection of boxes.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Box", "find_overlap"]


@dataclasses.dataclass(frozen=True, order=True)
class Box:
    """A box ``[start[d], start[d] + shape[d])`` on every axis ``d``."""

    start: tuple[int, ...]
    shape: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "start", tuple(int(s) for s in self.start))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if len(self.start) != len(self.shape):
            raise ValueError(f"box rank mismatch: start {self.start}, shape {self.shape}")
        if any(s < 0 for s in self.start) or any(n < 0 for n in self.shape):
            raise ValueError(f"box with negative start or size: start {self.start}, shape {self.shape}")

    @classmethod
    def full(cls, shape) -> Box:
        """The box covering a whole tensor of ``shape``."""
        shape = tuple(shape)
        return cls((0,) * len(shape), shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(s + n for s, n in zip(self.start, self.shape))

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def is_full(self, shape) -> bool:
        """Whether this box covers all of a tensor of ``shape``."""
        return self.start == (0,) * len(self.start) and self.shape == tuple(shape)

    def within(self, shape) -> bool:
        """Whether this box lies inside a tensor of ``shape``."""
        return len(shape) == self.rank and all(e <= n for e, n in zip(self.stop, shape))

    def intersect(self, other: Box) -> Box | None:
        """The common box, or ``None`` when the boxes share no element."""
        if other.rank != self.rank:
            raise ValueError(f"cannot intersect boxes of rank {self.rank} and {other.rank}")
        lo = tuple(max(a, b) for a, b in zip(self.start, other.start))
        hi = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        if any(h <= l for l, h in zip(lo, hi)) and self.rank:
            return None
        return Box(lo, tuple(h - l for l, h in zip(lo, hi)))

    def relative_to(self, outer: Box) -> Box:
        """This box in the coordinates of ``outer`` (which must contain it)."""
        return Box(tuple(s - o for s, o in zip(self.start, outer.start)), self.shape)

    def as_slices(self) -> tuple[slice, ...]:
        """Index expression selecting this box from a full array."""
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.shape))

    def spec(self) -> str:
        """TensorFlow's slice string, ``"0,20:0,100"`` (``-`` never used)."""
        return ":".join(f"{s},{n}" for s, n in zip(self.start, self.shape))

    def __str__(self) -> str:
        return "[" + ", ".join(f"{s}:{s + n}" for s, n in zip(self.start, self.shape)) + "]"


#: Groups this small are checked pair by pair.
_PAIRWISE = 8


def find_overlap(boxes) -> tuple[Box, Box] | None:
    """Two of ``boxes`` that share an element, or ``None``; empty boxes overlap nothing.

    Divide and conquer instead of comparing every pair: a group is split at the median
    start along the axis that splits it best, into the boxes that begin before that
    coordinate and those that end after it (a box straddling it goes to both). Two boxes
    that share an element share it on one side, so they meet again in one group. Stored
    slices are grids (TensorFlow partitions every axis into runs), which no box straddles:
    n slices take O(n log n) steps, where all pairs would be n^2/2 (16,000 column slices:
    128 million intersections).
    """
    items = [b for b in boxes if all(b.shape)]
    if len(items) < 2:
        return None
    if not items[0].rank:
        return items[0], items[1]
    stack = [items]
    while stack:
        group = stack.pop()
        halves = _split(group) if len(group) > _PAIRWISE else None
        if halves is None:
            found = _pairwise(group)
            if found is not None:
                return found
            continue
        stack.extend(halves)
    return None


def _split(group):
    best = None
    for d in range(group[0].rank):
        starts = sorted({b.start[d] for b in group})
        if len(starts) < 2:
            continue
        x = starts[len(starts) // 2]  # above the smallest start: the left side is never everything
        left = [b for b in group if b.start[d] < x]
        right = [b for b in group if b.start[d] + b.shape[d] > x]
        if len(right) < len(group) and (best is None or max(len(left), len(right)) < best[0]):
            best = (max(len(left), len(right)), left, right)
    return None if best is None else best[1:]


def _pairwise(group):
    # sweep along the axis where the boxes start at the most places: fewest pairs compared
    d = max(range(group[0].rank), key=lambda k: len({b.start[k] for b in group}))
    group = sorted(group, key=lambda b: b.start[d])
    for i, a in enumerate(group):
        a_stop = a.start[d] + a.shape[d]
        for b in group[i + 1 :]:
            if b.start[d] >= a_stop:
                break  # sorted by start: no later box reaches back into a along axis d
            if a.intersect(b) is not None:
                return a, b
    return None
