"""A stand-in for the few CuPy calls gpuload.device.cuda makes, backed by host memory.

"Device" arrays are NumPy arrays, ``memcpyAsync`` is ``ctypes.memmove``, streams and
events complete at once, and kernels are run by the host harness (the kernels' own C++).
It lets the CUDA backend's orchestration (staging ranges, descriptor packing, batching,
the dense fast path, slot reuse) be tested on a machine without a GPU. It checks nothing
about real CUDA semantics: tests/test_device_gpu.py does that on a GPU.
"""

from __future__ import annotations

import ctypes
import mmap
import types

import numpy as np

calls: list[tuple] = []  # (what, details) of every memcpy / launch, for assertions


class _Ptr:
    def __init__(self, ptr: int):
        self.ptr = ptr


class ndarray(np.ndarray):
    """A host array that answers ``.data.ptr`` and ``.device.id`` like a CuPy array."""

    @property
    def data(self):  # type: ignore[override]
        return _Ptr(self.ctypes.data)

    @property
    def device(self):
        return types.SimpleNamespace(id=getattr(self, "_device_id", 0))


def empty(shape, dtype=np.float32):
    a = np.empty(shape, dtype=dtype).view(ndarray)
    a._device_id = cuda.Device().id
    return a


def asnumpy(a):
    return np.asarray(a).view(np.ndarray).copy()


class _Device:
    current = 0

    def __init__(self, index: int | None = None):
        self.id = _Device.current if index is None else index
        self.attributes = {"MultiProcessorCount": 4}

    def __enter__(self):
        self._prev, _Device.current = _Device.current, self.id
        return self

    def __exit__(self, *exc):
        _Device.current = self._prev


class _Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.done = True

    def synchronize(self):
        pass


class _Stream:
    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = id(self)

    def record(self, event=None):
        return event if event is not None else _Event()

    def wait_event(self, event):
        calls.append(("wait_event", event))

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _PinnedMemory:
    def __init__(self, size, flags=0):
        self.flags = flags
        self.buf = mmap.mmap(-1, max(size, 1))
        self.size = size


def _pinned_pointer(mem, offset):
    return memoryview(mem.buf)[offset:]


def _memcpy_async(dst, src, size, kind, stream):
    calls.append(("memcpy", dst, src, size, kind))
    ctypes.memmove(dst, src, size)


cuda = types.SimpleNamespace(
    Device=_Device,
    Event=_Event,
    Stream=_Stream,
    PinnedMemory=_PinnedMemory,
    PinnedMemoryPointer=_pinned_pointer,
    get_current_stream=lambda: _Stream(),
    runtime=types.SimpleNamespace(
        memcpyAsync=_memcpy_async, memcpyHostToDevice=1, hostAllocPortable=1, getDeviceCount=lambda: 2
    ),
)


def harness_kernel(harness, variant: str):
    """A callable with RawKernel's signature that runs the harness."""

    def launch(grid, block, args):
        src, descs, n = args
        calls.append(("launch", variant, grid, block, int(n)))
        harness.run(variant, src, descs, grid=grid, block=block[0], n_desc=int(n))

    return launch
