"""Stage 3 of the benchmark: run the jobs, each run in a fresh worker process.

:func:`measure_limits` runs the limits worker once (it interleaves its own repeats);
:func:`run_jobs` goes round the jobs ``repeat`` times (run 1 of every job, then run 2, ...)
so that a burst of noise from a neighbour spreads over the rows instead of sinking one.
Both take the function that runs a worker as a parameter, so that tests can run them on
fake results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENTRY = HERE / "bench_load.py"  # `bench_load.py --worker SPEC` runs _workers.main(SPEC)


def worker_command(spec: dict, python: str) -> list[str]:
    return [python, str(ENTRY), "--worker", json.dumps(spec)]


def parse_result(stdout: str) -> dict | None:
    """The ``@@RESULT {json}`` line a worker prints last, or None."""
    from _workers import RESULT_TAG

    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    return None


def run_worker(spec: dict, python: str, timeout: float, env: dict | None = None) -> dict:
    """Run one measurement in a fresh ``python`` process (``env`` added to this one's);
    its result, or a failure record."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **(env or {}))
    t = time.perf_counter()
    try:
        proc = subprocess.run(worker_command(spec, python), capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"kind": spec["kind"], "ok": False, "error": f"timed out after {timeout:.0f} s"}
    res = parse_result(proc.stdout)
    if res is None:
        return {
            "kind": spec["kind"],
            "ok": False,
            "error": f"worker exited {proc.returncode} without a result: {proc.stderr.strip()[-1500:]}",
        }
    res["process_s"] = time.perf_counter() - t
    return res


def measure_limits(spec: dict, timeout: float, run=run_worker) -> tuple[dict, dict]:
    """``(limits, errors)`` from the limits worker (run under this interpreter: it needs gpuload's CRC)."""
    print("\nmeasuring the machine's limits ...", flush=True)
    res = run(spec, sys.executable, timeout)
    limits = res.get("limits", {})
    errors = dict(res.get("errors", {}), **({"worker": res["error"]} if res.get("error") else {}))
    for k, v in limits.items():
        best, med = (f"{x:7.2f}" if x is not None else "      -" for x in (v.get("best"), v.get("median")))
        print(f"  {k:24s} best {best} GB/s  median {med}  ({v['name']})", flush=True)
    for k, e in errors.items():
        print(f"  {k:24s} failed: {e}", flush=True)
    return limits, errors


def _line(job, res) -> str:
    status = (
        f"{res['gbps']:6.2f} GB/s"
        if res.get("ok")
        else f"FAILED: {res.get('error') or res.get('verify', {}).get('detail')}"
    )
    cache_note = "" if res.get("cache_ok", True) else " (cache state NOT as requested)"
    noise = res.get("cpu_other_pct")
    noise = "" if noise is None else f"  (other processes: {noise:.0f}% CPU)"
    crc = "-" if job.crc is None else ("on" if job.crc else "off")
    return f"  {job.what:24s} {job.layout:8s} {job.device:6s} crc={crc:3s} {job.cache:11s} {status}{cache_note}{noise}"


def run_jobs(jobs, repeat: int, timeout: float, run=run_worker, warm=None) -> list[dict]:
    """Every job ``repeat`` times, interleaved; one measurement record per run.

    Each record is the worker's result tagged with its row (``what``, ``layout``,
    ``device``, ``crc``, ``cache``). ``warm(files)`` (default: ``_cache.warm``) re-warms a
    warm job's files first: cheap when resident, and the worker checks again.
    """
    if warm is None:
        from _cache import warm
    measurements = []
    for _ in range(repeat):
        for job in jobs:
            if job.cache == "warm":
                warm(job.spec["files"])
            res = run(job.spec, job.python, timeout, **({"env": job.env} if job.env else {}))
            res.update(
                {"what": job.what, "layout": job.layout, "device": job.device, "crc": job.crc, "cache": job.cache}
            )
            measurements.append(res)
            print(_line(job, res), flush=True)
    return measurements


def run_profiles(jobs, timeout: float) -> dict:
    """One extra warm CPU gpuload run per (layout, crc) under py-spy; bucketed summaries."""
    import _profile
    from _cache import warm

    if _profile.py_spy() is None:
        print("\nprofile: skipped: py-spy not installed (pip install py-spy)")
        return {"skipped": "py-spy not installed"}
    folder = Path(tempfile.mkdtemp(prefix="gpuload-bench-profiles-"))
    print(f"\nprofiles (py-spy, raw samples in {folder}):", flush=True)
    out = {}
    for job in jobs:
        if job.what != "gpuload" or job.device != "cpu" or job.cache != "warm":
            continue
        warm(job.spec["files"])
        key = f"{job.layout} crc={'on' if job.crc else 'off'}"
        raw = folder / f"{job.layout.replace(':', '')}-crc{'on' if job.crc else 'off'}.txt"
        try:
            proc = _profile.record(worker_command(job.spec, job.python), raw, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if proc.returncode != 0 or not raw.exists():
            out[key] = {"error": f"py-spy failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}"}
            print(f"  {key}: {out[key]['error']}")
            continue
        res = parse_result(proc.stdout) or {}
        summ = _profile.summarize(raw)
        out[key] = {"gbps_under_profiler": res.get("gbps"), "stats": res.get("stats"), "threads": summ, "raw": str(raw)}
        gb = res.get("gbps")
        print(
            f"  {key}: {'-' if gb is None else f'{gb:.2f}'} GB/s under the profiler\n" + _profile.format_summary(summ),
            flush=True,
        )
    return out
