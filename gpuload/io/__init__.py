"""Disk to host staging: the bounded ring of (pinned) buffers and the reader threads."""

from gpuload.io.reader import ShardFiles
from gpuload.io.ring import Ring

__all__ = ["Ring", "ShardFiles"]
