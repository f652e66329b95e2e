"""The NumPy twin of ``kernels/box_copy.cu``, and the CPU backend built on it.

:func:`box_copy` executes one :class:`~gpuload.plan.copies.BoxCopy` with NumPy: the source
box and the destination box become strided views and one ``np.copyto`` moves and
converts the elements, so a dense copy runs at ``memcpy`` speed and nothing loops over
elements in Python. :class:`StreamCopy` runs a chunk's copies the same way, slab by slab,
on windows of the chunk as a reader streams it through a small cache-sized buffer. It
accepts exactly the dtype pairs the kernels do (the cast table of
:mod:`gpuload.backend.contract`), with the same results bit for bit. The definition both
follow is TensorFlow's ``Cast`` (Eigen's conversions); NumPy and ml_dtypes do each single
rounding, and the twin spells out where TensorFlow rounds twice rather than inheriting
whatever the installed library version does.

:class:`HostBackend` is the ``"/device:CPU:0"`` backend: destinations are NumPy arrays,
the staging ring is page-aligned anonymous memory, and :meth:`HostBackend.submit` runs
synchronously. This module never imports CuPy.

Notes
-----
Which dtype pairs convert, and the checks every copy passes first, are the copy contract
(:mod:`gpuload.backend.contract`), shared with the kernels. Rounding is to nearest, ties
to even; subnormals are kept; overflow gives inf. NaNs follow NumPy / ml_dtypes on x86-64:
to bfloat16 (and bfloat16 -> float16) a NaN becomes the canonical quiet NaN of its sign;
float32 <-> float64 keep the payload and set the quiet bit; NumPy's float16 casts keep the
payload's top bits as they are.

float64 -> bfloat16 and float64 -> float16 round twice, through float32, as TensorFlow's
``Cast`` does on CPU and GPU (Eigen's ``bfloat16(T)`` and ``half(T)`` constructors take
``static_cast<float>`` first) and as the kernels do: 1 + 2^-8 + 2^-40 becomes bfloat16
``0x3f80`` (1.0), where one rounding (ml_dtypes >= 0.7's ``astype``) gives ``0x3f81``.
The twin converts to float32 explicitly (:data:`_VIA_FLOAT32`), so the result does not
depend on the ml_dtypes version.
"""

from __future__ import annotations

import math
import mmap
import threading
import time
from typing import Any

import numpy as np

from gpuload.backend.contract import BF16, cast_code, check_copy, check_gather
from gpuload.plan.copies import BoxCopy, GatherCopy

__all__ = ["CompletedToken", "HostBackend", "StreamCopy", "box_copy", "gather_copy"]

#: Casts that TensorFlow rounds twice, through float32 (see the module notes). The value
#: is the intermediate dtype; every other pair is one NumPy / ml_dtypes cast, which rounds
#: once, as TensorFlow does for those pairs (their other steps are exact widenings).
_VIA_FLOAT32 = {
    (np.dtype(np.float64), BF16): np.dtype(np.float32),
    (np.dtype(np.float64), np.dtype(np.float16)): np.dtype(np.float32),
}

# The raw dtype an identity copy moves (bit-exact for every dtype of that size).
_RAW_DTYPES = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32),
               8: np.dtype(np.uint64), 16: np.dtype("V16")}  # fmt: skip

_PAGE = mmap.PAGESIZE


def _chunk_bytes(src: np.ndarray) -> np.ndarray:
    if not isinstance(src, np.ndarray) or src.ndim != 1 or src.dtype != np.uint8 or not src.flags.c_contiguous:
        raise TypeError(f"chunk must be a contiguous 1-D uint8 numpy array, got {type(src).__name__} "
                        f"{getattr(src, 'dtype', '')}{getattr(src, 'shape', '')}")  # fmt: skip
    return src


def _flat_dest(dst: np.ndarray, dst_dtype: np.dtype) -> np.ndarray:
    if not isinstance(dst, np.ndarray) or not dst.flags.c_contiguous:
        # reshape(-1) would silently copy a non-contiguous array and the writes would be lost.
        raise TypeError("destination must be a C-contiguous numpy array")
    if not dst.flags.writeable:
        raise ValueError("destination array is read-only")
    flat = dst.reshape(-1)
    if flat.dtype != dst_dtype:
        if flat.nbytes % dst_dtype.itemsize:
            raise TypeError(f"destination of {flat.nbytes} bytes cannot be viewed as {dst_dtype}")
        flat = flat.view(np.uint8).view(dst_dtype)
    return flat


def box_copy(src: np.ndarray, src_dtype: Any, dst: np.ndarray, dst_dtype: Any, copy: BoxCopy) -> None:
    """Execute one BoxCopy on the host (the NumPy twin of the CUDA kernels).

    Parameters
    ----------
    src:
        The staged chunk: a contiguous 1-D ``uint8`` array. Its base may have any
        alignment; NumPy handles unaligned element views.
    src_dtype:
        dtype of the checkpoint's elements in the chunk.
    dst:
        Destination buffer: any C-contiguous array; it is addressed as a flat array of
        ``dst_dtype`` elements (viewed, never copied).
    dst_dtype:
        dtype of the destination elements.
    copy:
        What to copy; see :class:`~gpuload.plan.copies.BoxCopy`.

    Raises
    ------
    PlanError
        Unsupported dtype pair, or a copy outside the chunk or the destination.
    TypeError
        ``src`` or ``dst`` is not an array of the expected layout.
    """
    chunk = _chunk_bytes(src)
    slabs = _Slabs(copy, src_dtype, dst, dst_dtype, chunk.nbytes)
    slabs.run(chunk, 0, 0, slabs.count)


class _Slabs:
    """One checked :class:`BoxCopy`, run slab by slab: slab ``k`` is index ``k`` of its outermost axis.

    The views of both sides are set up once; :meth:`run` copies any range of slabs out of
    a buffer that holds some window of the chunk, so a chunk can be copied out piece by
    piece while each piece is still in the CPU cache (see :class:`StreamCopy`).
    """

    __slots__ = (
        "count",
        "start",
        "step",
        "span",
        "_shape",
        "_sdt",
        "_sstr",
        "_ddt",
        "_dstr",
        "_dbuf",
        "_doff",
        "_dstep",
        "_via",
        "_cast",
    )

    def __init__(self, copy: BoxCopy, src_dtype: Any, dst: np.ndarray, dst_dtype: Any, chunk_nbytes: int) -> None:
        src_dtype, dst_dtype = np.dtype(src_dtype), np.dtype(dst_dtype)
        cast_code(src_dtype, dst_dtype)  # the twin refuses exactly what the kernels refuse
        flat = _flat_dest(dst, dst_dtype)
        check_copy(copy, chunk_nbytes, src_dtype.itemsize, flat.size)
        shape = tuple(copy.shape) or (1,)
        s_str, d_str = tuple(copy.src_strides) or (1,), tuple(copy.dst_strides) or (1,)
        self.count = shape[0] if copy.size else 0
        s_size, d_size = src_dtype.itemsize, dst_dtype.itemsize
        #: Chunk byte of slab 0, bytes between slabs, bytes one slab spans.
        self.start = copy.src_offset
        self.step = s_str[0] * s_size
        self.span = s_size * (1 + sum((n - 1) * s for n, s in zip(shape[1:], s_str[1:])))
        self._dstep = d_str[0] * d_size
        self._doff = copy.dst_offset * d_size
        self._dbuf = flat.view(np.uint8)
        self._via = None
        self._cast = src_dtype != dst_dtype
        if not self._cast and len(shape) >= 2 and s_str[-1] == 1 and d_str[-1] == 1:
            # Each dense innermost run is one ``void`` record: NumPy's strided copy then
            # loops per run (a memcpy each) rather than per element.
            run = np.dtype((np.void, shape[-1] * s_size))
            shape, s_str, d_str = shape[:-1], s_str[:-1], d_str[:-1]
            self._sdt = self._ddt = run
            self._sstr = tuple(s * src_dtype.itemsize for s in s_str)
            self._dstr = tuple(d * dst_dtype.itemsize for d in d_str)
        else:
            if not self._cast:
                # Identity: move raw bits (keeps NaN payloads and any bool byte as they are).
                src_dtype = dst_dtype = _RAW_DTYPES[s_size]
            self._sdt, self._ddt = src_dtype, dst_dtype
            self._via = _VIA_FLOAT32.get((src_dtype, dst_dtype))
            self._sstr = tuple(s * s_size for s in s_str)
            self._dstr = tuple(d * d_size for d in d_str)
        self._shape = shape[1:]

    def run(self, buf: np.ndarray, base: int, k0: int, k1: int) -> None:
        """Copy slabs ``k0 .. k1 - 1``; ``buf`` holds the chunk's bytes from ``base`` on.

        The caller guarantees that ``buf`` holds every byte of those slabs.
        """
        n = k1 - k0
        if n <= 0:
            return
        shape = (n, *self._shape)
        start = self.start + k0 * self.step - base
        sview = np.ndarray(shape, dtype=self._sdt, buffer=buf, offset=start, strides=self._sstr)
        dview = np.ndarray(
            shape, dtype=self._ddt, buffer=self._dbuf, offset=self._doff + k0 * self._dstep, strides=self._dstr
        )
        if not self._cast:
            np.copyto(dview, sview)
            return
        # Overflow to inf and NaN conversions are the specified results, not errors.
        with np.errstate(all="ignore"):
            if self._via is not None:
                # The first rounding, made explicit; the temporary is the slabs in float32.
                sview = sview.astype(self._via)
            np.copyto(dview, sview, casting="unsafe")


class StreamCopy:
    """A chunk's box copies, applied window by window while the chunk streams through a small buffer.

    Made by :meth:`HostBackend.stream`. A reader reads the chunk piece by piece into a
    buffer that holds a window of it and calls :meth:`feed` after each piece: every slab
    (outermost index of a copy) that lies wholly inside the window and was not copied yet
    is copied, while the piece is still in the CPU cache. :meth:`feed` returns the first
    chunk byte still needed, which the reader keeps in its buffer for the next window.
    """

    __slots__ = ("_backend", "_slabs", "_next", "_chunk_nbytes", "_written", "_ncopies", "_seconds")

    def __init__(self, backend: HostBackend, slabs: list[_Slabs], chunk_nbytes: int, written: int, ncopies: int):
        self._backend = backend
        self._slabs = slabs
        self._next = [0] * len(slabs)
        self._chunk_nbytes = chunk_nbytes
        self._written = written
        self._ncopies = ncopies
        self._seconds = 0.0  # copy time, counted in the backend's stats once the chunk is whole

    def feed(self, window: np.ndarray, base: int) -> int:
        """Copy what ``window`` (the chunk's bytes ``base .. base + len(window) - 1``) completes.

        Returns the lowest chunk offset that a slab not copied yet starts at (``base +
        len(window)`` when none does): the window's bytes from there on are still needed.
        """
        t0 = time.perf_counter()
        end = base + window.nbytes
        need = end
        for i, s in enumerate(self._slabs):
            k0 = self._next[i]
            if k0 >= s.count:
                continue
            if s.start + k0 * s.step < base:
                raise RuntimeError(f"window from chunk byte {base} misses slab {k0} at {s.start + k0 * s.step}")
            last = end - s.start - s.span  # start of the last slab that ends inside the window, relative
            k1 = 0 if last < 0 else min(s.count, last // s.step + 1 if s.step else s.count)
            if k1 > k0:
                s.run(window, base, k0, k1)
                self._next[i] = k0 = k1
            if k0 < s.count:
                need = min(need, s.start + k0 * s.step)
        self._seconds += time.perf_counter() - t0
        return need

    def finish(self) -> None:
        """Check that every slab was copied; count the chunk in the backend's stats."""
        if any(k < s.count for k, s in zip(self._next, self._slabs)):
            raise RuntimeError("the chunk was not streamed whole: some slabs were never copied")
        self._backend._count(self._ncopies, self._chunk_nbytes, self._written, self._seconds)


def _box_offsets(shape, strides) -> np.ndarray:
    """Offsets (in elements) of every element of a box, row-major."""
    off = np.zeros((), dtype=np.int64)
    for n, s in zip(shape, strides):
        off = off[..., None] + np.arange(n, dtype=np.int64) * s
    return off.reshape(-1)


#: Elements moved per NumPy step of a strided gather: bounds its index arrays (8 bytes each).
_GATHER_STEP = 1 << 20


def gather_copy(src: np.ndarray, src_dtype: Any, dst: np.ndarray, dst_dtype: Any, copy: GatherCopy) -> None:
    """Execute one GatherCopy on the host (the NumPy twin of ``kernels/gather.cu``).

    Box ``k`` of the copy is the :class:`~gpuload.plan.copies.BoxCopy` at
    ``src_offsets[k]`` / ``dst_offsets[k]``; the result is what :func:`box_copy` of each
    box in turn gives (later boxes win where boxes overlap in the destination, as no
    plan makes them).

    Raises
    ------
    PlanError
        Unsupported dtype pair, or a box outside the chunk or the destination.
    TypeError
        ``src`` or ``dst`` is not an array of the expected layout.
    """
    src_dtype, dst_dtype = np.dtype(src_dtype), np.dtype(dst_dtype)
    cast_code(src_dtype, dst_dtype)
    chunk = _chunk_bytes(src)
    flat = _flat_dest(dst, dst_dtype)
    check_gather(copy, chunk.nbytes, src_dtype.itemsize, flat.size)
    if copy.size == 0:
        return
    s_size, d_size = src_dtype.itemsize, dst_dtype.itemsize
    dbytes = flat.view(np.uint8)
    if src_dtype == dst_dtype and len(copy.shape) == 1 and copy.src_strides == (1,) and copy.dst_strides == (1,):
        # Dense boxes (rows): each box is one void record; views with a 1-byte (source) and
        # one-element (destination) step let a fancy index pick a record at any offset.
        run = np.dtype((np.void, copy.shape[0] * s_size))
        srec = np.ndarray((chunk.nbytes - run.itemsize + 1,), dtype=run, buffer=chunk, strides=(1,))
        drec = np.ndarray((flat.size - copy.shape[0] + 1,), dtype=run, buffer=dbytes, strides=(d_size,))
        drec[copy.dst_offsets] = srec[copy.src_offsets]
        return
    # Elements move as raw bits; a conversion runs through box_copy on a dense buffer, so
    # that gathers convert exactly as box copies do.
    s_raw, d_raw = _RAW_DTYPES[s_size], _RAW_DTYPES[d_size]
    sel = np.ndarray((chunk.nbytes - s_size + 1,), dtype=s_raw, buffer=chunk, strides=(1,))
    delem = np.ndarray((flat.size,), dtype=d_raw, buffer=dbytes, strides=(d_size,))
    s_in = _box_offsets(copy.shape, copy.src_strides) * s_size
    d_in = _box_offsets(copy.shape, copy.dst_strides)
    step = max(1, _GATHER_STEP // max(len(s_in), 1))
    for k in range(0, copy.boxes, step):
        so = copy.src_offsets[k : k + step, None] + s_in[None, :]
        do = copy.dst_offsets[k : k + step, None] + d_in[None, :]
        values = sel[so.reshape(-1)]
        if src_dtype != dst_dtype:
            converted = np.empty(values.size, dtype=dst_dtype)
            box_copy(
                values.view(np.uint8), src_dtype, converted, dst_dtype, BoxCopy(0, 0, (1,), 0, (1,), (values.size,))
            )
            values = converted.view(d_raw)
        delem[do.reshape(-1)] = values


_HUGE = 2 << 20
#: Destinations of this size or more get their own page-aligned mapping (see ``empty``).
HUGE_BYTES = _HUGE


def _anonymous(nbytes: int) -> mmap.mmap:
    """Private anonymous memory (page-aligned), with huge pages asked for where Linux has them."""
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if nbytes >= _HUGE and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # THP disabled or unsupported: 4 KiB pages still work
            pass
    return buf


class CompletedToken:
    """A :class:`~gpuload.backend.Token` whose work is already done (host submits)."""

    __slots__ = ()

    def wait(self) -> None:
        """Return at once: host work completes inside ``submit``."""

    def done(self) -> bool:
        """Always ``True``."""
        return True

    def __repr__(self) -> str:
        return "CompletedToken()"


_COMPLETED = CompletedToken()


class HostBackend:
    """The CPU backend: destinations in host memory, copies run by :func:`box_copy`.

    It implements the backend interface the scheduler drives (the CUDA backend has the
    same methods). It exists for tests and debugging and is chosen only explicitly with
    ``device="cpu"``.

    Attributes
    ----------
    device:
        ``"/device:CPU:0"``.
    stats:
        Cumulative counters: ``submits``, ``copies``, ``chunk_bytes`` (bytes handed to
        :meth:`submit`), ``bytes_written`` (destination bytes), ``copy_seconds``.
    """

    device = "/device:CPU:0"
    #: Work is done when submit() returns, so the scheduler may call submit() from its
    #: reader threads (in parallel, on cache-warm chunks) rather than from its consumer.
    synchronous = True

    def __init__(self) -> None:
        self.stats: dict = {"submits": 0, "copies": 0, "chunk_bytes": 0, "bytes_written": 0, "copy_seconds": 0.0}
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HostBackend(device={self.device!r})"

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A C-contiguous, uninitialised destination array.

        Arrays of 2 MiB or more get their own anonymous mapping with transparent huge
        pages requested: the load's first touch of every page is then one fault per 2 MiB
        instead of per 4 KiB. Measured on the benchmark VM (2026-11-25), reading into such
        memory ran at ~7 GB/s against 2 GB/s for 4 KiB pages and 0.5-5 GB/s (erratic) for
        ``np.empty``, whose malloc'd ranges are not 2 MiB aligned.
        """
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if dtype.hasobject or nbytes < _HUGE:
            return np.empty(shape, dtype=dtype)
        return np.frombuffer(_anonymous(nbytes), dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def to_host(self, array: Any) -> np.ndarray:
        """The array itself (already in host memory)."""
        return np.asarray(array)

    def alloc_host_slots(self, n: int, nbytes: int) -> list[np.ndarray]:
        """Allocate the staging ring: ``n`` page-aligned ``uint8`` buffers of ``nbytes``.

        One anonymous ``mmap`` backs all slots; each slot starts on a page boundary (what
        ``O_DIRECT`` reads need). The memory is returned to the OS when the last view of
        it is dropped.
        """
        if n < 1 or nbytes < 1:
            raise ValueError(f"need n >= 1 slots of nbytes >= 1, got n={n}, nbytes={nbytes}")
        stride = -(-nbytes // _PAGE) * _PAGE
        whole = np.frombuffer(_anonymous(stride * n), dtype=np.uint8)
        return [whole[i * stride : i * stride + nbytes] for i in range(n)]

    def free_host_slots(self, slots: list[np.ndarray]) -> None:
        """Release the ring. Host work is synchronous, so nothing can still read it."""
        # The mmap is unmapped when its last view dies; callers drop `slots` after this.

    def submit(
        self,
        slot_index: int,
        chunk: np.ndarray,
        copies: list[BoxCopy],
        dests: list,
        dtypes: list[tuple[Any, Any]],
    ) -> CompletedToken:
        """Apply every copy of one staged chunk, synchronously.

        Parameters
        ----------
        slot_index:
            Ring slot the chunk lives in (unused on the host; part of the interface).
        chunk:
            ``uint8`` view of the filled bytes of that slot.
        copies:
            The chunk's copies; ``dests[c.dest]`` is each one's destination array and
            ``dtypes[c.dest]`` its ``(source dtype, destination dtype)``.

        Returns
        -------
        CompletedToken
            Already done: the slot may be refilled at once.
        """
        t0 = time.perf_counter()
        written = 0
        for c in copies:
            src_dtype, dst_dtype = dtypes[c.dest]
            if isinstance(c, GatherCopy):
                gather_copy(chunk, src_dtype, dests[c.dest], dst_dtype, c)
            else:
                box_copy(chunk, src_dtype, dests[c.dest], dst_dtype, c)
            written += c.size * np.dtype(dst_dtype).itemsize
        self._count(len(copies), int(chunk.nbytes), written, time.perf_counter() - t0)
        return _COMPLETED

    def _count(self, copies: int, chunk_bytes: int, written: int, seconds: float) -> None:
        # Reader threads run copies in parallel: read-modify-write of the totals under a lock.
        with self._stats_lock:
            st = self.stats
            st["submits"] += 1
            st["copies"] += copies
            st["chunk_bytes"] += chunk_bytes
            st["bytes_written"] += written
            st["copy_seconds"] += seconds

    def stream(
        self,
        chunk_nbytes: int,
        copies: list[BoxCopy],
        dests: list,
        dtypes: list[tuple[Any, Any]],
        max_span: int,
    ) -> StreamCopy | None:
        """The chunk's copies, ready to run window by window as the chunk is read (see :class:`StreamCopy`).

        Parameters
        ----------
        chunk_nbytes:
            Bytes in the chunk.
        copies, dests, dtypes:
            As for :meth:`submit`.
        max_span:
            Most bytes one slab (the outermost index of a copy) may span: a reader holds at
            most this much of the chunk back between windows.

        Returns
        -------
        StreamCopy or None
            ``None`` when some copy is a gather or has slabs wider than ``max_span``: the
            chunk must then be staged whole and given to :meth:`submit`.

        Raises
        ------
        PlanError
            As :func:`box_copy`, checked here for the whole chunk.
        """
        slabs = []
        written = 0
        for c in copies:
            if not isinstance(c, BoxCopy):
                return None
            src_dtype, dst_dtype = dtypes[c.dest]
            s = _Slabs(c, src_dtype, dests[c.dest], dst_dtype, chunk_nbytes)
            if s.span > max_span:
                return None
            slabs.append(s)
            written += c.size * np.dtype(dst_dtype).itemsize
        return StreamCopy(self, slabs, chunk_nbytes, written, len(copies))

    def adopt(self, array: Any, stream: int | None = None) -> np.ndarray:
        """Take a prefilled or caller-provided destination as it is (host work is synchronous)."""
        return array

    def synchronize(self) -> None:
        """Nothing to wait for: host work is synchronous."""

    def close(self) -> None:
        """Nothing to release (kept for interface parity with the CUDA backend)."""
