"""One load step over several checkpoints: :func:`gpuload.load` per checkpoint, or one collective load.

:func:`load_checkpoints` takes requests in :func:`gpuload.load`'s form, grouped by
checkpoint, and returns every checkpoint's arrays or raises with none handed out. Without
a communicator it runs :func:`gpuload.load` once per checkpoint; with one
(``gpuload.config.set(communicator=MPI.COMM_WORLD)``) it runs
:func:`gpuload.distributed.load.collective_load`, which every rank of the communicator
joins. The TF1 initializer op (:mod:`gpuload.graph.ops`) is its client; :func:`last_stats`
reports the most recent step. This module sees requests and arrays only, never a variable.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpuload import config as config_mod
from gpuload.api import LoadResult, load
from gpuload.errors import ArgumentTypeError
from gpuload.format.bundle import Bundle
from gpuload.scheduler import LoadStats

__all__ = ["last_stats", "load_checkpoints"]

_last_stats: list[LoadStats] = []


def last_stats() -> list[LoadStats]:
    """Statistics of the most recent :func:`load_checkpoints` (an initializer run), one per checkpoint.

    Under a communicator: this rank's :class:`~gpuload.distributed.load.CollectiveStats`,
    one per checkpoint any rank loaded, in sorted prefix order.
    """
    return list(_last_stats)


def load_checkpoints(checkpoints, *, config=None, allow_cast: bool = False, failed=None) -> dict[str, LoadResult]:
    """Load requests from several checkpoints as one step.

    Parameters
    ----------
    checkpoints:
        ``{checkpoint: requests}``: a checkpoint prefix (or an opened
        :class:`~gpuload.format.bundle.Bundle`) and its requests in :func:`gpuload.load`'s
        form. Under a communicator, may be empty on a rank that loads nothing (it still
        joins).
    config:
        A :class:`gpuload.config.Config`; default :func:`gpuload.config.get`. Its
        ``communicator`` decides single-process or collective.
    allow_cast:
        As for :func:`gpuload.load`.
    failed:
        An error this process hit while preparing the step. Under a communicator it is
        sent to the other ranks (they raise at once, naming this rank) and raised here;
        without one it is raised here.

    Returns
    -------
    dict
        ``{checkpoint prefix: LoadResult}``, in the order loaded (collective: every
        checkpoint any rank loads, sorted; a checkpoint this rank asked nothing of gives an
        empty result with its stats). Nothing is returned when any checkpoint failed.
    """
    cfg = config or config_mod.get()
    if not isinstance(checkpoints, Mapping):
        raise ArgumentTypeError(
            f"load_checkpoints: checkpoints must be a dict {{checkpoint: requests}}, got {type(checkpoints).__name__}"
        )
    if cfg.communicator is not None:
        from gpuload.distributed.load import collective_load  # imports mpi4py

        results = collective_load(checkpoints, config=cfg, allow_cast=allow_cast, failed=failed)
    else:
        if failed is not None:
            raise failed
        results = {}
        for checkpoint, requests in checkpoints.items():
            bundle = checkpoint if isinstance(checkpoint, Bundle) else Bundle.open(checkpoint)
            results[bundle.prefix] = load(bundle, requests, config=cfg, allow_cast=allow_cast)
    _last_stats[:] = [r.stats for r in results.values()]
    return results
