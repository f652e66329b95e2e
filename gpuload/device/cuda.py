"""The CUDA backend: staged chunks to GPU destinations with CuPy and the box-copy kernels.

Data path of one :meth:`CudaBackend.submit` (all asynchronous to the host):

1. On the **copy stream**: the byte range of the chunk that the kernel copies read goes
   from the pinned host slot into that slot's **device staging buffer** (starting on a
   256-byte boundary of the chunk, so alignment is preserved), followed by the kernel
   copies' descriptors (from a small pinned buffer, also one per slot); an event marks
   both as landed. Then the dense same-dtype copies go straight from the host slot into
   their destinations (one ``cudaMemcpyAsync`` each: no staging, no kernel).
2. On the **kernel stream**, once that event has fired: one kernel launch per
   (source dtype, destination dtype) variant, each covering every copy of that variant in
   the chunk (``blockIdx.y`` picks the copy, ``desc.dst`` its destination).
3. A :class:`CudaToken` holds an event on each stream; ``wait()`` returns once the host
   slot, the staging buffer and the descriptor buffers may be reused.

Notes
-----
Memory: the pinned ring is allocated once per load (:meth:`CudaBackend.alloc_host_slots`,
portable, so every GPU can read it); each GPU keeps one staging buffer per ring slot it has
seen, as large as the largest staged range, i.e. up to ``ring_bytes`` per GPU, until
:meth:`CudaBackend.close` (or :meth:`CudaBackend.free_host_slots`) releases them.

Ordering: destinations are allocated by :meth:`CudaBackend.empty` on the current stream
and both backend streams wait for that allocation, since CuPy's pool may hand out memory
that earlier work on the current stream still uses. After :meth:`CudaBackend.synchronize`
every destination is complete and safe to use from any stream.

Multi-GPU: each backend serves one device and runs everything under
``cupy.cuda.Device(index)``; a destination on another device is an error, never a peer
write.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from gpuload.device import kernels
from gpuload.device.host import _BF16, cast_code, check_copy, check_gather
from gpuload.plan.copies import BoxCopy, GatherCopy

__all__ = ["CudaBackend", "CudaToken"]

_PAGE = 4096
# Staged ranges start on a multiple of this, so that a source element's address in the
# staging buffer has the same alignment (mod 256) as its offset in the chunk; the 16-byte
# vector path depends on that.
_STAGE_ALIGN = 256


def _src_end(c: BoxCopy, src_dtype: Any) -> int:
    """One past the last chunk byte that ``c`` reads."""
    isz = np.dtype(src_dtype).itemsize
    return c.src_offset + isz * (1 + sum((n - 1) * s for n, s in zip(c.shape, c.src_strides)))


class CudaToken:
    """Completion of one submit: events on the copy and kernel streams.

    It also keeps the chunk and the destinations alive until the work is done, so that
    neither the pinned memory nor a destination's device memory can be reused under an
    in-flight copy.
    """

    __slots__ = ("_events", "_keep")

    def __init__(self, events: list, keep: tuple) -> None:
        self._events = events
        self._keep = keep

    def wait(self) -> None:
        """Block until the host slot and the slot's device buffers may be reused."""
        for ev in self._events:
            ev.synchronize()
        self._keep = ()

    def done(self) -> bool:
        """Whether all of the submit's work has finished (non-blocking)."""
        if all(ev.done for ev in self._events):
            self._keep = ()
            return True
        return False

    def __repr__(self) -> str:
        return f"CudaToken(done={self.done()})"


class _Slot:
    """Per-ring-slot device state: staging buffer, descriptor buffers, last token."""

    __slots__ = ("desc_dev", "desc_host", "gather_dev", "gather_host", "last", "staging")

    def __init__(self) -> None:
        self.staging = None  # cupy uint8 array
        self.desc_host = None  # numpy DESC_DTYPE array over pinned memory
        self.desc_dev = None  # cupy uint8 array
        self.gather_host = None  # pinned uint8: gather descriptors, then (src, dst) offset pairs
        self.gather_dev = None  # cupy uint8 array, same layout
        self.last: CudaToken | None = None


class CudaBackend:
    """The ``/device:GPU:N`` backend (same interface as
    :class:`~gpuload.device.host.HostBackend`).

    Parameters
    ----------
    index:
        CUDA device id (as CuPy numbers devices, i.e. after ``CUDA_VISIBLE_DEVICES``).

    Attributes
    ----------
    device:
        ``"/device:GPU:<index>"``.
    stats:
        Cumulative counters: ``submits``, ``h2d_bytes`` (all host-to-device bytes),
        ``staged_bytes``, ``direct_bytes`` (dense copies that skipped staging),
        ``direct_copies``, ``kernel_copies``, ``kernel_launches``, ``submit_seconds``
        (host time spent enqueueing; the device work overlaps later calls).
    """

    def __init__(self, index: int) -> None:
        import cupy

        self._cupy = cupy
        self.index = int(index)
        self.device = f"/device:GPU:{self.index}"
        dev = cupy.cuda.Device(self.index)
        with dev:
            # Non-blocking: they must not serialise with work other code puts on the
            # legacy default stream.
            self._copy_stream = cupy.cuda.Stream(non_blocking=True)
            self._kernel_stream = cupy.cuda.Stream(non_blocking=True)
            self._sm_count = int(dev.attributes["MultiProcessorCount"])
        self._slots: dict[int, _Slot] = {}
        self.stats: dict = {
            "submits": 0, "h2d_bytes": 0, "staged_bytes": 0, "direct_bytes": 0, "direct_copies": 0,
            "kernel_copies": 0, "kernel_launches": 0, "submit_seconds": 0.0, "gather_copies": 0,
        }  # fmt: skip

    def __repr__(self) -> str:
        return f"CudaBackend(device={self.device!r})"

    # -- buffers ---------------------------------------------------------------------

    def empty(self, shape: tuple[int, ...], dtype: Any):
        """A C-contiguous, uninitialised ``cupy.ndarray`` on this device.

        bfloat16 needs CuPy >= 14; with an older CuPy the array is ``uint16`` holding
        bfloat16 bits (:meth:`to_host` gives it back as bfloat16).
        """
        cp = self._cupy
        dtype = np.dtype(dtype)
        with cp.cuda.Device(self.index):
            try:
                arr = cp.empty(shape, dtype=dtype)
            except (TypeError, ValueError):
                if dtype != _BF16:
                    raise
                arr = cp.empty(shape, dtype=np.uint16)
            ev = cp.cuda.get_current_stream().record()
            self._copy_stream.wait_event(ev)
            self._kernel_stream.wait_event(ev)
        return arr

    def to_host(self, array: Any) -> np.ndarray:
        """Copy a device array to a NumPy array (waits for this backend's work first)."""
        cp = self._cupy
        with cp.cuda.Device(self.index):
            self.synchronize()
            out = cp.asnumpy(array)
        return out

    def alloc_host_slots(self, n: int, nbytes: int) -> list[np.ndarray]:
        """Allocate the staging ring: ``n`` pinned ``uint8`` buffers of ``nbytes``.

        One page-locked allocation (``cudaHostAllocPortable``, so every GPU in the process
        can DMA from it) is cut into page-aligned slots. It bypasses CuPy's pinned pool on
        purpose: the pool would keep the ring pinned after the load, while this memory is
        freed when the last slot view is dropped.
        """
        cp = self._cupy
        if n < 1 or nbytes < 1:
            raise ValueError(f"need n >= 1 slots of nbytes >= 1, got n={n}, nbytes={nbytes}")
        stride = -(-nbytes // _PAGE) * _PAGE
        with cp.cuda.Device(self.index):
            mem = cp.cuda.PinnedMemory(stride * n, cp.cuda.runtime.hostAllocPortable)
        whole = np.frombuffer(cp.cuda.PinnedMemoryPointer(mem, 0), dtype=np.uint8, count=stride * n)
        return [whole[i * stride : i * stride + nbytes] for i in range(n)]

    def free_host_slots(self, slots: list[np.ndarray]) -> None:
        """End of a load: wait for in-flight copies out of the ring, release staging.

        The pinned memory itself is freed when the caller drops its last slot view.
        """
        self.close()

    def close(self) -> None:
        """Wait for all work, then release the per-slot device buffers (reallocated lazily)."""
        self.synchronize()
        self._slots.clear()

    # -- work ------------------------------------------------------------------------

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
            # Grow to a page multiple; the previous buffer is idle (see _slot).
            slot.staging = self._cupy.empty(-(-nbytes // _PAGE) * _PAGE, dtype=np.uint8)
        return slot.staging

    def _descriptors(self, slot: _Slot, n: int):
        cp = self._cupy
        if slot.desc_host is None or slot.desc_host.size < n:
            cap = max(64, 1 << (n - 1).bit_length())
            nbytes = cap * kernels.DESC_DTYPE.itemsize
            mem = cp.cuda.PinnedMemory(nbytes, cp.cuda.runtime.hostAllocPortable)
            raw = np.frombuffer(cp.cuda.PinnedMemoryPointer(mem, 0), dtype=np.uint8, count=nbytes)
            slot.desc_host = raw.view(kernels.DESC_DTYPE)
            slot.desc_dev = cp.empty(nbytes, dtype=np.uint8)
        return slot.desc_host, slot.desc_dev

    def _gather_buffers(self, slot: _Slot, nbytes: int):
        cp = self._cupy
        if slot.gather_host is None or slot.gather_host.nbytes < nbytes:
            cap = max(4096, 1 << (nbytes - 1).bit_length())
            mem = cp.cuda.PinnedMemory(cap, cp.cuda.runtime.hostAllocPortable)
            slot.gather_host = np.frombuffer(cp.cuda.PinnedMemoryPointer(mem, 0), dtype=np.uint8, count=cap)
            slot.gather_dev = cp.empty(cap, dtype=np.uint8)
        return slot.gather_host, slot.gather_dev

    def adopt(self, array: Any):
        """Take a prefilled destination (a warm start's backup values, computed by CuPy on
        the current stream): this backend's streams wait for that work before writing it."""
        cp = self._cupy
        with cp.cuda.Device(self.index):
            ev = cp.cuda.get_current_stream().record()
            self._copy_stream.wait_event(ev)
            self._kernel_stream.wait_event(ev)
        return array

    def _dest_ptr(self, dest: Any, dst_dtype: np.dtype, copy: BoxCopy) -> tuple[int, int]:
        cp = self._cupy
        if not isinstance(dest, cp.ndarray):
            raise TypeError(f"destination {copy.dest} of {self.device} must be a cupy.ndarray, got {type(dest).__name__}")
        if dest.device.id != self.index:
            raise ValueError(
                f"destination {copy.dest} lives on /device:GPU:{dest.device.id}, not on {self.device}: "
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
            Ring slot the chunk lives in; its device staging and descriptor buffers are
            reused by the next submit from the same slot.
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
        """
        cp = self._cupy
        t0 = time.perf_counter()
        if not isinstance(chunk, np.ndarray) or chunk.ndim != 1 or chunk.dtype != np.uint8 or not chunk.flags.c_contiguous:
            raise TypeError("chunk must be a contiguous 1-D uint8 numpy array")
        host_ptr = chunk.ctypes.data
        direct: list[tuple[BoxCopy, int, int]] = []  # (copy, dst address, nbytes)
        groups: dict[str, list[tuple[BoxCopy, int]]] = {}  # variant -> [(copy, dst base address)]
        gathers: dict[str, list[tuple[GatherCopy, int]]] = {}  # variant -> [(gather, dst base address)]
        g_lo, g_hi = chunk.nbytes, 0  # chunk bytes the gathers read
        for c in copies:
            src_dt, dst_dt = (np.dtype(t) for t in dtypes[c.dest])
            variant = cast_code(src_dt, dst_dt)
            ptr, size = self._dest_ptr(dests[c.dest], dst_dt, c)
            if isinstance(c, GatherCopy):
                check_gather(c, chunk.nbytes, src_dt.itemsize, size)
                if c.size:
                    gathers.setdefault(variant, []).append((c, ptr))
                    span = src_dt.itemsize * (1 + sum((n - 1) * st for n, st in zip(c.shape, c.src_strides)))
                    g_lo = min(g_lo, int(c.src_offsets.min()))
                    g_hi = max(g_hi, int(c.src_offsets.max()) + span)
                continue
            check_copy(c, chunk.nbytes, src_dt.itemsize, size)
            if c.size == 0:
                continue
            if src_dt == dst_dt and c.is_contiguous():
                direct.append((c, ptr + c.dst_offset * dst_dt.itemsize, c.size * dst_dt.itemsize))
            else:
                groups.setdefault(variant, []).append((c, ptr))

        events = []
        with cp.cuda.Device(self.index):
            slot = self._slot(slot_index)
            h2d = cp.cuda.runtime.memcpyHostToDevice
            cs, ks = self._copy_stream, self._kernel_stream
            launches = []
            gather_launches = []
            if groups or gathers:
                # Stage only the bytes the kernels read (dense copies go direct, below), so
                # each byte of the chunk crosses PCIe about once.
                lo = min([c.src_offset for g in groups.values() for c, _ in g] + ([g_lo] if gathers else []))
                hi = max([_src_end(c, dtypes[c.dest][0]) for g in groups.values() for c, _ in g]
                         + ([g_hi] if gathers else []))
                base = lo - lo % _STAGE_ALIGN
                staging = self._staging(slot, hi - base)
                cp.cuda.runtime.memcpyAsync(staging.data.ptr, host_ptr + base, hi - base, h2d, cs.ptr)
                desc_bytes = 0
                if groups:
                    n_total = sum(len(g) for g in groups.values())
                    desc_host, desc_dev = self._descriptors(slot, n_total)
                    at = 0
                    for group in groups.values():
                        kernels.pack_descriptors((c for c, _ in group), (p for _, p in group), src_base=base,
                                                 out=desc_host[at:])
                        launches.append((group, at))
                        at += len(group)
                    desc_bytes = n_total * kernels.DESC_DTYPE.itemsize
                    cp.cuda.runtime.memcpyAsync(desc_dev.data.ptr, desc_host.ctypes.data, desc_bytes, h2d, cs.ptr)
                if gathers:
                    # One pinned buffer per slot: every gather descriptor, then every box's
                    # (source byte, destination element) pair, copied up in one H2D.
                    gd = kernels.GATHER_DESC_DTYPE
                    n_desc = sum(len(g) for g in gathers.values())
                    n_pairs = sum(c.boxes for g in gathers.values() for c, _ in g)
                    pair_at = -(-n_desc * gd.itemsize // 16) * 16
                    g_bytes = pair_at + 16 * n_pairs
                    g_host, g_dev = self._gather_buffers(slot, g_bytes)
                    all_descs = g_host[: n_desc * gd.itemsize].view(gd)
                    all_pairs = g_host[pair_at: g_bytes].view(np.int64)
                    at = first = 0
                    for group in gathers.values():
                        nb = sum(c.boxes for c, _ in group)
                        kernels.pack_gather((c for c, _ in group), (p for _, p in group), src_base=base,
                                            out_descs=all_descs[at:], out_offsets=all_pairs[2 * first:],
                                            first_pair=first)
                        gather_launches.append((group, at))
                        at += len(group)
                        first += nb
                    cp.cuda.runtime.memcpyAsync(g_dev.data.ptr, g_host.ctypes.data, g_bytes, h2d, cs.ptr)
                    desc_bytes += g_bytes
                # Recorded before the direct copies are queued, so the kernels start as soon
                # as their own inputs have landed.
                ready = cs.record(cp.cuda.Event(disable_timing=True))
                self.stats["staged_bytes"] += hi - base
                self.stats["h2d_bytes"] += hi - base + desc_bytes
            for c, dst_addr, nbytes in direct:
                cp.cuda.runtime.memcpyAsync(dst_addr, host_ptr + c.src_offset, nbytes, h2d, cs.ptr)
                self.stats["direct_bytes"] += nbytes
                self.stats["h2d_bytes"] += nbytes
            self.stats["direct_copies"] += len(direct)
            events.append(cs.record(cp.cuda.Event(disable_timing=True)))
            if launches or gather_launches:
                ks.wait_event(ready)
                with ks:
                    for group, first in launches:
                        src_dt, dst_dt = dtypes[group[0][0].dest]
                        fn = kernels.get_kernel(src_dt, dst_dt)
                        grid, block = kernels.launch_geometry((c.size for c, _ in group), self._sm_count)
                        descs = desc_dev[first * kernels.DESC_DTYPE.itemsize :]  # a view: pointer + offset
                        fn(grid, block, (staging, descs, np.int32(len(group))))
                        self.stats["kernel_launches"] += 1
                        self.stats["kernel_copies"] += len(group)
                    for group, first in gather_launches:
                        src_dt, dst_dt = dtypes[group[0][0].dest]
                        fn = kernels.get_gather_kernel(src_dt, dst_dt)
                        grid, block = kernels.launch_geometry((c.size for c, _ in group), self._sm_count)
                        descs = g_dev[first * kernels.GATHER_DESC_DTYPE.itemsize:]
                        fn(grid, block, (staging, descs, np.int32(len(group)), g_dev[pair_at:]))
                        self.stats["kernel_launches"] += 1
                        self.stats["gather_copies"] += len(group)
                events.append(ks.record(cp.cuda.Event(disable_timing=True)))
        token = CudaToken(events, (chunk, tuple(dests)))
        slot.last = token
        self.stats["submits"] += 1
        self.stats["submit_seconds"] += time.perf_counter() - t0
        return token

    def synchronize(self) -> None:
        """Block until every submitted copy on this device has finished."""
        with self._cupy.cuda.Device(self.index):
            self._copy_stream.synchronize()
            self._kernel_stream.synchronize()
