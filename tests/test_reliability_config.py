"""Config overrides are context-local: a ``with config.set(...)`` block changes only its own
thread/task and restores exactly what it replaced; a plain ``config.set(...)`` call changes
the process-wide default (issue 7, part B, item 3)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import gpuload
from gpuload import config
from gpuload.errors import ChecksumError


@pytest.fixture(autouse=True)
def _restore_global_config():
    before = config.get()
    yield
    config.set(
        **{
            f: getattr(before, f)
            for f in ("ring_bytes", "chunk_bytes", "reader_threads", "verify_crc", "direct_io", "gap_bytes", "progress")
        }
    )
    gpuload.reset_default_graph()


def test_blocks_exiting_out_of_order_restore_each_threads_own_value():
    base = config.get().verify_crc
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with config.set(verify_crc=not base):
            a_in.set()
            b_in.wait(5)
            seen["a_inside"] = config.get().verify_crc
        a_out.set()  # A leaves first, B is still inside
        seen["a_after"] = config.get().verify_crc

    def b():
        a_in.wait(5)
        seen["b_before"] = config.get().verify_crc  # A's block is not visible here
        with config.set(gap_bytes=12345):
            b_in.set()
            a_out.wait(5)
            seen["b_inside"] = (config.get().verify_crc, config.get().gap_bytes)
        seen["b_after"] = (config.get().verify_crc, config.get().gap_bytes)

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert seen["a_inside"] is (not base) and seen["a_after"] is base
    assert seen["b_before"] is base
    assert seen["b_inside"] == (base, 12345)
    assert seen["b_after"][0] is base and seen["b_after"][1] != 12345
    assert config.get().verify_crc is base  # nothing leaked into the process


def test_block_in_other_thread_does_not_switch_off_crc_here(tmp_path):
    prefix = str(tmp_path / "m.ckpt")
    gpuload.save_checkpoint(prefix, {"w": np.arange(64, dtype=np.float32)})
    path = prefix + ".data-00000-of-00001"
    with open(path, "r+b") as f:
        f.seek(10)
        b = f.read(1)
        f.seek(10)
        f.write(bytes([b[0] ^ 1]))
    inside, done = threading.Event(), threading.Event()

    def careless():
        with config.set(verify_crc=False):
            inside.set()
            done.wait(10)

    t = threading.Thread(target=careless)
    t.start()
    try:
        assert inside.wait(5)
        v = gpuload.get_variable("w", shape=[64], dtype="float32", device="/cpu:0")
        gpuload.init_from_checkpoint(prefix, {"w": v})
        with pytest.raises(ChecksumError):
            gpuload.global_variables_initializer().run()
        with pytest.raises(ChecksumError):
            gpuload.load_variable(prefix, "w")
    finally:
        done.set()
        t.join(10)


def test_asyncio_tasks_are_isolated():
    base = config.get().gap_bytes

    async def task(value, started, other_started):
        with config.set(gap_bytes=value):
            started.set()
            await other_started.wait()
            await asyncio.sleep(0)
            return config.get().gap_bytes

    async def main():
        e1, e2 = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(task(4096, e1, e2), task(8192, e2, e1))

    assert asyncio.run(main()) == [4096, 8192]
    assert config.get().gap_bytes == base


def test_plain_call_changes_the_process_default_for_every_thread():
    before = config.get().gap_bytes
    config.set(gap_bytes=before + 4096)
    got = []
    t = threading.Thread(target=lambda: got.append(config.get().gap_bytes))
    t.start()
    t.join()
    assert got == [before + 4096] and config.get().gap_bytes == before + 4096


def test_plain_call_inside_a_block_changes_the_default_and_survives_the_block():
    before = config.get()
    with config.set(verify_crc=not before.verify_crc):
        config.set(gap_bytes=before.gap_bytes + 4096)  # process-wide, seen inside the block too
        assert config.get().gap_bytes == before.gap_bytes + 4096
        assert config.get().verify_crc is not before.verify_crc  # the block's own key still wins
    assert config.get().gap_bytes == before.gap_bytes + 4096
    assert config.get().verify_crc is before.verify_crc


def test_with_block_never_touches_the_process_default():
    """Another thread sampling the default during ``with config.set(...)`` never sees it."""
    base = config.get().gap_bytes
    stop = threading.Event()
    leaked = []

    def sampler():
        while not stop.is_set():
            if config.get().gap_bytes != base:
                leaked.append(config.get().gap_bytes)

    t = threading.Thread(target=sampler)
    t.start()
    default = config._default()
    try:
        for _ in range(2000):
            with config.set(gap_bytes=base + 4096):
                # deterministic part: the process default is not replaced, even for a moment
                assert config._default() is default
    finally:
        stop.set()
        t.join()
    assert not leaked


def test_override_alias_and_nesting_restore_exactly():
    before = config.get()
    with config.set(gap_bytes=4096) as outer:
        with config.override(gap_bytes=8192) as inner:
            assert config.get() is inner and inner.gap_bytes == 8192
        assert config.get() is outer
    assert config.get() == before


def test_block_entered_through_exitstack_takes_its_change_back_from_the_default():
    import contextlib

    base = config.get().gap_bytes
    with contextlib.ExitStack() as stack:
        cm = config.set(gap_bytes=base + 4096)  # not recognisable as a with item: applied globally...
        assert config.get().gap_bytes == base + 4096
        stack.enter_context(cm)  # ...and moved into this context when entered
        got = []
        t = threading.Thread(target=lambda: got.append(config.get().gap_bytes))
        t.start()
        t.join()
        assert got == [base] and config.get().gap_bytes == base + 4096
    assert config.get().gap_bytes == base


def test_bad_value_raises_at_the_call():
    with pytest.raises(ValueError, match="multiple of 4096"):
        with config.set(chunk_bytes=1000):
            pass
    with pytest.raises(TypeError):
        config.set(no_such_setting=1)


def test_reused_block_object_follows_the_outer_blocks_of_each_entry():
    """One block object entered under different outer blocks: its cached result must not
    carry an earlier entry's outer settings (the cache is keyed by the whole stack)."""
    base = config.get()
    cm = config.override(verify_crc=not base.verify_crc)
    with config.override(gap_bytes=base.gap_bytes + 4096):
        with cm:
            assert config.get().gap_bytes == base.gap_bytes + 4096
    with cm:
        assert config.get().gap_bytes == base.gap_bytes  # not the earlier outer block's
        assert config.get().verify_crc is not base.verify_crc
    with config.override(chunk_bytes=base.chunk_bytes * 2, ring_bytes=base.chunk_bytes * 8):
        with cm as inside:
            assert inside.chunk_bytes == base.chunk_bytes * 2 and inside.gap_bytes == base.gap_bytes
    assert config.get() == base


def test_block_object_entered_again_inside_itself_restores_each_level():
    base = config.get()
    cm = config.override(gap_bytes=base.gap_bytes + 4096)
    with cm:
        with config.override(verify_crc=not base.verify_crc):
            with cm:
                assert config.get().gap_bytes == base.gap_bytes + 4096
                assert config.get().verify_crc is not base.verify_crc
            assert config.get().verify_crc is not base.verify_crc
        assert config.get().verify_crc is base.verify_crc and config.get().gap_bytes == base.gap_bytes + 4096
    assert config.get() == base


def test_one_block_object_entered_from_two_threads_at_once():
    base = config.get()
    cm = config.override(gap_bytes=base.gap_bytes + 4096)
    both_inside = threading.Barrier(2, timeout=5)
    first_out = threading.Event()
    seen, errors = {}, []

    def worker(name, extra):
        try:
            with config.override(**extra):
                with cm:
                    both_inside.wait()
                    if name == "b":
                        first_out.wait(5)  # exit after "a": out of order across threads
                    seen[name + "_inside"] = config.get()
                seen[name + "_after"] = config.get()
            if name == "a":
                first_out.set()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
            first_out.set()

    ts = [
        threading.Thread(target=worker, args=("a", {"verify_crc": not base.verify_crc})),
        threading.Thread(target=worker, args=("b", {"progress": not base.progress})),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert not errors
    a, b = seen["a_inside"], seen["b_inside"]
    assert a.gap_bytes == b.gap_bytes == base.gap_bytes + 4096
    assert a.verify_crc is not base.verify_crc and a.progress is base.progress
    assert b.progress is not base.progress and b.verify_crc is base.verify_crc
    assert seen["a_after"].gap_bytes == base.gap_bytes and seen["a_after"].verify_crc is not base.verify_crc
    assert seen["b_after"].gap_bytes == base.gap_bytes and seen["b_after"].progress is not base.progress
    assert config.get() == base
