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
from gpuload.errors import CheckpointChangedError
from gpuload.format.bundle import Bundle
from gpuload.format.reader import CheckpointReader
from gpuload.graph.store import _assign_all
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
    check_sources_unchanged(bundle, variables)
    requests = [Request(v.op.name, v._init_source.tensor, v._init_source.box, v.dtype, v.device,
                        None if v._init_source.remap is None else v._init_source.remap.plan_remap())
                for v in variables]
    plan = build_plan(bundle, requests, chunk_bytes=cfg.chunk_bytes, gap_bytes=cfg.gap_bytes,
                      verify_crc=cfg.verify_crc,
                      allow_cast=any(v._init_source.allow_cast for v in variables))
    return bundle, plan


def check_sources_unchanged(bundle, variables) -> None:
    """Refuse to load when the checkpoint is not the one ``init_from_checkpoint`` validated.

    The plan is built from the index as it is now; the shapes were checked against the
    index as it was at the call. A trainer saving the same prefix in between would
    otherwise make a variable load a box of a different tensor without any error.

    Raises
    ------
    CheckpointChangedError
        A source tensor's dtype, shape or stored slicing differs from what the call saw
        (the message names the tensor and both), or the index file was replaced (names it).
    """
    from gpuload.format import dtypes as _dt

    def dtype_name(code):
        return _dt.tf_name(code) if _dt.is_supported(code) else f"dtype code {code}"

    for v in variables:
        src = v._init_source
        if src.stored is None:
            continue
        name = src.tensor
        if name not in bundle:
            raise CheckpointChangedError(
                f"tensor {name!r}, which variable {v.op.name!r} loads, is no longer in the checkpoint: it was "
                f"replaced after init_from_checkpoint; call init_from_checkpoint again", path=bundle.index_path,
                tensor=name)
        e = bundle.entry(name)
        (old_dtype, old_shape, old_slices), new = src.stored, (e.dtype, e.shape, e.slices)
        if (old_dtype, old_shape, old_slices) != new:
            what = []
            if old_shape != e.shape:
                what.append(f"shape {list(old_shape)} -> {list(e.shape)}")
            if old_dtype != e.dtype:
                what.append(f"dtype {dtype_name(old_dtype)} -> {dtype_name(e.dtype)}")
            if old_slices != e.slices:
                what.append(f"stored slicing {[str(b) for b in old_slices] or 'whole'} -> "
                            f"{[str(b) for b in e.slices] or 'whole'}")
            raise CheckpointChangedError(
                f"tensor {name!r}, which variable {v.op.name!r} loads, changed after init_from_checkpoint "
                f"validated it: {'; '.join(what)}; call init_from_checkpoint again", path=bundle.index_path,
                tensor=name)
    for v in variables:
        old = v._init_source.index_id
        if old is not None and old != bundle.index_id:
            raise CheckpointChangedError(
                f"the checkpoint index was replaced after init_from_checkpoint read it ({old.describe()}; now "
                f"{bundle.index_id.describe()}): the variables would load data they were not validated "
                f"against; call init_from_checkpoint again", path=bundle.index_path)


def load_checkpoint_sources(variables) -> None:
    """Load every variable's ``_init_source`` and assign the values, all or nothing.

    Raises whatever the load raised (``ChecksumError``, ``ShardReadError``, ...) with no
    variable assigned.
    """
    cfg = config_mod.get()
    if cfg.communicator is not None:  # collective over the ranks: gpuload.distributed
        from gpuload.distributed.load import collective_load

        _last_stats[:] = collective_load(variables, cfg)
        return
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
            # (GPU staging is per load: execute() closed its sessions.)
        results.extend(zip(group, arrays))
        stats_all.append(stats)
    _assign_all(results)
    _last_stats[:] = stats_all

