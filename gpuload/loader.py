"""One load step over several checkpoints: :func:`gpuload.load` per checkpoint, or one collective load.

:func:`load_checkpoints` takes requests in :func:`gpuload.load`'s form, grouped by
checkpoint, and returns every checkpoint's arrays or raises with none handed out. Without
a communicator it runs :func:`gpuload.load` once per checkpoint; with one
(``gpuload.config.set(communicator=MPI.COMM_WORLD)``) it runs
:func:`gpuload.distributed.load.collective_load`, which every rank of the communicator
joins. The TF1 initializer op (:mod:`gpuload.graph.ops`) is its client; :func:`last_stats`
reports the most recent completed step. This module sees requests and arrays only, never a variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gpuload import config as config_mod
from gpuload.api import LoadResult, load, open_checkpoints
from gpuload.scheduler import LoadStats

__all__ = ["last_stats", "load_checkpoints"]

_last_stats: list[LoadStats] = []


def last_stats() -> list[LoadStats]:
    """Statistics of the most recent completed :func:`load_checkpoints` step, one per checkpoint.

    A step counts once every checkpoint loaded and its ``commit`` (the initializer op's
    assignment of the values) returned: a step that failed anywhere, also after its load,
    leaves the previous statistics. Under a communicator: this rank's
    :class:`~gpuload.distributed.load.CollectiveStats`, one per checkpoint any rank loaded,
    in sorted prefix order.
    """
    return list(_last_stats)


def load_checkpoints(
    checkpoints,
    *,
    config=None,
    allow_cast: bool | Mapping = False,
    failed=None,
    commit: Callable[[dict[str, LoadResult]], object] | None = None,
) -> dict[str, LoadResult]:
    """Load requests from several checkpoints as one step.

    Parameters
    ----------
    checkpoints:
        ``{checkpoint: requests}``: a checkpoint prefix (or an opened
        :class:`~gpuload.format.bundle.Bundle`) and its requests in :func:`gpuload.load`'s
        form; each checkpoint at most once. Under a communicator, may be empty on a rank
        that loads nothing (it still joins).
    config:
        A :class:`gpuload.config.Config`; default :func:`gpuload.config.get`. Its
        ``communicator`` decides single-process or collective.
    allow_cast:
        As for :func:`gpuload.load`: one flag for every checkpoint, or ``{checkpoint:
        bool}`` keyed like ``checkpoints`` (left out: ``False``), so that a cast allowed
        for one checkpoint's requests allows none of another's.
    failed:
        An error this process hit while preparing the step. Under a communicator it is
        sent to the other ranks (they raise at once, naming this rank) and raised here;
        without one it is raised here.
    commit:
        Called with the results once every checkpoint loaded (the initializer op assigns
        the values); what it raises is raised here, and the step then does not count for
        :func:`last_stats`.

    Returns
    -------
    dict
        ``{checkpoint prefix: LoadResult}``, in the order loaded (collective: every
        checkpoint any rank loads, sorted; a checkpoint this rank asked nothing of gives an
        empty result with its stats). Nothing is returned when any checkpoint failed.

    Raises
    ------
    InvalidArgumentError
        Two entries name the same checkpoint (nothing is loaded), or ``allow_cast`` names
        a checkpoint that is not loaded.
    """
    cfg = config or config_mod.get()
    if cfg.communicator is not None:
        from gpuload.distributed.load import collective_load  # imports mpi4py

        results = collective_load(checkpoints, config=cfg, allow_cast=allow_cast, failed=failed)
    else:
        if failed is not None:
            raise failed
        # Every checkpoint is opened (and a duplicate refused) before any is loaded.
        steps = open_checkpoints(checkpoints, allow_cast, caller="load_checkpoints")
        results = {}
        for bundle, requests, cast in steps:
            results[bundle.prefix] = load(bundle, requests, config=cfg, allow_cast=cast)
    if commit is not None:
        commit(results)
    _last_stats[:] = [r.stats for r in results.values()]
    return results
