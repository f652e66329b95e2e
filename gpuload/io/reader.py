"""The shard reader of the load's reader threads: :class:`gpuload.format.files.ShardFiles`.

One reader serves the load and :class:`~gpuload.format.bundle.Bundle`, so that a bad data
file fails the same way on either path; it lives in the format layer, which everything
above may import, and is named here for the I/O stage that drives it.
"""

from __future__ import annotations

from gpuload.format.files import ShardFiles

__all__ = ["ShardFiles"]
