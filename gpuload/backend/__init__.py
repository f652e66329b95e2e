"""Moving staged chunks into destination buffers: the CPU twin and the CUDA backend.

A backend executes :class:`gpuload.plan.copies.BoxCopy` operations for one device:

- :class:`gpuload.backend.host.HostBackend` (``"/device:CPU:0"``) runs the NumPy twin of
  the kernels; it is the reference, and the explicit ``device="cpu"`` mode.
- :class:`gpuload.backend.cuda.CudaBackend` (``"/device:GPU:N"``) stages each chunk on the
  GPU and runs the kernels of ``kernels/box_copy.cu``.

What both (and the kernels' host harness) agree on, the copy kinds, the cast table, the
descriptor layout and the checks every copy passes, is :mod:`gpuload.backend.contract`.
Use :func:`backend_for` to get the (cached) backend of a device string (any spelling
:meth:`gpuload.devices.Device.parse` accepts). Importing this package never imports CuPy.

TensorFlow's ``tf.device`` context manager is :func:`gpuload.device`, a plain function of
the TF1 surface (this package was ``gpuload.device`` before it had to give that name up).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

import numpy as np

from gpuload.backend.placement import (
    backend_for,
    canonical_device,
    check_device,
    default_device,
    gpu_count,
    is_gpu_available,
)

__all__ = [
    "Backend",
    "Token",
    "backend_for",
    "canonical_device",
    "check_device",
    "default_device",
    "gpu_count",
    "is_gpu_available",
    "release_pinned_memory",
]


def release_pinned_memory() -> int:
    """Unpin the idle part of the process-wide pinned ring (kept between GPU loads).

    Loads to a GPU stage through pinned host memory that stays pinned for the next load
    (pinning costs 0.1-0.25 s per 256 MiB); this frees it. It also runs at exit. Returns
    the number of bytes unpinned (0 if no GPU load ran; CuPy is never imported here).
    """
    cuda = sys.modules.get("gpuload.backend.cuda")
    return 0 if cuda is None else cuda.release_pinned_memory()


class Token(Protocol):
    """Completion handle of one :meth:`Backend.submit`."""

    def wait(self) -> None:
        """Block until the host slot (and any device staging buffer) may be reused."""

    def done(self) -> bool:
        """Whether :meth:`wait` would return at once."""


class Backend(Protocol):
    """What the scheduler calls; see :class:`gpuload.backend.host.HostBackend` for the docs.

    A backend may also have ``session()``, returning an object with ``empty``, ``submit``,
    ``synchronize`` and ``close`` for one load (the CUDA backend does: per-load streams and
    staging, so that concurrent loads share no buffer); the scheduler then uses that.
    """

    device: str
    stats: dict

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any: ...

    def to_host(self, array: Any) -> np.ndarray: ...

    def alloc_host_slots(self, n: int, nbytes: int) -> list[np.ndarray]: ...

    def free_host_slots(self, slots: list[np.ndarray]) -> None: ...

    def submit(self, slot_index: int, chunk: np.ndarray, copies: list, dests: list, dtypes: list) -> Token: ...

    def synchronize(self) -> None: ...

    def close(self) -> None: ...
