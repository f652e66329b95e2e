"""Saves never lose the previous checkpoint (issue 7, part B, item 6).

An interruption at any file operation of a save over an existing prefix, a SIGKILL at a
random moment, or two threads saving at once: afterwards the prefix holds the old or the
new checkpoint, complete and correct, and once a save completes nothing but TensorFlow's
files is left.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import gpuload
import gpuload.format.writer as writer_mod
from gpuload.errors import ArgumentTypeError
from gpuload.format.bundle import Bundle

OLD = {"a": np.arange(300, dtype=np.float32), "b": np.full((20, 5), 7, np.int64)}
NEW = {"a": -np.arange(300, dtype=np.float32), "c": np.array([b"x", b"yz"], dtype=object)}


def _contents(prefix):
    with gpuload.load_checkpoint(prefix) as r:
        return {n: r.get_tensor(n) for n in r.bundle.names()}


def _equal(got, want):
    return set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)


def _files(d):
    return sorted(os.listdir(d))


def _tf_layout(d, prefixes):
    """Only TF's files: P.index, P.data-*, and the state file."""
    ok = {"checkpoint"}
    for p in prefixes:
        b = Bundle.open(p)
        ok |= {os.path.basename(p) + ".index"} | {os.path.basename(b.shard_path(i)) for i in range(b.num_shards)}
    return set(_files(d)) <= ok and set(_files(d)) >= ok - {"checkpoint"}


class Boom(Exception):
    pass


class _Faults:
    """Counts file operations of a save; raises on the k-th (or on every one from the k-th on)."""

    def __init__(self, monkeypatch, k, persistent=False, exc=Boom):
        self.n, self.k, self.persistent, self.exc, self.kinds = 0, k, persistent, exc, []
        for name in ("replace", "fsync", "unlink", "open", "rename"):
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name), f"os.{name}"))
        real_open = open

        def fake_open(*a, **kw):
            self._tick("open()")
            f = real_open(*a, **kw)
            return _CountingFile(f, self)

        monkeypatch.setattr(writer_mod, "open", fake_open, raising=False)

    def _tick(self, kind):
        self.n += 1
        self.kinds.append(kind)
        if self.k and (self.n == self.k or (self.persistent and self.n > self.k)):
            raise self.exc(f"injected at file operation {self.n} ({kind})")

    def _wrap(self, fn, kind):
        def wrapper(*a, **kw):
            self._tick(kind)
            return fn(*a, **kw)

        return wrapper


class _CountingFile:
    def __init__(self, f, faults):
        self._f, self._faults = f, faults

    def write(self, data):
        self._faults._tick("write")
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _count_ops(monkeypatch, tmp_path):
    d = tmp_path / "count"
    d.mkdir()
    prefix = str(d / "m")
    gpuload.save_checkpoint(prefix, OLD, max_shard_bytes=1000)
    faults = _Faults(monkeypatch, 0)
    gpuload.save_checkpoint(prefix, NEW)
    monkeypatch.undo()
    return faults.n, faults.kinds


@pytest.mark.parametrize("persistent", [False, True], ids=["one-fault", "every-op-from-k-fails"])
@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_fault_at_every_file_operation_keeps_old_or_new(monkeypatch, tmp_path, persistent, exc):
    n, kinds = _count_ops(monkeypatch, tmp_path)
    assert n > 10 and {"os.replace", "os.fsync", "write"} <= set(kinds), kinds
    outcomes = {"old": 0, "new": 0}
    for k in range(1, n + 1):
        d = tmp_path / f"k{k}"
        d.mkdir()
        prefix = str(d / "m")
        gpuload.save_checkpoint(prefix, OLD, max_shard_bytes=1000)  # old: several shards
        faults = _Faults(monkeypatch, k, persistent, exc)
        try:
            gpuload.save_checkpoint(prefix, NEW)  # new: one shard
            raised = None
        except (Boom, KeyboardInterrupt) as e:
            raised = e
        monkeypatch.undo()
        assert raised is not None, f"op {k} ({faults.kinds[k - 1] if k <= len(faults.kinds) else '?'}) not hit"
        got = _contents(prefix)  # opening rolls an interrupted, committed save forward
        if _equal(got, OLD):
            outcomes["old"] += 1
        elif _equal(got, NEW):
            outcomes["new"] += 1
        else:
            pytest.fail(f"fault at op {k} ({faults.kinds[k - 1]}): neither old nor new: {sorted(got)}")
        gpuload.save_checkpoint(prefix, NEW)  # the next save completes and cleans up
        assert _equal(_contents(prefix), NEW)
        assert _tf_layout(d, [prefix]), (k, _files(d))
    assert outcomes["old"] and outcomes["new"], outcomes


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import gpuload
    prefix = sys.argv[1]
    print("ready", flush=True)
    i = 0
    while True:
        v = i % 2
        tensors = {f"t{j}": np.full((64, 1024), v * 1000 + j, np.float32) for j in range(6 + 3 * v)}
        gpuload.save_checkpoint(prefix, tensors, max_shard_bytes=(1 << 20) if v else None)
        i += 1
""")


def _version(prefix):
    got = _contents(prefix)
    v = int(got["t0"].flat[0]) // 1000
    want = {f"t{j}": np.full((64, 1024), v * 1000 + j, np.float32) for j in range(6 + 3 * v)}
    assert _equal(got, want), f"checkpoint is a mix: {sorted(got)}"
    return v


def test_sigkill_mid_save_keeps_a_complete_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(CHILD)
    rng = random.Random(3)
    prefix = str(tmp_path / "ck" / "m")
    seen = set()
    for trial in range(5):
        p = subprocess.Popen([sys.executable, str(script), prefix], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + rng.uniform(0, 0.4))  # several saves in, then somewhere inside one
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        if not os.path.exists(prefix + ".index"):
            continue  # killed during the very first save
        seen.add(_version(prefix))
    assert seen, "no save completed before a kill"
    gpuload.save_checkpoint(prefix, {"x": np.zeros(1)})
    assert _tf_layout(os.path.dirname(prefix), [prefix]), _files(os.path.dirname(prefix))


def test_two_threads_saving_one_prefix(tmp_path):
    prefix = str(tmp_path / "m")
    errors = []

    def saver(v):
        try:
            for i in range(15):
                tensors = {f"t{j}": np.full((50, 40), v * 100 + i, np.float64) for j in range(4 + v)}
                gpuload.save_checkpoint(prefix, tensors, max_shard_bytes=20000 if v else None)
        except BaseException as e:  # noqa: B036
            errors.append(e)

    ts = [threading.Thread(target=saver, args=(v,)) for v in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    got = _contents(prefix)
    first = got["t0"].flat[0]
    v, i = divmod(int(first), 100)
    assert _equal(got, {f"t{j}": np.full((50, 40), first, np.float64) for j in range(4 + v)})
    assert _tf_layout(str(tmp_path), [prefix]), _files(tmp_path)


def test_resave_with_fewer_shards_removes_stale_shards(tmp_path):
    prefix = str(tmp_path / "m")
    gpuload.save_checkpoint(prefix, OLD, max_shard_bytes=1000)
    assert len([f for f in _files(tmp_path) if ".data-" in f]) == 2
    gpuload.save_checkpoint(prefix, NEW)
    assert [f for f in _files(tmp_path) if ".data-" in f] == ["m.data-00000-of-00001"]
    assert _tf_layout(str(tmp_path), [prefix])


def test_leftovers_of_this_prefix_only_are_removed(tmp_path):
    prefix = str(tmp_path / "m-1")
    gpuload.save_checkpoint(prefix, OLD)
    gpuload.save_checkpoint(str(tmp_path / "m-10"), OLD)
    mine = ["m-1.index.tempstate0123abcd", "m-1.data-00000-of-00002.tempstateff00"]
    theirs = ["m-10.index.tempstate0123abcd", "m-10.data-00000-of-00001.tempstate99"]
    for f in mine + theirs:
        (tmp_path / f).write_bytes(b"junk")
    gpuload.save_checkpoint(prefix, NEW)
    left = _files(tmp_path)
    assert not set(mine) & set(left) and set(theirs) <= set(left)


def test_global_step_and_state_file(tmp_path):
    base = str(tmp_path / "model.ckpt")
    for step in (100, np.int64(200)):
        got = gpuload.save_checkpoint(base, {"w": np.full(3, int(step), np.float32)}, global_step=step)
        assert got == f"{base}-{int(step)}"
    assert gpuload.latest_checkpoint(str(tmp_path)) == f"{base}-200"
    assert (tmp_path / "checkpoint").read_text() == (
        'model_checkpoint_path: "model.ckpt-200"\n'
        'all_model_checkpoint_paths: "model.ckpt-100"\n'
        'all_model_checkpoint_paths: "model.ckpt-200"\n'
    )
    assert np.array_equal(gpuload.load_variable(str(tmp_path), "w"), np.full(3, 200, np.float32))
    for bad in ("7", 1.5, True):
        with pytest.raises(ArgumentTypeError, match="global_step"):
            gpuload.save_checkpoint(base, {"w": np.zeros(1)}, global_step=bad)
    assert not [f for f in _files(tmp_path) if re.search(r"tmp|tempstate|gpuload-", f)]


def test_state_file_updates_from_threads_are_not_lost(tmp_path):
    def saver(step):
        gpuload.save_checkpoint(str(tmp_path / "model.ckpt"), {"w": np.zeros(1)}, global_step=step)

    ts = [threading.Thread(target=saver, args=(s,)) for s in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    st = gpuload.format.state.get_checkpoint_state(str(tmp_path))
    assert sorted(os.path.basename(p) for p in st.all_model_checkpoint_paths) == sorted(
        f"model.ckpt-{s}" for s in range(8)
    )
