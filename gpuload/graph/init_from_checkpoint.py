"""``init_from_checkpoint``: resolve an assignment map now, load when the initializer runs.

This follows ``tensorflow/python/training/checkpoint_utils.py`` (see
``shared/reference/tf-checkpoint-format.md`` §4) with these deliberate differences, each
one a place where TensorFlow fails late, fails confusingly, or misreads its own docs:

* Every problem is an :class:`~gpuload.errors.AssignmentMapError` (a ``ValueError``)
  raised at the call, before any variable is changed: missing tensor, missing scope
  member, shape mismatch (also for partitioned targets and in scope mode, where TensorFlow
  only fails when the initializer runs), dtype mismatch, unknown target, empty scope.
* ``{'old/': 'new'}`` (scope key, target without ``/`` that is not a variable) means the
  scope ``new/``, as TensorFlow documents; TensorFlow itself drops a character there.
* Messages name the variable, the checkpoint key and the checkpoint, never the whole
  checkpoint's variable map.
* A :class:`~gpuload.graph.variables.PartitionedVariable` object is accepted as a target, as
  its parts.
* ``allow_cast=True`` lets a floating variable load a tensor of another floating dtype
  (e.g. float32 into bfloat16), converted on the device.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuload.backend.contract import converts
from gpuload.errors import ArgumentTypeError, AssignmentMapError
from gpuload.format.names import close_matches
from gpuload.format.slices import Box
from gpuload.graph.store import _default_store
from gpuload.graph.variables import PartitionedVariable, Variable

if TYPE_CHECKING:
    from gpuload.format.bundle import Bundle

__all__ = ["CheckpointSource", "init_from_checkpoint"]


@dataclasses.dataclass(frozen=True)
class CheckpointSource:
    """Where a variable's initial value comes from: ``box`` of ``tensor`` in ``prefix``."""

    prefix: str
    tensor: str
    box: Box
    allow_cast: bool = False
    #: What the call validated, checked again when the load runs (``None``: not checked):
    #: the stored tensor's ``(dtype code, shape, stored slices)``...
    stored: tuple | None = None
    #: ...and the identity of the index file it was read from (:class:`~gpuload.format.bundle.IndexId`).
    index_id: object = None
    #: Set by ``warm_start`` for a vocabulary variable: a
    #: :class:`gpuload.graph.warm_start.VocabRemap` (gather rows + backup initializer).
    remap: object = None


def init_from_checkpoint(ckpt_dir_or_file, assignment_map, *, allow_cast: bool = False) -> None:
    """Make variables load their initial values from a checkpoint (TensorFlow semantics).

    Nothing is read here but the checkpoint's index. The tensors stream into the
    variables' device buffers when the initializer runs
    (``gpuload.global_variables_initializer().run()``).

    Parameters
    ----------
    ckpt_dir_or_file:
        A checkpoint directory (its ``checkpoint`` state file names the newest checkpoint)
        or a checkpoint prefix such as ``/ckpts/model.ckpt-1000``.
    assignment_map:
        A dict, or an iterable of ``(checkpoint_key, target)`` pairs (which lets one tensor
        feed several variables). Pairs are applied sorted by checkpoint key, later ones
        winning. Forms:

        * ``'old_scope/': 'new_scope/'``: every variable under ``new_scope/`` loads from
          ``old_scope/<same rest of name>``; ``'/'`` on either side means the root;
        * ``'old_scope/var': 'new_scope/var'``: one variable (or a partitioned variable by
          its name) from one tensor;
        * ``'old_scope/var': variable``: a variable object;
        * ``'old_scope/var': [parts]``: a partitioned variable's parts
          (``var._get_variable_list()``), or the partitioned variable itself.
    allow_cast:
        Allow a floating variable to load a tensor of a different floating dtype.

    Raises
    ------
    ValueError
        (:class:`~gpuload.errors.AssignmentMapError` or
        :class:`~gpuload.errors.CheckpointNotFoundError`) when the checkpoint is missing, a
        tensor or scope member is missing, a target is unknown, or shapes or dtypes differ.

    Examples
    --------
    >>> gpuload.init_from_checkpoint("/ckpts", {"old_scope_1/": "new_scope_1/"})
    >>> gpuload.global_variables_initializer().run()
    """
    from gpuload.format.bundle import Bundle
    from gpuload.format.state import resolve_prefix

    if not isinstance(assignment_map, Mapping) and (
        isinstance(assignment_map, (str, bytes)) or not isinstance(assignment_map, Iterable)
    ):
        raise ArgumentTypeError(
            f"init_from_checkpoint: assignment_map must be a dict or a list of (checkpoint_key, target) pairs, "
            f"got {type(assignment_map).__name__}: {assignment_map!r}"
        )
    prefix = resolve_prefix(ckpt_dir_or_file)
    bundle = Bundle.open(prefix)
    ckpt = _Checkpoint(str(ckpt_dir_or_file), prefix, bundle)
    # One consistent view of the variables: other threads may create variables meanwhile.
    store = _StoreView(_default_store())
    pairs = list(assignment_map.items()) if isinstance(assignment_map, Mapping) else list(assignment_map)
    for item in pairs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise AssignmentMapError(
                f"assignment_map must be a dict or a list of (checkpoint_key, target) pairs; got item {item!r}"
            )
    for ckpt_key, _ in pairs:
        if not isinstance(ckpt_key, str):
            raise ArgumentTypeError(
                f"init_from_checkpoint: assignment_map keys must be checkpoint names (str), got "
                f"{type(ckpt_key).__name__}: {ckpt_key!r}"
            )
    pairs.sort(key=lambda p: p[0])

    plan: dict[int, tuple[Any, CheckpointSource]] = {}  # id(var) -> (var, source); later wins
    for ckpt_key, target in pairs:
        var = _as_variable_or_parts(target, store)
        if var is not None:
            for v, src in _one_to_one(ckpt, ckpt_key, var, target, allow_cast):
                plan[id(v)] = (v, src)
        else:
            for v, src in _scope(ckpt, ckpt_key, target, store, allow_cast):
                plan[id(v)] = (v, src)
    for v, src in plan.values():
        v._init_source = src


# Written by tf.train.Checkpoint (TF2 object-based checkpoints) next to the variables.
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_OBJECT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


class _StoreView:
    """The default graph's variables as they were when the call began (a snapshot)."""

    def __init__(self, store):
        self._store = store
        self.vars = store.snapshot()

    def collect_partitioned(self, name):
        return self._store.collect_partitioned(name, self.vars)


@dataclasses.dataclass
class _Checkpoint:
    given: str
    prefix: str
    bundle: Bundle

    def __post_init__(self):
        self.names = frozenset(self.bundle.names())

    def validated(self, key: str) -> tuple:
        """``(stored, index_id)`` of a :class:`CheckpointSource` for tensor ``key``."""
        e = self.bundle.entry(key)
        return (e.dtype, e.shape, e.slices), self.bundle.index_id

    def where(self) -> str:
        return (
            self.prefix
            if os.path.abspath(self.given) == os.path.abspath(self.prefix)
            else f"{self.prefix} (from {self.given})"
        )

    def _object_based_hint(self, key: str) -> str:
        """A TF2 object-based checkpoint (``tf.train.Checkpoint``, Keras) keys its variables
        by object path plus ``/.ATTRIBUTES/VARIABLE_VALUE``; say so, since a TF1 name misses."""
        if _OBJECT_GRAPH_KEY not in self.names or key.endswith(_OBJECT_SUFFIX):
            return ""
        if key + _OBJECT_SUFFIX in self.names:
            return f"; this is a TF2 object-based checkpoint: did you mean {key + _OBJECT_SUFFIX!r}?"
        example = next((n for n in sorted(self.names) if n.endswith(_OBJECT_SUFFIX)), None)
        shown = f" (e.g. {example!r})" if example else ""
        return (
            f"; this is a TF2 object-based checkpoint: its variables are stored under object paths "
            f"ending in {_OBJECT_SUFFIX!r}{shown}; map those keys (gpuload inspect lists them)"
        )

    def missing(self, key: str, what: str) -> AssignmentMapError:
        names = self.names
        close = close_matches(key, self.bundle.names())
        hint = f"; close names in the checkpoint: {', '.join(map(repr, close))}" if close else ""
        hint += self._object_based_hint(key)
        return AssignmentMapError(
            f"{what}: tensor {key!r} is not in checkpoint {self.where()} ({len(names)} tensors){hint}"
        )


def _as_variable_or_parts(target, store):
    """A Variable, a list of part Variables, or None when ``target`` is a scope name."""
    if isinstance(target, Variable):
        return target
    if isinstance(target, PartitionedVariable):
        return list(target._get_variable_list())
    if isinstance(target, (list, tuple)):
        if target and all(isinstance(v, Variable) for v in target):
            return list(target)
        raise AssignmentMapError(f"assignment_map target {target!r} is a list but not a non-empty list of variables")
    if not isinstance(target, str):
        raise AssignmentMapError(
            f"assignment_map target must be a variable, a list of partition variables, or a "
            f"name; got {type(target).__name__}"
        )
    found = store.vars.get(target)
    if found is not None:
        return found
    return store.collect_partitioned(target)


def _one_to_one(ckpt, key, var, target, allow_cast):
    label = f"variable {_label(var)}"
    if key not in ckpt.names:
        raise ckpt.missing(key, label)
    shape = tuple(ckpt.bundle.shape(key))
    src_dtype = np.dtype(ckpt.bundle.numpy_dtype(key))
    if not isinstance(var, list):
        if tuple(var.shape) != shape:
            raise AssignmentMapError(
                f"shape of {label} {list(var.shape)} does not match tensor {key!r} "
                f"{list(shape)} in checkpoint {ckpt.where()}"
            )
        _check_dtype(ckpt, key, src_dtype, var, allow_cast)
        return [(var, CheckpointSource(ckpt.prefix, key, Box.full(shape), allow_cast, *ckpt.validated(key)))]
    infos = [v._save_slice_info for v in var]
    if any(i is None for i in infos):
        bad = [v.op.name for v, i in zip(var, infos) if i is None]
        raise AssignmentMapError(
            f"{label}: a list target must hold the parts of one partitioned variable, but "
            f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a partition"
        )
    full_names = {i.full_name for i in infos}
    if len(full_names) != 1:
        raise AssignmentMapError(f"{label}: slices must all be from the same variable, got {sorted(full_names)}")
    full_shape = tuple(infos[0].full_shape)
    if full_shape != shape:
        raise AssignmentMapError(
            f"shape of partitioned variable {infos[0].full_name} {list(full_shape)} does not match "
            f"tensor {key!r} {list(shape)} in checkpoint {ckpt.where()}"
        )
    out = []
    for v, info in zip(var, infos):
        _check_dtype(ckpt, key, src_dtype, v, allow_cast)
        out.append((v, CheckpointSource(ckpt.prefix, key, info.box, allow_cast, *ckpt.validated(key))))
    return out


def _scope(ckpt, key, target, store, allow_cast):
    if not key.endswith("/"):
        names = [n for n in store.vars]
        close = close_matches(str(target), names)
        hint = f" Close variable names: {', '.join(map(repr, close))}." if close else ""
        raise AssignmentMapError(
            f"no variable named {target!r} (the target of tensor {key!r} of checkpoint "
            f"{ckpt.where()}). To map a whole scope, end both names with '/': "
            f"{{'scope/': 'other_scope/'}}.{hint}"
        )
    if target == "/" or target == "":
        scope = ""
    elif "/" in target:
        scope = target[: target.rindex("/")]
    else:
        scope = target  # TensorFlow documents {'old/': 'new'} as the scope new/
    members = []
    for n in store.vars:
        if scope and not n.startswith(scope + "/"):
            continue
        members.append(n[: n.index("/part_")] if "/part_" in n else n)
    members = sorted(set(members))
    if not members:
        raise AssignmentMapError(
            f"scope {scope + '/' if scope else '/'!r} (the target of scope {key!r} of checkpoint "
            f"{ckpt.where()}) holds no variables"
        )
    out = []
    for n in members:
        rest = n[len(scope) :]
        if scope:
            rest = rest[1:]
        full = rest if key == "/" else key + rest
        if full.endswith("/"):
            full = full[:-1]
        var = store.vars.get(n)
        if var is None:
            var = store.collect_partitioned(n)
        if full not in ckpt.names:
            raise ckpt.missing(full, f"variable {n!r} of scope mapping {{{key!r}: {target!r}}}")
        out.extend(_one_to_one(ckpt, full, var, n, allow_cast))
    return out


def _check_dtype(ckpt, key, src_dtype, var, allow_cast):
    dst = np.dtype(var.dtype)
    if dst == src_dtype:
        return
    if allow_cast and converts(src_dtype, dst):
        return
    hint = " (pass allow_cast=True to convert between floating dtypes)" if converts(src_dtype, dst) else ""
    raise AssignmentMapError(
        f"dtype of variable {var.op.name!r} ({dst.name}) does not match tensor {key!r} "
        f"({src_dtype.name}) in checkpoint {ckpt.where()}{hint}"
    )


def _label(var) -> str:
    if isinstance(var, list):
        info = var[0]._save_slice_info
        return repr(info.full_name) if info is not None else repr(var[0].op.name)
    return repr(var.op.name)
