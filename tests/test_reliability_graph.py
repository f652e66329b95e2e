"""``gpuload.Graph``, per-thread default graphs, and a store safe under concurrent calls
(issue 7, part B, item 4)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import gpuload
import gpuload.graph


@pytest.fixture(autouse=True)
def fresh_graph():
    gpuload.reset_default_graph()
    yield
    gpuload.reset_default_graph()


def _in_threads(fn, n=4):
    results, errors = [None] * n, []

    def run(i):
        try:
            results[i] = fn(i)
        except BaseException as e:  # noqa: B036
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errors, errors
    return results


def test_one_graph_per_thread_with_as_default(tmp_path):
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {"w": np.arange(6, dtype=np.float32)})
    barrier = threading.Barrier(4)

    def work(i):
        with gpuload.Graph().as_default() as g:
            assert gpuload.get_default_graph() is g
            w = gpuload.get_variable("w", shape=[6], dtype="float32", device="/cpu:0")  # same name everywhere
            barrier.wait(10)  # every thread has made its "w" before any looks
            assert gpuload.global_variables() == [w]
            gpuload.init_from_checkpoint(prefix, {"w": "w"})
            gpuload.global_variables_initializer().run()
            return w.numpy().sum(), g

    out = _in_threads(work)
    assert [s for s, _ in out] == [15.0] * 4
    assert len({id(g) for _, g in out}) == 4
    assert gpuload.global_variables() == []  # nothing leaked into the main thread's graph


def test_reset_default_graph_in_each_thread():
    main_v = gpuload.get_variable("main", shape=[1], device="/cpu:0")
    barrier = threading.Barrier(3)

    def work(i):
        gpuload.reset_default_graph()
        v = gpuload.get_variable("x", shape=[1], device="/cpu:0")
        barrier.wait(10)
        return gpuload.global_variables() == [v]

    assert _in_threads(work, 3) == [True] * 3
    assert gpuload.global_variables() == [main_v]  # reset in other threads left this one alone


def test_as_default_nests_and_scopes_are_per_graph():
    outer = gpuload.get_default_graph()
    with gpuload.variable_scope("s"):
        a = gpuload.get_variable("a", shape=[1], device="/cpu:0")
        g = gpuload.Graph()
        with g.as_default():
            assert gpuload.graph.get_variable_scope().name == ""  # a new graph starts at the root scope
            b = gpuload.get_variable("a", shape=[1], device="/cpu:0")
            with pytest.raises(AssertionError, match="nested graphs"):
                gpuload.reset_default_graph()
        assert gpuload.graph.get_variable_scope().name == "s"
    assert a.op.name == "s/a" and b.op.name == "a"
    assert gpuload.get_default_graph() is outer
    assert g.get_variables() == [b] and gpuload.global_variables() == [a]


def test_init_from_checkpoint_while_another_thread_creates_variables(tmp_path):
    """Used to fail with ``RuntimeError: OrderedDict mutated during iteration``."""
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {f"ck/v{i}": np.zeros(2, np.float32) for i in range(50)})
    g = gpuload.Graph()
    with g.as_default():
        with gpuload.variable_scope("b"):
            for i in range(50):
                gpuload.get_variable(f"v{i}", shape=[2], device="/cpu:0")
        with gpuload.variable_scope("pad"):
            for i in range(3000):
                gpuload.get_variable(f"p{i}", shape=[1], device="/cpu:0")
    stop = threading.Event()
    made = [0]

    def adder():
        with g.as_default(), gpuload.variable_scope("a"):
            while not stop.is_set():
                gpuload.get_variable(f"x{made[0]}", shape=[1], device="/cpu:0")
                made[0] += 1

    t = threading.Thread(target=adder)
    t.start()
    try:
        with g.as_default():
            for _ in range(50):
                gpuload.init_from_checkpoint(prefix, {"ck/": "b/"})
                gpuload.global_variables()
                gpuload.graph.trainable_variables()
    finally:
        stop.set()
        t.join()
    assert made[0] > 0
    with g.as_default():
        assert len(gpuload.global_variables()) == 3050 + made[0]


def test_trainable_variables():
    from gpuload.graph.store import trainable_variables

    a = gpuload.get_variable("a", shape=[1], device="/cpu:0")
    gpuload.get_variable("b", shape=[1], device="/cpu:0", trainable=False)
    assert trainable_variables() == [a]
