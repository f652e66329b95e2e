"""collective_load in this process over ``MPI.COMM_SELF`` (one rank, no mpiexec): its argument checks.

The multi-rank behaviour is tested under ``mpiexec`` (tests/test_distributed_mpi.py); these
are the checks every rank makes on its own requests before the first exchange, which must
refuse what :func:`gpuload.load` and :func:`gpuload.loader.load_checkpoints` refuse.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuload
from gpuload.errors import InvalidArgumentError, TargetError
from gpuload.plan import Remap

MPI = pytest.importorskip("mpi4py.MPI")  # gpuload.distributed.load imports it

EMB = np.arange(8, dtype=np.float32).reshape(4, 2)
ROWS = np.array([1, -1, 3, -1], np.int64)


@pytest.fixture
def ckpts(tmp_path):
    pa, pb = str(tmp_path / "a" / "m.ckpt"), str(tmp_path / "b" / "m.ckpt")
    gpuload.save_checkpoint(pa, {"emb": EMB})
    gpuload.save_checkpoint(pb, {"b": np.arange(3, dtype=np.float32)})
    return pa, pb


@pytest.fixture
def collective():
    """collective_load over a fresh one-rank communicator per call.

    A failed collective load retires its communicator for good (the ranks may be out of
    step), so each call gets a duplicate of ``COMM_SELF`` of its own.
    """
    from gpuload.distributed.load import collective_load

    comms = []

    def run(*args, **kwargs):
        comms.append(MPI.COMM_SELF.Dup())
        with gpuload.config.set(communicator=comms[-1], collective_timeout=30):
            return collective_load(*args, **kwargs)

    yield run
    for c in comms:
        c.Free()


@pytest.mark.parametrize("target", [gpuload.Spec((4, 2), np.float32, "cpu"), None], ids=["spec", "none"])
def test_a_remap_request_needs_an_array_of_starting_values(ckpts, collective, target):
    """As gpuload.load: a Spec (or no target) would hand out the rows the remap keeps uninitialised."""
    pa, _ = ckpts
    request = gpuload.Request("emb", target=target, remap=Remap(0, ROWS))
    with pytest.raises(InvalidArgumentError) as single:
        gpuload.load(pa, {"e": request})
    with pytest.raises(InvalidArgumentError) as multi:
        collective({pa: {"e": request}})
    assert str(multi.value) == str(single.value)
    assert "request 'e': a remap request needs an array target holding the starting values" in str(multi.value)


def test_a_remap_request_into_an_array_keeps_its_starting_values(ckpts, collective):
    pa, _ = ckpts
    start = np.full((4, 2), -7, np.float32)
    r = collective({pa: {"e": gpuload.Request("emb", target=start, remap=Remap(0, ROWS))}})
    assert r[pa]["e"] is start
    np.testing.assert_array_equal(start, [EMB[1], [-7, -7], EMB[3], [-7, -7]])


def test_one_checkpoint_given_twice_is_refused(ckpts, collective):
    from gpuload.format.bundle import Bundle

    pa, _ = ckpts
    with pytest.raises(InvalidArgumentError, match=rf"collective_load: checkpoint {pa} is given twice"):
        collective({pa: ["emb"], Bundle.open(pa): ["emb"]})


def test_allow_cast_is_per_checkpoint(ckpts, collective):
    pa, pb = ckpts
    f64 = ("emb", gpuload.Spec(dtype="float64"))
    f16 = ("b", gpuload.Spec(dtype="float16"))
    with pytest.raises(TargetError, match=r"tensor 'b' is float32 but the target .* is float16; pass allow_cast"):
        collective({pa: {"f64": f64}, pb: {"f16": f16}}, allow_cast={pa: True})
    r = collective({pa: {"f64": f64}, pb: ["b"]}, allow_cast={pa: True})
    assert r[pa]["f64"].dtype == np.float64 and np.array_equal(r[pa]["f64"], EMB)
    r = collective({pa: {"f64": f64}, pb: {"f16": f16}}, allow_cast=True)
    assert r[pb]["f16"].dtype == np.float16


def test_load_checkpoints_with_a_communicator_refuses_alike(ckpts):
    from gpuload import loader

    pa, pb = ckpts
    comms = [MPI.COMM_SELF.Dup() for _ in range(3)]
    try:
        with gpuload.config.set(communicator=comms[0]):
            with pytest.raises(TargetError, match="pass allow_cast"):
                loader.load_checkpoints(
                    {pa: ["emb"], pb: {"f16": ("b", gpuload.Spec(dtype="float16"))}}, allow_cast={pa: True}
                )
        with gpuload.config.set(communicator=comms[1]):
            seen = []
            r = loader.load_checkpoints({pb: ["b"]}, commit=seen.append)
            assert seen == [r] and loader.last_stats() == [r[pb].stats]
            assert type(r[pb].stats).__name__ == "CollectiveStats"
        with gpuload.config.set(communicator=comms[2]):
            with pytest.raises(RuntimeError, match="assignment failed"):
                loader.load_checkpoints({pa: ["emb"]}, commit=_fail)
            assert loader.last_stats() == [r[pb].stats]  # the failed step reports nothing
    finally:
        for c in comms:
            c.Free()


def _fail(results):
    raise RuntimeError("assignment failed")
