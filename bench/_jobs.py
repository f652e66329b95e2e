"""Stage 2 of the benchmark: what to run, as values.

:func:`make_jobs` turns a :class:`_config.BenchConfig` and the synthesized data (see
``bench_load.ensure_data``) into one :class:`Job` per measured row: gpuload per device,
cache state, layout and CRC setting, then the installed peers. :func:`limits_spec` is the
limits worker's job. Each job's ``spec`` is the JSON the worker process receives
(``bench_load.py --worker SPEC``; see ``_workers.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Job:
    """One row of the benchmark: run ``repeat`` times, each in a fresh ``python`` process."""

    what: str  # "gpuload", "tensorflow", "safetensors get_slice", "dali numpy cpu", ...
    layout: str
    device: str  # the row's device label: "cpu", "gpu", "gpu x2"
    crc: bool | None  # gpuload's verify_crc; None for the peers
    cache: str  # "warm", "cold-direct", "cold"
    python: str  # the interpreter the worker runs under
    spec: dict
    env: dict = field(default_factory=dict)  # extra environment for the worker (the baseline's PYTHONPATH)

    @property
    def key(self) -> tuple:
        """The row this job's runs are summarized into (see ``_summary.group_key``)."""
        return (self.what, self.layout, self.device, self.crc, self.cache)


def gpuload_jobs(config, data) -> list[Job]:
    jobs = []
    for device in config.devices:
        for cache in config.caches:
            for lay in config.layouts:
                for crc in config.crc_modes:
                    cfg = dict(config.gpuload_overrides, verify_crc=crc, direct_io=(cache == "cold-direct"))
                    spec = {
                        "kind": "gpuload",
                        "ckpt_dir": data["ckpt_dir"],
                        "layout": lay,
                        "device": "cpu" if device == "cpu" else "gpu",
                        "device_label": device,
                        "gpus": [] if device == "cpu" else list(config.facts.gpu_ids),
                        "cache": cache,
                        "config": cfg,
                        "files": data["data_files"],
                        "shape": list(config.shape),
                        "dtype": config.dtype,
                        "expected_crcs": data["crcs"][lay],
                    }
                    jobs.append(Job("gpuload", lay, device, crc, cache, sys.executable, spec))
                    if config.baseline is not None:  # right after its twin: the two alternate
                        env = {"PYTHONPATH": str(config.baseline)}
                        jobs.append(Job(config.baseline_label, lay, device, crc, cache, sys.executable, spec, env))
    return jobs


def peer_jobs(config, data) -> list[Job]:
    runs = []  # (what, mode, layout, files)
    if "tensorflow" in config.peers:
        runs += [("tensorflow", None, lay, data["data_files"]) for lay in config.layouts]
    if "safetensors" in config.peers:
        runs.append(("safetensors load_file", "load_file", "rows:1", [data["safetensors"]]))
        runs += [("safetensors get_slice", "get_slice", lay, [data["safetensors"]]) for lay in config.layouts]
    if "dali" in config.peers:
        modes = ["cpu"] + (["gpu"] if config.facts.gpu_ids else [])
        runs += [(f"dali numpy {m}", m, lay, [data["npy"]]) for m in modes for lay in config.layouts]
    jobs = []
    for what, mode, lay, files in runs:
        for cache in config.caches:
            if cache == "cold-direct":  # O_DIRECT is gpuload's option; peers read through the cache
                continue
            device = "gpu" if mode == "gpu" else "cpu"
            spec = {
                "kind": what.split()[0],
                "mode": mode,
                "ckpt_dir": data["ckpt_dir"],
                "layout": lay,
                "cache": cache,
                "files": files,
                "shape": list(config.shape),
                "dtype": config.dtype,
                "expected_crcs": data["crcs"].get(lay),
                "device_label": device,
            }
            jobs.append(Job(what, lay, device, None, cache, config.peer_python, spec))
    return jobs


def make_jobs(config, data) -> list[Job]:
    """Every measured row, gpuload's first, in the order the runner goes round them."""
    return gpuload_jobs(config, data) + peer_jobs(config, data)


def limits_spec(config, data) -> dict:
    """The limits worker's job: read, read+CRC, copy, fault and (cold, GPU) limits on ``data``."""
    return {
        "kind": "limits",
        "files": data["data_files"],
        "repeat": max(3, config.repeat),
        "chunk_bytes": config.gpuload_config["chunk_bytes"],
        "cold": config.cold,
        "threads": [2, 4],
        "gpus": config.gpu_ids,
    }
