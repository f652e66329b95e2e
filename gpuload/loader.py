"""Run the checkpoint initializers of a set of variables: plan, stream, then assign.

This is where the graph layer meets the data path. Variables are grouped by checkpoint;
each checkpoint gets one plan (so a stored tensor feeding many parts is read once) and one
streamed execution. Values are assigned only after every checkpoint loaded completely.
"""

from __future__ import annotations

import collections

# Imported here, not inside run(): a load's clock starts at run() and imports are not load time.
import gpuload.device.host  # noqa: F401  (the CPU backend, built by backend_for)
from gpuload import config as config_mod
from gpuload.device.placement import backend_for
from gpuload.format.bundle import Bundle
from gpuload.format.reader import CheckpointReader
from gpuload.plan import Request, build_plan
from gpuload.scheduler import LoadStats, execute

__all__ = ["load_checkpoint_sources", "last_stats"]

_last_stats: list[LoadStats] = []


def last_stats() -> list[LoadStats]:
    """Statistics of the most recent initializer run, one entry per checkpoint loaded."""
    return list(_last_stats)


def plan_for(prefix, variables, *, cfg=None):
    """The :class:`~gpuload.plan.Plan` that loads ``variables`` (all from checkpoint ``prefix``)."""
    cfg = cfg or config_mod.get()
    bundle = Bundle.open(prefix)
    requests = [Request(v.op.name, v._init_source.tensor, v._init_source.box, v.dtype, v.device,
                        None if v._init_source.remap is None else v._init_source.remap.plan_remap())
                for v in variables]
    plan = build_plan(bundle, requests, chunk_bytes=cfg.chunk_bytes, gap_bytes=cfg.gap_bytes,
                      verify_crc=cfg.verify_crc,
                      allow_cast=any(v._init_source.allow_cast for v in variables))
    return bundle, plan


def load_checkpoint_sources(variables) -> None:
    """Load every variable's ``_init_source`` and assign the values, all or nothing.

    Raises whatever the load raised (``ChecksumError``, ``ShardReadError``, ...) with no
    variable assigned.
    """
    cfg = config_mod.get()
    groups = collections.defaultdict(list)
    for v in variables:
        groups[v._init_source.prefix].append(v)
    results = []
    stats_all = []
    for prefix, group in groups.items():
        bundle, plan = plan_for(prefix, group, cfg=cfg)
        backends = {d.device: backend_for(d.device) for d in plan.destinations}
        reader = None

        def host_loader(source, box, _prefix=prefix):
            nonlocal reader
            if reader is None:
                reader = CheckpointReader(_prefix, verify_crc=cfg.verify_crc)
            return reader.get_slice(source, box)

        stats = LoadStats()
        remaps = [v._init_source.remap for v in group if v._init_source.remap is not None]
        mappings = {id(r.mapping): r.mapping for r in remaps}.values()
        stats.vocab_bytes = sum(r.rows.nbytes for r in remaps) + sum(m.nbytes for m in mappings)
        stats.vocab_s = sum(m.seconds for m in mappings)

        def prefill(i, dest, _group=group):
            return _group[i]._init_source.remap.backup_value(_group[i])

        try:
            arrays = execute(plan, backends, config=cfg, host_loader=host_loader, stats=stats, prefill=prefill)
        finally:
            if reader is not None:
                reader.close()
            for b in backends.values():
                b.close()  # GPU backends free their per-slot staging: a ring's worth per GPU
        results.extend(zip(group, arrays))
        stats_all.append(stats)
    for v, array in results:
        v._assign(array)
    _last_stats[:] = stats_all
