"""The CUDA backend: staged chunks to GPU destinations with CuPy and the box-copy kernels.

Data path of one :meth:`CudaLoad.submit` (all asynchronous to the host):

1. On the load's **copy stream**: the byte range of the chunk that the kernel copies read
   goes from the pinned host slot into that slot's **device staging buffer** (starting on a
   256-byte boundary of the chunk, so alignment is preserved), followed by the kernel
   copies' descriptors (from a small pinned buffer, also one per slot); an event marks
   both as landed. Then the dense same-dtype copies go straight from the host slot into
   their destinations (one ``cudaMemcpyAsync`` each: no staging, no kernel).
2. On the load's **kernel stream**, once that event has fired: one kernel launch per
   (source dtype, destination dtype) variant, each covering every copy of that variant in
   the chunk (``blockIdx.y`` picks the copy, ``desc.dst`` its destination).
3. A :class:`CudaToken` holds an event on each stream; ``wait()`` returns once the host
   slot, the staging buffer and the descriptor buffers may be reused.

Notes
-----
Loads: :meth:`CudaBackend.session` gives each load its own :class:`CudaLoad` (streams,
staging and descriptor buffers), so two loads running at once in two threads never share
a buffer; the scheduler opens one per device and closes it at the end of the load.

Memory: the pinned ring comes from a process-wide pool (:meth:`CudaBackend.alloc_host_slots`,
portable, so every GPU can read it, page-aligned whatever ``cudaHostAlloc`` returns, for
``O_DIRECT``): a load returns its slots to the pool and the next load reuses them instead
of pinning again. :func:`release_pinned_memory` (also run at exit) unpins the idle ones.
Each load keeps one device staging buffer per ring slot it used, as large as the largest
staged range (up to ``ring_bytes`` per GPU), until :meth:`CudaLoad.close`.

Ordering: staging and descriptor buffers are allocated on the copy stream that writes
them (CuPy's pool is stream-ordered per stream), and freed only once the host has waited
for both streams. Destinations are allocated by :meth:`CudaLoad.empty` on the current
stream and both of the load's streams wait for that allocation, since CuPy's pool may
hand out memory that earlier work on the current stream still uses. After
:meth:`CudaLoad.synchronize` every destination is complete and safe to use from any stream.

Multi-GPU: each backend serves one device and runs every CUDA call under
``cupy.cuda.Device(index)``, in whatever thread makes it (so a process that uses only GPU
N never creates a context on GPU 0); a destination on another device is an error, never a
peer write. CUDA errors are raised as :class:`~gpuload.errors.DeviceError` naming the device.

Requires CuPy >= 14 (bfloat16 arrays); :mod:`gpuload.backend.placement` checks it.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from typing import Any

import numpy as np

from gpuload.backend import kernels
from gpuload.backend.contract import (
    DESC_DTYPE,
    GATHER_DESC_DTYPE,
    cast_code,
    check_copy,
    check_gather,
    pack_descriptors,
    pack_gather,
)
from gpuload.devices import Device
from gpuload.errors import DeviceError, DeviceMemoryError
from gpuload.plan.copies import BoxCopy, GatherCopy

__all__ = ["CudaBackend", "CudaLoad", "CudaToken", "pinned_pool_bytes", "release_pinned_memory"]

_PAGE = 4096
# Staged ranges start on a multiple of this, so that a source element's address in the
# staging buffer has the same alignment (mod 256) as its offset in the chunk; the 16-byte
# vector path depends on that.
_STAGE_ALIGN = 256


def _src_end(c: BoxCopy, src_dtype: Any) -> int:
    """One past the last chunk byte that ``c`` reads."""
    isz = np.dtype(src_dtype).itemsize
    return c.src_offset + isz * (1 + sum((n - 1) * s for n, s in zip(c.shape, c.src_strides)))


def _error_types(cp) -> tuple[tuple, tuple]:
    """(out-of-memory errors, other CUDA errors) of this CuPy."""
    oom = tuple(t for t in (getattr(getattr(cp.cuda, "memory", None), "OutOfMemoryError", None),) if t)
    other = tuple(t for t in (
        getattr(cp.cuda.runtime, "CUDARuntimeError", None),
        getattr(getattr(cp.cuda, "driver", None), "CUDADriverError", None),
    ) if t)  # fmt: skip
    return oom, other


@contextlib.contextmanager
def _device_errors(cp, device: str, what: str):
    """Turn CuPy's CUDA errors into DeviceError / DeviceMemoryError naming ``device``."""
    try:
        yield
    except DeviceError:
        raise
    except Exception as e:
        oom, other = _error_types(cp)
        if oom and isinstance(e, oom):
            raise DeviceMemoryError(f"{device}: out of memory while {what}: {e}", device=device) from e
        if other and isinstance(e, other):
            raise DeviceError(f"{device}: CUDA error while {what}: {e}", device=device) from e
        raise


class CudaToken:
    """Completion of one submit: events on the copy and kernel streams.

    It also keeps the chunk and the destinations alive until the work is done, so that
    neither the pinned memory nor a destination's device memory can be reused under an
    in-flight copy. :meth:`wait` selects the events' device itself, so any thread may call
    it (the scheduler's releaser thread does).
    """

    __slots__ = ("_cupy", "_device", "_events", "_index", "_keep")

    def __init__(self, cupy, index: int, device: str, events: list, keep: tuple) -> None:
        self._cupy = cupy
        self._index = index
        self._device = device  # the load's canonical device string, parsed once per backend
        self._events = events
        self._keep = keep

    def wait(self) -> None:
        """Block until the host slot and the slot's device buffers may be reused."""
        cp = self._cupy
        with cp.cuda.Device(self._index), _device_errors(cp, self._device, "waiting for a chunk's copies"):
            for ev in self._events:
                ev.synchronize()
        self._keep = ()

    def done(self) -> bool:
        """Whether all of the submit's work has finished (non-blocking)."""
        cp = self._cupy
        with cp.cuda.Device(self._index), _device_errors(cp, self._device, "querying a chunk's copies"):
            if all(ev.done for ev in self._events):
                self._keep = ()
                return True
        return False

    def __repr__(self) -> str:
        return f"CudaToken(device={self._device!r})"


class _PinnedPool:
    """The process's pinned host blocks: lent to a load's ring, reused by the next load."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[np.ndarray] = []  # blocks no load uses
        self._lent: dict[int, np.ndarray] = {}  # address of a lent slot -> its block
        self._atexit = False

    def take(self, cp, index: int, nbytes: int) -> tuple[np.ndarray, float]:
        """A page-aligned pinned ``uint8`` buffer of ``nbytes``, and the seconds spent pinning."""
        with self._lock:
            fits = [b for b in self._idle if b.nbytes >= nbytes]
            if fits:
                block = min(fits, key=lambda b: b.nbytes)
                self._idle = [b for b in self._idle if b is not block]
                seconds = 0.0
            else:
                # Idle blocks too small for this load would only stay pinned for nothing.
                self._idle = [b for b in self._idle if b.nbytes >= nbytes]
                block = None
        if block is None:
            t = time.perf_counter()
            block = self._pin(cp, index, nbytes)
            seconds = time.perf_counter() - t
        view = block[:nbytes]
        with self._lock:
            self._lent[view.ctypes.data] = block
            if not self._atexit:
                atexit.register(release_pinned_memory)
                self._atexit = True
        return view, seconds

    @staticmethod
    def _pin(cp, index: int, nbytes: int) -> np.ndarray:
        # One page of slack: O_DIRECT needs page-aligned buffers, and cudaHostAlloc's
        # alignment is an observation, not a documented guarantee (a test misaligns it).
        with (
            cp.cuda.Device(index),
            _device_errors(cp, str(Device.gpu(index)), f"pinning {nbytes} bytes of host memory"),
        ):
            mem = cp.cuda.PinnedMemory(nbytes + _PAGE, cp.cuda.runtime.hostAllocPortable)
        whole = np.frombuffer(cp.cuda.PinnedMemoryPointer(mem, 0), dtype=np.uint8, count=nbytes + _PAGE)
        off = (-whole.ctypes.data) % _PAGE
        return whole[off : off + nbytes]

    def give_back(self, slots: list[np.ndarray]) -> None:
        with self._lock:
            for s in slots:
                block = self._lent.pop(s.ctypes.data, None)
                if block is not None:
                    self._idle.append(block)

    def forget(self, slots: list[np.ndarray]) -> None:
        """Never reuse these (their device failed): they are unpinned when the last view dies."""
        with self._lock:
            for s in slots:
                self._lent.pop(s.ctypes.data, None)

    def release(self) -> int:
        with self._lock:
            n = sum(b.nbytes for b in self._idle)
            self._idle = []
        return n

    def nbytes(self) -> tuple[int, int]:
        with self._lock:
            return sum(b.nbytes for b in self._idle), sum(b.nbytes for b in self._lent.values())


_POOL = _PinnedPool()


def release_pinned_memory() -> int:
    """Unpin the idle blocks of the process-wide pinned ring; return how many bytes.

    Blocks lent to a load that is running are kept (call again after it). The next load
    pins again. Runs at interpreter exit too.
    """
    return _POOL.release()


def pinned_pool_bytes() -> dict:
    """``{"idle": bytes kept for the next load, "lent": bytes used by running loads}``."""
    idle, lent = _POOL.nbytes()
    return {"idle": idle, "lent": lent}


class _Slot:
    """Per-ring-slot device state of one load: staging buffer, descriptor buffers, last token."""

    __slots__ = ("desc_dev", "desc_host", "desc_raw", "gather_dev", "gather_host", "last", "staging")

    def __init__(self) -> None:
        self.staging = None  # cupy uint8 array
        self.desc_raw = None  # pinned uint8 buffer from the process pool
        self.desc_host = None  # numpy DESC_DTYPE view of it
        self.desc_dev = None  # cupy uint8 array
        self.gather_host = None  # pinned uint8 from the process pool: gather descriptors, then (src, dst) pairs
        self.gather_dev = None  # cupy uint8 array, same layout
        self.last: CudaToken | None = None


class CudaBackend:
    """The ``/device:GPU:N`` backend (same interface as
    :class:`~gpuload.backend.host.HostBackend`).

    One per device and process (:func:`~gpuload.backend.placement.backend_for`); each load
    works through its own :meth:`session`. The methods ``empty``, ``submit``,
    ``synchronize`` and ``close`` here use a default session, for direct use.

    Parameters
    ----------
    index:
        CUDA device id (as CuPy numbers devices, i.e. after ``CUDA_VISIBLE_DEVICES``).

    Attributes
    ----------
    device:
        ``"/device:GPU:<index>"``.
    stats:
        Cumulative counters over all loads: ``submits``, ``h2d_bytes`` (all host-to-device
        bytes), ``staged_bytes``, ``direct_bytes`` (dense copies that skipped staging),
        ``direct_copies``, ``kernel_copies``, ``kernel_launches``, ``submit_seconds`` (host
        time spent enqueueing; the device work overlaps later calls), ``pin_seconds``.
    """

    def __init__(self, index: int) -> None:
        import cupy

        self._cupy = cupy
        self.index = int(index)
        self.device = str(Device.gpu(self.index))
        dev = cupy.cuda.Device(self.index)
        with dev, _device_errors(cupy, self.device, "opening the device"):
            self._sm_count = int(dev.attributes["MultiProcessorCount"])
        self._lock = threading.Lock()
        self._default: CudaLoad | None = None
        self.stats: dict = {
            "submits": 0, "h2d_bytes": 0, "staged_bytes": 0, "direct_bytes": 0, "direct_copies": 0,
            "kernel_copies": 0, "kernel_launches": 0, "submit_seconds": 0.0, "pin_seconds": 0.0,
            "gather_copies": 0,
        }  # fmt: skip

    def __repr__(self) -> str:
        return f"CudaBackend(device={self.device!r})"

    def session(self) -> CudaLoad:
        """A fresh :class:`CudaLoad`: one load's streams and staging buffers on this device."""
        return CudaLoad(self)

    def _session(self) -> CudaLoad:
        with self._lock:
            if self._default is None or self._default.closed:
                self._default = CudaLoad(self)
            return self._default

    def _add_stats(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                self.stats[k] += v

    # -- buffers ---------------------------------------------------------------------

    def empty(self, shape: tuple[int, ...], dtype: Any):
        """A C-contiguous, uninitialised ``cupy.ndarray`` on this device (default session)."""
        return self._session().empty(shape, dtype)

    def to_host(self, array: Any) -> np.ndarray:
        """Copy a device array to a NumPy array (waits for all work on this device first)."""
        cp = self._cupy
        dev = cp.cuda.Device(self.index)
        with dev, _device_errors(cp, self.device, "copying an array to the host"):
            dev.synchronize()
            return cp.asnumpy(array)

    def alloc_host_slots(self, n: int, nbytes: int) -> list[np.ndarray]:
        """``n`` pinned, page-aligned ``uint8`` buffers of ``nbytes`` from the process-wide pool.

        The memory is page-locked (``cudaHostAllocPortable``, so every GPU in the process can
        DMA from it) the first time and reused by later loads: :meth:`free_host_slots` gives
        it back to the pool, :func:`release_pinned_memory` unpins it.
        """
        if n < 1 or nbytes < 1:
            raise ValueError(f"need n >= 1 slots of nbytes >= 1, got n={n}, nbytes={nbytes}")
        out = []
        for _ in range(n):
            view, seconds = _POOL.take(self._cupy, self.index, nbytes)
            self._add_stats(pin_seconds=seconds)
            out.append(view)
        return out

    def free_host_slots(self, slots: list[np.ndarray]) -> None:
        """Return ring slots to the pool (the caller has waited for every copy out of them)."""
        _POOL.give_back(slots)

    def forget_host_slots(self, slots: list[np.ndarray]) -> None:
        """Drop ring slots a failed device may still read: never reused, unpinned once unreferenced."""
        _POOL.forget(slots)

    def adopt(self, array: Any, stream: int | None = None):
        """:meth:`CudaLoad.adopt` on the default session."""
        return self._session().adopt(array, stream)

    def submit(
        self, slot_index: int, chunk: np.ndarray, copies: list[BoxCopy], dests: list, dtypes: list[tuple[Any, Any]]
    ) -> CudaToken:
        """:meth:`CudaLoad.submit` on the default session."""
        return self._session().submit(slot_index, chunk, copies, dests, dtypes)

    def submit_device(
        self,
        slot_index: int,
        source: Any,
        nbytes: int,
        copies: list[BoxCopy],
        dests: list,
        dtypes: list[tuple[Any, Any]],
        ready: Any,
    ) -> CudaToken:
        """:meth:`CudaLoad.submit_device` on the default session."""
        return self._session().submit_device(slot_index, source, nbytes, copies, dests, dtypes, ready)

    def synchronize(self) -> None:
        """Block until every submitted copy on this device (any session) has finished."""
        cp = self._cupy
        dev = cp.cuda.Device(self.index)
        with dev, _device_errors(cp, self.device, "synchronizing"):
            dev.synchronize()

    def close(self) -> None:
        """Wait for the default session's work and release its buffers (reopened lazily)."""
        with self._lock:
            default, self._default = self._default, None
        if default is not None:
            default.close()


class CudaLoad:
    """One load's work on one GPU: its own copy and kernel streams and per-slot buffers.

    Made by :meth:`CudaBackend.session`; the scheduler opens one per device per load, so
    concurrent loads (threads) never share staging. Not itself thread-safe: one load's
    consumer thread submits (the releaser only waits on tokens).
    """

    def __init__(self, backend: CudaBackend) -> None:
        cp = backend._cupy
        self._cupy = cp
        self._backend = backend
        self.index = backend.index
        self.device = backend.device
        self.stats = backend.stats
        self._sm_count = backend._sm_count
        with cp.cuda.Device(self.index), _device_errors(cp, self.device, "creating streams"):
            # Non-blocking: they must not serialise with work other code puts on the
            # legacy default stream.
            self._copy_stream = cp.cuda.Stream(non_blocking=True)
            self._kernel_stream = cp.cuda.Stream(non_blocking=True)
        self._slots: dict[int, _Slot] = {}
        self.closed = False

    def __repr__(self) -> str:
        return f"CudaLoad(device={self.device!r}, slots={len(self._slots)})"

    def empty(self, shape: tuple[int, ...], dtype: Any):
        """A C-contiguous, uninitialised ``cupy.ndarray`` on this device.

        Allocated on the current stream; this load's streams wait for the allocation.
        """
        cp = self._cupy
        with (
            cp.cuda.Device(self.index),
            _device_errors(cp, self.device, f"allocating a {dtype} array of shape {tuple(shape)}"),
        ):
            arr = cp.empty(shape, dtype=np.dtype(dtype))
            ev = cp.cuda.get_current_stream().record()
            self._copy_stream.wait_event(ev)
            self._kernel_stream.wait_event(ev)
        return arr

    def to_host(self, array: Any) -> np.ndarray:
        return self._backend.to_host(array)

    def _slot(self, slot_index: int) -> _Slot:
        slot = self._slots.get(slot_index)
        if slot is None:
            slot = self._slots[slot_index] = _Slot()
        elif slot.last is not None:
            # The scheduler waits on a slot's token before refilling it, so this returns
            # at once; it guards the staging and descriptor buffers if it does not.
            slot.last.wait()
        return slot

    def _staging(self, slot: _Slot, nbytes: int):
        if slot.staging is None or slot.staging.nbytes < nbytes:
            # Grow to a page multiple; the previous buffer is idle (see _slot). Allocated on
            # the copy stream that writes it: CuPy's pool then reuses freed memory in that
            # stream's order.
            slot.staging = None
            with self._copy_stream:
                slot.staging = self._cupy.empty(-(-nbytes // _PAGE) * _PAGE, dtype=np.uint8)
        return slot.staging

    def _descriptors(self, slot: _Slot, n: int):
        cp = self._cupy
        if slot.desc_host is None or slot.desc_host.size < n:
            cap = max(64, 1 << (n - 1).bit_length())
            nbytes = cap * DESC_DTYPE.itemsize
            # Pinned, from the process pool too (the previous buffer is idle, see _slot).
            if slot.desc_host is not None:
                _POOL.give_back([slot.desc_raw])
            slot.desc_raw, seconds = _POOL.take(cp, self.index, nbytes)
            self._backend._add_stats(pin_seconds=seconds)
            slot.desc_host = slot.desc_raw.view(DESC_DTYPE)
            slot.desc_dev = None
            with self._copy_stream:
                slot.desc_dev = cp.empty(nbytes, dtype=np.uint8)
        return slot.desc_host, slot.desc_dev

    def _gather_buffers(self, slot: _Slot, nbytes: int):
        cp = self._cupy
        if slot.gather_host is None or slot.gather_host.nbytes < nbytes:
            cap = max(4096, 1 << (nbytes - 1).bit_length())
            # Pinned, from the process pool (the previous buffer is idle, see _slot).
            if slot.gather_host is not None:
                _POOL.give_back([slot.gather_host])
            slot.gather_host, seconds = _POOL.take(cp, self.index, cap)
            self._backend._add_stats(pin_seconds=seconds)
            slot.gather_dev = None
            with self._copy_stream:
                slot.gather_dev = cp.empty(cap, dtype=np.uint8)
        return slot.gather_host, slot.gather_dev

    def adopt(self, array: Any, stream: int | None = None):
        """Take a prefilled or caller-provided destination: this load's streams wait for the
        work queued so far on ``stream`` (a raw ``cudaStream_t``, e.g. PyTorch's current
        stream), by default CuPy's current stream (a warm start's backup values), before
        writing it."""
        cp = self._cupy
        with cp.cuda.Device(self.index), _device_errors(cp, self.device, "ordering after a prefill"):
            src = cp.cuda.get_current_stream() if stream is None else cp.cuda.ExternalStream(stream)
            ev = src.record()
            self._copy_stream.wait_event(ev)
            self._kernel_stream.wait_event(ev)
        return array

    def _dest_ptr(self, dest: Any, dst_dtype: np.dtype, copy: BoxCopy) -> tuple[int, int]:
        cp = self._cupy
        if not isinstance(dest, cp.ndarray):
            raise TypeError(
                f"destination {copy.dest} of {self.device} must be a cupy.ndarray, got {type(dest).__name__}"
            )
        if dest.device.id != self.index:
            raise ValueError(
                f"destination {copy.dest} lives on {Device.gpu(dest.device.id)}, not on {self.device}: "
                f"group copies by device and submit each group to its own backend"
            )
        if not dest.flags.c_contiguous:
            raise TypeError(f"destination {copy.dest} must be C-contiguous")
        if dest.nbytes % dst_dtype.itemsize:
            raise TypeError(f"destination {copy.dest} of {dest.nbytes} bytes cannot hold {dst_dtype} elements")
        return dest.data.ptr, dest.nbytes // dst_dtype.itemsize

    def submit(
        self,
        slot_index: int,
        chunk: np.ndarray,
        copies: list[BoxCopy],
        dests: list,
        dtypes: list[tuple[Any, Any]],
    ) -> CudaToken:
        """Enqueue every copy of one staged chunk; return at once.

        Parameters
        ----------
        slot_index:
            Ring slot the chunk lives in; this load's staging and descriptor buffers of
            that slot are reused by its next submit from the same slot.
        chunk:
            ``uint8`` view of the filled bytes of that (pinned) slot. Pageable memory works
            but the copies out of it are then synchronous.
        copies:
            The chunk's copies for this device; ``dests[c.dest]`` is a ``cupy.ndarray`` on
            this device and ``dtypes[c.dest]`` is ``(source dtype, destination dtype)``.

        Returns
        -------
        CudaToken
            Wait on it before refilling the host slot.

        Raises
        ------
        PlanError
            Unsupported dtype pair, or a copy outside the chunk or a destination.
        DeviceError
            A CUDA call failed (the message names the device); ``DeviceMemoryError`` when
            out of memory.
        """
        if (
            not isinstance(chunk, np.ndarray)
            or chunk.ndim != 1
            or chunk.dtype != np.uint8
            or not chunk.flags.c_contiguous
        ):
            raise TypeError("chunk must be a contiguous 1-D uint8 numpy array")
        return self._submit(slot_index, chunk, chunk.nbytes, copies, dests, dtypes)

    def submit_device(
        self,
        slot_index: int,
        source: Any,
        nbytes: int,
        copies: list[BoxCopy],
        dests: list,
        dtypes: list[tuple[Any, Any]],
        ready: Any,
    ) -> CudaToken:
        """Like :meth:`submit`, but the chunk's ``nbytes`` are already in device memory.

        ``source`` is a ``cupy`` ``uint8`` array on this device (a collective load's NCCL
        staging), written by work that ``ready`` (a ``cupy.cuda.Event``) follows: this load's
        streams wait for it. Dense copies are device-to-device, kernels read ``source``
        directly; nothing crosses PCIe but the descriptors. The returned token covers every
        read of ``source``: wait on it before writing ``source`` again.
        """
        cp = self._cupy
        if not isinstance(source, cp.ndarray) or source.device.id != self.index or source.nbytes < nbytes:
            raise TypeError(f"source must be a cupy array of at least {nbytes} bytes on {self.device}")
        return self._submit(slot_index, source, nbytes, copies, dests, dtypes, ready)

    def _submit(self, slot_index, chunk, chunk_nbytes, copies, dests, dtypes, source_ready=None) -> CudaToken:
        cp = self._cupy
        t0 = time.perf_counter()
        if self.closed:
            raise RuntimeError(f"{self!r} is closed")
        on_device = source_ready is not None
        host_ptr = chunk.data.ptr if on_device else chunk.ctypes.data
        direct: list[tuple[BoxCopy, int, int]] = []  # (copy, dst address, nbytes)
        groups: dict[str, list[tuple[BoxCopy, int]]] = {}  # variant -> [(copy, dst base address)]
        gathers: dict[str, list[tuple[GatherCopy, int]]] = {}  # variant -> [(gather, dst base address)]
        g_lo, g_hi = chunk_nbytes, 0  # chunk bytes the gathers read
        for c in copies:
            src_dt, dst_dt = (np.dtype(t) for t in dtypes[c.dest])
            variant = cast_code(src_dt, dst_dt)
            ptr, size = self._dest_ptr(dests[c.dest], dst_dt, c)
            if isinstance(c, GatherCopy):
                check_gather(c, chunk_nbytes, src_dt.itemsize, size)
                if c.size:
                    gathers.setdefault(variant, []).append((c, ptr))
                    span = src_dt.itemsize * (1 + sum((n - 1) * k for n, k in zip(c.shape, c.src_strides)))
                    g_lo = min(g_lo, int(c.src_offsets.min()))
                    g_hi = max(g_hi, int(c.src_offsets.max()) + span)
                continue
            check_copy(c, chunk_nbytes, src_dt.itemsize, size)
            if c.size == 0:
                continue
            if src_dt == dst_dt and c.is_contiguous():
                direct.append((c, ptr + c.dst_offset * dst_dt.itemsize, c.size * dst_dt.itemsize))
            else:
                groups.setdefault(variant, []).append((c, ptr))

        events = []
        st = dict.fromkeys(("h2d_bytes", "staged_bytes", "direct_bytes", "direct_copies", "kernel_copies",
                            "kernel_launches", "gather_copies"), 0)  # fmt: skip
        with cp.cuda.Device(self.index), _device_errors(cp, self.device, "enqueueing a chunk's copies"):
            slot = self._slot(slot_index)
            h2d = cp.cuda.runtime.memcpyHostToDevice
            cs, ks = self._copy_stream, self._kernel_stream
            if on_device:
                cs.wait_event(source_ready)
            launches = []
            gather_launches = []
            if on_device and (groups or gathers):
                # The chunk is the staging: kernels read it in place (base 0).
                base, staging = 0, chunk
                ks.wait_event(source_ready)
            if groups or gathers:
                # Stage only the bytes the kernels read (dense copies go direct, below), so
                # each byte of the chunk crosses PCIe about once.
                lo = min([c.src_offset for g in groups.values() for c, _ in g] + ([g_lo] if gathers else []))
                hi = max(
                    [_src_end(c, dtypes[c.dest][0]) for g in groups.values() for c, _ in g]
                    + ([g_hi] if gathers else [])
                )
                if not on_device:
                    base = lo - lo % _STAGE_ALIGN
                    staging = self._staging(slot, hi - base)
                    cp.cuda.runtime.memcpyAsync(staging.data.ptr, host_ptr + base, hi - base, h2d, cs.ptr)
                desc_bytes = 0
                if groups:
                    n_total = sum(len(g) for g in groups.values())
                    desc_host, desc_dev = self._descriptors(slot, n_total)
                    at = 0
                    for group in groups.values():
                        pack_descriptors(
                            (c for c, _ in group), (p for _, p in group), src_base=base, out=desc_host[at:]
                        )
                        launches.append((group, at))
                        at += len(group)
                    desc_bytes = n_total * DESC_DTYPE.itemsize
                    cp.cuda.runtime.memcpyAsync(desc_dev.data.ptr, desc_host.ctypes.data, desc_bytes, h2d, cs.ptr)
                if gathers:
                    # One pinned buffer per slot: every gather descriptor, then every box's
                    # (source byte, destination element) pair, copied up in one H2D.
                    gd = GATHER_DESC_DTYPE
                    n_desc = sum(len(g) for g in gathers.values())
                    n_pairs = sum(c.boxes for g in gathers.values() for c, _ in g)
                    pair_at = -(-n_desc * gd.itemsize // 16) * 16
                    g_bytes = pair_at + 16 * n_pairs
                    g_host, g_dev = self._gather_buffers(slot, g_bytes)
                    all_descs = g_host[: n_desc * gd.itemsize].view(gd)
                    all_pairs = g_host[pair_at:g_bytes].view(np.int64)
                    at = first = 0
                    for group in gathers.values():
                        nb = sum(c.boxes for c, _ in group)
                        pack_gather(
                            (c for c, _ in group),
                            (p for _, p in group),
                            src_base=base,
                            out_descs=all_descs[at:],
                            out_offsets=all_pairs[2 * first :],
                            first_pair=first,
                        )
                        gather_launches.append((group, at))
                        at += len(group)
                        first += nb
                    cp.cuda.runtime.memcpyAsync(g_dev.data.ptr, g_host.ctypes.data, g_bytes, h2d, cs.ptr)
                    desc_bytes += g_bytes
                # Recorded before the direct copies are queued, so the kernels start as soon
                # as their own inputs have landed.
                ready = cs.record(cp.cuda.Event(disable_timing=True))
                if not on_device:
                    st["staged_bytes"] += hi - base
                    st["h2d_bytes"] += hi - base
                st["h2d_bytes"] += desc_bytes
            kind = cp.cuda.runtime.memcpyDeviceToDevice if on_device else h2d
            for c, dst_addr, nbytes in direct:
                cp.cuda.runtime.memcpyAsync(dst_addr, host_ptr + c.src_offset, nbytes, kind, cs.ptr)
                st["direct_bytes"] += nbytes
                if not on_device:
                    st["h2d_bytes"] += nbytes
            st["direct_copies"] += len(direct)
            events.append(cs.record(cp.cuda.Event(disable_timing=True)))
            if launches or gather_launches:
                ks.wait_event(ready)
                with ks:
                    for group, first in launches:
                        src_dt, dst_dt = dtypes[group[0][0].dest]
                        fn = kernels.get_kernel(src_dt, dst_dt)
                        grid, block = kernels.launch_geometry((c.size for c, _ in group), self._sm_count)
                        descs = desc_dev[first * DESC_DTYPE.itemsize :]  # a view: pointer + offset
                        fn(grid, block, (staging, descs, np.int32(len(group))))
                        st["kernel_launches"] += 1
                        st["kernel_copies"] += len(group)
                    for group, first in gather_launches:
                        src_dt, dst_dt = dtypes[group[0][0].dest]
                        fn = kernels.get_gather_kernel(src_dt, dst_dt)
                        grid, block = kernels.launch_geometry((c.size for c, _ in group), self._sm_count)
                        descs = g_dev[first * GATHER_DESC_DTYPE.itemsize :]
                        fn(grid, block, (staging, descs, np.int32(len(group)), g_dev[pair_at:]))
                        st["kernel_launches"] += 1
                        st["gather_copies"] += len(group)
                events.append(ks.record(cp.cuda.Event(disable_timing=True)))
        token = CudaToken(cp, self.index, self.device, events, (chunk, tuple(dests)))
        slot.last = token
        self._backend._add_stats(submits=1, submit_seconds=time.perf_counter() - t0, **st)
        return token

    def synchronize(self) -> None:
        """Block until every copy this load submitted has finished."""
        cp = self._cupy
        with cp.cuda.Device(self.index), _device_errors(cp, self.device, "synchronizing"):
            self._copy_stream.synchronize()
            self._kernel_stream.synchronize()

    def close(self) -> None:
        """Wait for this load's work, then release its staging and descriptor buffers.

        Idempotent. The buffers are dropped even when the wait fails (a failed device).
        """
        if self.closed:
            return
        self.closed = True
        ok = False
        try:
            self.synchronize()
            ok = True
        finally:
            pinned = [s.desc_raw for s in self._slots.values() if s.desc_raw is not None]
            pinned += [s.gather_host for s in self._slots.values() if s.gather_host is not None]
            (_POOL.give_back if ok else _POOL.forget)(pinned)
            self._slots.clear()
