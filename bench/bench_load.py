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
import json
import os
import shutil
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
from _config import human, parse_size  # noqa: E402
from _runner import run_worker  # noqa: E402


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
        "--baseline-checkout",
        metavar="DIR",
        help="also run every gpuload row with the gpuload of another source checkout (e.g. a git worktree of "
        "main), interleaved with this one's, as rows 'gpuload@<its commit>'; the table's 'vs base' column is "
        "this gpuload's best over the baseline's: 'no row got slower' measured in one run",
    )
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


# --- the run: config -> jobs -> run -> report ----------------------------------------------


def main(argv=None, prog: str = "bench_load.py") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.worker is not None:
        import _workers

        return _workers.main(args.worker)
    return run(args)


def run(args) -> int:
    """Run the benchmark for parsed ``args`` (from :func:`add_arguments`); return the exit status.

    The stages: :func:`_config.make_config` (options, environment, machine facts) ->
    :func:`_jobs.make_jobs` (one job per row) -> :mod:`_runner` (the limits worker, then the
    jobs in fresh processes, interleaved) -> :mod:`_summary` and :mod:`_report` (rows,
    targets, console, JSON, markdown, plot).
    """
    import _config
    import _jobs
    import _report
    import _runner
    import _summary

    if args.replot:
        return _report.replot(
            Path(args.replot), write_latest=Path(args.replot).resolve().parent == Path(args.out).resolve()
        )
    if args.warm_start:
        import _sysinfo
        import _warm_start

        args.ws_rows = args.ws_rows or (20000 if args.quick else 1_000_000)
        if args.quick and args.repeat == 3:
            args.repeat = 1
        return _warm_start.run(args, run_worker, _sysinfo)
    t_start = time.perf_counter()

    # 1. config
    config = _config.make_config(args)
    config.bench_dir.mkdir(parents=True, exist_ok=True)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    info = _report.new_info(config)
    print(_report.header(info), flush=True)
    for s in config.skipped:
        print(s, flush=True)
    data = ensure_data(
        config.bench_dir,
        config.shape,
        config.dtype,
        config.layouts,
        "safetensors" in config.peers,
        "dali" in config.peers,
    )
    info["data"] = {k: v for k, v in data.items() if k != "crcs"}

    # 2. jobs
    jobs = _jobs.make_jobs(config, data)

    # 3. run: the limits first (a process of their own), then every job, interleaved
    limits, info["limit_errors"] = _runner.measure_limits(_jobs.limits_spec(config, data), config.timeout)
    info["limits"] = limits
    print(
        f"\n{len(jobs)} measurements x {config.repeat} runs, each in a fresh process "
        f"(gpuload: init_from_checkpoint + global_variables_initializer().run(); "
        f"peers under {config.peer_python}):",
        flush=True,
    )
    measurements = _runner.run_jobs(jobs, config.repeat, config.timeout)
    profiles = _runner.run_profiles(jobs, config.timeout) if config.profile else {}

    # 4. report
    summary = _summary.summarize(measurements, limits, config.facts.gpu_ids)
    info["machine"]["loadavg_end"] = list(os.getloadavg())
    info["skipped"] = config.skipped
    info["measurements"] = measurements
    info["summary"] = summary
    info["profiles"] = profiles
    info["elapsed_s"] = time.perf_counter() - t_start
    info["machine_targets"] = _summary.machine_targets(limits, config.facts.gpu_ids)
    print(_report.console(info))
    written = _report.write(info, config.out_dir, plot_png=config.plot)
    print("\nwrote " + ", ".join(map(str, written)))
    print(f"total {info['elapsed_s']:.0f} s")
    bad = [g for g in summary if g["what"] == "gpuload" and not g["ok"]]
    if bad:
        print(f"\n{len(bad)} gpuload measurement group(s) FAILED (error or wrong data):", file=sys.stderr)
        for g in bad:
            print(f"  {g['layout']} {g['device']} crc={g['crc']} {g['cache']}: {g['errors']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
