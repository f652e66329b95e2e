"""Run the checkpoint initializers of a set of variables: requests, :func:`gpuload.load`, assign.

This is where the graph layer meets the data path, through the public API only: the
variables' checkpoint sources become :class:`gpuload.Request` values, grouped by checkpoint
(one plan per checkpoint, so a stored tensor feeding many parts is read once), and the
arrays :func:`gpuload.load` returns are assigned only after every checkpoint loaded.
(:func:`plan_for`, which only plans, uses the API's planning step directly, so that no
warm start's starting values are computed for it.)
"""

from __future__ import annotations

import collections

# Imported here, not inside run(): a load's clock starts at run() and imports are not load time.
import gpuload.backend.host  # noqa: F401  (the CPU backend, built by backend_for)
from gpuload import config as config_mod
from gpuload.api import _normalize, _prepare, load
from gpuload.errors import CheckpointChangedError
from gpuload.format.bundle import Bundle
from gpuload.graph.store import _assign_all
from gpuload.scheduler import LoadStats

__all__ = ["load_checkpoint_sources", "last_stats", "requests_for"]

_last_stats: list[LoadStats] = []


def last_stats() -> list[LoadStats]:
    """Statistics of the most recent initializer run, one entry per checkpoint loaded."""
    return list(_last_stats)


def requests_for(variables, *, values: bool = True) -> dict:
    """The public :func:`gpuload.load` requests of ``variables``' checkpoint sources, by variable name.

    A plain source is a box of its tensor into a new buffer of the variable's dtype on its
    device; a warm start's vocabulary source is a remap request whose target holds the
    backup initializer's values (computed now, on the variable's device). ``values=False``
    (to plan only): that target is a :class:`~gpuload.Spec` of the variable instead.
    """
    from gpuload.api import Request, Spec

    out = {}
    for v in variables:
        src = v._init_source
        if src.remap is None or not values:
            target = Spec(tuple(v.shape), v.dtype, v.device)
            remap = None if src.remap is None else src.remap.plan_remap()
            out[v.op.name] = Request(src.tensor, box=src.box, target=target, remap=remap)
        else:
            out[v.op.name] = Request(
                src.tensor, box=src.box, target=src.remap.backup_value(v), remap=src.remap.plan_remap()
            )
    return out


def plan_for(prefix, variables, *, cfg=None):
    """The :class:`~gpuload.plan.Plan` that loads ``variables`` (all from checkpoint ``prefix``)."""
    cfg = cfg or config_mod.get()
    bundle = Bundle.open(prefix)
    check_sources_unchanged(bundle, variables)
    # Planned without computing any warm start's starting values (nor allocating anything).
    items = _normalize(requests_for(variables, values=False))
    allow_cast = any(v._init_source.allow_cast for v in variables)
    plan = _prepare(bundle, items, cfg, allow_cast, allocate=False, spec_for_remap=True)[0]
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
                f"replaced after init_from_checkpoint; call init_from_checkpoint again",
                path=bundle.index_path,
                tensor=name,
            )
        e = bundle.entry(name)
        (old_dtype, old_shape, old_slices), new = src.stored, (e.dtype, e.shape, e.slices)
        if (old_dtype, old_shape, old_slices) != new:
            what = []
            if old_shape != e.shape:
                what.append(f"shape {list(old_shape)} -> {list(e.shape)}")
            if old_dtype != e.dtype:
                what.append(f"dtype {dtype_name(old_dtype)} -> {dtype_name(e.dtype)}")
            if old_slices != e.slices:
                what.append(
                    f"stored slicing {[str(b) for b in old_slices] or 'whole'} -> "
                    f"{[str(b) for b in e.slices] or 'whole'}"
                )
            raise CheckpointChangedError(
                f"tensor {name!r}, which variable {v.op.name!r} loads, changed after init_from_checkpoint "
                f"validated it: {'; '.join(what)}; call init_from_checkpoint again",
                path=bundle.index_path,
                tensor=name,
            )
    for v in variables:
        old = v._init_source.index_id
        if old is not None and old != bundle.index_id:
            raise CheckpointChangedError(
                f"the checkpoint index was replaced after init_from_checkpoint read it ({old.describe()}; now "
                f"{bundle.index_id.describe()}): the variables would load data they were not validated "
                f"against; call init_from_checkpoint again",
                path=bundle.index_path,
            )


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
        bundle = Bundle.open(prefix)
        check_sources_unchanged(bundle, group)
        # The same opened bundle: the plan is built from the index that was just checked.
        result = load(bundle, requests_for(group), config=cfg, allow_cast=any(v._init_source.allow_cast for v in group))
        stats = result.stats
        remaps = [v._init_source.remap for v in group if v._init_source.remap is not None]
        mappings = {id(r.mapping): r.mapping for r in remaps}.values()
        stats.vocab_bytes = sum(r.rows.nbytes for r in remaps) + sum(m.nbytes for m in mappings)
        stats.vocab_s = sum(m.seconds for m in mappings)
        results.extend((v, result[v.op.name]) for v in group)
        stats_all.append(stats)
    _assign_all(results)
    _last_stats[:] = stats_all
