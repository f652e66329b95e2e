"""Where a new variable goes: variable scopes (name prefix, reuse, defaults) and device scopes.

* :func:`variable_scope` / :class:`VariableScope` / :func:`get_variable_scope`: TensorFlow
  keeps one stack of variable scopes per graph and thread; the stack lives in the graph
  (:class:`gpuload.graph.store.Graph`), so that threads and graphs do not see each other's
  scopes.
* :func:`device` (``tf.device``): one stack per thread, not per graph; it survives
  :func:`~gpuload.graph.store.reset_default_graph` and applies inside ``Graph.as_default()``
  blocks.
"""

from __future__ import annotations

import contextlib
import enum
import re
import threading

import numpy as np

from gpuload.distributed.placement import task_of as _task_of  # pure string parsing, no MPI
from gpuload.format.dtypes import as_numpy_dtype
from gpuload.graph.variables import _placement

__all__ = ["AUTO_REUSE", "VariableScope", "device", "get_variable_scope", "variable_scope"]

# TensorFlow's scope-name grammar (tensorflow/python/framework/ops.py).
_VALID_SCOPE_NAME = re.compile(r"^[A-Za-z0-9_.\-/>]*$")


class _ReuseMode(enum.Enum):
    """``AUTO_REUSE``: return the variable if it exists, create it otherwise."""

    AUTO_REUSE = 1

    def __repr__(self):
        return "AUTO_REUSE"


AUTO_REUSE = _ReuseMode.AUTO_REUSE


def _as_dtype(dtype) -> np.dtype:
    """numpy dtype, ``ml_dtypes.bfloat16`` or a TensorFlow name (``"float32"``) -> numpy dtype."""
    return as_numpy_dtype(dtype)


def _default_graph():
    # store.py builds graphs (and their scope stacks) on the classes here, so it is
    # imported at the call, not at the top.
    from gpuload.graph.store import get_default_graph

    return get_default_graph()


class VariableScope:
    """A variable scope: a name prefix, a reuse mode and defaults for :func:`get_variable`.

    Obtained from :func:`variable_scope` (``with variable_scope("a") as scope``) or
    :func:`get_variable_scope`. Passing it back to :func:`variable_scope` re-enters it.
    """

    def __init__(self, reuse, name: str = "", initializer=None, partitioner=None, dtype=np.dtype(np.float32)):
        self._reuse = reuse
        self._name = name
        self._initializer = initializer
        self._partitioner = partitioner
        self._dtype = _as_dtype(dtype)

    @property
    def name(self) -> str:
        return self._name

    @property
    def reuse(self):
        return self._reuse

    @property
    def initializer(self):
        return self._initializer

    @property
    def partitioner(self):
        return self._partitioner

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def reuse_variables(self) -> None:
        """Make this scope reuse variables from now on."""
        self._reuse = True

    def set_initializer(self, initializer) -> None:
        self._initializer = initializer

    def set_partitioner(self, partitioner) -> None:
        self._partitioner = partitioner

    def set_dtype(self, dtype) -> None:
        self._dtype = _as_dtype(dtype)

    def get_variable(self, name, shape=None, dtype=None, initializer=None, **kwargs):
        """:func:`get_variable` in this scope."""
        return _default_graph()._store._get_variable(self, name, shape, dtype, initializer, **kwargs)

    def __repr__(self):
        return f"<gpuload.VariableScope {self._name!r} reuse={self._reuse!r}>"


class _Devices(threading.local):
    """One thread's :func:`device` stack. Per thread, not per graph: it survives
    :func:`reset_default_graph` and applies inside ``Graph.as_default()`` blocks."""

    def __init__(self):
        self.devices: list[str | None] = []
        self.tasks: list[int | None] = []


_devices = _Devices()


def _scopes() -> list[VariableScope]:
    """The calling thread's variable-scope stack in the default graph."""
    return _default_graph()._thread_state.scopes


def _context_task() -> int | None:
    """The task the innermost :func:`device` block names (``/job:w/task:K/...``), ``None`` for none."""
    return _devices.tasks[-1] if _devices.tasks else None


def get_variable_scope() -> VariableScope:
    """The current variable scope (the root scope has name ``""``)."""
    return _scopes()[-1]


@contextlib.contextmanager
def variable_scope(name_or_scope, reuse=None, initializer=None, partitioner=None, dtype=None):
    """Open a variable scope: names of variables created inside get the prefix ``name/``.

    Parameters
    ----------
    name_or_scope : str or VariableScope
        A name, appended to the current scope's (``"outer/inner"``), or a
        :class:`VariableScope`, re-entered under its own full name.
    reuse : {None, True, False, AUTO_REUSE}
        ``True``: :func:`get_variable` returns existing variables and fails for missing
        ones; ``AUTO_REUSE``: returns existing ones, creates missing ones; ``None`` or
        ``False``: inherit (once a scope reuses, its sub-scopes do too, as in TensorFlow).
    initializer, partitioner, dtype :
        Defaults for :func:`get_variable` in this scope and its sub-scopes.

    Yields
    ------
    VariableScope
    """
    old = get_variable_scope()
    if isinstance(name_or_scope, VariableScope):
        base = name_or_scope
        name = base.name
        new_reuse = reuse if reuse else base.reuse
    elif isinstance(name_or_scope, str):
        if not name_or_scope or not _VALID_SCOPE_NAME.match(name_or_scope):
            raise ValueError(f"{name_or_scope!r} is not a valid scope name")
        base = old
        name = f"{old.name}/{name_or_scope}" if old.name else name_or_scope
        # Reuse is inherited by sub-scopes and cannot be switched off in them.
        new_reuse = reuse or old.reuse
    else:
        raise TypeError(f"variable_scope takes a name or a VariableScope, got {name_or_scope!r}")
    scope = VariableScope(
        new_reuse,
        name,
        initializer=base.initializer if initializer is None else initializer,
        partitioner=base.partitioner if partitioner is None else partitioner,
        dtype=base.dtype if dtype is None else dtype,
    )
    scopes = _scopes()  # this graph's: popped from it even if the default graph changed inside
    scopes.append(scope)
    try:
        yield scope
    finally:
        scopes.pop()


@contextlib.contextmanager
def device(spec):
    """Place variables created inside on a device (nestable; the innermost wins).

    Parameters
    ----------
    spec : str or None
        Any spelling :func:`gpuload.backend.placement.canonical_device` accepts
        (``"/gpu:0"``, ``"/device:CPU:0"``...). ``None`` clears the enclosing devices:
        variables then go to the default device.

    Yields
    ------
    str or None
        The canonical device string.

    Notes
    -----
    Availability is checked when a variable is created, not here (as in TensorFlow,
    where placement happens later).
    """
    dev = None if spec is None else _placement().canonical_device(spec)
    _devices.devices.append(dev)
    _devices.tasks.append(_task_of(spec))
    try:
        yield dev
    finally:
        _devices.devices.pop()
        _devices.tasks.pop()


def _context_device() -> str:
    dev = _devices.devices[-1] if _devices.devices else None
    return _placement().default_device() if dev is None else dev
