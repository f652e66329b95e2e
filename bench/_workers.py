"""Measurements, each run in a fresh child process: ``bench_load.py --worker SPEC_JSON``.

A worker sets up (graph, session, pipeline), puts the data files in the requested cache
state (warm: resident; cold: evicted and checked), resets the peak-RSS counter, runs and
times the load, reads the peak, then verifies every part against the synthetic source. It
prints one line ``@@RESULT {json}`` on stdout.

Only the standard library and NumPy are imported at module level: the peers' workers run
under another interpreter (``--peer-python``) where gpuload may not be installed.
"""

from __future__ import annotations

import json
import mmap
import os
import statistics
import sys
import threading
import time
import traceback

import _cache
import _data
import numpy as np

RESULT_TAG = "@@RESULT "
_MIB = 1 << 20


# --- memory accounting -------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRSS:
    """Peak resident set size over a region, in bytes.

    Linux: ``echo 5 > /proc/self/clear_refs`` resets ``VmHWM`` to the current RSS, so the
    peak read after the region is the region's own. Elsewhere: ``ru_maxrss`` (a peak since
    process start, which still bounds the region's peak from above).
    """

    def __enter__(self):
        self.method = "VmHWM after clear_refs"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "ru_maxrss"
        self.before = (_status_kb("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.method == "ru_maxrss":
            import resource

            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        else:
            self.peak = (_status_kb("VmHWM") or 0) * 1024
        self.after = (_status_kb("VmRSS") or 0) * 1024
        return False

    def as_dict(self) -> dict:
        return {
            "rss_before": self.before,
            "rss_peak": self.peak,
            "rss_after": self.after,
            "rss_peak_delta": max(0, self.peak - self.before),
            "rss_method": self.method,
        }


class PeakDeviceMemory:
    """Peak used device memory (``cudaMemGetInfo``), sampled every millisecond, per GPU."""

    def __init__(self, devices):
        self.devices = list(devices)
        self.peak = {d: 0 for d in self.devices}
        self.base = {}
        self._stop = threading.Event()

    def _used(self, cp, d):
        with cp.cuda.Device(d):
            free, total = cp.cuda.runtime.memGetInfo()
        return total - free

    def __enter__(self):
        if not self.devices:
            return self
        import cupy as cp

        self._cp = cp
        for d in self.devices:
            self.base[d] = self._used(cp, d)
            self.peak[d] = self.base[d]

        def loop():
            while not self._stop.is_set():
                for d in self.devices:
                    self.peak[d] = max(self.peak[d], self._used(cp, d))
                self._stop.wait(0.001)

        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        if self.devices:
            self._stop.set()
            self._t.join()
            for d in self.devices:
                self.peak[d] = max(self.peak[d], self._used(self._cp, d))
        return False

    def as_dict(self) -> dict:
        return {"device_mem_peak_delta": {str(d): self.peak[d] - self.base.get(d, 0) for d in self.devices}}


class CpuUse:
    """CPU seconds over a region: this process's (user+sys), and everyone else's (noise).

    ``other`` comes from ``/proc/stat`` (all CPUs' busy time) minus this process's own; a
    busy neighbour shows up there, and a measurement taken with a high ``other`` is noisy.
    """

    @staticmethod
    def _machine() -> tuple[float, float] | None:
        """(busy, steal) seconds of all CPUs since boot; steal = time the hypervisor took."""
        try:
            with open("/proc/stat") as f:
                vals = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        tck = os.sysconf("SC_CLK_TCK")
        return (sum(vals[:7]) - idle) / tck, (vals[7] if len(vals) > 7 else 0) / tck

    def __enter__(self):
        import resource

        self._ru = resource.getrusage(resource.RUSAGE_SELF)
        self._m0, self._o0, self._t0 = self._machine(), os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        import resource

        m1, o1 = self._machine(), os.times()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.wall = time.perf_counter() - self._t0
        self.user = o1.user - self._o0.user
        self.sys = o1.system - self._o0.system
        self.own = self.user + self.sys
        self.minflt = ru.ru_minflt - self._ru.ru_minflt
        self.majflt = ru.ru_majflt - self._ru.ru_majflt
        if m1 is None or self._m0 is None:
            self.other = self.steal = None
        else:
            self.other = max(0.0, (m1[0] - self._m0[0]) - self.own)
            self.steal = m1[1] - self._m0[1]
        return False

    def as_dict(self) -> dict:
        ncpu = os.cpu_count() or 1
        return {
            "cpu_own_s": self.own,
            "cpu_user_s": self.user,
            "cpu_sys_s": self.sys,
            "minor_faults": self.minflt,
            "major_faults": self.majflt,
            "cpu_steal_s": self.steal,
            "cpu_other_s": self.other,
            # /proc/stat counts in clock ticks (10 ms): too coarse for a short region.
            "cpu_other_pct": None
            if self.other is None or self.wall < 0.1
            else min(100.0, 100.0 * self.other / (self.wall * ncpu)),
        }


# --- cache state ------------------------------------------------------------------------


def prepare_cache(cache: str, files) -> dict:
    """Make ``files`` warm (resident) or cold (evicted, checked); say what was found."""
    if cache == "warm":
        frac = [_cache.resident_fraction(p) for p in files]
        if any(f is None or f < 0.99 for f in frac):
            frac = _cache.warm(files)
        ok = all(f is not None and f >= 0.99 for f in frac)
        return {"cache_ok": ok, "resident_before": frac}
    ev = _cache.evict(files)
    return {"cache_ok": ev["ok"], "resident_before": ev["resident"], "evict_method": ev["method"]}


def _nbytes(spec) -> int:
    return int(np.prod(spec["shape"], dtype=np.int64)) * _data.np_dtype(spec["dtype"]).itemsize


def _finish(spec, res, seconds, arrays):
    dtype = _data.np_dtype(spec["dtype"])
    res["seconds"] = seconds
    res["bytes"] = _nbytes(spec)
    res["gbps"] = res["bytes"] / seconds / 1e9 if seconds > 0 else None
    res["verify"] = _data.verify_parts(arrays, tuple(spec["shape"]), dtype, spec["layout"], spec.get("expected_crcs"))
    res["ok"] = res["verify"]["ok"] and res.get("error") is None
    res["loadavg"] = list(os.getloadavg())


# --- gpuload ------------------------------------------------------------------------------


def run_gpuload(spec) -> dict:
    import gpuload
    import gpuload.loader

    # The file tells which checkout ran (--baseline-checkout runs another one's gpuload).
    res = {"kind": "gpuload", "gpuload_version": getattr(gpuload, "__version__", "?"), "gpuload_file": gpuload.__file__}
    cfg = dict(spec["config"])
    gpuload.config.set(**cfg)
    res["config"] = {
        k: getattr(gpuload.config.get(), k)
        for k in ("ring_bytes", "chunk_bytes", "reader_threads", "verify_crc", "direct_io", "gap_bytes")
    }
    shape = tuple(spec["shape"])
    lay = _data.Layout.parse(spec["layout"])
    gpus = spec.get("gpus", [])
    if spec["device"] == "cpu":
        device = "/cpu:0"
    elif len(gpus) <= 1:
        device = f"/gpu:{gpus[0] if gpus else 0}"
    else:
        device = lambda i, _g=tuple(gpus): f"/gpu:{_g[i % len(_g)]}"  # noqa: E731  round-robin
    gpuload.reset_default_graph()
    kwargs = {}
    if lay.parts > 1:
        p = lay.partitions(len(shape))
        kwargs["partitioner"] = lambda shape, dtype, _p=p: list(_p)
    if callable(device) and lay.parts == 1:
        device = device(0)
    v = gpuload.get_variable("emb", shape=list(shape), dtype=spec["dtype"], device=device, **kwargs)
    gpuload.init_from_checkpoint(spec["ckpt_dir"], {"emb": "emb"})
    op = gpuload.global_variables_initializer()
    res.update(prepare_cache(spec["cache"], spec["files"]))
    cp = None
    if gpus:
        import cupy as cp

        from gpuload.backend import contract, kernels

        # NVRTC compiles (or CuPy cache loads) happen here, reported apart, not in the load.
        res["kernel_warmup_s"] = kernels.warmup(
            variants=[contract.cast_code(spec["dtype"], spec["dtype"])], devices=gpus
        )
        # Likewise pinning the ring: a process pins it once and keeps it (LoadStats.pin_s
        # of the measured load shows what was left).
        from gpuload.backend.placement import backend_for

        c = gpuload.config.get()
        t = time.perf_counter()
        b = backend_for(f"/gpu:{gpus[0]}")
        b.free_host_slots(b.alloc_host_slots(c.ring_slots, c.chunk_bytes + 2 * 4096))
        res["pin_warmup_s"] = time.perf_counter() - t
    with PeakRSS() as rss, PeakDeviceMemory(gpus) as dev, CpuUse() as cpu:
        t0 = time.perf_counter()
        op.run()
        if cp is not None:
            for g in gpus:
                cp.cuda.Device(g).synchronize()
        seconds = time.perf_counter() - t0
    res.update(rss.as_dict())
    res.update(cpu.as_dict())
    res.update(dev.as_dict())
    stats = [s.as_dict() for s in gpuload.loader.last_stats()]
    res["stats"] = _sum_stats(stats)
    parts = v._get_variable_list() if hasattr(v, "_get_variable_list") else [v]
    res["part_devices"] = sorted({p.device for p in parts})
    arrays = [p.numpy() for p in parts]
    res["dest_bytes"] = int(sum(a.nbytes for a in arrays))
    _finish(spec, res, seconds, arrays)
    return res


def _sum_stats(stats: list[dict]) -> dict:
    if not stats:
        return {}
    out = {}
    for k in stats[0]:
        vals = [s.get(k, 0) for s in stats]
        out[k] = max(vals) if k == "ring_bytes" else sum(vals)
    out["checkpoints"] = len(stats)
    return out


# --- peers ----------------------------------------------------------------------------------


def run_tensorflow(spec) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    res = {"kind": "tensorflow", "version": tf.__version__}
    shape = tuple(spec["shape"])
    lay = _data.Layout.parse(spec["layout"])
    g = tf.Graph()
    with g.as_default(), tf.device("/cpu:0"):
        kwargs = {}
        if lay.parts > 1:
            p = lay.partitions(len(shape))
            kwargs["partitioner"] = lambda shape, dtype, _p=p: list(_p)
        v = tf1.get_variable(
            "emb", shape=list(shape), dtype=tf.as_dtype(spec["dtype"]), initializer=tf1.zeros_initializer(), **kwargs
        )
        tf1.train.init_from_checkpoint(spec["ckpt_dir"], {"emb": "emb"})
        init = tf1.global_variables_initializer()
        parts = list(v) if lay.parts > 1 else [v]
        sess = tf1.Session(graph=g)
    res.update(prepare_cache(spec["cache"], spec["files"]))
    with PeakRSS() as rss, CpuUse() as cpu:
        t0 = time.perf_counter()
        sess.run(init)
        seconds = time.perf_counter() - t0
    res.update(rss.as_dict())
    res.update(cpu.as_dict())
    arrays = sess.run([p.value() for p in parts])
    sess.close()
    _finish(spec, res, seconds, arrays)
    return res


def run_safetensors(spec) -> dict:
    import safetensors
    from safetensors import safe_open
    from safetensors.numpy import load_file

    res = {"kind": "safetensors", "mode": spec["mode"], "version": safetensors.__version__}
    shape = tuple(spec["shape"])
    lay = _data.Layout.parse(spec["layout"])
    res.update(prepare_cache(spec["cache"], spec["files"]))
    path = spec["files"][0]
    with PeakRSS() as rss, CpuUse() as cpu:
        t0 = time.perf_counter()
        if spec["mode"] == "load_file":
            arrays = [load_file(path)["emb"]]
        else:
            arrays = []
            with safe_open(path, framework="np") as f:
                sl = f.get_slice("emb")
                for start, size in lay.boxes(shape):
                    idx = tuple(slice(a, a + n) for a, n in zip(start, size))
                    arrays.append(sl[idx])
        seconds = time.perf_counter() - t0
    res.update(rss.as_dict())
    res.update(cpu.as_dict())
    _finish(spec, res, seconds, arrays)
    return res


def run_dali(spec) -> dict:
    """DALI's numpy reader: one pipeline per part, one region of interest each."""
    import nvidia.dali as dali
    import nvidia.dali.fn as fn

    res = {"kind": "dali", "mode": spec["mode"], "version": dali.__version__}
    shape = tuple(spec["shape"])
    lay = _data.Layout.parse(spec["layout"])
    path = spec["files"][0]
    on_gpu = spec["mode"] == "gpu"
    pipes = []
    for start, size in lay.boxes(shape):
        pipe = dali.Pipeline(
            batch_size=1,
            num_threads=max(1, os.cpu_count() or 1),
            device_id=0 if on_gpu else None,
            prefetch_queue_depth=1,
        )
        with pipe:
            out = fn.readers.numpy(
                files=[path],
                device="gpu" if on_gpu else "cpu",
                roi_start=[float(s) for s in start],
                roi_end=[float(s + n) for s, n in zip(start, size)],
                roi_axes=list(range(len(shape))),
                out_of_bounds_policy="error",
            )
            pipe.set_outputs(out)
        pipes.append(pipe)
    res.update(prepare_cache(spec["cache"], spec["files"]))
    outs = []
    with PeakRSS() as rss, PeakDeviceMemory([0] if on_gpu else []) as dev, CpuUse() as cpu:
        t0 = time.perf_counter()
        for pipe in pipes:  # build starts the reader's prefetch: it is part of the load
            pipe.build()
            (o,) = pipe.run()
            outs.append(o)
        if on_gpu:
            import cupy as cp

            cp.cuda.Device(0).synchronize()
        seconds = time.perf_counter() - t0
    res.update(rss.as_dict())
    res.update(cpu.as_dict())
    res.update(dev.as_dict())
    arrays = [(o.as_cpu() if on_gpu else o).as_array()[0] for o in outs]
    _finish(spec, res, seconds, arrays)
    return res


# --- hardware limits ----------------------------------------------------------------------------


def _h(n: int) -> str:
    return f"{n // _MIB} MiB" if n >= _MIB else f"{n // 1024} KiB"


def _aligned(nbytes: int) -> memoryview:
    return memoryview(mmap.mmap(-1, -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE))


def _summary(name, seconds: list[float], nbytes: int, **extra) -> dict:
    gbps = [nbytes / s / 1e9 for s in seconds if s > 0]
    return {
        "name": name,
        "bytes": nbytes,
        "gbps_runs": gbps,
        "best": max(gbps) if gbps else None,
        "median": statistics.median(gbps) if gbps else None,
        **extra,
    }


def _seq_readinto(files, buf) -> float:
    t = time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t


def _run_timed(threads, fds, errors) -> float:
    """Start ``threads``, join them, close ``fds``; the seconds from first start to last join.

    The first error a thread recorded in ``errors`` is raised once all have ended.
    """
    try:
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        dt = time.perf_counter() - t
    finally:
        for fd in fds.values():
            os.close(fd)
    if errors:
        raise errors[0]
    return dt


def _pread_threads(files, nthreads, chunk, direct=False, into_dest=False) -> float:
    """Seconds for ``nthreads`` threads to ``preadv`` ``files`` whole in ``chunk`` requests.

    Into one reused buffer per thread (pre-faulted), or with ``into_dest`` straight into
    one fresh destination array (not pre-faulted: its page faults are part of the cost).
    """
    jobs, base = _pieces(files, chunk)
    dest = memoryview(np.empty(base, np.uint8)) if into_dest else None
    lock = threading.Lock()
    nxt = [0]
    fds = {p: os.open(p, os.O_RDONLY | (os.O_DIRECT if direct else 0)) for p in files}
    errors = []
    bufs = [_aligned(chunk) for _ in range(nthreads)]
    for b in bufs:  # fault the buffers in before the clock starts: this measures reads
        np.frombuffer(b, np.uint8)[::4096] = 0

    def work(buf):
        try:
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(jobs):
                    return
                p, off, n, at = jobs[i]
                want = -(-n // 4096) * 4096 if direct else n
                target = dest[at : at + n] if dest is not None else buf
                if dest is not None:
                    want = n
                done = 0
                while done < n:
                    got = os.preadv(fds[p], [target[done:want]], off + done)
                    if got == 0:
                        break
                    done += got
        except BaseException as exc:
            errors.append(exc)

    return _run_timed([threading.Thread(target=work, args=(b,)) for b in bufs], fds, errors)


# The read+CRC limits (issue #9): the pieces gpuload's readers would read and checksum.
READ_CRC_PIECE = 4 * _MIB


def _pieces(files, piece) -> tuple[list[tuple[str, int, int, int]], int]:
    """``(path, file offset, length, offset in the concatenation)`` of every piece, and the total."""
    jobs, base = [], 0
    for p in files:
        size = os.path.getsize(p)
        jobs += [(p, off, min(piece, size - off), base + off) for off in range(0, size, piece)]
        base += size
    return jobs, base


def fresh_numpy(nbytes: int) -> np.ndarray:
    """A fresh destination as most loaders get one: ``np.empty`` (malloc; not touched yet)."""
    return np.empty(nbytes, np.uint8)


def fresh_gpuload(nbytes: int) -> np.ndarray:
    """A fresh destination as gpuload allocates big host arrays (anonymous mmap + MADV_HUGEPAGE)."""
    from gpuload.backend.host import HostBackend

    return HostBackend().empty((nbytes,), np.uint8)


def read_crc_threads(files, nthreads: int, piece: int, alloc) -> tuple[float, np.ndarray, list[int]]:
    """``nthreads`` threads ``preadv`` ``files`` in ``piece``-sized pieces straight into one
    fresh destination ``alloc(total)`` and CRC32C each piece right after reading it, while it
    is still in the CPU's cache: the work a CRC-checking loader cannot avoid.

    Returns the seconds (first touch of the destination included, allocation not), the
    destination and the CRC32C of every piece (for tests). The CRC is gpuload's
    ``gpuload.format.crc32c``: google_crc32c's native ``crc32c_extend``, GIL released.
    """
    from gpuload.format import crc32c

    jobs, total = _pieces(files, piece)
    dest = alloc(total)
    crcs: list[int] = [0] * len(jobs)
    lock = threading.Lock()
    nxt = [0]
    fds = {p: os.open(p, os.O_RDONLY) for p in files}
    errors = []

    def work():
        try:
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(jobs):
                    return
                p, off, n, at = jobs[i]
                view = dest[at : at + n]
                done = 0
                while done < n:
                    got = os.preadv(fds[p], [view[done:]], off + done)
                    if got == 0:
                        raise EOFError(f"{p}: short read at {off + done}")
                    done += got
                crcs[i] = crc32c(view)
        except BaseException as exc:
            errors.append(exc)

    dt = _run_timed([threading.Thread(target=work) for _ in range(nthreads)], fds, errors)
    return dt, dest, crcs


def _readinto_dest(files, chunk) -> float:
    """One thread ``readinto`` straight into a fresh destination (its page faults are timed)."""
    dest = np.empty(sum(os.path.getsize(p) for p in files), np.uint8)
    mv = memoryview(dest)
    t = time.perf_counter()
    pos = 0
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while True:
                n = f.readinto(mv[pos : pos + chunk])
                if not n:
                    break
                pos += n
    return time.perf_counter() - t


def _thp_mode() -> str | None:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    m = text[text.find("[") + 1 : text.find("]")] if "[" in text else text.strip()
    return m or None


def _rounds(limits, repeat, L, errors, before_each=None) -> None:
    """Run every limit once per round, ``repeat`` rounds (round 1 of each, then round 2, ...),
    so that noise from a neighbour spreads over the limits as it does over the rows.

    ``limits``: ``(key, name, nbytes, run)`` where ``run()`` returns one run's seconds.
    ``before_each()`` (e.g. an eviction) runs before every run and returns its own record.
    """
    secs: dict[str, list[float]] = {key: [] for key, *_ in limits}
    pre: dict[str, list] = {key: [] for key, *_ in limits}
    for _ in range(repeat):
        for key, _name, _n, run in limits:
            if key in errors:
                continue
            try:
                if before_each is not None:
                    pre[key].append(before_each())
                secs[key].append(run())
            except Exception as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"
    for key, name, n, _ in limits:
        if key not in errors:
            extra = {"eviction_ok": all(pre[key])} if before_each is not None else {}
            L[key] = _summary(name, secs[key], n, **extra)


def run_limits(spec) -> dict:
    files = spec["files"]
    total = sum(os.path.getsize(p) for p in files)
    repeat = spec["repeat"]
    chunk = spec["chunk_bytes"]
    threads = spec.get("threads", [2, 4])
    out = {"kind": "limits", "bytes": total, "limits": {}, "errors": {}}
    L, errors = out["limits"], out["errors"]

    # Host memory copy, one thread (what the CPU backend's copy out of the ring costs).
    n_copy = min(total, 256 * _MIB)
    copy_bufs = [np.ones(n_copy, np.uint8), np.ones(n_copy, np.uint8)]  # both faulted in

    def memcpy():
        t = time.perf_counter()
        np.copyto(copy_bufs[1], copy_bufs[0])
        return time.perf_counter() - t

    def fault_fill():
        t = time.perf_counter()
        dest = np.empty(total, np.uint8)
        dest.fill(1)
        return time.perf_counter() - t

    _cache.warm(files)
    buf = _aligned(chunk)
    np.frombuffer(buf, np.uint8)[::4096] = 0
    thp = _thp_mode()
    warm = [
        ("memcpy_1t", "memcpy, 1 thread (np.copyto, warm buffers)", n_copy, memcpy),
        ("fault_fill_1t", "first touch of a fresh destination array (np.empty + fill), 1 thread", total, fault_fill),
        (
            "readinto_1t",
            f"sequential readinto, 1 thread, page cache warm, one reused {_h(chunk)} buffer",
            total,
            lambda: _seq_readinto(files, buf),
        ),
        (
            "readinto_dest_1t",
            "sequential readinto straight into a fresh destination array, 1 thread, warm",
            total,
            lambda: _readinto_dest(files, chunk),
        ),
    ]
    warm += [
        (
            f"pread_{n}t",
            f"os.preadv, {n} threads, {_h(chunk)} requests, page cache warm",
            total,
            lambda n=n: _pread_threads(files, n, chunk),
        )
        for n in threads
    ]
    warm += [
        (
            f"pread_dest_{n}t",
            f"os.preadv, {n} threads, {_h(chunk)} requests straight into a fresh destination array, warm",
            total,
            lambda n=n: _pread_threads(files, n, chunk, into_dest=True),
        )
        for n in threads
    ]
    piece = _h(READ_CRC_PIECE)
    warm += [
        (
            "read_crc_dest_2t",
            f"os.preadv, 2 threads, {piece} pieces into a fresh np.empty array, CRC32C of each piece "
            "while in cache, warm: the read+crc target's denominator",
            total,
            lambda: read_crc_threads(files, 2, READ_CRC_PIECE, fresh_numpy)[0],
        ),
        (
            "read_crc_dest_2t_huge",
            f"the same into memory allocated as gpuload allocates it (anonymous mmap + MADV_HUGEPAGE; "
            f"THP {thp or 'unknown'})",
            total,
            lambda: read_crc_threads(files, 2, READ_CRC_PIECE, fresh_gpuload)[0],
        ),
    ]
    _rounds(warm, repeat, L, errors)
    copy_bufs.clear()

    if spec.get("cold"):

        def evict():
            return _cache.evict(files)["ok"]

        cold = [
            (
                "cold_readinto_1t",
                f"sequential readinto, 1 thread, after eviction, {_h(chunk)} buffer",
                total,
                lambda: _seq_readinto(files, buf),
            )
        ]
        if hasattr(os, "O_DIRECT"):
            cold += [
                (
                    f"odirect_1t_{req // _MIB}m",
                    f"O_DIRECT sequential pread, 1 thread, {req // _MIB} MiB aligned requests",
                    total,
                    lambda req=req: _pread_threads(files, 1, req, direct=True),
                )
                for req in spec.get("direct_sizes", [8 * _MIB, 16 * _MIB, 32 * _MIB])
            ]
            cold.append(
                (
                    "odirect_4t_32m",
                    "O_DIRECT pread, 4 threads, 32 MiB aligned requests",
                    total,
                    lambda: _pread_threads(files, 4, 32 * _MIB, direct=True),
                )
            )
        _rounds(cold, repeat, L, errors, before_each=evict)
        seq = [L[k] for k in L if k.startswith("odirect_1t_")]
        if seq:
            best = max(seq, key=lambda s: s["best"] or 0)
            L["odirect_seq"] = dict(best, name=best["name"] + " (best request size)")
    if spec.get("gpus"):
        gpu_limits(spec["gpus"], min(total, 512 * _MIB), repeat, L, errors)
    _cache.warm(files)  # leave the files as the next warm measurement expects them
    return out


def gpu_limits(gpus, n, repeat, L, errors) -> None:
    """Pinned and pageable H2D, D2D memcpy and a strided slicing kernel on each GPU (CuPy)."""
    import cupy as cp

    rt = cp.cuda.runtime
    n = max(4096, n - n % 4096)
    for g in gpus:
        try:
            with cp.cuda.Device(g):
                s = cp.cuda.Stream(non_blocking=True)
                mem = cp.cuda.alloc_pinned_memory(n)
                h = np.frombuffer(mem, np.uint8, n)
                h[:] = 1
                pageable = np.ones(n, np.uint8)
                d = cp.empty(n, cp.uint8)
                d2 = cp.empty(n, cp.uint8)

                def timed(fn):
                    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                    e0.record(s)
                    fn()
                    e1.record(s)
                    e1.synchronize()
                    return cp.cuda.get_elapsed_time(e0, e1) / 1e3

                h2d = lambda: rt.memcpyAsync(d.data.ptr, h.ctypes.data, n, rt.memcpyHostToDevice, s.ptr)  # noqa: E731
                d2d = lambda: rt.memcpyAsync(d2.data.ptr, d.data.ptr, n, rt.memcpyDeviceToDevice, s.ptr)  # noqa: E731
                timed(h2d), timed(d2d)  # warm-up
                k = max(3, repeat)
                L[f"gpu{g}_h2d_pinned"] = _summary(
                    f"GPU {g}: pinned host-to-device cudaMemcpyAsync", [timed(h2d) for _ in range(k)], n
                )
                L[f"gpu{g}_d2d"] = _summary(
                    f"GPU {g}: device-to-device cudaMemcpyAsync (bytes copied)", [timed(d2d) for _ in range(k)], n
                )
                secs = []
                for _ in range(k):
                    t = time.perf_counter()
                    rt.memcpyAsync(d.data.ptr, pageable.ctypes.data, n, rt.memcpyHostToDevice, s.ptr)
                    s.synchronize()
                    secs.append(time.perf_counter() - t)
                L[f"gpu{g}_h2d_pageable"] = _summary(f"GPU {g}: pageable host-to-device memcpy", secs, n)
                # Column slice of a row-major [rows, 64] float32 table: a strided elementwise copy.
                cols = 64
                src = d.view(cp.float32)[: (n // 4) // cols * cols].reshape(-1, cols)
                dst = cp.empty((src.shape[0], cols // 4), cp.float32)

                def kernel():
                    with s:
                        dst[...] = src[:, cols // 4 : cols // 2]

                timed(kernel)
                L[f"gpu{g}_slice_kernel"] = _summary(
                    f"GPU {g}: CuPy strided copy of 1/4 of the columns (bytes written)",
                    [timed(kernel) for _ in range(k)],
                    dst.nbytes,
                )
                try:
                    L[f"gpu{g}_gpuload_kernel"] = _gpuload_kernel(cp, d, n, s, timed, k)
                except Exception as exc:  # gpuload's kernel layer absent or changed
                    errors[f"gpu{g}_gpuload_kernel"] = f"{type(exc).__name__}: {exc}"
                mem = h = d = d2 = src = dst = None  # noqa: F841 - release before freeing the pool
                cp.get_default_memory_pool().free_all_blocks()
        except Exception as exc:
            errors[f"gpu{g}"] = f"{type(exc).__name__}: {exc}"
    if len(gpus) > 1:
        try:
            L["gpu_all_h2d_pinned"] = _multi_gpu_h2d(cp, gpus, n)
        except Exception as exc:
            errors["gpu_all_h2d_pinned"] = f"{type(exc).__name__}: {exc}"


def _gpuload_kernel(cp, d, n, s, timed, k) -> dict:
    """gpuload's own box-copy kernel, kernel only: a [rows, 64] float32 buffer already on
    the device cut into 4 column parts (the cols:4 layout) in one batched launch."""
    from gpuload.backend import contract, kernels
    from gpuload.plan.copies import BoxCopy

    cols, parts = 64, 4
    rows = (n // 4) // cols
    w = cols // parts
    dests = [cp.empty((rows, w), cp.float32) for _ in range(parts)]
    copies = [
        BoxCopy(dest=i, src_offset=i * w * 4, src_strides=(cols, 1), dst_offset=0, dst_strides=(w, 1), shape=(rows, w))
        for i in range(parts)
    ]
    desc = contract.pack_descriptors(copies, [x.data.ptr for x in dests], src_base=0)
    desc_dev = cp.asarray(desc.view(np.uint8))
    fn = kernels.get_kernel(np.float32, np.float32)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    grid, block = kernels.launch_geometry([c.size for c in copies], sms)

    def launch():
        with s:
            fn(grid, block, (d, np.uint64(desc_dev.data.ptr), np.int32(len(copies))))

    timed(launch)
    secs = [timed(launch) for _ in range(k)]
    ok = bool(cp.array_equal(dests[1], d.view(cp.float32)[: rows * cols].reshape(rows, cols)[:, w : 2 * w]))
    return _summary(
        "gpuload box-copy kernel only: a [rows, 64] float32 device buffer into 4 column parts (bytes written)",
        secs,
        rows * cols * 4,
        correct=ok,
    )


def _multi_gpu_h2d(cp, gpus, n) -> dict:
    rt = cp.cuda.runtime
    bufs = []
    for g in gpus:
        with cp.cuda.Device(g):
            mem = cp.cuda.alloc_pinned_memory(n)
            bufs.append((g, mem, cp.empty(n, cp.uint8), cp.cuda.Stream(non_blocking=True)))
    secs = []
    for _ in range(3):
        t = time.perf_counter()
        for g, mem, d, s in bufs:
            with cp.cuda.Device(g):
                rt.memcpyAsync(d.data.ptr, mem.ptr, n, rt.memcpyHostToDevice, s.ptr)
        for g, mem, d, s in bufs:
            s.synchronize()
        secs.append(time.perf_counter() - t)
    return _summary(f"pinned H2D into {len(gpus)} GPUs at once (aggregate)", secs, n * len(gpus))


# --- entry point --------------------------------------------------------------------------


WORKERS = {
    "gpuload": run_gpuload,
    "tensorflow": run_tensorflow,
    "safetensors": run_safetensors,
    "dali": run_dali,
    "limits": run_limits,
}


def main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        if spec["kind"].startswith("ws_"):  # the warm-start benchmark's workers
            import _warm_start

            res = _warm_start.WORKERS[spec["kind"]](spec)
        else:
            res = WORKERS[spec["kind"]](spec)
    except BaseException as exc:
        res = {
            "kind": spec.get("kind"),
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-3000:],
        }
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(res, default=str), flush=True)
    return 0
