"""The initializer op: own initializers, checkpoint loads through the public load API, all or nothing.

:class:`InitOp` (from :func:`global_variables_initializer`, :func:`variables_initializer`
or ``Variable.initializer``) initializes its variables in one step:

1. every variable without a checkpoint source computes its own initial value on its
   device (a failure here stops the step before anything is read);
2. the variables with one (``init_from_checkpoint``, ``warm_start``) become public
   :class:`gpuload.Request` values (:func:`requests_for`), one set per checkpoint, checked
   against the index their call validated (:func:`check_sources_unchanged`), and load
   through :func:`gpuload.loader.load_checkpoints`: :func:`gpuload.load` per checkpoint, or,
   with a communicator configured, one collective load over its ranks
   (:func:`gpuload.distributed.load.collective_load`);
3. only then is every value assigned; a failure anywhere leaves every variable of the step
   as it was.

The variables' checkpoint sources (``_init_source``) and ``_assign`` are this layer's own
state: nothing below the graph layer sees a variable.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence

from gpuload import config as config_mod
from gpuload import loader
from gpuload.api import Request, Spec, plan_load
from gpuload.distributed import NotLocalError
from gpuload.errors import CheckpointChangedError, UninitializedVariableError
from gpuload.format import dtypes as _dt
from gpuload.format.bundle import Bundle
from gpuload.graph.store import global_variables
from gpuload.graph.variables import PartitionedVariable, Variable

__all__ = [
    "InitOp",
    "check_sources_unchanged",
    "global_variables_initializer",
    "requests_for",
    "variables_initializer",
]


class InitOp:
    """An initialization step over a fixed list of variables; :meth:`run` performs it.

    Obtained from :func:`global_variables_initializer`, :func:`variables_initializer` or
    ``Variable.initializer``.
    """

    def __init__(self, variables: Iterable[Variable], name: str = "init"):
        self._variables = list(variables)
        self.name = name

    @property
    def variables(self) -> list[Variable]:
        return list(self._variables)

    def run(self, session=None, feed_dict=None) -> None:
        """Initialize the variables: load those with a checkpoint source, then run the others' own initializers.

        ``session`` and ``feed_dict`` are accepted for TensorFlow compatibility and ignored.

        Raises
        ------
        Exception
            Whatever the checkpoint load raises; in that case no variable's own
            initializer has run and no variable of this step is half-initialized.
        """
        _run_initializers(self._variables)

    def __repr__(self):
        return f"<gpuload.InitOp {self.name!r} over {len(self._variables)} variables>"


def variables_initializer(var_list: Iterable, name: str = "init") -> InitOp:
    """An :class:`InitOp` over ``var_list`` (variables; a :class:`PartitionedVariable` stands for its parts)."""
    flat: list[Variable] = []
    for v in var_list:
        if isinstance(v, PartitionedVariable):
            flat.extend(v._get_variable_list())
        elif isinstance(v, Variable):
            flat.append(v)
        else:
            raise TypeError(f"variables_initializer takes gpuload variables, got {v!r}")
    return InitOp(flat, name=name)


def global_variables_initializer() -> InitOp:
    """An :class:`InitOp` over :func:`global_variables` as they are now (as TensorFlow)."""
    return variables_initializer(global_variables(), name="init")


# ---- the step


def _run_initializers(variables: Sequence[Variable]) -> None:
    """Initialize ``variables``: checkpoint-sourced ones through the load API, the rest by their initializers.

    Own initial values are computed first (they may fail, e.g. for a bad constant), then
    the checkpoint requests are built and loaded (all or nothing), and only then is every
    value installed: a failure anywhere leaves every variable of this run as it was.
    Overridable (tests) by replacing this module attribute.
    """
    variables = list(dict.fromkeys(variables))  # keep order, drop duplicates
    cfg = config_mod.get()
    collective = cfg.communicator is not None
    try:
        if collective:
            variables = _local_variables(variables, cfg.communicator)  # the others' parts hold no buffer here
        sourced = [v for v in variables if v._init_source is not None]
        own = [v for v in variables if v._init_source is None]
        values = [v._initializer_fn() for v in own]
        groups = _checkpoint_groups(sourced)
    except BaseException as exc:
        if collective:  # the other ranks wait in the load's first exchange: answer with the error
            try:
                loader.load_checkpoints({}, config=cfg, failed=exc)
            except Exception:  # noqa: BLE001 - it raises exc, or the exchange failed: exc is raised
                pass
        raise
    before = [(v, v._value) for v in sourced]
    try:
        if sourced or collective:  # with a communicator every rank joins, even with nothing to load
            # Assigned inside the load step: the step (loader.last_stats) counts only if it succeeds.
            _load(groups, cfg, lambda loaded: _assign_all([*loaded, *zip(own, values)]))
        else:
            _assign_all(list(zip(own, values)))
    except BaseException:
        for v, old in before:  # the loaded ones too: all or nothing
            v._value = old
        raise


def _checkpoint_groups(sourced) -> list[tuple[Bundle, list[Variable], dict]]:
    """Per checkpoint: the opened bundle (checked unchanged), its variables and their requests."""
    by_prefix = collections.defaultdict(list)
    for v in sourced:
        by_prefix[v._init_source.prefix].append(v)
    out = []
    for prefix, group in by_prefix.items():
        bundle = Bundle.open(prefix)
        check_sources_unchanged(bundle, group)
        # The same opened bundle loads: the plan is built from the index just checked.
        out.append((bundle, group, requests_for(group)))
    return out


def _load(groups, cfg, assign: Callable[[list[tuple[Variable, object]]], None]) -> None:
    """Load every group's requests (one step, all checkpoints) and ``assign`` the ``(variable, array)`` pairs.

    Each checkpoint's requests load with that checkpoint's ``allow_cast`` (any of its
    variables' ``init_from_checkpoint(..., allow_cast=True)``), never another's.
    """

    def commit(results) -> None:
        pairs: list[tuple[Variable, object]] = []
        for bundle, group, _ in groups:
            result = results.get(bundle.prefix)
            if result is None:
                pairs.extend((v, None) for v in group)
                continue
            _count_vocab(result.stats, group)
            pairs.extend((v, result.get(v.op.name)) for v in group)
        missing = [v.name for v, a in pairs if a is None]
        if missing:
            raise UninitializedVariableError(
                f"the checkpoint load returned without values for {len(missing)} variables: "
                + ", ".join(missing[:10])
                + (" ..." if len(missing) > 10 else "")
            )
        assign(pairs)

    loader.load_checkpoints(
        {bundle: requests for bundle, _, requests in groups},
        config=cfg,
        allow_cast={bundle: any(v._init_source.allow_cast for v in group) for bundle, group, _ in groups},
        commit=commit,
    )


def _count_vocab(stats, group) -> None:
    """A warm start's vocabulary work, on the load's stats (``vocab_bytes``, ``vocab_s``)."""
    remaps = [v._init_source.remap for v in group if v._init_source.remap is not None]
    mappings = {id(r.mapping): r.mapping for r in remaps}.values()
    stats.vocab_bytes = sum(r.rows.nbytes for r in remaps) + sum(m.nbytes for m in mappings)
    stats.vocab_s = sum(m.seconds for m in mappings)


def _assign_all(pairs) -> None:
    """``v._assign(array)`` for every ``(v, array)`` pair, all or nothing.

    A failure or an interrupt in the middle puts back the values the variables had, so a
    failed ``run()`` never leaves some variables loaded and others not.
    """
    previous = []
    try:
        for v, array in pairs:
            previous.append((v, v._value))  # before _assign: an interrupt right after it is undone too
            v._assign(array)
    except BaseException:
        for v, old in previous:
            v._value = old
        raise


# ---- variables -> requests


def requests_for(variables, *, values: bool = True) -> dict[str, Request]:
    """The public :func:`gpuload.load` requests of ``variables``' checkpoint sources, by variable name.

    A plain source is a box of its tensor into a new buffer of the variable's dtype on its
    device; a warm start's vocabulary source is a remap request whose target holds the
    backup initializer's values (computed now, on the variable's device). ``values=False``
    (to plan only, :func:`gpuload.plan_load`): that target is a :class:`~gpuload.Spec` of
    the variable instead.
    """
    out = {}
    for v in variables:
        src = v._init_source
        remap = None if src.remap is None else src.remap.plan_remap()
        if src.remap is None or not values:
            target = Spec(tuple(v.shape), v.dtype, v.device)
        else:
            target = src.remap.backup_value(v)
        out[v.op.name] = Request(src.tensor, box=src.box, target=target, remap=remap)
    return out


def plan_for(prefix, variables, *, cfg=None):
    """``(bundle, plan)``: the :class:`~gpuload.plan.Plan` that loads ``variables`` (all from checkpoint ``prefix``).

    Planned with :func:`gpuload.plan_load`, without computing any warm start's starting
    values (nor allocating anything).
    """
    cfg = cfg or config_mod.get()
    bundle = Bundle.open(prefix)
    check_sources_unchanged(bundle, variables)
    allow_cast = any(v._init_source.allow_cast for v in variables)
    return bundle, plan_load(bundle, requests_for(variables, values=False), config=cfg, allow_cast=allow_cast)


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


# ---- multi-process: which variables this rank holds


def _local_variables(variables, comm) -> list[Variable]:
    """The variables this rank holds under ``comm``; marks the others.

    A variable whose device names task ``k`` is held by rank ``k`` only; on the other
    ranks it keeps no value and reading it raises :class:`~gpuload.distributed.NotLocalError`.

    Raises
    ------
    ValueError
        A variable names a task outside the communicator's ranks.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    out = []
    for v in variables:
        task = v._task
        if task is not None and not 0 <= task < size:
            raise ValueError(
                f"variable {v.name!r} is placed on task {task}, but the communicator has {size} "
                f"ranks (tasks 0..{size - 1})"
            )
        if task is None or task == rank:
            v._not_local = None
            out.append(v)
        else:
            v._not_local = _not_local(task, rank, size)
            v._value = None
    return out


def _not_local(task: int, rank: int, size: int):
    def make(var):
        return NotLocalError(
            f"variable {var.name!r} is placed on task {task} (rank {task}); this process is rank {rank} "
            f"of {size} and holds no buffer for it: read it on rank {task}, or place it on a device "
            f"without a task ('/device:GPU:0') to have a copy on every rank"
        )

    return make
