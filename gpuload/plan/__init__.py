"""Pure arithmetic: which stored bytes go to which destination. Imports no CuPy."""

from gpuload.plan.copies import BoxCopy, GatherCopy, normalize
from gpuload.plan.plan import (
    Chunk,
    CrcCheck,
    CrcSpan,
    Destination,
    HostLoad,
    Plan,
    Remap,
    Request,
    build_plan,
    row_major_blocks,
    strides_of,
)

__all__ = [
    "BoxCopy",
    "GatherCopy",
    "normalize",
    "Remap",
    "Chunk",
    "CrcCheck",
    "CrcSpan",
    "Destination",
    "HostLoad",
    "Plan",
    "Request",
    "build_plan",
    "row_major_blocks",
    "strides_of",
]
