"""What the numbers were measured on: machine, OS, filesystem, versions, GPUs."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys


def _read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    return m.group(1).strip() if m else (platform.processor() or platform.machine())


def ram_bytes() -> int | None:
    m = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    return int(m.group(1)) * 1024 if m else None


def filesystem(path) -> dict:
    """Mount point, filesystem type, block device and what the kernel says about it."""
    real = os.path.realpath(path)
    best = None
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        dev, mnt, fstype = parts[0], parts[1].replace("\\040", " "), parts[2]
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and (best is None or len(mnt) > len(best[1])):
            best = (dev, mnt, fstype, parts[3] if len(parts) > 3 else "")
    if best is None:
        return {"path": real}
    dev, mnt, fstype, opts = best
    info = {"path": real, "mount": mnt, "fstype": fstype, "device": dev, "options": opts}
    name = os.path.basename(os.path.realpath(dev)) if dev.startswith("/dev/") else ""
    if name:
        base = re.sub(r"(p?\d+)$", "", name) if not os.path.exists(f"/sys/block/{name}") else name
        for cand in (name, base):
            q = f"/sys/block/{cand}/queue"
            if os.path.isdir(q):
                info["block"] = cand
                info["rotational"] = _read(f"{q}/rotational").strip() == "1"
                info["scheduler"] = _read(f"{q}/scheduler").strip()
                info["max_sectors_kb"] = _read(f"{q}/max_sectors_kb").strip()
                model = _read(f"/sys/block/{cand}/device/model").strip()
                if model:
                    info["model"] = model
                break
    return info


def gpus() -> dict:
    """CuPy's view of the CUDA devices, or why there are none."""
    try:
        import cupy
    except Exception as exc:
        return {"count": 0, "reason": f"cupy not importable ({type(exc).__name__}: {exc})"}
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return {"count": 0, "cupy": cupy.__version__, "reason": f"no CUDA device ({type(exc).__name__}: {exc})"}
    devs = []
    for i in range(n):
        p = cupy.cuda.runtime.getDeviceProperties(i)
        name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
        devs.append(
            {
                "index": i,
                "name": name,
                "memory_bytes": int(p["totalGlobalMem"]),
                "sm": f"{p['major']}.{p['minor']}",
                "pci_bus": int(p.get("pciBusID", -1)),
            }
        )
    info = {"count": n, "cupy": cupy.__version__, "devices": devs}
    try:
        info["driver"] = cupy.cuda.runtime.driverGetVersion()
        info["runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,driver_version,pcie.link.gen.max,pcie.link.width.max", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout
            info["nvidia_smi"] = [line.strip() for line in out.splitlines() if line.strip()]
        except (subprocess.SubprocessError, OSError):
            pass
    return info


def versions() -> dict:
    """Versions of Python and the packages the load path uses (distribution metadata)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in (
        "gpuload",
        "numpy",
        "google-crc32c",
        "ml_dtypes",
        "cupy-cuda12x",
        "cupy-cuda13x",
        "matplotlib",
        "psutil",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist == "gpuload":
                try:
                    import gpuload

                    out[dist] = f"{gpuload.__version__} (source tree, not installed)"
                except Exception as exc:
                    out[dist] = f"not importable ({type(exc).__name__})"
    rev = _git_revision()
    if rev:
        out["gpuload_git"] = rev
    return out


def _git_revision() -> str | None:
    """The checkout's commit (+ "dirty"), read-only; None outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "no commit yet"
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


PEER_PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
def probe(key, mod, hint):
    try:
        m = __import__(mod)
        for part in mod.split(".")[1:]:
            m = getattr(m, part)
        out[key] = {"ok": True, "version": getattr(m, "__version__", "installed")}
    except Exception as exc:
        out[key] = {"ok": False, "reason": f"{mod} not importable ({type(exc).__name__}: {str(exc)[:200]}); {hint}"}
probe("numpy", "numpy", "pip install numpy")
probe("tensorflow", "tensorflow", "pip install tensorflow-cpu")
probe("safetensors", "safetensors.numpy", "pip install safetensors")
probe("dali", "nvidia.dali", "pip install nvidia-dali-cuda120 (needs CUDA wheels)")
print("@@PROBE " + json.dumps(out))
"""


def probe_peers(python: str, timeout: float = 180.0) -> dict:
    """Which peers ``python`` can import (each import in one child process)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([python, "-c", PEER_PROBE], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"cannot run {python}: {exc}"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@PROBE "):
            return json.loads(line[len("@@PROBE ") :])
    return {"error": f"probe failed (rc {proc.returncode}): {proc.stderr.strip()[-400:]}"}


def machine(bench_dir) -> dict:
    un = platform.uname()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "ram_bytes": ram_bytes(),
        "os": platform.platform(),
        "kernel": un.release,
        "filesystem": filesystem(bench_dir),
        "loadavg_start": list(os.getloadavg()),
    }
