"""Stage 1 of the benchmark: one :class:`BenchConfig` from the parsed options, the
environment and the machine's facts (GPUs, installed peers, OS, versions).

Nothing here runs a measurement. :func:`probe_facts` is the only part that looks at the
machine; tests build :class:`Facts` by hand and get a config without probing anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import _data
import numpy as np

_MIB = 1 << 20
_GIB = 1 << 30
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

DEFAULT_SHAPE = (4194304, 64)  # 1 GiB of float32
QUICK_SHAPE = (65536, 16)  # 4 MiB of float32: the smoke test
DEFAULT_REPEAT = 3
# gpuload's settings that the JSON records (the effective values, after the overrides).
GPULOAD_FIELDS = ("ring_bytes", "chunk_bytes", "reader_threads", "verify_crc", "direct_io", "gap_bytes")


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


def default_bench_dir() -> Path:
    return Path(os.environ.get("GPULOAD_BENCH_DIR") or Path(tempfile.gettempdir()) / "gpuload-bench")


@dataclass
class Facts:
    """What the machine says: GPUs (and whether gpuload can use them), peers, OS, versions."""

    gpuinfo: dict = field(default_factory=lambda: {"count": 0, "reason": "not probed"})
    gpu_ids: list[int] = field(default_factory=list)
    gpu_reason: str | None = "not probed"
    peer_probe: dict = field(default_factory=dict)  # peer -> {"ok": bool, "reason": str, ...}
    machine: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)


@dataclass
class BenchConfig:
    """Everything a run needs to know before it measures anything."""

    shape: tuple[int, ...]
    dtype: str
    layouts: list[str]
    devices: list[str]  # "cpu", "gpu" (one GPU) or "gpu xN" (parts round-robin over N)
    caches: list[str]  # "warm", "cold-direct", "cold"
    crc: str  # the --crc option: both, on, off
    crc_modes: list[bool]
    peers: list[str]  # the peers to run (installed ones only)
    peer_python: str
    repeat: int
    timeout: float
    cold: bool
    quick: bool
    profile: bool
    plot: bool
    bench_dir: Path
    out_dir: Path
    gpuload_overrides: dict  # the --ring-bytes/--chunk-bytes/--reader-threads given
    gpuload_config: dict  # gpuload's effective settings (GPULOAD_FIELDS)
    facts: Facts
    skipped: list[str]  # "<what>: skipped: <why>" for devices and peers not run
    argv: list[str]
    baseline: Path | None = None  # --baseline-checkout: another checkout whose gpuload also runs
    baseline_label: str | None = None  # "gpuload@<commit>": the what of the baseline's rows

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _data.np_dtype(self.dtype).itemsize

    @property
    def gpu_ids(self) -> list[int]:
        """The GPUs the gpuload rows (and the GPU limits) use; empty without a GPU device."""
        return self.facts.gpu_ids if any(d.startswith("gpu") for d in self.devices) else []

    def as_json(self) -> dict:
        """The ``config`` record of the results JSON."""
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bytes": self.nbytes,
            "dir": str(self.bench_dir),
            "layouts": self.layouts,
            "devices": self.devices,
            "crc": self.crc,
            "caches": self.caches,
            "repeat": self.repeat,
            "quick": self.quick,
            "gpuload_config": self.gpuload_config,
            "peers": self.peers,
            "peer_python": self.peer_python,
            "argv": self.argv,
            "baseline": None
            if self.baseline is None
            else {"checkout": str(self.baseline), "label": self.baseline_label},
        }


def _gpu_ids(gpuinfo: dict) -> tuple[list[int], str | None]:
    if gpuinfo.get("count", 0) < 1:
        return [], gpuinfo.get("reason", "no CUDA device")
    try:
        import gpuload

        if not gpuload.is_gpu_available():
            return [], "gpuload.is_gpu_available() is False (CuPy/driver mismatch?)"
    except Exception as exc:
        return [], f"gpuload cannot probe the GPU ({type(exc).__name__}: {exc})"
    return list(range(gpuinfo["count"])), None


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def wanted_peers(args) -> list[str]:
    return [p for p in _csv(args.peers) if p != "none"]


def probe_facts(args, bench_dir: Path) -> Facts:
    """Ask the machine (GPUs, peers under ``--peer-python``, OS, versions)."""
    import _sysinfo

    gpuinfo = _sysinfo.gpus()  # recorded even for CPU-only runs: the header names the machine
    gpu_ids, reason = _gpu_ids(gpuinfo)
    peers = wanted_peers(args)
    return Facts(
        gpuinfo=gpuinfo,
        gpu_ids=gpu_ids,
        gpu_reason=reason,
        peer_probe=_sysinfo.probe_peers(args.peer_python) if peers else {},
        machine=_sysinfo.machine(bench_dir),
        versions=_sysinfo.versions(),
    )


def baseline_label(checkout: Path) -> str:
    """``gpuload@<short commit>`` of a checkout (its folder name when git cannot tell)."""
    import subprocess

    try:
        rev = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"gpuload@{rev or checkout.name}"


def _shape(args, dtype: np.dtype) -> tuple[int, ...]:
    if args.shape:
        return tuple(int(x) for x in args.shape.lower().split("x"))
    if args.quick:
        return QUICK_SHAPE
    if args.size:
        return (max(1, args.size // (64 * dtype.itemsize)), 64)
    return DEFAULT_SHAPE


def make_config(args, facts: Facts | None = None, argv: list[str] | None = None) -> BenchConfig:
    """The run's configuration from parsed ``args`` (see ``bench_load.add_arguments``).

    ``facts`` defaults to :func:`probe_facts`; ``argv`` (recorded in the JSON) to
    ``sys.argv[1:]``. Raises ``SystemExit`` on an unknown device and ``ValueError`` on a
    layout the shape cannot take.
    """
    dtype = _data.np_dtype(args.dtype)
    shape = _shape(args, dtype)
    repeat, chunk, ring = args.repeat, args.chunk_bytes, args.ring_bytes
    if args.quick:  # seconds, not minutes: one run, a small ring
        repeat = 1 if repeat == DEFAULT_REPEAT else repeat
        chunk = chunk or 512 * 1024
        ring = ring or 2 * _MIB
    layouts = [_data.Layout.parse(x).name for x in _csv(args.layouts)]
    for lay in layouts:
        _data.Layout.parse(lay).boxes(shape)  # fail early on impossible layouts
    bench_dir = Path(args.dir) if args.dir else default_bench_dir()
    if facts is None:
        facts = probe_facts(args, bench_dir)

    overrides = {}
    if ring:
        overrides["ring_bytes"] = ring
    if chunk:
        overrides["chunk_bytes"] = chunk
    if args.reader_threads:
        overrides["reader_threads"] = args.reader_threads
    import gpuload

    effective = dataclasses.replace(gpuload.config.get(), **overrides)

    caches = ["warm"]
    if args.cold:
        modes = {"direct": "cold-direct", "buffered": "cold"}
        for m in _csv(args.cold_modes):
            if m not in modes:
                raise SystemExit(f"unknown cold mode {m!r} (direct, buffered)")
            caches.append(modes[m])

    skipped: list[str] = []
    devices = []
    for d in _csv(args.devices):
        if d == "none":  # peers and limits only
            continue
        if d == "cpu":
            devices.append("cpu")
        elif d == "gpu":
            if facts.gpu_ids:
                n = len(facts.gpu_ids)
                devices.append("gpu" if n == 1 else f"gpu x{n}")
            else:
                skipped.append(f"gpu: skipped: {facts.gpu_reason}")
        else:
            raise SystemExit(f"unknown device {d!r} (cpu, gpu)")

    peers = []
    for p in wanted_peers(args):
        st = facts.peer_probe.get(p) or {"ok": False, "reason": facts.peer_probe.get("error", f"unknown peer {p!r}")}
        if st.get("ok"):
            peers.append(p)
        else:
            skipped.append(f"{p}: skipped: {st['reason']}")

    baseline = None
    if getattr(args, "baseline_checkout", None):
        baseline = Path(args.baseline_checkout).resolve()
        if not (baseline / "gpuload" / "__init__.py").is_file():
            raise SystemExit(f"--baseline-checkout {baseline}: no gpuload/__init__.py there (a source checkout?)")

    return BenchConfig(
        shape=shape,
        dtype=args.dtype,
        layouts=layouts,
        devices=devices,
        caches=caches,
        crc=args.crc,
        crc_modes={"both": [True, False], "on": [True], "off": [False]}[args.crc],
        peers=peers,
        peer_python=args.peer_python,
        repeat=repeat,
        timeout=args.timeout,
        cold=args.cold,
        quick=args.quick,
        profile=args.profile,
        plot=not args.no_plot,
        bench_dir=bench_dir,
        out_dir=Path(args.out),
        gpuload_overrides=overrides,
        gpuload_config={k: getattr(effective, k) for k in GPULOAD_FIELDS},
        facts=facts,
        skipped=skipped,
        argv=list(sys.argv[1:] if argv is None else argv),
        baseline=baseline,
        baseline_label=None if baseline is None else baseline_label(baseline),
    )
