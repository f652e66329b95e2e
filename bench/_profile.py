"""Where a gpuload load spends its time: py-spy samples of every thread, put in buckets.

``bench_load.py --profile`` runs one extra gpuload measurement per layout under
``py-spy record --threads --idle --native --format raw`` and sorts each sample of the load
(main thread inside ``gpuload.loader.load_checkpoints``, and the ``gpuload-*`` threads) into a
bucket by its frames: reading (``preadv``: the kernel's copy and page faults), CRC,
waiting for the GIL after a native call, waiting for a ring slot, the consumer's copy,
the consumer waiting for reads, and so on. The raw samples are kept next to the results
(feed them to ``flamegraph.pl`` for a picture).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess

_LINE = re.compile(r"^thread \((?P<tid>\w+)\)(?::\s*(?P<name>[^;]*))?;(?P<stack>.*)\s(?P<count>\d+)$")
_GIL = ("pthread_cond_timedwait", "pthread_cond_wait", "take_gil", "PyThread_acquire_lock")


def _leaf_waits(frames) -> bool:
    return any(any(g in f for g in _GIL) for f in frames[-3:])


def _reader_bucket(frames, text) -> str:
    if "box_copy" in text or "Backend.submit" in text or "copyto" in text:
        # Host destinations: the reader copies its chunk out of the ring itself.
        return "copy into destinations (in the reader)"
    if "Ring.acquire" in text:
        return "wait for a free ring slot"
    if "preadv" in text or "readinto" in text:
        return "read: GIL re-acquire after preadv" if _leaf_waits(frames) else "read: preadv (kernel copy + faults)"
    if "crc32c" in text and "combine" not in text:
        return "crc: GIL re-acquire after crc32c" if _leaf_waits(frames) else "crc32c (native)"
    if "Condition" in text or "acquire" in text or _leaf_waits(frames):
        return "locks / hand-off to the consumer"
    return "python (scheduling, views)"


def _consumer_bucket(frames, text) -> str:
    if "_find_and_load" in text:
        return "imports (lazy, first load in a process)"
    if "_stream" not in text:
        if "execute" in text and ("empty" in text or "alloc" in text):
            return "allocate destinations"
        return "plan / setup / assign (outside the stream)"
    if "Condition.wait" in text or "cond.wait" in text:
        return "wait for reads"
    if "crc32c_combine" in text or "verify_check" in text:
        return "crc combine / verify"
    if "submit" in text or "box_copy" in text or "copyto" in text:
        return "copy out of the ring (backend submit)"
    if "synchronize" in text or "join" in text:
        return "drain (join, synchronize)"
    if "Thread.start" in text:
        return "start threads"
    return "python (consumer loop)"


def summarize(raw_path) -> dict:
    """Per thread role, the share of its samples in each bucket (percent)."""
    roles: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    threads: dict[str, set] = collections.defaultdict(set)
    with open(raw_path) as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            name, stack, count = (m.group("name") or "").strip(), m.group("stack"), int(m.group("count"))
            frames = stack.split(";")
            if name.startswith("gpuload-reader") or "_stream.<locals>.reader" in stack:
                role, bucket = "readers", _reader_bucket(frames, stack)
            elif name.startswith("gpuload-releaser") or "releaser" in stack:
                role, bucket = "releaser", ("idle" if _leaf_waits(frames) else "release / wait tokens")
            elif "load_checkpoints" in stack:
                role, bucket = "consumer (calling thread)", _consumer_bucket(frames, stack)
            else:
                continue  # import, graph set-up, verification: not the load
            roles[role][bucket] += count
            threads[role].add(m.group("tid"))
    out = {}
    for role, c in roles.items():
        total = sum(c.values())
        out[role] = {
            "threads": len(threads[role]),
            "samples": total,
            "buckets": {k: round(100.0 * v / total, 1) for k, v in c.most_common()},
        }
    return out


def format_summary(summary: dict) -> str:
    lines = []
    for role in ("consumer (calling thread)", "readers", "releaser"):
        s = summary.get(role)
        if not s:
            continue
        parts = ", ".join(f"{k} {v:.0f}%" for k, v in s["buckets"].items() if v >= 1)
        lines.append(f"    {role} [{s['threads']} thread(s), {s['samples']} samples]: {parts}")
    return "\n".join(lines)


def py_spy() -> str | None:
    """py-spy on PATH, or next to this interpreter (a venv's bin/ that is not activated)."""
    import os
    import sys

    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return shutil.which("py-spy") or (beside if os.access(beside, os.X_OK) else None)


def record(cmd, raw_path, rate: int = 250, timeout: float = 900.0) -> subprocess.CompletedProcess:
    tool = py_spy()
    return subprocess.run(
        [tool, "record", "-r", str(rate), "-t", "-i", "-n", "-f", "raw", "-o", str(raw_path), "--", *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
