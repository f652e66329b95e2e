"""The read assignment of collective loads: pure, property-tested (no MPI needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuload.distributed import task_of
from gpuload.distributed.assign import assign_readers, collective_plan
from gpuload.format.bundle import Bundle
from gpuload.format.slices import Box
from gpuload.format.writer import save_checkpoint
from gpuload.plan import Request, build_plan


@st.composite
def needs(draw):
    nranks = draw(st.integers(1, 9))
    n = draw(st.integers(0, 40))
    sizes = draw(st.lists(st.integers(1, 1 << 20), min_size=n, max_size=n))
    needers = draw(st.lists(st.frozensets(st.integers(0, nranks - 1)), min_size=n, max_size=n))
    return nranks, sizes, needers


@given(needs())
@settings(max_examples=300, deadline=None)
def test_every_chunk_has_one_reader_that_needs_it_and_loads_balance(case):
    nranks, sizes, needers = case
    readers = assign_readers(sizes, needers, nranks)
    assert len(readers) == len(sizes)
    for r, need in zip(readers, needers):
        assert 0 <= r < nranks
        if need:
            assert r in need  # a rank that needs the chunk reads it: no transfer to itself
    # Chunks everyone needs: no rank reads more than an even share plus one chunk.
    everyone = frozenset(range(nranks))
    if sizes and all(n == everyone for n in needers):
        load = [0] * nranks
        for r, s in zip(readers, sizes):
            load[r] += s
        assert max(load) <= sum(sizes) / nranks + max(sizes)
    assert assign_readers(sizes, needers, nranks) == readers  # deterministic: every rank agrees


@given(st.integers(1, 6), st.integers(1, 8), st.data())
@settings(max_examples=60, deadline=None)
def test_collective_plan_delivers_every_needed_chunk_to_every_needer(tmp_path_factory, nranks, parts, data):
    rows = data.draw(st.integers(parts, 200))
    prefix = str(tmp_path_factory.mktemp("ck") / "ck")
    save_checkpoint(prefix, {"t": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)})
    bundle = Bundle.open(prefix)
    requests, owners = [], []
    step = -(-rows // parts)
    for start in range(0, rows, step):
        box = Box((start, 0), (min(step, rows - start), 3))
        for r in sorted(data.draw(st.frozensets(st.integers(0, nranks - 1), min_size=1))):
            requests.append(Request(f"p{start}@{r}", "t", box, np.dtype(np.float32)))
            owners.append(r)
    chunk_bytes = data.draw(st.sampled_from([16, 64, 256, 4096]))
    plan = build_plan(bundle, requests, chunk_bytes=chunk_bytes, verify_crc=data.draw(st.booleans()))
    cp = collective_plan(plan, owners, nranks)
    assert [t.chunk for t in cp.transfers] == list(range(len(plan.chunks)))
    delivered = {r: set() for r in range(nranks)}  # (chunk, dest) pairs each rank gets bytes for
    for t, chunk in zip(cp.transfers, plan.chunks):
        assert t.reader not in t.receivers
        for r in (t.reader, *t.receivers):
            delivered[r].update((t.chunk, c.dest) for c in chunk.copies)
        for c in chunk.copies:  # every copy's owner gets the chunk
            assert owners[c.dest] == t.reader or owners[c.dest] in t.receivers
        assert t.broadcast == (nranks > 2 and len(t.receivers) == nranks - 1)
    assert sum(cp.bytes_read_by(r) for r in range(nranks)) == plan.bytes_read  # each chunk read once
    assert "read by rank" in str(cp)


def test_assign_rejects_bad_input():
    with pytest.raises(ValueError, match="nranks"):
        assign_readers([1], [frozenset()], 0)
    with pytest.raises(ValueError, match="outside"):
        assign_readers([1], [frozenset({3})], 2)


@pytest.mark.parametrize(
    "spec,task",
    [
        ("/job:worker/task:3/device:GPU:0", 3),
        ("/job:worker/replica:0/task:3/device:CPU:0", 3),
        ("/job:Worker/Task:12/device:GPU:1", 12),
        ("/device:GPU:0", None),
        ("/gpu:1", None),
        ("cpu", None),
        (None, None),
    ],
)
def test_task_of(spec, task):
    assert task_of(spec) == task


def test_task_of_refuses_two_tasks():
    with pytest.raises(ValueError, match="more than one task"):
        task_of("/job:w/task:1/task:2/device:CPU:0")


def test_variables_remember_their_task_and_single_process_ignores_it():
    import gpuload as tf1

    tf1.reset_default_graph()
    v = tf1.get_variable(
        "v",
        shape=[4, 2],
        device=["/job:worker/task:1/device:CPU:0", "/cpu:0"],
        partitioner=tf1.fixed_size_partitioner(2),
        initializer=tf1.ones_initializer(),
    )
    with tf1.device("/job:worker/replica:0/task:2/device:CPU:0"):
        w = tf1.get_variable("w", shape=[2])
    parts = v._get_variable_list()
    assert [p._task for p in parts] == [1, None] and w._task == 2
    assert parts[0].device == "/device:CPU:0"
    tf1.global_variables_initializer().run()  # no communicator: every variable is local, as before
    assert np.array_equal(parts[0].value(), np.ones((2, 2), np.float32)) and w.value().shape == (2,)


def test_config_communicator_and_timeout():
    import gpuload as tf1
    from gpuload.config import Config

    assert Config().communicator is None and Config().collective_timeout == 300.0
    assert Config.from_env({"GPULOAD_COLLECTIVE_TIMEOUT": "12.5"}).collective_timeout == 12.5
    assert Config.from_env({"GPULOAD_COMMUNICATOR": "x"}).communicator is None  # no env var
    with pytest.raises(TypeError, match="mpi4py communicator"):
        Config(communicator="COMM_WORLD")
    with pytest.raises(ValueError, match="collective_timeout"):
        Config(collective_timeout=0)

    class FakeComm:  # anything with Get_rank/Get_size; compared by nothing, so unhashable is fine
        __hash__ = None

        def Get_rank(self):
            return 0

        def Get_size(self):
            return 1

    comm = FakeComm()
    with tf1.config.set(communicator=comm):
        assert tf1.config.get().communicator is comm
        assert Config(communicator=comm) == Config()  # the communicator is not part of equality
    assert tf1.config.get().communicator is None


def test_single_process_does_not_import_mpi4py():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, gpuload as tf1, tempfile, os\n"
        "d = tempfile.mkdtemp(); p = os.path.join(d, 'c')\n"
        "tf1.save_checkpoint(p, {'a': np.ones((4, 4), np.float32)})\n"
        "v = tf1.get_variable('a', shape=[4, 4], device='cpu')\n"
        "tf1.init_from_checkpoint(p, {'a': 'a'}); tf1.global_variables_initializer().run()\n"
        "assert v.value().sum() == 16\n"
        "print('mpi4py' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_nccl_only_when_every_rank_has_its_own_gpu_and_every_destination_is_on_one():
    pytest.importorskip("mpi4py")  # gpuload.distributed.load imports it
    import types

    from gpuload.distributed.load import use_nccl_for
    from gpuload.distributed.nccl import nccl_device

    gpu = types.SimpleNamespace(destinations=[types.SimpleNamespace(device="/device:GPU:0")] * 2)
    cpu = types.SimpleNamespace(destinations=[types.SimpleNamespace(device="/device:CPU:0")])
    a, b = (0, "host1:0000:1b:00.0"), (0, "host2:0000:1b:00.0")
    assert use_nccl_for(gpu, [a, b])
    assert not use_nccl_for(gpu, [a, a])  # two ranks on one GPU: NCCL refuses, MPI it is
    assert not use_nccl_for(gpu, [a, None])  # a rank without NCCL
    assert not use_nccl_for(cpu, [a, b])
    assert not use_nccl_for(types.SimpleNamespace(destinations=[]), [a, b])
    assert nccl_device(["/device:CPU:0"]) is None
    assert nccl_device(["/device:GPU:0", "/device:GPU:1"]) is None  # one GPU per rank
