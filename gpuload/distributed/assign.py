"""Who reads which chunk of a collective load, and who receives it: pure arithmetic.

Every rank builds the same global :class:`~gpuload.plan.Plan` (the union of all ranks'
requests, planned by :func:`gpuload.plan.build_plan`), so every stored byte any rank needs
appears in exactly one chunk. :func:`assign_readers` then gives each chunk exactly one
reader rank: one of the ranks that need it when there is one (its read then costs no
transfer to itself), the one with the fewest bytes assigned so far (so reading is balanced),
chunks taken largest first. Every other rank that needs the chunk receives it from the
reader. A :class:`CollectivePlan` is a value: it prints, compares, and every rank computes
the identical one without talking to the others. No MPI, no CuPy here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["Transfer", "CollectivePlan", "assign_readers", "chunk_needers", "collective_plan"]


@dataclasses.dataclass(frozen=True)
class Transfer:
    """Chunk ``chunk`` of the global plan: read by ``reader``, sent to ``receivers``.

    ``broadcast`` is true when reader and receivers are every rank of the communicator:
    the transport then uses one collective broadcast instead of point-to-point sends.
    """

    chunk: int
    size: int
    reader: int
    receivers: tuple[int, ...]
    broadcast: bool


@dataclasses.dataclass(frozen=True)
class CollectivePlan:
    """A global plan plus the owner of each destination and the transfer of each chunk."""

    plan: object  # gpuload.plan.Plan
    nranks: int
    owners: tuple[int, ...]  # owner rank of each plan destination
    transfers: tuple[Transfer, ...]  # one per plan chunk, in plan order

    def bytes_read_by(self, rank: int) -> int:
        """Storage bytes ``rank`` reads."""
        return sum(t.size for t in self.transfers if t.reader == rank)

    def bytes_needed_by(self, rank: int) -> int:
        """Bytes of chunks ``rank`` needs (reads or receives)."""
        return sum(t.size for t in self.transfers if t.reader == rank or rank in t.receivers)

    def __str__(self) -> str:
        lines = [
            f"Collective plan over {self.nranks} rank(s): "
            + ", ".join(f"rank {r} reads {self.bytes_read_by(r)} B" for r in range(self.nranks))
        ]
        for t in self.transfers:
            how = "broadcast" if t.broadcast else (f"-> {list(t.receivers)}" if t.receivers else "local")
            lines.append(f"  chunk {t.chunk} ({t.size} B): read by rank {t.reader}, {how}")
        lines.append(str(self.plan))
        return "\n".join(lines)


def chunk_needers(plan, owners: Sequence[int]) -> list[frozenset[int]]:
    """For each chunk of ``plan``, the ranks owning a destination it copies into."""
    return [frozenset(owners[c.dest] for c in chunk.copies) for chunk in plan.chunks]


def assign_readers(sizes: Sequence[int], needers: Sequence[frozenset[int]], nranks: int) -> tuple[int, ...]:
    """One reader rank per chunk: a needing rank if any, balancing bytes, largest first.

    Parameters
    ----------
    sizes:
        Bytes of each chunk.
    needers:
        For each chunk, the ranks that need its bytes (may be empty: a chunk read only
        for its CRC is then given to the least-loaded rank).
    nranks:
        Ranks in the communicator.

    Returns
    -------
    tuple of int
        The reader of each chunk. Deterministic: every rank computes the same answer.
    """
    if nranks < 1:
        raise ValueError(f"nranks must be >= 1, got {nranks}")
    if len(sizes) != len(needers):
        raise ValueError(f"{len(sizes)} sizes but {len(needers)} needer sets")
    load = [0] * nranks
    out = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        bad = [r for r in needers[i] if not 0 <= r < nranks]
        if bad:
            raise ValueError(f"chunk {i} is needed by rank(s) {bad} outside 0..{nranks - 1}")
        candidates = sorted(needers[i]) or range(nranks)
        r = min(candidates, key=lambda r: (load[r], r))
        out[i] = r
        load[r] += sizes[i]
    return tuple(out)


def collective_plan(plan, owners: Sequence[int], nranks: int) -> CollectivePlan:
    """Assign every chunk of the global ``plan`` a reader and its receivers.

    Parameters
    ----------
    plan:
        The global :class:`~gpuload.plan.Plan` (every rank's requests).
    owners:
        The rank that owns each of ``plan.destinations``.
    nranks:
        Ranks in the communicator.
    """
    owners = tuple(int(o) for o in owners)
    if len(owners) != len(plan.destinations):
        raise ValueError(f"{len(owners)} owners for {len(plan.destinations)} destinations")
    needers = chunk_needers(plan, owners)
    sizes = [c.size for c in plan.chunks]
    readers = assign_readers(sizes, needers, nranks)
    transfers = []
    for i, (size, need, reader) in enumerate(zip(sizes, needers, readers)):
        receivers = tuple(sorted(need - {reader}))
        broadcast = nranks > 2 and len(receivers) == nranks - 1
        transfers.append(Transfer(i, size, reader, receivers, broadcast))
    return CollectivePlan(plan, nranks, owners, tuple(transfers))
