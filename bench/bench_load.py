#!/usr/bin/env python3
"""gpuload's load benchmark: how close it gets to the machine, and how it compares.

One run synthesizes a checkpoint (a float32 embedding, 1 GiB by default), measures the
machine's limits on the same files (sequential ``readinto``, multi-threaded ``pread``,
``O_DIRECT``; pinned H2D and D2D copies on a GPU), loads the embedding with
``init_from_checkpoint`` into several partitionings on the CPU (and the GPUs), runs the
peers that are installed (TensorFlow, safetensors, DALI), and prints and writes the
results: a table, a JSON record and a PNG plot under ``bench/results/``.

Every measurement runs in a fresh child process, so its peak RSS is its own, and is
checked value by value against the synthetic source. See ``bench/README.md``.

Usage::

    .venv/bin/python bench/bench_load.py                       # 1 GiB, CPU (+GPU), warm, CRC on and off
    .venv/bin/python bench/bench_load.py --cold --peers tensorflow,safetensors
    .venv/bin/python bench/bench_load.py --quick --out /tmp/r  # seconds; what the smoke test runs
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# An installed gpuload comes first; otherwise the checkout this script sits in.
sys.path.append(str(HERE.parent))

import _data  # noqa: E402
import numpy as np  # noqa: E402

_MIB = 1 << 20
_GIB = 1 << 30
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
RSS_SLACK = 64 * _MIB

# The project's performance targets (benchmarks, not timed tests; see bench/README.md).
T_WARM_CPU = 0.8  # gpuload CPU warm >= 0.8 x one-thread readinto
T_CRC_COST = 0.15  # CRC on costs <= 15% of CRC-off throughput
T_COLD = 0.9  # cold (O_DIRECT) >= 0.9 x O_DIRECT sequential read
T_GPU_E2E = 0.9  # GPU end-to-end >= 0.9 x min(storage read, pinned H2D)
T_KERNEL = 0.8  # gpuload's slicing kernel >= 0.8 x device-to-device copy


def parse_size(text: str) -> int:
    m = _SIZE_RE.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 512MiB, 4096)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n: int) -> str:
    for unit, div in (("GiB", _GIB), ("MiB", _MIB), ("KiB", 1024)):
        if n >= div and n % (div // 16 or 1) == 0:
            v = n / div
            return f"{v:g}{unit}"
    return f"{n}B"


def build_parser(prog: str = "bench_load.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options, on any parser (``gpuload bench`` can reuse them; see :func:`run`)."""
    p.add_argument("--size", type=parse_size, help="tensor size (e.g. 1GiB, 4GiB): [size / (64 * itemsize), 64]")
    p.add_argument("--shape", help="tensor shape, e.g. 4194304x64 (default; 1 GiB of float32)")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16, bfloat16, float64, int32, ...")
    p.add_argument(
        "--dir",
        help="where the checkpoint lives (default $GPULOAD_BENCH_DIR or "
        f"{tempfile.gettempdir()}/gpuload-bench); kept between runs when identical",
    )
    p.add_argument(
        "--layouts",
        default="rows:1,rows:8,rows:32,cols:4",
        help="comma list of rows:N / cols:N (default rows:1,rows:8,rows:32,cols:4)",
    )
    p.add_argument(
        "--devices",
        default="cpu,gpu",
        help="cpu, gpu (all visible GPUs, parts round-robin; skipped with a reason when there is none), or none",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per measurement, each in a fresh process (best and median reported; default 3)",
    )
    p.add_argument(
        "--cold",
        action="store_true",
        help="also run cold: evict the files before each run (checked) and load with direct_io=True",
    )
    p.add_argument(
        "--cold-modes",
        default="direct,buffered",
        help="with --cold: direct (direct_io=True) and/or buffered (page cache, evicted)",
    )
    p.add_argument("--crc", choices=["both", "on", "off"], default="both", help="verify_crc setting(s)")
    p.add_argument(
        "--peers",
        default="tensorflow,safetensors,dali",
        help="peers to run when installed: tensorflow,safetensors,dali (or none)",
    )
    p.add_argument(
        "--peer-python",
        default=os.environ.get("GPULOAD_PEER_PYTHON") or sys.executable,
        help="interpreter for the peers (e.g. a venv with tensorflow-cpu); default $GPULOAD_PEER_PYTHON, else this one",
    )
    p.add_argument("--ring-bytes", type=parse_size, help="gpuload ring_bytes (default: gpuload's)")
    p.add_argument("--chunk-bytes", type=parse_size, help="gpuload chunk_bytes (default: gpuload's)")
    p.add_argument("--reader-threads", type=int, help="gpuload reader_threads (default: gpuload's)")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder (default bench/results)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one run each: the smoke test")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run each CPU layout once more (warm) under py-spy and say where the time went",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per measurement process")
    p.add_argument(
        "--replot", metavar="RESULTS_JSON", help="redraw the PNG and markdown of an earlier run from its JSON, and stop"
    )
    p.add_argument(
        "--warm-start",
        action="store_true",
        help="run the warm-start benchmark instead ([rows x 64] float32, 80%% of the "
        "old vocabulary reordered + 20%% new tokens, 2 OOV buckets, 8 row parts; gpuload "
        "CRC on/off against TensorFlow's warm_start)",
    )
    p.add_argument(
        "--ws-rows",
        type=int,
        help="warm start: rows of the table and tokens of each vocabulary (default 1000000; 20000 with --quick)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)


# --- data ------------------------------------------------------------------------------------


def _bar(total, desc):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False, file=sys.stderr)
    except ImportError:
        return None


class _Progress:
    def __init__(self, total, desc):
        self.bar = _bar(total, desc)

    def __call__(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _DirProgress:
    """A progress bar for a writer with no hook: it polls the bytes present in ``folder``."""

    def __init__(self, folder: Path, total: int, desc: str):
        import threading

        self.folder, self.bar = folder, _bar(total, desc)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)

    def _size(self) -> int:
        n = 0
        for p in self.folder.iterdir():
            try:
                n += p.stat().st_size
            except OSError:
                pass
        return n

    def _poll(self):
        while not self._stop.wait(0.2):
            self.bar.n = min(self.bar.total, self._size())
            self.bar.refresh()

    def __enter__(self):
        if self.bar is not None:
            self._t.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self._stop.set()
            self._t.join()
            self.bar.close()
        return False


def _fingerprint(paths) -> dict:
    return {str(p): [os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths}


def ensure_data(root: Path, shape, dtype_name: str, layouts, need_safetensors: bool, need_npy: bool) -> dict:
    """The checkpoint (and peer copies) for ``shape``, made once and reused while unchanged."""
    import gpuload

    dtype = _data.np_dtype(dtype_name)
    root = root / f"emb-{'x'.join(map(str, shape))}-{dtype_name}"
    ckpt_dir = root / "ckpt"
    prefix = ckpt_dir / "model.ckpt"
    meta_path = root / "meta.json"
    meta = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    ckpt_files = sorted(str(p) for p in ckpt_dir.glob("model.ckpt.*")) if ckpt_dir.exists() else []
    same = (
        meta.get("gen_version") == _data.GEN_VERSION
        and meta.get("shape") == list(shape)
        and meta.get("dtype") == dtype_name
        and ckpt_files
        and meta.get("ckpt_files") == _fingerprint(ckpt_files)
    )
    if not same:
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True)
        meta = {"gen_version": _data.GEN_VERSION, "shape": list(shape), "dtype": dtype_name, "crcs": {}}
        print(f"synthesizing {human(nbytes)} {dtype_name} {list(shape)} -> {prefix}", flush=True)
        arr = np.empty(shape, dtype)
        prog = _Progress(nbytes, "generate")
        for r0, r1, block in _data.iter_row_blocks(shape, dtype):
            arr[r0:r1] = block
            prog(block.nbytes)
        prog.close()
        t = time.perf_counter()
        with _DirProgress(ckpt_dir, nbytes, "save_checkpoint"):
            gpuload.save_checkpoint(str(prefix), {"emb": arr})
        print(f"  save_checkpoint: {time.perf_counter() - t:.1f} s", flush=True)
        del arr
        ckpt_files = sorted(str(p) for p in ckpt_dir.glob("model.ckpt.*"))
        meta["ckpt_files"] = _fingerprint(ckpt_files)
        for stale in ("emb.safetensors", "emb.npy"):
            (root / stale).unlink(missing_ok=True)
        meta.pop("safetensors", None), meta.pop("npy", None)
    missing = [lay for lay in layouts if lay not in meta.get("crcs", {})]
    if missing:
        prog = _Progress(nbytes, "expected checksums")
        meta.setdefault("crcs", {}).update(_data.part_crcs(shape, dtype, missing, progress=prog))
        prog.close()
    for key, name, need, writer in (
        (
            "safetensors",
            "emb.safetensors",
            need_safetensors,
            lambda p, pr: _data.write_safetensors(p, "emb", shape, dtype, pr),
        ),
        ("npy", "emb.npy", need_npy, lambda p, pr: _data.write_npy(p, shape, dtype, pr)),
    ):
        path = root / name
        if need and (not path.exists() or meta.get(key) != _fingerprint([path])):
            print(f"writing the {key} copy for the peers -> {path}", flush=True)
            prog = _Progress(nbytes, key)
            writer(path, prog)
            prog.close()
            meta[key] = _fingerprint([path])
    meta_path.write_text(json.dumps(meta, indent=1))
    data_files = [p for p in ckpt_files if ".data-" in p]
    return {
        "root": str(root),
        "ckpt_dir": str(ckpt_dir),
        "prefix": str(prefix),
        "shape": list(shape),
        "dtype": dtype_name,
        "bytes": nbytes,
        "ckpt_files": ckpt_files,
        "data_files": data_files,
        "data_file_bytes": sum(os.path.getsize(p) for p in data_files),
        "safetensors": str(root / "emb.safetensors"),
        "npy": str(root / "emb.npy"),
        "crcs": meta["crcs"],
    }


# --- running workers --------------------------------------------------------------------------


def run_worker(spec: dict, python: str, timeout: float) -> dict:
    from _workers import RESULT_TAG

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    cmd = [python, str(HERE / "bench_load.py"), "--worker", json.dumps(spec)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"kind": spec["kind"], "ok": False, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG) :])
            res["process_s"] = time.perf_counter() - t
            return res
    return {
        "kind": spec["kind"],
        "ok": False,
        "error": f"worker exited {proc.returncode} without a result: {proc.stderr.strip()[-1500:]}",
    }


def _gpu_reason_and_ids(gpuinfo) -> tuple[list[int], str | None]:
    if gpuinfo.get("count", 0) < 1:
        return [], gpuinfo.get("reason", "no CUDA device")
    try:
        import gpuload

        if not gpuload.is_gpu_available():
            return [], "gpuload.is_gpu_available() is False (CuPy/driver mismatch?)"
    except Exception as exc:
        return [], f"gpuload cannot probe the GPU ({type(exc).__name__}: {exc})"
    return list(range(gpuinfo["count"])), None


# --- summarizing ---------------------------------------------------------------------------------


def group_key(m) -> tuple:
    return (m["what"], m["layout"], m["device"], m.get("crc"), m["cache"])


def summarize(measurements, limits, gpu_ids) -> list[dict]:
    groups: dict[tuple, list] = {}
    for m in measurements:
        groups.setdefault(group_key(m), []).append(m)
    out = []
    for key, runs in groups.items():
        what, layout, device, crc, cache = key
        good = [r for r in runs if r.get("ok") and r.get("gbps")]
        g = {
            "what": what,
            "layout": layout,
            "device": device,
            "crc": crc,
            "cache": cache,
            "runs": len(runs),
            "ok": len(good) == len(runs),
            "errors": sorted(
                {r.get("error") or r.get("verify", {}).get("detail", "") for r in runs if not r.get("ok")}
            ),
            "cache_ok": all(r.get("cache_ok", True) for r in runs),
        }
        if good:
            best = max(good, key=lambda r: r["gbps"])
            g["gbps_best"] = best["gbps"]
            g["gbps_median"] = statistics.median(r["gbps"] for r in good)
            g["seconds_best"] = best["seconds"]
            g["stats"] = best.get("stats")
            g["kernel_warmup_s"] = best.get("kernel_warmup_s")  # GPU: NVRTC/cache, before the timed load
            g["pin_warmup_s"] = best.get("pin_warmup_s")
            g["rss_peak_delta"] = max(r.get("rss_peak_delta", 0) for r in good)
            dev_peaks = [max((r.get("device_mem_peak_delta") or {"-": 0}).values()) for r in good]
            g["device_mem_peak_delta"] = max(dev_peaks) if dev_peaks else None
            g["verify"] = best.get("verify", {}).get("detail")
            g["cpu_own_s"] = best.get("cpu_own_s")
            g["noise_pct"] = best.get("cpu_other_pct")  # other processes' CPU during the best run
            if what == "gpuload":
                st = best.get("stats") or {}
                ring = st["ring_bytes"] if "ring_bytes" in st else best.get("config", {}).get("ring_bytes", 0)
                host_dest = best.get("dest_bytes", 0) if device == "cpu" else 0
                g["rss_bound"] = host_dest + ring + RSS_SLACK
        lk, lv = limit_for(device, cache, limits, gpu_ids)
        g["limit_key"], g["limit_gbps"] = lk, lv
        if g.get("gbps_best") and lv:
            g["ratio"] = g["gbps_best"] / lv
        if device == "cpu" and cache == "warm" and g.get("gbps_best"):
            # Against the fastest read into a *fresh* destination: what filling new memory allows.
            fresh = [(limits.get(k) or {}).get("best") for k in ("readinto_dest_1t", "pread_dest_2t", "pread_dest_4t")]
            fresh = [x for x in fresh if x]
            if fresh:
                g["ratio_fresh"] = g["gbps_best"] / max(fresh)
        out.append(g)
    add_targets(out)
    return out


def limit_for(device, cache, limits, gpu_ids):
    def best(k):
        v = limits.get(k) or {}
        return v.get("best")

    if cache == "warm":
        storage = ("readinto_1t", best("readinto_1t"))
    elif cache == "cold-direct":
        storage = ("odirect_seq", best("odirect_seq"))
    else:
        storage = ("cold_readinto_1t", best("cold_readinto_1t"))
    if device == "cpu":
        return storage
    # GPU: min(storage read, pinned H2D); storage = the fastest read this machine showed.
    if cache == "warm":
        reads = [(k, best(k)) for k in ("readinto_1t", "pread_2t", "pread_4t") if best(k)]
        storage = max(reads, key=lambda kv: kv[1]) if reads else storage
    h2d_key = "gpu_all_h2d_pinned" if len(gpu_ids) > 1 else "gpu0_h2d_pinned"
    h2d = (h2d_key, best(h2d_key))
    cands = [kv for kv in (storage, h2d) if kv[1]]
    return min(cands, key=lambda kv: kv[1]) if cands else (None, None)


def machine_targets(limits, gpu_ids) -> dict:
    """Targets on limits alone: gpuload's slicing kernel against the D2D copy, per GPU."""
    out = {}
    for g in gpu_ids:
        k, d2d = limits.get(f"gpu{g}_gpuload_kernel"), limits.get(f"gpu{g}_d2d")
        if k and d2d and k.get("best") and d2d.get("best"):
            r = k["best"] / d2d["best"]
            out[f"gpu{g} kernel>=0.8xD2D"] = {
                "value": r,
                "threshold": T_KERNEL,
                "kernel_gbps": k["best"],
                "d2d_gbps": d2d["best"],
                "correct": k.get("correct"),
                "pass": r >= T_KERNEL and bool(k.get("correct")),
            }
    return out


def add_targets(summary) -> None:
    index = {group_key(g): g for g in summary}
    for g in summary:
        if g["what"] != "gpuload" or not g.get("gbps_best"):
            continue
        t = {}
        if g["cache"] == "warm" and g["device"] == "cpu" and g.get("ratio") is not None:
            t["warm>=0.8x"] = {"value": g["ratio"], "threshold": T_WARM_CPU, "pass": g["ratio"] >= T_WARM_CPU}
        if g["cache"] == "cold-direct" and g.get("ratio") is not None:
            t["cold>=0.9x"] = {
                "value": g["ratio"],
                "threshold": T_COLD,
                "pass": g["ratio"] >= T_COLD and g.get("cache_ok", True),
            }
        if g["device"] != "cpu" and g.get("ratio") is not None:
            t["e2e>=0.9x"] = {"value": g["ratio"], "threshold": T_GPU_E2E, "pass": g["ratio"] >= T_GPU_E2E}
        if g.get("rss_bound"):
            t["rss"] = {
                "value": g["rss_peak_delta"],
                "threshold": g["rss_bound"],
                "pass": g["rss_peak_delta"] <= g["rss_bound"],
            }
        if g["crc"] is True:
            off = index.get((g["what"], g["layout"], g["device"], False, g["cache"]))
            if off and off.get("gbps_best"):
                cost = 1 - g["gbps_best"] / off["gbps_best"]
                t["crc<=15%"] = {"value": cost, "threshold": T_CRC_COST, "pass": cost <= T_CRC_COST}
        g["targets"] = t


# --- main ---------------------------------------------------------------------------------------


def header(info) -> str:
    m, v, gi = info["machine"], info["versions"], info["gpus"]
    fs = m["filesystem"]
    lines = [
        f"machine   : {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"{(m['ram_bytes'] or 0) / _GIB:.1f} GiB RAM, host {m['hostname']}",
        f"os        : {m['os']} (kernel {m['kernel']}), load avg {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}",
        f"filesystem: {fs.get('fstype', '?')} on {fs.get('device', '?')} at {fs.get('mount', '?')}"
        + (f", rotational={fs['rotational']}, scheduler {fs.get('scheduler', '?')}" if "rotational" in fs else "")
        + (f", model {fs['model']}" if fs.get("model") else ""),
        "versions  : " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    if gi.get("count"):
        lines.append(
            f"gpus      : {gi['count']} x "
            + ", ".join(d["name"] for d in gi["devices"])
            + f"; driver {gi.get('driver')}, runtime {gi.get('runtime')}, cupy {gi.get('cupy')}"
        )
    else:
        lines.append(f"gpus      : none ({gi.get('reason')})")
    c = info["config"]
    lines.append(f"data      : {c['shape']} {c['dtype']} = {human(c['bytes'])} in {c['dir']}")
    lines.append(f"gpuload   : {json.dumps(c['gpuload_config'])} (each row sets verify_crc and direct_io)")
    lines.append(
        f"runs      : layouts {','.join(c['layouts'])}; devices {','.join(c['devices']) or '-'}; "
        f"crc {c['crc']}; caches {','.join(c['caches'])}; repeat {c['repeat']} (fresh process each)"
    )
    return "\n".join(lines)


def main(argv=None, prog: str = "bench_load.py") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.worker is not None:
        import _workers

        return _workers.main(args.worker)
    return run(args)


def replot(json_path: Path, write_latest: bool) -> int:
    """Redraw ``<run>.png`` and ``<run>.md`` (and ``latest.md``) from a results JSON."""
    import _profile
    import _report

    info = json.loads(json_path.read_text())
    base = json_path.with_suffix("")
    for v in (info.get("profiles") or {}).values():  # re-bucket while the raw samples exist
        if isinstance(v, dict) and v.get("raw") and Path(v["raw"]).exists():
            v["threads"] = _profile.summarize(v["raw"])
    c = info["config"]
    title = _title(info)
    info["plot"] = {
        "path": base.with_suffix(".png").name,
        "renderer": _report.plot(info["summary"], info["limits"], base.with_suffix(".png"), title),
    }
    md = markdown(
        info, table_md=_report.markdown_table(info["summary"]), limits_md=_report.limits_table(info["limits"])
    )
    base.with_suffix(".md").write_text(md)
    if write_latest and not c.get("quick"):
        (json_path.parent / "latest.md").write_text(md)
    json_path.write_text(json.dumps(info, indent=1, default=str))
    print(f"redrew {base.with_suffix('.png')} and {base.with_suffix('.md')}")
    return 0


def _title(info) -> str:
    c, m, gi = info["config"], info["machine"], info["gpus"]
    return (
        f"gpuload {info['versions'].get('gpuload')} - {human(c['bytes'])} {c['dtype']} {c['shape']} - "
        f"{m['cpu']} x{m['cores']}"
        + (f" - {gi['devices'][0]['name']}" if gi.get("count") else "")
        + f" - {info['date'][:10]}"
    )


def run(args) -> int:
    """Run the benchmark for parsed ``args`` (from :func:`add_arguments`); return the exit status."""
    import _report

    if args.replot:
        return replot(Path(args.replot), write_latest=Path(args.replot).resolve().parent == Path(args.out).resolve())
    import _sysinfo

    if args.warm_start:
        import _warm_start

        args.ws_rows = args.ws_rows or (20000 if args.quick else 1_000_000)
        if args.quick and args.repeat == 3:
            args.repeat = 1
        return _warm_start.run(args, run_worker, _sysinfo)
    t_start = time.perf_counter()
    dtype = _data.np_dtype(args.dtype)
    if args.quick:
        shape = (65536, 16)
        if args.shape:
            shape = tuple(int(x) for x in args.shape.lower().split("x"))
        args.repeat = 1 if args.repeat == 3 else args.repeat
        args.chunk_bytes = args.chunk_bytes or 512 * 1024
        args.ring_bytes = args.ring_bytes or 2 * _MIB
    elif args.shape:
        shape = tuple(int(x) for x in args.shape.lower().split("x"))
    elif args.size:
        shape = (max(1, args.size // (64 * dtype.itemsize)), 64)
    else:
        shape = (4194304, 64)
    layouts = [_data.Layout.parse(x).name for x in args.layouts.split(",") if x.strip()]
    for lay in layouts:
        _data.Layout.parse(lay).boxes(shape)  # fail early on impossible layouts
    bench_dir = Path(args.dir or os.environ.get("GPULOAD_BENCH_DIR") or Path(tempfile.gettempdir()) / "gpuload-bench")
    bench_dir.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []

    gcfg = {}
    if args.ring_bytes:
        gcfg["ring_bytes"] = args.ring_bytes
    if args.chunk_bytes:
        gcfg["chunk_bytes"] = args.chunk_bytes
    if args.reader_threads:
        gcfg["reader_threads"] = args.reader_threads
    import gpuload

    effective = gpuload.config.get()
    import dataclasses

    effective = dataclasses.replace(effective, **gcfg)
    crc_modes = {"both": [True, False], "on": [True], "off": [False]}[args.crc]
    caches = ["warm"]
    if args.cold:
        modes = [x.strip() for x in args.cold_modes.split(",") if x.strip()]
        caches += [{"direct": "cold-direct", "buffered": "cold"}[m] for m in modes]

    gpuinfo = _sysinfo.gpus()
    gpu_ids, gpu_reason = _gpu_reason_and_ids(gpuinfo)
    devices = []
    for d in [x.strip() for x in args.devices.split(",") if x.strip()]:
        if d == "none":  # peers and limits only
            continue
        if d == "cpu":
            devices.append("cpu")
        elif d == "gpu":
            if gpu_ids:
                devices.append("gpu" if len(gpu_ids) == 1 else f"gpu x{len(gpu_ids)}")
            else:
                skipped.append(f"gpu: skipped: {gpu_reason}")
        else:
            raise SystemExit(f"unknown device {d!r} (cpu, gpu)")

    peers_wanted = [p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none"]
    probe = _sysinfo.probe_peers(args.peer_python) if peers_wanted else {}
    peers = []
    for p in peers_wanted:
        st = probe.get(p) or {"ok": False, "reason": probe.get("error", f"unknown peer {p!r}")}
        if st.get("ok"):
            peers.append(p)
        else:
            skipped.append(f"{p}: skipped: {st['reason']}")

    info = {
        "schema": 1,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _sysinfo.machine(bench_dir),
        "versions": _sysinfo.versions(),
        "gpus": gpuinfo,
        "peers": probe,
        "config": {
            "shape": list(shape),
            "dtype": args.dtype,
            "bytes": int(np.prod(shape)) * dtype.itemsize,
            "dir": str(bench_dir),
            "layouts": layouts,
            "devices": devices,
            "crc": args.crc,
            "caches": caches,
            "repeat": args.repeat,
            "quick": args.quick,
            "gpuload_config": {
                k: getattr(effective, k)
                for k in ("ring_bytes", "chunk_bytes", "reader_threads", "verify_crc", "direct_io", "gap_bytes")
            },
            "peers": peers,
            "peer_python": args.peer_python,
            "argv": sys.argv[1:],
        },
    }
    print(header(info), flush=True)
    for s in skipped:
        print(s, flush=True)

    data = ensure_data(bench_dir, shape, args.dtype, layouts, "safetensors" in peers, "dali" in peers)
    info["data"] = {k: v for k, v in data.items() if k != "crcs"}
    from _cache import warm

    # Limits, in a process of their own.
    print("\nmeasuring the machine's limits ...", flush=True)
    lim = run_worker(
        {
            "kind": "limits",
            "files": data["data_files"],
            "repeat": max(3, args.repeat),
            "chunk_bytes": effective.chunk_bytes,
            "cold": args.cold,
            "threads": [2, 4],
            "gpus": gpu_ids if devices and any(d.startswith("gpu") for d in devices) else [],
        },
        sys.executable,
        args.timeout,
    )
    limits = lim.get("limits", {})
    info["limits"] = limits
    info["limit_errors"] = dict(lim.get("errors", {}), **({"worker": lim["error"]} if lim.get("error") else {}))
    for k, v in limits.items():
        print(f"  {k:22s} best {v['best']:7.2f} GB/s  median {v['median']:7.2f}  ({v['name']})", flush=True)
    for k, e in info["limit_errors"].items():
        print(f"  {k:22s} failed: {e}", flush=True)

    measurements = []

    def record(spec, res, what, crc):
        res.update(
            {
                "what": what,
                "layout": spec["layout"],
                "device": spec.get("device_label", "cpu"),
                "crc": crc,
                "cache": spec["cache"],
            }
        )
        measurements.append(res)
        status = (
            f"{res['gbps']:6.2f} GB/s"
            if res.get("ok")
            else f"FAILED: {res.get('error') or res.get('verify', {}).get('detail')}"
        )
        cache_note = "" if res.get("cache_ok", True) else " (cache state NOT as requested)"
        noise = res.get("cpu_other_pct")
        noise = "" if noise is None else f"  (other processes: {noise:.0f}% CPU)"
        print(
            f"  {what:24s} {spec['layout']:8s} {res['device']:6s} crc={'-' if crc is None else ('on' if crc else 'off'):3s} "
            f"{spec['cache']:11s} {status}{cache_note}{noise}",
            flush=True,
        )

    # Every (what, layout, device, crc, cache) is a group; the repeats go round the groups
    # (run 1 of every group, then run 2, ...) so a burst of noise from a neighbour spreads
    # over the groups instead of sinking one of them.
    jobs = []  # (what, crc, python, spec)
    for device in devices:
        for cache in caches:
            for lay in layouts:
                for crc in crc_modes:
                    cfg = dict(gcfg, verify_crc=crc, direct_io=(cache == "cold-direct"))
                    jobs.append(
                        (
                            "gpuload",
                            crc,
                            sys.executable,
                            {
                                "kind": "gpuload",
                                "ckpt_dir": data["ckpt_dir"],
                                "layout": lay,
                                "device": "cpu" if device == "cpu" else "gpu",
                                "device_label": device,
                                "gpus": [] if device == "cpu" else gpu_ids,
                                "cache": cache,
                                "config": cfg,
                                "files": data["data_files"],
                                "shape": list(shape),
                                "dtype": args.dtype,
                                "expected_crcs": data["crcs"][lay],
                            },
                        )
                    )
    peer_runs = []
    if "tensorflow" in peers:
        peer_runs += [("tensorflow", None, lay, data["data_files"]) for lay in layouts]
    if "safetensors" in peers:
        peer_runs.append(("safetensors load_file", "load_file", "rows:1", [data["safetensors"]]))
        peer_runs += [("safetensors get_slice", "get_slice", lay, [data["safetensors"]]) for lay in layouts]
    if "dali" in peers:
        dali_modes = ["cpu"] + (["gpu"] if gpu_ids else [])
        peer_runs += [(f"dali numpy {m}", m, lay, [data["npy"]]) for m in dali_modes for lay in layouts]
    for what, mode, lay, files in peer_runs:
        for cache in [c for c in caches if c != "cold-direct"]:
            jobs.append(
                (
                    what,
                    None,
                    args.peer_python,
                    {
                        "kind": what.split()[0],
                        "mode": mode,
                        "ckpt_dir": data["ckpt_dir"],
                        "layout": lay,
                        "cache": cache,
                        "files": files,
                        "shape": list(shape),
                        "dtype": args.dtype,
                        "expected_crcs": data["crcs"].get(lay),
                        "device_label": "gpu" if mode == "gpu" else "cpu",
                    },
                )
            )
    print(
        f"\n{len(jobs)} measurements x {args.repeat} runs, each in a fresh process "
        f"(gpuload: init_from_checkpoint + global_variables_initializer().run(); "
        f"peers under {args.peer_python}):",
        flush=True,
    )
    for rep in range(args.repeat):
        for what, crc, python, spec in jobs:
            if spec["cache"] == "warm":
                warm(spec["files"])  # cheap when already resident; the worker checks again
            record(spec, run_worker(spec, python, args.timeout), what, crc)

    profiles = run_profiles(args, jobs) if args.profile else {}

    summary = summarize(measurements, limits, gpu_ids)
    info["machine"]["loadavg_end"] = list(os.getloadavg())
    info["skipped"] = skipped
    info["measurements"] = measurements
    info["summary"] = summary
    info["profiles"] = profiles
    info["elapsed_s"] = time.perf_counter() - t_start
    info["machine_targets"] = machine_targets(limits, gpu_ids)
    table = _report.console_table(summary)
    print("\n" + table)
    for name, t in info["machine_targets"].items():
        print(
            f"{name}: kernel {t['kernel_gbps']:.1f} GB/s / D2D {t['d2d_gbps']:.1f} GB/s = {t['value']:.2f} "
            f"(correct={t['correct']}) -> {'PASS' if t['pass'] else 'FAIL'}"
        )
    for s in skipped:
        print(s)

    # Outputs.
    host = (
        f"{gpuinfo['devices'][0]['name']}"
        if gpuinfo.get("count")
        else f"{info['machine']['cpu']}-{info['machine']['cores']}c"
    )
    slug = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")[:40]
    stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H%M")
    base = out_dir / f"{stamp}-{slug}-{human(info['config']['bytes'])}{'-quick' if args.quick else ''}"
    json_path = base.with_suffix(".json")
    png_path = base.with_suffix(".png")
    title = _title(info)
    if not args.no_plot:
        info["plot"] = {"path": png_path.name, "renderer": _report.plot(summary, limits, png_path, title)}
    json_path.write_text(json.dumps(info, indent=1, default=str))
    md = markdown(info, table_md=_report.markdown_table(summary), limits_md=_report.limits_table(limits))
    base.with_suffix(".md").write_text(md)
    if not args.quick:
        (out_dir / "latest.md").write_text(md)
    print(
        f"\nwrote {json_path}"
        + (f", {png_path}" if png_path.exists() else "")
        + f", {base.with_suffix('.md')}"
        + ("" if args.quick else f", {out_dir / 'latest.md'}")
    )
    print(f"total {info['elapsed_s']:.0f} s")
    bad = [g for g in summary if g["what"] == "gpuload" and not g["ok"]]
    if bad:
        print(f"\n{len(bad)} gpuload measurement group(s) FAILED (error or wrong data):", file=sys.stderr)
        for g in bad:
            print(f"  {g['layout']} {g['device']} crc={g['crc']} {g['cache']}: {g['errors']}", file=sys.stderr)
        return 1
    return 0


def run_profiles(args, jobs) -> dict:
    """One extra warm CPU gpuload run per (layout, crc) under py-spy; bucketed summaries."""
    import _profile

    if _profile.py_spy() is None:
        print("\nprofile: skipped: py-spy not installed (pip install py-spy)")
        return {"skipped": "py-spy not installed"}
    folder = Path(tempfile.mkdtemp(prefix="gpuload-bench-profiles-"))
    print(f"\nprofiles (py-spy, raw samples in {folder}):", flush=True)
    out = {}
    for what, crc, python, spec in jobs:
        if what != "gpuload" or spec["device"] != "cpu" or spec["cache"] != "warm":
            continue
        from _cache import warm

        warm(spec["files"])
        key = f"{spec['layout']} crc={'on' if crc else 'off'}"
        raw = folder / f"{spec['layout'].replace(':', '')}-crc{'on' if crc else 'off'}.txt"
        cmd = [python, str(HERE / "bench_load.py"), "--worker", json.dumps(spec)]
        try:
            proc = _profile.record(cmd, raw, timeout=args.timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if proc.returncode != 0 or not raw.exists():
            out[key] = {"error": f"py-spy failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}"}
            print(f"  {key}: {out[key]['error']}")
            continue
        from _workers import RESULT_TAG

        res = next(
            (json.loads(line[len(RESULT_TAG) :]) for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)),
            {},
        )
        summ = _profile.summarize(raw)
        out[key] = {"gbps_under_profiler": res.get("gbps"), "stats": res.get("stats"), "threads": summ, "raw": str(raw)}
        gb = res.get("gbps")
        print(
            f"  {key}: {'-' if gb is None else f'{gb:.2f}'} GB/s under the profiler\n" + _profile.format_summary(summ),
            flush=True,
        )
    return out


def markdown(info, table_md: str, limits_md: str) -> str:
    m, c = info["machine"], info["config"]
    fs = m["filesystem"]
    gi = info["gpus"]
    gpu = (
        f"{gi['count']} x {gi['devices'][0]['name']} (driver {gi.get('driver')}, cupy {gi.get('cupy')})"
        if gi.get("count")
        else f"none ({gi.get('reason')})"
    )
    lines = [
        f"# gpuload load benchmark: {human(c['bytes'])} {c['dtype']} {c['shape']}",
        "",
        f"- date: {info['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {(m['ram_bytes'] or 0) / _GIB:.1f} GiB RAM; {m['os']}",
        f"- filesystem: {fs.get('fstype')} on {fs.get('device')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_end', []))}",
        f"- GPU: {gpu}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- gpuload config: `{json.dumps(c['gpuload_config'])}`; {c['repeat']} run(s) per row, each in a fresh process",
        f"- command: `bench/bench_load.py {' '.join(c['argv'])}`",
        "",
        "GB/s is 10^9 bytes of tensor per second, from `run()` to the last byte in place. `ratio` is the best "
        "run against the best run of the `limit` named. Stage seconds (`read`, `crc`: summed over reader "
        "threads; `submit` (the consumer's copy/submit), `wait`, `drain`: consumer thread) are from "
        "`gpuload.loader.last_stats()` of the best run. Peak RSS is the process's peak during `run()` "
        "minus its RSS before; the bound is destination + ring + 64 MiB. `vs fresh` compares warm CPU rows with "
        "the fastest read into a fresh destination array (`readinto_dest_1t`, `pread_dest_Nt`). A stage shown as "
        "`?` is a LoadStats value that cannot be right (negative, or far beyond the wall time); the raw value is "
        "in the JSON. `noise %` is the CPU other processes used during the best run, as a share of all cores.",
        "",
        table_md,
        "",
        "## Limits measured in the same run",
        "",
        limits_md,
    ]
    for name, t in (info.get("machine_targets") or {}).items():
        lines += [
            "",
            f"- {name}: gpuload kernel {t['kernel_gbps']:.1f} GB/s / D2D {t['d2d_gbps']:.1f} GB/s = "
            f"{t['value']:.2f} -> {'PASS' if t['pass'] else 'FAIL'}",
        ]
    prof = {k: v for k, v in (info.get("profiles") or {}).items() if isinstance(v, dict) and "threads" in v}
    if prof:
        lines += [
            "",
            "## Where the time went (py-spy, one extra warm CPU run each)",
            "",
            "Share of each thread role's samples during `run()`, by what the thread was doing.",
            "",
        ]
        for key, v in prof.items():
            gb = v.get("gbps_under_profiler")
            lines.append(f"- **{key}** ({'-' if gb is None else f'{gb:.2f}'} GB/s under the profiler)")
            for role, s in v["threads"].items():
                parts = ", ".join(f"{b} {p:.0f}%" for b, p in s["buckets"].items() if p >= 1)
                lines.append(f"  - {role} ({s['threads']} thread(s)): {parts}")
    if info.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in info["skipped"]]
    if info.get("plot"):
        lines += ["", f"![GB/s against part count]({info['plot']['path']})"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
