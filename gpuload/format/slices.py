"""N-D boxes: the region of a tensor that a stored slice or a variable part covers.

A :class:`Box` is a start and a shape in full-tensor coordinates. TensorFlow's
``TensorSliceProto`` (with its "full dimension" extents), ``SaveSliceInfo`` specs and
partitioned variables all turn into boxes, and every intersection the loader computes is
an intersection of boxes.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Box"]


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
    def full(cls, shape) -> "Box":
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

    def intersect(self, other: "Box") -> "Box | None":
        """The common box, or ``None`` when the boxes share no element."""
        if other.rank != self.rank:
            raise ValueError(f"cannot intersect boxes of rank {self.rank} and {other.rank}")
        lo = tuple(max(a, b) for a, b in zip(self.start, other.start))
        hi = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        if any(h <= l for l, h in zip(lo, hi)) and self.rank:
            return None
        return Box(lo, tuple(h - l for l, h in zip(lo, hi)))

    def relative_to(self, outer: "Box") -> "Box":
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
