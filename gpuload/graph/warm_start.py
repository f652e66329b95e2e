"""``warm_start`` and ``VocabInfo``: TensorFlow's warm start, with vocabulary remaps on the device.

This follows ``tf.compat.v1.train.warm_start`` (``tensorflow/python/training/
warm_starting_util.py``) and the remap of ``checkpoint_ops._load_and_remap_matrix``:

* ``vars_to_warm_start``: a regex string is matched (``re.match``, i.e. from the start)
  against the names (``"scope/v:0"``, ``"scope/v/part_0:0"``) of the *trainable*
  variables; a list of regex strings against *all* variables; a list of variable
  objects (or parts; a :class:`~gpuload.graph.variables.PartitionedVariable` stands for its
  parts) is taken as it is; ``None`` selects the trainable variables but warm-starts only
  those with a :class:`VocabInfo`. Parts are grouped under their partitioned variable's
  name, and that name is what ``var_name_to_vocab_info`` and ``var_name_to_prev_var_name``
  are keyed by.
* A selected variable without a ``VocabInfo`` loads as
  :func:`~gpuload.graph.init_from_checkpoint.init_from_checkpoint` would load it.
* A variable with a ``VocabInfo``: position ``j`` along ``axis`` of the new variable holds
  new token ``j``; if that token is among the first ``old_vocab_size`` old tokens (line
  ``i``), it gets slab ``i`` of the old tensor, otherwise, and for the ``num_oov_buckets``
  positions after the vocabulary, the ``backup_initializer``'s value (zeros by default).
  Old OOV rows are never carried over.

Where gpuload differs (each is a place where TensorFlow fails or silently does
something else):

* Every problem is a :class:`~gpuload.errors.WarmStartError` (a ``ValueError``) raised at
  the call, before any variable changes and before any tensor data is read: unknown names
  in either dict, a missing tensor, a vocabulary-axis size other than ``new_vocab_size +
  num_oov_buckets``, a shape mismatch on the other axes, an old vocabulary longer than the
  old tensor, a vocabulary file that is shorter than the size given, has an empty line or
  repeats a token (:class:`~gpuload.errors.VocabFileError`, naming file and line).
* Any floating or integer dtype; ``allow_cast=True`` converts between floating dtypes as
  for ``init_from_checkpoint``. 1-D (and N-D) vocabulary variables; targets partitioned
  along any axis, the vocabulary axis included; checkpoints saved partitioned; every
  gpuload initializer and ``constant_initializer`` as ``backup_initializer``.
* The backup initializer is called once per part with the part's shape and its
  ``partition_info`` (TensorFlow calls it with the 1-D shape ``[number of missing
  values]``); constants give the same values, random initializers draw from the variable's
  shape (fans of the full variable, as for its own initializer).
* ``axis=1`` with an ``old_vocab_size`` smaller than the old vocabulary file is refused:
  TensorFlow ignores ``old_vocab_size`` there (its column remap uses the whole file),
  contrary to ``VocabInfo``'s documentation. ``-1``, or a file of exactly that many lines,
  means the same under both readings and loads.
* Object-based (TF2) checkpoints' name mapping is not applied: names are looked up as they
  are (use ``var_name_to_prev_var_name``).

The remap is a plan feature: the initializer run plans gather copies whose source rows
come from the vocabulary mapping (see :mod:`gpuload.plan.plan`), reads only the needed old
rows when CRC verification is off, and gathers them on the part's device.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import os
import re
import time
from collections.abc import Mapping

import numpy as np

from gpuload.backend.contract import converts
from gpuload.errors import VocabFileError, WarmStartError
from gpuload.format.slices import Box
from gpuload.graph.init_from_checkpoint import CheckpointSource, init_from_checkpoint
from gpuload.graph.initializers import PartitionInfo, Zeros
from gpuload.graph.store import _VariableStore, global_variables
from gpuload.graph.variables import PartitionedVariable, Variable
from gpuload.graph.vocab import read_vocab, vocab_mapping

__all__ = ["VocabInfo", "VocabRemap", "warm_start"]


class VocabInfo(
    collections.namedtuple(
        "VocabInfo",
        ["new_vocab", "new_vocab_size", "num_oov_buckets", "old_vocab", "old_vocab_size", "backup_initializer", "axis"],
    )
):
    """Vocabulary of a warm-started variable (``tf.compat.v1.train.VocabInfo``).

    Parameters
    ----------
    new_vocab:
        Path of the new vocabulary file (one token per line).
    new_vocab_size:
        How many of its first lines the variable uses.
    num_oov_buckets:
        OOV positions after the vocabulary (they get the backup initializer's values).
    old_vocab:
        Path of the vocabulary file the checkpoint's tensor was trained with.
    old_vocab_size:
        How many of its first lines the old tensor used; ``-1``: every line. With
        ``axis=1`` it must be ``-1`` or the file's length (TensorFlow ignores it there).
    backup_initializer:
        Initializer of the positions not found in the old vocabulary (default: zeros).
        Any gpuload initializer (``constant_initializer(0.25)``, ``truncated_normal_initializer``,
        ...) or a callable ``(shape, dtype=..., partition_info=...) -> array``.
    axis:
        The variable's axis the vocabulary runs along: 0 (embeddings, biases) or 1
        (output layers ``[hidden, classes]``).

    Raises
    ------
    ValueError
        ``axis`` is neither 0 nor 1 (as TensorFlow).
    """

    __slots__ = ()

    def __new__(
        cls, new_vocab, new_vocab_size, num_oov_buckets, old_vocab, old_vocab_size=-1, backup_initializer=None, axis=0
    ):
        if axis != 0 and axis != 1:
            raise WarmStartError(f"The only supported values for the axis argument are 0 and 1.  Provided axis: {axis}")
        return super().__new__(
            cls, new_vocab, new_vocab_size, num_oov_buckets, old_vocab, old_vocab_size, backup_initializer, axis
        )


@dataclasses.dataclass(eq=False)
class _Mapping:
    """The old index of every new token of one (new vocab, old vocab) pair."""

    rows: np.ndarray
    nbytes: int  # vocabularies + mapping, the host memory the build held
    seconds: float


@dataclasses.dataclass(frozen=True, eq=False)
class VocabRemap:
    """A part's remap: which old slab each position along ``axis`` takes, and the backup.

    Attached to a variable's checkpoint source by :func:`warm_start`; the initializer op
    (:func:`gpuload.graph.ops.requests_for`) turns it into a remap request: a
    :class:`gpuload.plan.Remap` and, as the target, :meth:`backup_value` (the prefill).
    """

    axis: int
    rows: np.ndarray
    mapping: _Mapping
    backup: object
    partition_info: PartitionInfo | None

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes)

    @property
    def seconds(self) -> float:
        return self.mapping.seconds

    def plan_remap(self):
        from gpuload.plan import Remap

        return Remap(self.axis, self.rows)

    def backup_value(self, var):
        """The backup initializer's value for part ``var``, computed on its device."""
        fn = _VariableStore._init_fn(
            var.op.name, self.backup, None, tuple(var.shape), var.dtype, var.device, self.partition_info
        )
        return fn()


def warm_start(
    ckpt_to_initialize_from,
    vars_to_warm_start=".*",
    var_name_to_vocab_info=None,
    var_name_to_prev_var_name=None,
    *,
    allow_cast: bool = False,
) -> None:
    """Warm-start variables from a checkpoint (``tf.compat.v1.train.warm_start``).

    Nothing but the checkpoint's index and the vocabulary files is read here; the
    variables load (and remap) when their initializer runs
    (``gpuload.global_variables_initializer().run()``).

    Parameters
    ----------
    ckpt_to_initialize_from:
        A checkpoint directory or prefix.
    vars_to_warm_start:
        A regex string (trainable variables), a list of regex strings (all variables), a
        list of variables / parts / partitioned variables, or ``None`` (only the variables
        in ``var_name_to_vocab_info``). Default ``'.*'``: every trainable variable.
    var_name_to_vocab_info:
        ``{variable name: VocabInfo}``; names of whole (partitioned) variables.
    var_name_to_prev_var_name:
        ``{variable name: name of its tensor in the checkpoint}``.
    allow_cast:
        Let a floating variable load a tensor of another floating dtype (converted on the
        device), as ``init_from_checkpoint(..., allow_cast=True)``.

    Raises
    ------
    ValueError
        :class:`~gpuload.errors.WarmStartError` (or its
        :class:`~gpuload.errors.VocabFileError`, or the
        :class:`~gpuload.errors.AssignmentMapError` of ``init_from_checkpoint``) for every
        problem, at the call and before any variable changes; see the module notes.

    Examples
    --------
    >>> gpuload.warm_start("/ckpts/run1", ".*", {"emb": gpuload.VocabInfo("new.txt", 800, 2, "old.txt")})
    >>> gpuload.global_variables_initializer().run()
    """
    from gpuload.format.bundle import Bundle
    from gpuload.format.state import resolve_prefix

    prefix = resolve_prefix(ckpt_to_initialize_from)
    bundle = Bundle.open(prefix)
    names = frozenset(bundle.names())
    where = (
        prefix
        if os.path.abspath(str(ckpt_to_initialize_from)) == os.path.abspath(prefix)
        else f"{prefix} (from {ckpt_to_initialize_from})"
    )
    grouped = _grouped_variables(vars_to_warm_start)
    vocab_infos = _as_dict(var_name_to_vocab_info, "var_name_to_vocab_info")
    prev_names = _as_dict(var_name_to_prev_var_name, "var_name_to_prev_var_name")

    prev_used, vocab_used = set(), set()
    for var_name in grouped:
        if prev_names.get(var_name):
            prev_used.add(var_name)
        if vocab_infos.get(var_name):
            vocab_used.add(var_name)
    viable = list(grouped)
    for what, given, used in (
        ("var_name_to_prev_var_name", prev_names, prev_used),
        ("var_name_to_vocab_info", vocab_infos, vocab_used),
    ):
        unused = [n for n in given if n not in used]
        if unused:
            hints = [h for n in unused for h in difflib.get_close_matches(str(n), viable, n=1)]
            hint = f" Close names: {', '.join(map(repr, hints))}." if hints else ""
            raise WarmStartError(
                f"{what} names variable(s) {', '.join(map(repr, unused))} that are not among the "
                f"variables selected by vars_to_warm_start={vars_to_warm_start!r}. Perhaps you misspelled "
                f"them?{hint} Selected: {_short_list(viable)}"
            )

    vocab_sources = []  # (variable, CheckpointSource)
    plain = []  # (checkpoint key, variable or parts)
    mappings: dict = {}
    for var_name, variables in grouped.items():
        prev = prev_names.get(var_name) or var_name
        info = vocab_infos.get(var_name)
        if info:
            vocab_sources.extend(
                _vocab_sources(var_name, variables, prev, info, bundle, names, prefix, where, allow_cast, mappings)
            )
        elif vars_to_warm_start:
            target = variables[0] if len(variables) == 1 and variables[0]._save_slice_info is None else list(variables)
            plain.append((prev, target))
    if plain:
        # Checks everything before it changes anything, like the vocabulary checks above.
        # The prefix resolved above, not the directory again: a checkpoint saved there in
        # between must not mix its step into this warm start.
        init_from_checkpoint(prefix, plain, allow_cast=allow_cast)
    for v, src in vocab_sources:
        v._init_source = src


def _as_dict(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WarmStartError(f"{what} must be a dict, got {type(value).__name__}")
    return dict(value)


def _short_list(names, n: int = 20) -> str:
    shown = ", ".join(map(repr, names[:n]))
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)})"


def _grouped_variables(vars_to_warm_start) -> dict:
    """``{variable name: [Variable or parts]}`` in store order (TF's ``_get_grouped_variables``)."""
    everything = global_variables()
    if vars_to_warm_start is None or isinstance(vars_to_warm_start, str):
        regex = _compile(vars_to_warm_start) if vars_to_warm_start is not None else None
        chosen = [v for v in everything if v.trainable and (regex is None or regex.match(v.name))]
    elif isinstance(vars_to_warm_start, (list, tuple)):
        items = list(vars_to_warm_start)
        if all(isinstance(x, str) for x in items):
            chosen = []
            for pattern in items:
                regex = _compile(pattern)
                chosen += [v for v in everything if regex.match(v.name)]
        elif all(isinstance(x, (Variable, PartitionedVariable)) for x in items):
            chosen = []
            for x in items:
                chosen += x._get_variable_list() if isinstance(x, PartitionedVariable) else [x]
        else:
            raise WarmStartError(
                "If `vars_to_warm_start` is a list, it must be all `Variable` or all `str`.  Given types "
                f"are {[type(x).__name__ for x in items]}"
            )
    else:
        raise WarmStartError(
            f"`vars_to_warm_start` must be a `list` or `str` (or None). Given type is "
            f"{type(vars_to_warm_start).__name__}"
        )
    grouped: dict = {}
    for v in dict.fromkeys(chosen):  # a variable matched by two regexes counts once
        info = v._save_slice_info
        grouped.setdefault(info.full_name if info is not None else v.op.name, []).append(v)
    return grouped


def _compile(pattern: str):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise WarmStartError(f"vars_to_warm_start: {pattern!r} is not a valid regular expression: {e}") from None


def _int(value, what: str, var_name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise WarmStartError(
            f"VocabInfo of variable {var_name!r}: {what} must be an integer >= {minimum}, got {value!r}"
        )
    return int(value)


def _vocab_sources(var_name, variables, prev, info, bundle, names, prefix, where, allow_cast, mappings):
    """Check one vocabulary variable against the checkpoint and its vocabularies; its sources."""
    label = f"variable {var_name!r}"
    new_size = _int(info.new_vocab_size, "new_vocab_size", var_name, 1)
    oov = _int(info.num_oov_buckets, "num_oov_buckets", var_name, 0)
    old_size = (
        -1
        if info.old_vocab_size is None or info.old_vocab_size == -1
        else _int(info.old_vocab_size, "old_vocab_size (or -1)", var_name, 1)
    )
    axis = info.axis
    if not info.new_vocab or not info.old_vocab:
        raise WarmStartError(
            f"VocabInfo of {label}: new_vocab and old_vocab must be file paths, got "
            f"{info.new_vocab!r} and {info.old_vocab!r}"
        )
    if axis == 1 and old_size != -1:
        # TensorFlow's _warm_start_var_with_vocab drops old_vocab_size for axis=1: its column
        # remap reads the whole old vocabulary file, although VocabInfo documents the size
        # as limiting it (and its own axis=1 example passes one). Where the two meanings
        # differ, neither is silently picked.
        lines = len(read_vocab(info.old_vocab, -1, what=f"old_vocab of {label}"))
        if lines > old_size:
            raise WarmStartError(
                f"VocabInfo of {label}: old_vocab_size={old_size} with axis=1, but old_vocab "
                f"{os.fspath(info.old_vocab)!r} has {lines} lines. TensorFlow's warm start ignores "
                f"old_vocab_size for axis=1 (it remaps columns against the whole old vocabulary "
                f"file), contrary to VocabInfo's documentation, so the two give different values: "
                f"pass old_vocab_size=-1 (TensorFlow's behaviour) or an old_vocab file of exactly "
                f"{old_size} lines"
            )
    if prev not in names:
        close = difflib.get_close_matches(prev, sorted(names), n=3)
        hint = f"; close names in the checkpoint: {', '.join(map(repr, close))}" if close else ""
        raise WarmStartError(f"{label}: tensor {prev!r} is not in checkpoint {where} ({len(names)} tensors){hint}")
    infos = [v._save_slice_info for v in variables]
    if any(i is not None for i in infos):
        if any(i is None for i in infos):
            raise WarmStartError(f"{label}: a mix of partitions and whole variables shares this name")
        full_shape = tuple(infos[0].full_shape)
        boxes = [i.box for i in infos]
    else:
        full_shape = tuple(variables[0].shape)
        boxes = [Box.full(full_shape)]
    old_shape = tuple(bundle.shape(prev))
    rank = len(full_shape)
    if rank == 0 or axis >= rank:
        raise WarmStartError(
            f"{label} of shape {list(full_shape)} has no axis {axis} for its vocabulary (VocabInfo axis={axis})"
        )
    if len(old_shape) != rank:
        raise WarmStartError(
            f"{label} of shape {list(full_shape)} has rank {rank} but tensor {prev!r} in "
            f"checkpoint {where} has shape {list(old_shape)}"
        )
    if full_shape[axis] != new_size + oov:
        raise WarmStartError(
            f"{label} has {full_shape[axis]} positions along axis {axis} (shape {list(full_shape)}), but "
            f"new_vocab_size ({new_size}) + num_oov_buckets ({oov}) = {new_size + oov}"
        )
    for k, (n, m) in enumerate(zip(full_shape, old_shape)):
        if k != axis and n != m:
            raise WarmStartError(
                f"shape of {label} {list(full_shape)} does not match tensor {prev!r} {list(old_shape)} in "
                f"checkpoint {where} on axis {k} (only the vocabulary axis {axis} may differ)"
            )
    src_dtype = np.dtype(bundle.numpy_dtype(prev))
    for v in variables:
        dst = np.dtype(v.dtype)
        if dst == src_dtype:
            continue
        if not (allow_cast and converts(src_dtype, dst)):
            hint = " (pass allow_cast=True to convert between floating dtypes)" if converts(src_dtype, dst) else ""
            raise WarmStartError(
                f"dtype of {label} ({dst.name}) does not match tensor {prev!r} "
                f"({src_dtype.name}) in checkpoint {where}{hint}"
            )
    if src_dtype.hasobject:
        raise WarmStartError(
            f"{label}: tensor {prev!r} of dtype {src_dtype.name} cannot be remapped into "
            f"{np.dtype(variables[0].dtype).name} (strings are not gathered)"
        )

    key = (os.path.abspath(os.fspath(info.new_vocab)), new_size, os.path.abspath(os.fspath(info.old_vocab)), old_size)
    mapping = mappings.get(key)
    if mapping is None:
        t0 = time.perf_counter()
        old = read_vocab(info.old_vocab, old_size, what=f"old_vocab of {label}")
        if len(old) > old_shape[axis]:
            raise VocabFileError(
                f"old_vocab of {label} has {len(old)} tokens but tensor {prev!r} in checkpoint {where} has only "
                f"{old_shape[axis]} positions along axis {axis} (pass old_vocab_size)",
                path=info.old_vocab,
            )
        new = read_vocab(info.new_vocab, new_size, what=f"new_vocab of {label}")
        rows = vocab_mapping(new, old)
        mapping = mappings[key] = _Mapping(rows, old.nbytes + new.nbytes + rows.nbytes, time.perf_counter() - t0)
    full_rows = np.concatenate([mapping.rows, np.full(oov, -1, dtype=np.int64)])
    backup = Zeros() if info.backup_initializer is None else info.backup_initializer
    # What was validated here, checked again at run() (ops.check_sources_unchanged): a
    # checkpoint saved again in between must not be remapped unnoticed.
    e = bundle.entry(prev)
    stored = ((e.dtype, e.shape, e.slices), bundle.index_id)
    out = []
    for v, box in zip(variables, boxes):
        part_rows = full_rows[box.start[axis] : box.start[axis] + box.shape[axis]]
        pinfo = None if v._save_slice_info is None else PartitionInfo(full_shape, box.start)
        remap = VocabRemap(axis, part_rows, mapping, backup, pinfo)
        out.append((v, CheckpointSource(prefix, prev, box, allow_cast, *stored, remap=remap)))
    return out
