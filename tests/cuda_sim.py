"""A CUDA-ordering simulator: a stand-in for exactly the part of CuPy that gpuload uses.

``GPULOAD_SIMULATE_CUDA=1`` (or ``late``) / ``=early`` makes tests/conftest.py install this
module as ``cupy`` before anything imports CuPy, so every ``gpu``-marked test runs on a
machine without a GPU. Two devices exist. Device memory is host memory (so pointers are
real addresses the kernels' host harness can use), but nothing about *when* work runs is
host-like:

* Streams are queues. In ``late`` mode nothing runs until something waits on it
  (``Event.synchronize``, ``Stream.synchronize``, ``Device.synchronize``, a host read of a
  device array); then exactly the work that the waited-for point depends on runs (its
  stream's earlier work and, transitively, every event that stream waited for). In
  ``early`` mode every operation runs as soon as its dependencies are satisfied.
* Host-to-device copies read their host source when they *run*: a pinned slot refilled
  too early shows up as wrong data (and as a violation, since the source changed between
  enqueue and execution). Kernels read their inputs (source and descriptors) when they
  run, and run through the kernels' own C++ (tests/kernel_host_harness.cpp, g++).
* Every operation carries a vector clock (streams, event waits, host synchronisation), so
  two accesses to the same memory from different streams with no ordering between them
  are a race, whatever order the simulator happened to run them in.

Violations are recorded (:func:`violations`) and tests/conftest.py fails the test that
caused any: an event recorded on another device's stream; a copy or launch while another
device is current; device pointers of the wrong device (or not device memory); an H2D
copy from freed pinned memory or whose source changed before it ran; use of freed
device memory (or memory freed while another stream may still use it); a kernel from a
module loaded on another device; unordered accesses (races); a CUDA call from a thread
(other than the main one) that selected no device; a host read of device memory that
unfinished GPU work writes.

Also: a per-device memory limit (:func:`set_memory_limit`, ``OutOfMemoryError``), sticky
fatal errors (:func:`inject_fatal`: after N operations run on a device every CUDA call on
it raises ``CUDARuntimeError``), contexts created per device (:data:`state.contexts`),
pinned allocations that are not page-aligned (:func:`misalign_pinned`), and a CuPy 13
mode without bfloat16 (:func:`set_version`).
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import hashlib
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import types
import weakref
import zlib
from pathlib import Path

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

__version__ = "14.0.0+sim"
NDEV = 2
IS_SIMULATOR = True

_BF16_NAME = "bfloat16"


# ----------------------------------------------------------------------------- state


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.mode = "late"
        self.violations: list[str] = []
        self.contexts: set[int] = set()
        self.ids = itertools.count(1)
        self.allocs: dict[int, _Alloc] = {}  # start -> alloc (live and freed-not-yet-flushed)
        self.starts: list[int] = []
        self.pending: dict[int, _Op] = {}  # op id -> op not yet run
        self.host_vc: dict[int, int] = {}
        self.streams: dict[int, Stream] = {}  # ptr -> stream
        self.null: dict[int, Stream] = {}
        self.mem_limit: dict[int, int | None] = {d: None for d in range(NDEV)}
        self.mem_used: dict[int, int] = {d: 0 for d in range(NDEV)}
        self.sticky: dict[int, Exception | None] = {d: None for d in range(NDEV)}
        self.fatal_after: dict[int, int | None] = {d: None for d in range(NDEV)}
        self.pinned_misalign = 0
        self.calls: list[tuple] = []
        self.tls = threading.local()
        self.harness = None
        self.syntax_ok: dict[str, str | None] = {}
        self.freed_q: list = []


state = _State()


def _violate(msg: str) -> None:
    state.violations.append(f"[{threading.current_thread().name}] {msg}")


def violations() -> list[str]:
    return list(state.violations)


def set_mode(mode: str) -> None:
    if mode not in ("late", "early"):
        raise ValueError(f"simulator mode is 'late' or 'early', not {mode!r}")
    state.mode = mode


def set_memory_limit(device: int, nbytes: int | None) -> None:
    """Allocations on ``device`` beyond ``nbytes`` in use raise OutOfMemoryError."""
    state.mem_limit[device] = nbytes


def inject_fatal(device: int, after_ops: int) -> None:
    """After ``after_ops`` more operations run on ``device``, it fails like an illegal address."""
    state.fatal_after[device] = after_ops


def misalign_pinned(offset: int) -> None:
    """Make pinned allocations start ``offset`` bytes past a page boundary (0: aligned)."""
    state.pinned_misalign = offset


def set_version(version: str) -> None:
    global __version__
    __version__ = version


def live_bytes(device: int | None = None) -> int:
    """Device bytes (or pinned bytes, for ``device="pinned"``) allocated and not freed."""
    _drain_frees()
    with state.lock:
        return sum(a.size for a in state.allocs.values() if not a.freed and a.device == device)


def live_pinned_bytes() -> int:
    return live_bytes("pinned")


def pending_ops() -> int:
    return len(state.pending)


def finish_test() -> list[str]:
    """End of a test: run what is left (unless a device failed), reset faults; the violations."""
    with state.lock:
        _drain_frees()
        try:
            _run_all(None)
        except CUDARuntimeError:
            pass
        state.pending.clear()
        for d in range(NDEV):
            state.sticky[d] = None
            state.fatal_after[d] = None
            state.mem_limit[d] = None
        state.pinned_misalign = 0
        _nccl_finish()
        _drain_frees()
        _flush_graveyard()
        out, state.violations = state.violations, []
        state.calls.clear()
        return out


# ----------------------------------------------------------------------------- errors


class CUDARuntimeError(RuntimeError):
    def __init__(self, status: int, msg: str = "") -> None:
        self.status = status
        names = {
            700: "cudaErrorIllegalAddress: an illegal memory access was encountered",
            2: "cudaErrorMemoryAllocation: out of memory",
        }
        super().__init__(msg or names.get(status, f"cudaError {status}"))


class OutOfMemoryError(MemoryError):
    def __init__(self, size: int, total: int, limit: int = 0) -> None:
        super().__init__(
            f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes, limit set to: {limit:,} bytes)."
        )


class CompileException(Exception):
    def __init__(self, msg, source, name, options):
        super().__init__(msg)
        self.source, self.name, self.options = source, name, options

    def dump(self, f):
        f.write(f"==== compile log ====\n{self}\n==== source ====\n")
        for i, line in enumerate(self.source.splitlines(), 1):
            f.write(f"{i:4d} {line}\n")


# ----------------------------------------------------------------------------- devices


def _tls_device():
    return getattr(state.tls, "device", None)


def _api(what: str, device: int | None = None) -> int:
    """Every CUDA call goes through here: the current device, contexts, sticky errors."""
    cur = _tls_device()
    if cur is None:
        if threading.current_thread() is not threading.main_thread():
            _violate(f"CUDA call {what} from a thread that selected no device (creates a context on GPU 0)")
        cur = 0
    state.contexts.add(cur)
    if state.freed_q:
        _drain_frees()
    for d in {cur, device} - {None}:
        err = state.sticky.get(d)
        if err is not None:
            raise CUDARuntimeError(err.status, str(err))
    return cur


class Device:
    def __init__(self, device: int | None = None) -> None:
        if device is None:
            device = _tls_device() or 0
        device = int(device)
        if not 0 <= device < NDEV:
            raise CUDARuntimeError(101, f"cudaErrorInvalidDevice: invalid device ordinal {device}")
        self.id = device
        self.attributes = {"MultiProcessorCount": 4}
        self.compute_capability = "90"

    @property
    def pci_bus_id(self):
        # Which physical GPU this is: CUDA_VISIBLE_DEVICES renumbers (a process that sees
        # only GPU "1" calls it device 0), so identities differ between such processes.
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        phys = visible[self.id] if self.id < len(visible) else str(self.id)
        return f"0000:{int(phys) if phys.isdigit() else 0x80 + self.id:02x}:00.0"

    def __enter__(self):
        stack = state.tls.__dict__.setdefault("stack", [])
        stack.append(_tls_device())
        self.use()
        return self

    def __exit__(self, *exc):
        state.tls.device = state.tls.stack.pop()

    def use(self):
        state.tls.device = self.id
        state.contexts.add(self.id)

    def synchronize(self):
        _api("cudaDeviceSynchronize", self.id)
        with state.lock:
            _run_all(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def _get_device_count() -> int:
    return NDEV


# ----------------------------------------------------------------------------- memory


class _Alloc:
    __slots__ = (
        "start",
        "size",
        "device",
        "stream",
        "freed",
        "free_id",
        "free_vc",
        "buf",
        "history",
        "handle",
        "__weakref__",
    )

    def __init__(self, size, device, stream):
        self.size = size
        self.device = device  # int, or "pinned"
        self.stream = stream
        self.freed = False
        self.free_id = 0
        self.buf = np.empty(size + 8192, np.uint8)
        base = self.buf.ctypes.data
        off = (-base) % 4096
        if device == "pinned":
            off += state.pinned_misalign
        else:
            off += 0
        self.start = base + off
        self.buf = self.buf  # keeps the memory (also after free, until the graveyard is flushed)
        self.history: list = []  # (op, is_write, lo, hi)
        self.handle = None


class _Handle:
    """Owner object of one allocation: when the last array over it dies, it is freed."""

    __slots__ = ("alloc", "__weakref__")


def _register(alloc: _Alloc) -> _Handle:
    h = _Handle()
    h.alloc = alloc
    alloc.handle = weakref.ref(h)
    with state.lock:
        state.allocs[alloc.start] = alloc
        bisect.insort(state.starts, alloc.start)
    weakref.finalize(h, _free, alloc)
    return h


def _free(alloc: _Alloc) -> None:
    # A finalizer: it may run inside any allocation of any thread (garbage collection), so
    # it only marks; _drain_frees() does the bookkeeping at the next CUDA call.
    alloc.freed = True
    alloc.free_id = next(state.ids)
    alloc.free_vc = dict(state.host_vc)
    state.freed_q.append(alloc)


def _drain_frees() -> None:
    with state.lock:
        while state.freed_q:
            alloc = state.freed_q.pop()
            if alloc.device != "pinned":
                state.mem_used[alloc.device] -= alloc.size
            what = "pinned host memory" if alloc.device == "pinned" else f"device memory of GPU {alloc.device}"
            for op, _is_write, _lo, _hi in alloc.history:
                if state.sticky.get(op.device) is not None:
                    continue  # a failed device runs nothing more
                if op.vc[op.stream.sid] <= alloc.free_vc.get(op.stream.sid, 0):
                    continue  # the host had waited for it
                if alloc.device != "pinned" and op.stream is alloc.stream:
                    continue  # stream-ordered free: the pool reuses it only after this work
                _violate(f"{what} freed while {op} (not synchronised with the host) may still use it")
        _flush_graveyard()


def _flush_graveyard() -> None:
    if state.pending:
        return
    dead = [s for s, a in state.allocs.items() if a.freed]
    for s in dead:
        del state.allocs[s]
        i = bisect.bisect_left(state.starts, s)
        del state.starts[i]


def _find(ptr: int, size: int = 1):
    """The allocation holding [ptr, ptr+size), or None."""
    i = bisect.bisect_right(state.starts, ptr) - 1
    if i < 0:
        return None
    a = state.allocs[state.starts[i]]
    if ptr + max(size, 1) <= a.start + max(a.size, 1):
        return a
    return None


class _Ptr:
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr


class _DevId:
    def __init__(self, i):
        self.id = i

    def __eq__(self, other):
        return isinstance(other, _DevId) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


class ndarray(NDArrayOperatorsMixin):  # noqa: N801 - cupy.ndarray
    """A device array: a NumPy view of host memory registered as an allocation of one GPU.

    Not an ``np.ndarray`` (as CuPy's is not): ``np.asarray`` of it raises, as CuPy's does.
    NumPy functions and operators work on it and give device arrays; every such use is a
    host-synchronous access (checked against unfinished GPU work).
    """

    __array_priority__ = 100

    def __init__(self, a: np.ndarray, dev: int, mem) -> None:
        self._a = a
        self._sim_dev = dev
        self._sim_mem = mem

    # -- metadata
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    ndim = property(lambda self: self._a.ndim)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: self._a.flags)

    @property
    def data(self):
        return _Ptr(self._a.ctypes.data)

    @property
    def device(self):
        return _DevId(self._sim_dev)

    def __len__(self):
        return len(self._a)

    # -- views (no data access)
    def _view(self, a):
        if np.may_share_memory(a, self._a):
            return ndarray(a, self._sim_dev, self._sim_mem)
        return _wrap(a, self._sim_dev)

    def view(self, dtype=None):
        return self._view(self._a.view(dtype))

    def reshape(self, *shape, order="C"):
        return self._view(self._a.reshape(*shape, order=order))

    def ravel(self):
        return self._view(self._a.ravel())

    @property
    def T(self):  # noqa: N802
        return self._view(self._a.T)

    # -- data access (host-synchronous)
    def _host(self):
        _host_read(self)
        return self._a

    def get(self, stream=None):
        return self._host().copy()

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
        )

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        args = [_unwrap(x) for x in inputs]
        if out is not None:
            for o in out:
                if isinstance(o, ndarray):
                    _host_write(o)
            kw["out"] = tuple(o._a if isinstance(o, ndarray) else o for o in out)
            getattr(ufunc, method)(*args, **kw)
            return out[0] if len(out) == 1 else out
        return _wrap(getattr(ufunc, method)(*args, **kw), self._sim_dev)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)), self._sim_dev)

    def __getitem__(self, key):
        key = _unwrap(key)
        res = self._a[key]
        if isinstance(res, np.ndarray):
            if np.may_share_memory(res, self._a):
                return ndarray(res, self._sim_dev, self._sim_mem)
            _host_read(self)
            return _wrap(self._a[key], self._sim_dev)
        _host_read(self)  # an element: a device-to-host read
        return self._a[key]

    def __setitem__(self, key, value):
        _host_write(self)
        self._a[_unwrap(key)] = _unwrap(value)

    def fill(self, value):
        _host_write(self)
        self._a.fill(value)

    def astype(self, dtype, copy=True, **kw):
        return _wrap(self._host().astype(dtype), self._sim_dev)

    def copy(self, order="C"):
        return _wrap(self._host().copy(), self._sim_dev)

    def _reduce(name):  # noqa: N805
        def f(self, *a, **k):
            return _wrap(getattr(self._host(), name)(*_unwrap(a), **_unwrap(k)), self._sim_dev)

        f.__name__ = name
        return f

    sum = _reduce("sum")
    all = _reduce("all")
    any = _reduce("any")
    max = _reduce("max")
    min = _reduce("min")
    mean = _reduce("mean")
    std = _reduce("std")
    prod = _reduce("prod")
    del _reduce

    def __float__(self):
        return float(self._host())

    def __int__(self):
        return int(self._host())

    def __index__(self):
        return int(self._host())

    def __bool__(self):
        return bool(self._host())

    def __repr__(self):
        return f"array({self._host()!r}, device={self._sim_dev})"

    __str__ = __repr__

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self._a.ctypes.data, False),
            "version": 3,
            "strides": None if self.flags.c_contiguous else self.strides,
        }

    def __dlpack_device__(self):
        return (2, self._sim_dev)

    def __dlpack__(self, stream=None, **kw):
        return self._host().__dlpack__()


def _unwrap(x):
    """Host views of device arrays (after a host-synchronous read), recursively."""
    if isinstance(x, ndarray):
        _host_read(x)
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(y) for y in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _device_array(shape, dtype, device: int) -> ndarray:
    dtype = np.dtype(dtype)
    if dtype.name == _BF16_NAME and _major() < 14:
        raise ValueError(f"Unsupported dtype {dtype} (simulated CuPy {__version__})")
    if dtype.kind in "OUS":
        raise ValueError(f"Unsupported dtype {dtype}")
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    _drain_frees()
    with state.lock:
        limit = state.mem_limit[device]
        if limit is not None and state.mem_used[device] + nbytes > limit:
            raise OutOfMemoryError(nbytes, state.mem_used[device], limit)
        state.mem_used[device] += nbytes
        stream = _current_stream(device)
        alloc = _Alloc(nbytes, device, stream)
        h = _register(alloc)
    off = alloc.start - alloc.buf.ctypes.data
    raw = alloc.buf[off : off + nbytes]
    return ndarray(raw.view(dtype).reshape(shape), device, h)


def _major() -> int:
    return int(__version__.split(".")[0])


def _wrap(res, device):
    """A NumPy result as a fresh device array (scalars stay scalars)."""
    if isinstance(res, tuple):
        return tuple(_wrap(r, device) for r in res)
    if isinstance(res, np.ndarray):
        if res.dtype.kind in "OUS":
            return res
        out = _device_array(res.shape, res.dtype, (_tls_device() or 0) if device is None else device)
        out._a[...] = res
        return out
    return res


def _host_read(arr: ndarray) -> None:
    _host_access(arr, write=False)


def _host_write(arr: ndarray) -> None:
    _host_access(arr, write=True)


def _host_access(arr: ndarray, write: bool) -> None:
    """A host-synchronous access (CuPy: a copy or kernel on the current stream, then a sync)."""
    dev = arr._sim_dev
    _api("array access", dev)
    with state.lock:
        _run(_current_stream(dev).last)
        alloc = arr._sim_mem.alloc
        lo = arr._a.ctypes.data
        hi = lo + max(arr._a.nbytes, 1)
        for op, is_write, a, b in alloc.history:
            if a < hi and lo < b and (is_write or write) and not _hb_host(op):
                _violate(
                    f"host {'write' if write else 'read'} of GPU {dev} memory that {op} "
                    f"{'writes' if is_write else 'reads'} without synchronisation"
                )
                break


def empty(shape, dtype=np.float64, order="C"):
    return _device_array(shape, dtype, _api("malloc"))


def zeros(shape, dtype=np.float64):
    a = empty(shape, dtype)
    a._a[...] = 0
    return a


def ones(shape, dtype=np.float64):
    a = empty(shape, dtype)
    a._a[...] = 1
    return a


def full(shape, fill_value, dtype=None):
    return _wrap(np.full(shape, fill_value, dtype=dtype), _api("malloc"))


def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    host = np.array(_unwrap(obj), dtype=dtype, copy=True)
    if host.dtype.kind in "OUS":
        raise ValueError(f"Unsupported dtype {host.dtype}")
    return _wrap(host, _api("malloc"))


def asarray(obj, dtype=None):
    if isinstance(obj, ndarray) and (dtype is None or np.dtype(dtype) == obj.dtype):
        return obj
    return array(obj, dtype=dtype)


def asnumpy(a, stream=None):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def from_dlpack(obj):
    kind, dev = obj.__dlpack_device__()
    if kind != 2:
        raise ValueError("not a CUDA DLPack tensor")
    ptr = obj.__cuda_array_interface__["data"][0]
    alloc = _find(ptr)
    if alloc is None or alloc.freed:
        raise ValueError("DLPack tensor is not live simulated device memory")

    class _Cpu:
        def __dlpack__(self, **kw):
            return obj.__dlpack__()

        def __dlpack_device__(self):
            return (1, 0)

    return ndarray(np.from_dlpack(_Cpu()), dev, alloc.handle())


def abs(x):  # noqa: A001 - cupy.abs
    return np.abs(x)


class _RandomState:
    def __init__(self, seed=None):
        self._r = np.random.RandomState(None if seed is None else int(seed) % (1 << 32))

    def _dev(self, host):
        return _wrap(np.asarray(host), _api("curand"))

    def standard_normal(self, size=None, dtype=float):
        return self._dev(self._r.standard_normal(size).astype(dtype))

    def random_sample(self, size=None, dtype=float):
        return self._dev(self._r.random_sample(size).astype(dtype))

    def randint(self, low, high=None, size=None, dtype="l"):
        return self._dev(self._r.randint(low, high, size=size).astype(dtype))


random = types.SimpleNamespace(RandomState=_RandomState)

for _n in (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float16",
    "float32",
    "float64",
    "bool_",
    "complex64",
    "complex128",
):
    globals()[_n] = getattr(np, _n)
dtype = np.dtype


class _MemoryPool:
    """``cupy.get_default_memory_pool()``: the current device's byte count and limit."""

    def used_bytes(self):
        _drain_frees()
        return state.mem_used[_tls_device() or 0]

    total_bytes = used_bytes

    def free_all_blocks(self, stream=None):
        _drain_frees()

    def set_limit(self, size=None, fraction=None):
        state.mem_limit[_tls_device() or 0] = size or None

    def get_limit(self):
        return state.mem_limit[_tls_device() or 0] or 0


_POOL = _MemoryPool()


def get_default_memory_pool():
    return _POOL


# ----------------------------------------------------------------------------- pinned


class PinnedMemory:
    def __init__(self, size, flags=0):
        _api("cudaHostAlloc")
        self.size = int(size)
        self.flags = flags
        alloc = _Alloc(self.size, "pinned", None)
        self._h = _register(alloc)
        self.ptr = alloc.start

    def __int__(self):
        return self.ptr


def PinnedMemoryPointer(mem, offset):  # noqa: N802 - cupy.cuda.PinnedMemoryPointer
    """A buffer-protocol object over the pinned memory that keeps it alive, as CuPy's does."""
    view = (ctypes.c_char * max(mem.size - offset, 0)).from_address(mem.ptr + offset)
    view._mem = mem
    return view


def alloc_pinned_memory(size):
    mem = PinnedMemory(size)
    return PinnedMemoryPointer(mem, 0)


# ----------------------------------------------------------------------------- ops, clocks


class _Op:
    __slots__ = ("id", "stream", "deps", "fn", "done", "vc", "what", "device", "ready", "blocking", "queries")

    def __init__(self, stream, what, fn, extra_deps=(), extra_vcs=()):
        self.id = next(state.ids)
        self.stream = stream
        self.device = stream.device
        self.what = what
        self.fn = fn
        self.done = False
        # NCCL stand-in (below): ``ready()`` says whether a peer's data can be there yet;
        # ``blocking``: running it anyway waits for the peer (another process) instead of
        # being a deadlock.
        self.ready = None
        self.blocking = False
        self.queries = 0
        deps = [stream.last] if stream.last is not None else []
        vc = dict(state.host_vc)
        if stream.last is not None:
            _merge(vc, stream.last.vc)
        for d in extra_deps:
            if d is not None:
                deps.append(d)
        for v in extra_vcs:
            _merge(vc, v)
        for d in deps:
            _merge(vc, d.vc)
        stream.count += 1
        vc[stream.sid] = stream.count
        self.vc = vc
        self.deps = [d for d in deps if not d.done]

    def __repr__(self):
        return f"{self.what} on {self.stream}"


def _merge(into: dict, other: dict) -> None:
    for k, v in other.items():
        if into.get(k, 0) < v:
            into[k] = v


def _hb(p: _Op, x: _Op) -> bool:
    return p.vc[p.stream.sid] <= x.vc.get(p.stream.sid, 0)


def _hb_host(p: _Op) -> bool:
    return p.vc[p.stream.sid] <= state.host_vc.get(p.stream.sid, 0)


def _enqueue(stream, what, fn, extra_deps=(), extra_vcs=(), ready=None, blocking=False) -> _Op:
    with state.lock:
        deps = list(extra_deps)
        if stream.null:
            # The legacy default stream waits for (and is waited on by) blocking streams.
            deps += [
                s.last
                for s in state.streams.values()
                if s.device == stream.device and not s.non_blocking and not s.null
            ]
        elif not stream.non_blocking:
            deps.append(_current_stream_null(stream.device).last)
        op = _Op(stream, what, fn, deps, extra_vcs)
        op.ready, op.blocking = ready, blocking
        stream.last = op
        state.pending[op.id] = op
        if state.mode == "early":
            _pump()
        return op


def _execute(op: _Op) -> None:
    dev = op.device
    left = state.fatal_after.get(dev)
    if left is not None:
        if left <= 0:
            err = CUDARuntimeError(700)
            state.sticky[dev] = err
            state.fatal_after[dev] = None
            for k in [k for k, o in state.pending.items() if o.device == dev]:
                del state.pending[k]
            raise err
        state.fatal_after[dev] = left - 1
    if op.fn is not None:
        op.fn(op)
    op.done = True
    op.fn = None
    op.deps = []
    state.pending.pop(op.id, None)


def _run(target: _Op | None) -> None:
    """Run ``target`` and everything it depends on (iteratively), then tell the host."""
    if target is None:
        return
    stack = [target]
    while stack:
        op = stack[-1]
        if op.done:
            stack.pop()
            continue
        if state.sticky.get(op.device) is not None:
            raise CUDARuntimeError(700, str(state.sticky[op.device]))
        todo = [d for d in op.deps if not d.done]
        if todo:
            stack.extend(todo)
            continue
        if op.ready is not None and not op.blocking and not op.ready():
            _violate(f"deadlock: {op} waits for a peer's operation that was never enqueued")
            raise CUDARuntimeError(999, f"simulated deadlock: {op} can never finish")
        stack.pop()
        _execute(op)
    _merge(state.host_vc, target.vc)
    if state.mode == "early":
        _pump()


def _run_all(device: int | None) -> None:
    for op in sorted(state.pending.values(), key=lambda o: o.id):
        if device is None or op.device == device:
            _run(op)
    for s in state.streams.values():
        if (device is None or s.device == device) and s.last is not None and s.last.done:
            _merge(state.host_vc, s.last.vc)
    for s in state.null.values():
        if (device is None or s.device == device) and s.last is not None and s.last.done:
            _merge(state.host_vc, s.last.vc)
    _flush_graveyard()


def _pump() -> None:
    """Early mode: run every op whose dependencies are done, until none is left."""
    progress = True
    while progress:
        progress = False
        for op in sorted(state.pending.values(), key=lambda o: o.id):
            if (
                not op.done
                and all(d.done for d in op.deps)
                and state.sticky.get(op.device) is None
                and (op.ready is None or op.ready())
            ):
                _execute(op)
                progress = True


def _access(op: _Op, alloc: _Alloc, lo: int, hi: int, write: bool) -> None:
    """Record an access at execution time; report freed memory and unordered accesses."""
    if alloc.freed:
        ok = alloc.device != "pinned" and op.stream is alloc.stream and op.id < alloc.free_id
        if not ok:
            what = "freed pinned memory" if alloc.device == "pinned" else f"freed device memory of GPU {alloc.device}"
            _violate(f"{op} {'writes' if write else 'reads'} {what}")
    for p, p_write, a, b in alloc.history:
        if a < hi and lo < b and (write or p_write) and p.stream is not op.stream and not _hb(p, op) and not _hb(op, p):
            _violate(
                f"race: {op} and {p} access the same memory [{max(a, lo):#x}, {min(b, hi):#x}) "
                f"with no ordering between their streams"
            )
            break
    alloc.history = [h for h in alloc.history if not (h[0].done and _hb_host(h[0]))]
    alloc.history.append((op, write, lo, hi))


def _dev_range(op: _Op, ptr: int, size: int, write: bool, role: str) -> _Alloc | None:
    alloc = _find(ptr, size)
    if alloc is None or alloc.device == "pinned":
        _violate(f"{op}: {role} {ptr:#x}+{size} is not device memory")
        return None
    if alloc.device != op.device:
        _violate(f"{op}: {role} is memory of GPU {alloc.device}, the stream is on GPU {op.device}")
    _access(op, alloc, ptr, ptr + max(size, 1), write)
    return alloc


# ----------------------------------------------------------------------------- streams, events


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.device = _api("cudaEventCreate")
        self.op: _Op | None = None

    @property
    def done(self):
        """``cudaEventQuery``. Early mode: whatever can run has run. Late mode: unfinished work
        is reported unfinished to the first query and finishes (runs) at the second, so code
        that polls makes progress (the GPU does finish work nobody waits for) but must have
        seen it unfinished first."""
        _api("cudaEventQuery", self.device)
        with state.lock:
            if self.op is not None and not self.op.done:
                if state.mode == "early":
                    _pump()
                else:
                    self.op.queries += 1
                    if self.op.queries >= 2:
                        _run(self.op)
            if self.op is None or self.op.done:
                if self.op is not None:
                    _merge(state.host_vc, self.op.vc)  # a query that says "done" orders the host after it
                return True
            return False

    def synchronize(self):
        _api("cudaEventSynchronize", self.device)
        with state.lock:
            _run(self.op)

    def record(self, stream=None):
        (stream or get_current_stream()).record(self)


class Stream:
    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None, _device=None):
        self.device = _api("cudaStreamCreate") if _device is None else _device
        self.null = null
        self.non_blocking = non_blocking
        self.last: _Op | None = None
        self.count = 0
        self.sid = next(state.ids)
        self.ptr = 0 if null else self.sid * 16
        with state.lock:
            if not null:
                state.streams[self.ptr] = self

    def __repr__(self):
        return f"{'null stream' if self.null else f'stream {self.sid}'} of GPU {self.device}"

    def record(self, event=None):
        cur = _api("cudaEventRecord", self.device)
        event = event if event is not None else Event()
        if event.device != self.device:
            _violate(f"event of GPU {event.device} recorded on {self} (GPU {cur} current)")
        event.op = _enqueue(self, "event record", None)
        return event

    def wait_event(self, event):
        _api("cudaStreamWaitEvent", self.device)
        if event.op is not None:
            _enqueue(self, "wait", None, extra_deps=(event.op,), extra_vcs=(event.op.vc,))

    def synchronize(self):
        _api("cudaStreamSynchronize", self.device)
        with state.lock:
            _run(self.last)

    @property
    def done(self):
        return self.last is None or self.last.done

    def __enter__(self):
        stacks = state.tls.__dict__.setdefault("streams", {})
        stacks.setdefault(self.device, []).append(self)
        return self

    def __exit__(self, *exc):
        state.tls.streams[self.device].pop()

    def use(self):
        state.tls.__dict__.setdefault("streams", {}).setdefault(self.device, []).append(self)
        return self


def _current_stream(device: int) -> Stream:
    stack = getattr(state.tls, "streams", {}).get(device)
    if stack:
        return stack[-1]
    return _current_stream_null(device)


def _current_stream_null(device: int) -> Stream:
    s = state.null.get(device)
    if s is None:
        s = state.null[device] = Stream(null=True, _device=device)
    return s


def get_current_stream(device_id=None):
    dev = _api("cudaGetCurrentStream") if device_id is None else device_id
    return _current_stream(dev)


def _stream_of(ptr: int, device: int) -> Stream:
    if ptr == 0:
        return _current_stream(device)
    return state.streams[ptr]


# ----------------------------------------------------------------------------- copies, kernels


def _memcpy_async(dst, src, size, kind, stream_ptr):
    cur = _api("cudaMemcpyAsync")
    stream = _stream_of(stream_ptr, cur)
    if stream.device != cur:
        _violate(f"cudaMemcpyAsync on {stream} while GPU {cur} is current")
    if kind == memcpyDeviceToDevice:
        state.calls.append(("memcpy", dst, src, size, kind))

        def run_d2d(op):
            if not size:
                return
            if (
                _dev_range(op, src, size, False, "source") is not None
                and _dev_range(op, dst, size, True, "destination") is not None
            ):
                ctypes.memmove(dst, src, size)

        _enqueue(stream, f"D2D copy of {size} bytes", run_d2d)
        return
    if kind != 1:
        raise NotImplementedError("the simulator models host-to-device and device-to-device copies only")
    state.calls.append(("memcpy", dst, src, size, kind))
    with state.lock:
        pinned = _find(src, size)
        if pinned is not None and pinned.device != "pinned":
            _violate(f"cudaMemcpyAsync(HostToDevice) from device memory {src:#x}")
            pinned = None
    if pinned is None:
        # Pageable: CUDA stages the source before returning; the device write is in order.
        data = bytes((ctypes.c_char * size).from_address(src)) if size else b""

        def run(op, data=data):
            if _dev_range(op, dst, size, True, "destination") is not None and size:
                ctypes.memmove(dst, data, size)

        _enqueue(stream, f"H2D copy of {size} bytes (pageable)", run)
        return
    crc = zlib.crc32((ctypes.c_char * size).from_address(src)) if size else 0

    def run(op):
        _access(op, pinned, src, src + max(size, 1), False)
        if size and zlib.crc32((ctypes.c_char * size).from_address(src)) != crc:
            _violate(f"{op}: its pinned host source changed between enqueue and execution (slot reused too early)")
        if _dev_range(op, dst, size, True, "destination") is not None and size:
            ctypes.memmove(dst, src, size)

    _enqueue(stream, f"H2D copy of {size} bytes", run)


memcpyHostToDevice = 1  # noqa: N816 - CuPy's names
memcpyDeviceToHost = 2  # noqa: N816
memcpyDeviceToDevice = 3  # noqa: N816
hostAllocPortable = 1  # noqa: N816
hostAllocDefault = 0  # noqa: N816

_ITEMSIZE = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8}


def _codesize(code: str) -> int:
    return int(code[1:]) if code.startswith("b") and code[1:].isdigit() else _ITEMSIZE[code]


def _desc_dtype():
    from gpuload.backend.contract import DESC_DTYPE

    return DESC_DTYPE


def _harness():
    if state.harness is None:
        from kernel_harness import build_harness

        state.harness = build_harness(Path(tempfile.mkdtemp(prefix="gpuload-sim-")))
    return state.harness


_PRELUDE = """
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(x)
struct gl_sim_dim3 { unsigned x, y, z; };
static gl_sim_dim3 blockIdx, threadIdx, blockDim, gridDim;
static inline void __syncthreads() {}
"""


def _syntax_check(code: str, options: tuple) -> str | None:
    """g++ -fsyntax-only of the kernel source with CUDA keywords stubbed: the compile log, or None."""
    opts = tuple(o for o in options if o.startswith("-D") and not o.startswith("-DGPULOAD_ONLY"))
    key = hashlib.sha256((code + "\0".join(opts)).encode()).hexdigest()
    if key not in state.syntax_ok:
        gxx = shutil.which("g++")
        if gxx is None:
            state.syntax_ok[key] = None
        else:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "prelude.h").write_text(_PRELUDE)
                (Path(d) / "k.cu").write_text(code)
                proc = subprocess.run(
                    [
                        gxx,
                        "-std=c++17",
                        "-fsyntax-only",
                        "-x",
                        "c++",
                        "-include",
                        str(Path(d) / "prelude.h"),
                        *opts,
                        str(Path(d) / "k.cu"),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                state.syntax_ok[key] = proc.stderr if proc.returncode else None
    return state.syntax_ok[key]


class RawModule:
    def __init__(self, code=None, path=None, options=(), backend="nvrtc", name_expressions=None, **kw):
        self.code = code
        self.options = tuple(options)
        self.only = None
        for o in self.options:
            if o.startswith("-DGPULOAD_ONLY="):
                self.only = o.split("=", 1)[1].strip('"')

    def get_function(self, name):
        dev = _api("cuModuleGetFunction")
        log = _syntax_check(self.code, self.options)
        if log is not None:
            raise CompileException(log, self.code, name, self.options)
        if name.startswith("gpuload_gather_") and name[len("gpuload_gather_") :] in _harness().variants():
            return _GatherKernel(name, dev, self.only)
        if not name.startswith("gpuload_box_copy_") or name[len("gpuload_box_copy_") :] not in _harness().variants():
            raise CUDARuntimeError(500, f"cudaErrorNotFound: named symbol not found: {name}")
        return _Kernel(name, dev, self.only)


class _Kernel:
    def __init__(self, name, device, only):
        self.name = name
        self.variant = name[len("gpuload_box_copy_") :]
        self.device = device
        # -DGPULOAD_ONLY compiles one variant; the others are empty stubs, as on the GPU.
        self.stub = only is not None and only != self.variant

    @property
    def attributes(self):
        return {"max_threads_per_block": 256}

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        cur = _api(f"launch {self.name}")
        if self.device != cur:
            _violate(f"kernel {self.name} loaded on GPU {self.device} launched while GPU {cur} is current")
        s = stream if stream is not None else _current_stream(cur)
        if s.device != cur:
            _violate(f"launch of {self.name} on {s} while GPU {cur} is current")
        src, descs, n = args
        src_ptr, desc_ptr, n = src.data.ptr, descs.data.ptr, int(n)
        gx, gy = (tuple(grid) + (1, 1))[:2]
        state.calls.append(("launch", self.variant, tuple(grid), tuple(block), n))
        ddt = _desc_dtype()
        kernel = self

        def run(op):
            if n == 0:
                return
            d_alloc = _dev_range(op, desc_ptr, n * ddt.itemsize, False, "descriptors")
            s_alloc = _find(src_ptr)
            if d_alloc is None or s_alloc is None or s_alloc.device != op.device:
                _violate(f"{op}: source {src_ptr:#x} is not memory of GPU {op.device}")
                return
            if kernel.stub:
                return
            recs = np.frombuffer((ctypes.c_char * (n * ddt.itemsize)).from_address(desc_ptr), ddt).copy()
            s_code, d_code = kernel.variant.split("_")
            s_isz, d_isz = _codesize(s_code), _codesize(d_code)
            src_hi = src_ptr
            for r in recs:
                if r["count"] == 0:
                    continue
                rank = int(r["rank"])
                shape, ss, ds = r["shape"][:rank], r["src_strides"][:rank], r["dst_strides"][:rank]
                src_hi = max(src_hi, src_ptr + int(r["src_offset"]) + s_isz * (1 + int(((shape - 1) * ss).sum())))
                d_lo = int(r["dst"]) + int(r["dst_offset"]) * d_isz
                d_hi = int(r["dst"]) + d_isz * (int(r["dst_offset"]) + 1 + int(((shape - 1) * ds).sum()))
                if _dev_range(op, d_lo, d_hi - d_lo, True, "kernel destination") is None:
                    return
            if src_hi > src_ptr:
                _dev_range(op, src_ptr, src_hi - src_ptr, False, "kernel source")
            h = _harness()
            rc = h.lib.gpuload_harness_run(kernel.variant.encode(), src_ptr, desc_ptr, n, gx, gy, block[0], 0)
            if rc != 0:
                _violate(f"{op}: the harness does not know variant {kernel.variant}")

        _enqueue(s, f"kernel {self.name}<<<{tuple(grid)}, {tuple(block)}>>>", run)


class _GatherKernel(_Kernel):
    """``gpuload_gather_<variant>(src, descs, n, offsets)`` (kernels/gather.cu, issue 10): reads
    its descriptors and (source byte, destination element) pairs when it runs, checks every
    box's source and destination range, and runs gather.cuh's loop through the harness."""

    def __init__(self, name, device, only):
        super().__init__(name, device, only)
        self.variant = name[len("gpuload_gather_") :]
        self.stub = only is not None and only != self.variant

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        cur = _api(f"launch {self.name}")
        if self.device != cur:
            _violate(f"kernel {self.name} loaded on GPU {self.device} launched while GPU {cur} is current")
        s = stream if stream is not None else _current_stream(cur)
        if s.device != cur:
            _violate(f"launch of {self.name} on {s} while GPU {cur} is current")
        src, descs, n, offsets = args
        src_ptr, desc_ptr, off_ptr, n = src.data.ptr, descs.data.ptr, offsets.data.ptr, int(n)
        gx, gy = (tuple(grid) + (1, 1))[:2]
        state.calls.append(("gather", self.variant, tuple(grid), tuple(block), n))
        from gpuload.backend.contract import GATHER_DESC_DTYPE as gdt

        kernel = self

        def run(op):
            if n == 0:
                return
            if _dev_range(op, desc_ptr, n * gdt.itemsize, False, "gather descriptors") is None:
                return
            recs = np.frombuffer((ctypes.c_char * (n * gdt.itemsize)).from_address(desc_ptr), gdt).copy()
            npairs = int(max((int(r["index_offset"]) + int(r["boxes"]) for r in recs), default=0))
            if npairs and _dev_range(op, off_ptr, 16 * npairs, False, "gather offset pairs") is None:
                return
            pairs = np.frombuffer((ctypes.c_char * (16 * npairs)).from_address(off_ptr), np.int64).reshape(-1, 2)
            s_alloc = _find(src_ptr)
            if s_alloc is None or s_alloc.device != op.device:
                _violate(f"{op}: source {src_ptr:#x} is not memory of GPU {op.device}")
                return
            if kernel.stub:
                return
            s_code, d_code = kernel.variant.split("_")
            s_isz, d_isz = _codesize(s_code), _codesize(d_code)
            src_lo, src_hi = None, None
            for r in recs:
                b = r["box"]
                if b["count"] == 0 or r["boxes"] == 0:
                    continue
                rank = int(b["rank"])
                shape, ss, ds = b["shape"][:rank], b["src_strides"][:rank], b["dst_strides"][:rank]
                p = pairs[int(r["index_offset"]) : int(r["index_offset"]) + int(r["boxes"])]
                lo = src_ptr + int(p[:, 0].min())
                hi = src_ptr + int(p[:, 0].max()) + s_isz * (1 + int(((shape - 1) * ss).sum()))
                src_lo = lo if src_lo is None else min(src_lo, lo)
                src_hi = hi if src_hi is None else max(src_hi, hi)
                d_lo = int(b["dst"]) + int(p[:, 1].min()) * d_isz
                d_hi = int(b["dst"]) + d_isz * (int(p[:, 1].max()) + 1 + int(((shape - 1) * ds).sum()))
                if _dev_range(op, d_lo, d_hi - d_lo, True, "gather destination") is None:
                    return
            if src_lo is not None:
                _dev_range(op, src_lo, src_hi - src_lo, False, "gather source")
            h = _harness()
            rc = h.lib.gpuload_harness_gather_run(
                kernel.variant.encode(), src_ptr, desc_ptr, n, off_ptr, gx, gy, block[0], 0
            )
            if rc != 0:
                _violate(f"{op}: the harness does not know variant {kernel.variant}")

        _enqueue(s, f"kernel {self.name}<<<{tuple(grid)}, {tuple(block)}>>>", run)


# ----------------------------------------------------------------------------- NCCL


class NcclError(RuntimeError):
    pass


class _Msg:
    """One transfer from one rank to another: matched in enqueue order, like NCCL's."""

    __slots__ = ("data", "nbytes", "recv_op", "send_op")

    def __init__(self):
        self.send_op = self.recv_op = self.data = None
        self.nbytes = None


class _NcclState:
    def __init__(self):
        self.unmatched_sends = {}  # (uid, src, dst) -> deque[_Msg] (in-process ranks)
        self.unmatched_recvs = {}
        self.mpi = None  # an mpi4py communicator when the ranks are processes
        self.mpi_sends = []  # (request, buffer, what) of MPI sends not known finished
        self.group = 0
        self.timeout = 120.0


_nccl = _NcclState()
_NCCL_TAG = 4242
_NCCL_SIZES = {0: 1, 1: 1, 2: 4, 3: 4, 4: 8, 5: 8, 6: 2, 7: 4, 8: 8, 9: 2}


def nccl_over_mpi(comm) -> None:
    """Ranks are processes: NCCL transfers go over (a duplicate of) this mpi4py communicator,
    whose rank numbers must be the NCCL ranks."""
    _nccl.mpi = comm.Dup()


def _nccl_finish() -> None:
    """End of a test: unmatched in-process transfers and unfinished MPI sends are violations."""
    for key, q in list(_nccl.unmatched_sends.items()) + list(_nccl.unmatched_recvs.items()):
        for m in q:
            op = m.send_op or m.recv_op
            if op is not None:
                _violate(f"NCCL {op} (ranks {key[1]} -> {key[2]}) was never matched by its peer")
    _nccl.unmatched_sends.clear()
    _nccl.unmatched_recvs.clear()
    _nccl.group = 0
    if _nccl.mpi_sends:
        import time

        deadline = time.monotonic() + 10
        while _nccl.mpi_sends and time.monotonic() < deadline:
            _nccl.mpi_sends = [x for x in _nccl.mpi_sends if not x[0].Test()]
        for _req, _buf, what in _nccl.mpi_sends:
            _violate(f"NCCL {what} never received by its peer")
        _nccl.mpi_sends = []


class NcclCommunicator:
    """``cupy.cuda.nccl.NcclCommunicator``: ranks in this process (in-process transfers) or
    in several processes (:func:`nccl_over_mpi`). Operations are enqueued on the stream
    given and run under the simulator's ordering rules; their buffers must be memory of
    the communicator's device (the current one at creation)."""

    def __init__(self, ndev, comm_id, rank):
        self.device = _api("ncclCommInitRank")
        self.size, self.rank, self.uid = int(ndev), int(rank), tuple(comm_id)
        if not 0 <= self.rank < self.size:
            raise NcclError(f"ncclInvalidArgument: rank {rank} of {ndev}")
        if _nccl.mpi is not None and (_nccl.mpi.size != self.size or _nccl.mpi.rank != self.rank):
            _violate(f"NCCL communicator rank {rank} of {ndev} in MPI rank {_nccl.mpi.rank} of {_nccl.mpi.size}")
        self.aborted = False

    def __repr__(self):
        return f"NCCL rank {self.rank}/{self.size} on GPU {self.device}"

    def _stream(self, stream_ptr, what):
        cur = _api(what, self.device)
        if self.aborted:
            raise NcclError(f"{what} on an aborted communicator")
        stream = _stream_of(int(stream_ptr), cur)
        if stream.device != self.device:
            _violate(f"{what} of {self} enqueued on {stream}")
        return stream

    def _peer(self, peer, what):
        if not 0 <= int(peer) < self.size or int(peer) == self.rank:
            raise NcclError(f"ncclInvalidArgument: {what} peer {peer} (rank {self.rank} of {self.size})")
        return int(peer)

    # -- matching (in-process ranks)
    def _match(self, src, dst, side):
        key = (self.uid, src, dst)
        mine = _nccl.unmatched_sends if side == "send" else _nccl.unmatched_recvs
        theirs = _nccl.unmatched_recvs if side == "send" else _nccl.unmatched_sends
        q = theirs.get(key)
        if q:
            m = q.popleft()
            if not q:
                del theirs[key]
            return m
        m = _Msg()
        mine.setdefault(key, collections.deque()).append(m)
        return m

    def _send_op(self, stream, ptr, nbytes, peers, what, recv_ptr=None):
        comm = self
        msgs = [] if _nccl.mpi is not None else [self._match(self.rank, p, "send") for p in peers]

        def run(op):
            if comm.aborted:
                return
            if nbytes and _dev_range(op, ptr, nbytes, False, "NCCL send buffer") is None:
                return
            data = ctypes.string_at(ptr, nbytes) if nbytes else b""
            if recv_ptr is not None and recv_ptr != ptr and nbytes:
                if _dev_range(op, recv_ptr, nbytes, True, "NCCL receive buffer") is not None:
                    ctypes.memmove(recv_ptr, data, nbytes)
            if _nccl.mpi is not None:
                for p in peers:
                    buf = np.frombuffer(data, np.uint8).copy()
                    _nccl.mpi_sends.append(
                        (_nccl.mpi.Isend([buf, _mpi_byte()], dest=p, tag=_NCCL_TAG), buf, f"{op} to rank {p}")
                    )
            for m in msgs:
                m.data = data

        op = _enqueue(stream, what, run)
        for m in msgs:
            m.send_op = op
            if m.recv_op is not None and not m.recv_op.done:
                m.recv_op.deps.append(op)
        return op

    def _recv_op(self, stream, ptr, nbytes, peer, what):
        comm = self
        if _nccl.mpi is not None:
            mpi = _nccl.mpi

            def ready():
                return comm.aborted or mpi.Iprobe(source=peer, tag=_NCCL_TAG)

            def run(op):
                if comm.aborted:
                    return
                import time

                deadline = time.monotonic() + _nccl.timeout
                while not mpi.Iprobe(source=peer, tag=_NCCL_TAG):
                    _nccl.mpi_sends = [x for x in _nccl.mpi_sends if not x[0].Test()]
                    if time.monotonic() > deadline:
                        _violate(f"{op}: rank {peer} sent nothing for {_nccl.timeout} s")
                        raise NcclError(f"{op}: timed out")
                    time.sleep(0.0005)
                from mpi4py import MPI

                buf = np.empty(nbytes, np.uint8)
                status = MPI.Status()
                mpi.Recv([buf, MPI.BYTE], source=peer, tag=_NCCL_TAG, status=status)
                got = status.Get_count(MPI.BYTE)
                if got != nbytes:
                    _violate(f"{op}: rank {peer} sent {got} bytes, {nbytes} expected")
                if nbytes and _dev_range(op, ptr, nbytes, True, "NCCL receive buffer") is not None:
                    ctypes.memmove(ptr, buf.ctypes.data, min(got, nbytes))

            return _enqueue(stream, what, run, ready=ready, blocking=True)
        m = self._match(peer, self.rank, "recv")

        def run(op):
            if comm.aborted:
                return
            if len(m.data) != nbytes:
                _violate(f"{op}: rank {peer} sent {len(m.data)} bytes, {nbytes} expected")
            if nbytes and _dev_range(op, ptr, nbytes, True, "NCCL receive buffer") is not None:
                ctypes.memmove(ptr, m.data, min(nbytes, len(m.data)))

        extra = (m.send_op,) if m.send_op is not None else ()
        op = _enqueue(
            stream,
            what,
            run,
            extra_deps=extra,
            extra_vcs=tuple(o.vc for o in extra),
            ready=lambda: comm.aborted or m.data is not None,
        )
        m.recv_op = op
        return op

    # -- CuPy's API
    def send(self, sendbuf, count, datatype, peer, stream):
        n = int(count) * _NCCL_SIZES[int(datatype)]
        peer = self._peer(peer, "ncclSend")
        s = self._stream(stream, "ncclSend")
        state.calls.append(("nccl send", self.rank, peer, n))
        with state.lock:
            self._send_op(s, int(sendbuf), n, [peer], f"ncclSend of {n} bytes rank {self.rank} -> {peer}")

    def recv(self, recvbuf, count, datatype, peer, stream):
        n = int(count) * _NCCL_SIZES[int(datatype)]
        peer = self._peer(peer, "ncclRecv")
        s = self._stream(stream, "ncclRecv")
        state.calls.append(("nccl recv", self.rank, peer, n))
        with state.lock:
            self._recv_op(s, int(recvbuf), n, peer, f"ncclRecv of {n} bytes rank {peer} -> {self.rank}")

    def broadcast(self, sendbuff, recvbuff, count, datatype, root, stream):
        n = int(count) * _NCCL_SIZES[int(datatype)]
        root = int(root)
        if not 0 <= root < self.size:
            raise NcclError(f"ncclInvalidArgument: root {root} of {self.size}")
        s = self._stream(stream, "ncclBroadcast")
        state.calls.append(("nccl broadcast", self.rank, root, n))
        with state.lock:
            if self.rank == root:
                self._send_op(
                    s,
                    int(sendbuff),
                    n,
                    [r for r in range(self.size) if r != root],
                    f"ncclBroadcast of {n} bytes from rank {root}",
                    recv_ptr=int(recvbuff),
                )
            else:
                self._recv_op(s, int(recvbuff), n, root, f"ncclBroadcast of {n} bytes rank {root} -> {self.rank}")

    def abort(self):
        self.aborted = True
        state.calls.append(("nccl abort", self.rank))
        # Transfers of an aborted communicator never complete: forget them.
        for table in (_nccl.unmatched_sends, _nccl.unmatched_recvs):
            for key in [k for k in table if k[0] == self.uid]:
                del table[key]

    def destroy(self):
        pass


def _mpi_byte():
    from mpi4py import MPI

    return MPI.BYTE


def _nccl_group_start():
    _nccl.group += 1


def _nccl_group_end():
    if _nccl.group <= 0:
        raise NcclError("ncclInvalidUsage: groupEnd without groupStart")
    _nccl.group -= 1


def _nccl_unique_id():
    return tuple(int(x) for x in np.random.default_rng().integers(0, 256, 128))


nccl = types.SimpleNamespace(
    available=True,
    NcclCommunicator=NcclCommunicator,
    NcclError=NcclError,
    get_unique_id=_nccl_unique_id,
    groupStart=_nccl_group_start,
    groupEnd=_nccl_group_end,
    get_version=lambda: 22703,
    NCCL_INT8=0,
    NCCL_CHAR=0,
    NCCL_UINT8=1,
    NCCL_INT32=2,
    NCCL_UINT32=3,
    NCCL_INT64=4,
    NCCL_UINT64=5,
    NCCL_FLOAT16=6,
    NCCL_FLOAT32=7,
    NCCL_FLOAT64=8,
    NCCL_BFLOAT16=9,
)


# ----------------------------------------------------------------------------- module layout


runtime = types.SimpleNamespace(
    memcpyAsync=_memcpy_async,
    memcpyHostToDevice=memcpyHostToDevice,
    memcpyDeviceToHost=memcpyDeviceToHost,
    memcpyDeviceToDevice=memcpyDeviceToDevice,
    getDevice=lambda: _tls_device() or 0,
    hostAllocPortable=hostAllocPortable,
    hostAllocDefault=hostAllocDefault,
    getDeviceCount=_get_device_count,
    memGetInfo=lambda: ((1 << 34) - state.mem_used[_tls_device() or 0], 1 << 34),
    CUDARuntimeError=CUDARuntimeError,
    driverGetVersion=lambda: 13000,
    runtimeGetVersion=lambda: 13000,
    getDeviceProperties=lambda i: {
        "name": f"Simulated GPU {i}".encode(),
        "totalGlobalMem": 1 << 34,
        "major": 9,
        "minor": 0,
        "pciBusID": i,
    },
)
compiler = types.SimpleNamespace(CompileException=CompileException)
memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
driver = types.SimpleNamespace(CUDADriverError=CUDARuntimeError)
cuda = types.SimpleNamespace(
    Device=Device,
    Event=Event,
    Stream=Stream,
    PinnedMemory=PinnedMemory,
    PinnedMemoryPointer=PinnedMemoryPointer,
    alloc_pinned_memory=alloc_pinned_memory,
    get_current_stream=get_current_stream,
    runtime=runtime,
    compiler=compiler,
    memory=memory,
    driver=driver,
    nccl=nccl,
    is_available=lambda: True,
)

_installed = False


def install(mode: str = "late") -> None:
    """Make ``import cupy`` give this module (tests/conftest.py calls it before gpuload does)."""
    import sys

    global _installed
    set_mode(mode)
    if "cupy" in sys.modules and sys.modules["cupy"] is not sys.modules[__name__]:
        raise RuntimeError("a real CuPy was imported before the CUDA simulator could be installed")
    sys.modules["cupy"] = sys.modules[__name__]
    sys.modules["cupy.cuda"] = cuda  # type: ignore[assignment]
    sys.modules["cupy.cuda.nccl"] = nccl  # type: ignore[assignment]
    os.environ.setdefault("CUPY_CACHE_DIR", tempfile.mkdtemp(prefix="gpuload-sim-cache-"))
    _installed = True
