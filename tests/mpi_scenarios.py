"""Multi-process scenarios of the collective load, run under ``mpiexec -n 4``.

Usage: ``mpiexec -n 4 python tests/mpi_scenarios.py SCENARIO WORKDIR [ROWS]``

Every rank runs the scenario; rank 0 gathers every rank's result and prints one line
``RESULT <json>``; the process exits 1 on any rank whose checks failed. The pytest wrapper
(tests/test_distributed_mpi.py) launches this with a hard timeout.

Scenarios (an embedding of ROWS x 64 float32, 1048576 rows = 256 MiB, saved whole):
  replicated  every rank loads the 4 row parts; values exact; storage bytes summed <= 1.05x
  sharded     part k on /job:worker/task:k: rank k holds part k only, reads <= 1.05x a part
  corrupt     a flipped byte: every rank raises ChecksumError with the same text
  requests    collective_load with gpuload.load's requests (no graph): a NumPy array filled in
              place, a Spec allocated, a rank asking for nothing, a torch target refused
  mixed       ranks with different checkpoints (one with none), strings, two loads in a row
  rank_fails  rank 1's init_from_checkpoint raises: the others raise within the timeout
  reader_fails  rank 2's reads fail mid-load: the others raise at once (abort message), not at the timeout
  warm_start, warm_start_sharded  gpuload.warm_start of a vocabulary-remapped [5002, 16] embedding
              (4 parts; every rank / by task) under the communicator, CRC on and off: values equal
              the single-process warm start bit for bit, storage bytes summed <= 1.05x its reads
              (on /device:GPU:0 with GPULOAD_TEST_WS_DEVICE=gpu)
  warm_start_changed  the checkpoint is saved again after warm_start: every rank raises
              CheckpointChangedError at run(), nothing assigned
  plan_interrupted  a KeyboardInterrupt in rank 1's planning: rank 1 raises it, the others raise
              CollectiveError naming rank 1 at once (the error travels in the first exchange)
  own_init_fails  rank 1's own initializer (a variable without a checkpoint source) raises: the
              others raise CollectiveError naming rank 1 at once, nothing assigned anywhere
  gpu_replicated, gpu_sharded  the first two on /device:GPU:0 of each rank (NCCL when every rank
              has its own GPU, else MPI through pinned host memory); GPULOAD_TEST_EXPECT_TRANSPORT
              checks which one ran
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

if os.environ.get("GPULOAD_TEST_GPU_PER_RANK") == "1":
    # One process per GPU, as launchers do: rank k sees only the k-th visible GPU (set
    # before CuPy initialises CUDA; gpuload imports CuPy only when a GPU is used).
    _visible = os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(
        str(i) for i in range(int(os.environ.get("GPULOAD_TEST_NGPUS", "1")))
    )
    _ids = _visible.split(",")
    os.environ["CUDA_VISIBLE_DEVICES"] = _ids[MPI.COMM_WORLD.rank % len(_ids)]

# GPULOAD_SIMULATE_CUDA=1|late|early: CuPy is the CUDA-ordering simulator here too
# (tests/cuda_sim.py, installed as `cupy` before gpuload could import CuPy, as
# tests/conftest.py does), with its NCCL stand-in's transfers going over MPI between
# these processes. Two simulated GPUs per process; CUDA_VISIBLE_DEVICES (set above for
# one GPU per rank) names the physical GPU behind device 0, so the ranks' NCCL
# identities differ as on a real node.
SIMULATE_CUDA = os.environ.get("GPULOAD_SIMULATE_CUDA", "").strip().lower() not in ("", "0")
if SIMULATE_CUDA:
    import cuda_sim

    cuda_sim.install("early" if os.environ["GPULOAD_SIMULATE_CUDA"].strip().lower() == "early" else "late")
    cuda_sim.nccl_over_mpi(MPI.COMM_WORLD)

import gpuload as tf1  # noqa: E402 - after the simulator is installed as cupy
from gpuload.distributed import NotLocalError  # noqa: E402 - after the simulator is installed as cupy
from gpuload.errors import ChecksumError  # noqa: E402 - after the simulator is installed as cupy

COLS = 64
PARTS = 4


def expected(rows):
    # Every element distinct and bit-exact checkable (compared as uint32).
    return np.arange(rows * COLS, dtype=np.uint32).reshape(rows, COLS).view(np.float32)


def write(comm, workdir, rows, corrupt=False):
    prefix = os.path.join(workdir, f"ckpt-{rows}")
    if comm.rank == 0:
        tf1.save_checkpoint(prefix, {"emb": expected(rows)})
        if corrupt:
            data = prefix + ".data-00000-of-00001"
            with open(data, "r+b") as f:  # a byte in the middle of part 2
                f.seek(os.path.getsize(data) * 5 // 8)
                b = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([b[0] ^ 0x40]))
    comm.Barrier()
    return prefix


def make_emb(rows, devices):
    tf1.reset_default_graph()
    return tf1.get_variable(
        "emb", shape=[rows, COLS], dtype="float32", partitioner=tf1.fixed_size_partitioner(PARTS), device=devices
    )


def part_expected(rows, k):
    full = expected(rows)
    n = rows // PARTS
    return full[k * n : (k + 1) * n]


def small_chunks(rows):
    """A chunk size that cuts a small test tensor (simulator runs) into 16 chunks: with the
    default 32 MiB, one chunk would hold all of it and a single rank would read it."""
    return None if rows >= 1 << 19 else max(4096, rows * COLS * 4 // 16 // 4096 * 4096)


def run_load(comm, timeout=None, chunk_bytes=None):
    settings = {"communicator": comm}
    if timeout is not None:
        settings["collective_timeout"] = timeout
    if chunk_bytes is not None:
        settings["chunk_bytes"] = chunk_bytes
    with tf1.config.set(**settings):
        t = time.perf_counter()
        tf1.global_variables_initializer().run()
        return time.perf_counter() - t


def replicated(comm, workdir, rows):
    prefix = write(comm, workdir, rows)
    emb = make_emb(rows, "/device:CPU:0")
    tf1.init_from_checkpoint(prefix, {"emb": "emb"})
    wall = run_load(comm)
    parts = emb._get_variable_list()
    exact = all(
        np.array_equal(p.value().view(np.uint32), part_expected(rows, k).view(np.uint32)) for k, p in enumerate(parts)
    )
    st = tf1.loader.last_stats()[0]
    return {
        "exact": exact,
        "bytes_read": st.bytes_read,
        "bytes_sent": st.bytes_sent,
        "bytes_received": st.bytes_received,
        "wall_s": wall,
        "tensor_bytes": rows * COLS * 4,
    }


def sharded(comm, workdir, rows):
    prefix = write(comm, workdir, rows)
    emb = make_emb(
        rows,
        [
            f"/job:worker/replica:0/task:{k}/device:CPU:0" if k % 2 else f"/job:worker/task:{k}/device:CPU:0"
            for k in range(PARTS)
        ],
    )
    tf1.init_from_checkpoint(prefix, {"emb": "emb"})
    wall = run_load(comm)
    parts = emb._get_variable_list()
    mine = parts[comm.rank]
    exact = np.array_equal(mine.value().view(np.uint32), part_expected(rows, comm.rank).view(np.uint32))
    others_refuse = []
    for k, p in enumerate(parts):
        if k == comm.rank:
            continue
        try:
            p.value()
            others_refuse.append(False)
        except NotLocalError as e:
            others_refuse.append(isinstance(e, ValueError) and f"task {k}" in str(e))
    st = tf1.loader.last_stats()[0]
    return {
        "exact": exact,
        "others_refuse": all(others_refuse),
        "bytes_read": st.bytes_read,
        "part_bytes": mine.value().nbytes,
        "wall_s": wall,
        "holds": mine.name,
        "is_initialized_others": [p.is_initialized() for k, p in enumerate(parts) if k != comm.rank],
    }


def corrupt(comm, workdir, rows):
    prefix = write(comm, workdir, rows, corrupt=True)
    emb = make_emb(rows, "/device:CPU:0")
    tf1.init_from_checkpoint(prefix, {"emb": "emb"})
    t = time.perf_counter()
    try:
        run_load(comm)
        err = None
    except ChecksumError as e:
        err = str(e)
    return {
        "error": err,
        "wall_s": time.perf_counter() - t,
        "assigned": [p.is_initialized() for p in emb._get_variable_list()],
    }


def rank_fails(comm, workdir, rows, timeout=10.0):
    prefix = write(comm, workdir, rows)
    make_emb(rows, "/device:CPU:0")
    t = time.perf_counter()
    try:
        # Rank 1 maps a tensor the checkpoint lacks: ValueError at the call, it never runs the load.
        tf1.init_from_checkpoint(prefix, {"missing_tensor" if comm.rank == 1 else "emb": "emb"})
        run_load(comm, timeout=timeout)
        return {"raised": None, "elapsed_s": time.perf_counter() - t, "timeout": timeout}
    except Exception as e:  # noqa: BLE001 - the scenario records what each rank raised
        return {
            "raised": type(e).__name__,
            "is_value_error": isinstance(e, ValueError),
            "message": str(e)[:300],
            "elapsed_s": time.perf_counter() - t,
            "timeout": timeout,
        }


def reader_fails(comm, workdir, rows, timeout=60.0):
    """Rank 2's storage fails in the middle of the load: the others raise at once (abort message)."""
    prefix = write(comm, workdir, rows)
    emb = make_emb(rows, "/device:CPU:0")
    tf1.init_from_checkpoint(prefix, {"emb": "emb"})
    if comm.rank == 2:
        from gpuload.errors import ShardReadError
        from gpuload.io import reader

        def broken(self, index, offset, buffers):
            raise ShardReadError(5, "injected I/O error", self.paths[index])

        reader.ShardFiles.read_into = broken
    t = time.perf_counter()
    try:
        run_load(comm, timeout=timeout)
        return {"raised": None, "elapsed_s": time.perf_counter() - t, "timeout": timeout}
    except Exception as e:  # noqa: BLE001
        return {
            "raised": type(e).__name__,
            "message": str(e)[:300],
            "elapsed_s": time.perf_counter() - t,
            "timeout": timeout,
            "assigned": [p.is_initialized() for p in emb._get_variable_list()],
        }


def _raised(e, t, timeout, emb=None):
    out = {"raised": type(e).__name__, "message": str(e)[:300], "elapsed_s": time.perf_counter() - t}
    out["timeout"] = timeout
    if emb is not None:
        out["assigned"] = [p.is_initialized() for p in emb._get_variable_list()]
    return out


def plan_interrupted(comm, workdir, rows, timeout=30.0):
    """A KeyboardInterrupt while rank 1 plans: it reaches the others through the first exchange."""
    prefix = write(comm, workdir, rows)
    emb = make_emb(rows, "/device:CPU:0")
    tf1.init_from_checkpoint(prefix, {"emb": "emb"})
    if comm.rank == 1:
        from gpuload.graph import ops

        def interrupted(bundle, group):
            raise KeyboardInterrupt("injected interrupt while planning")

        ops.check_sources_unchanged = interrupted
    t = time.perf_counter()
    try:
        run_load(comm, timeout=timeout)
        return {"raised": None, "elapsed_s": time.perf_counter() - t, "timeout": timeout}
    except BaseException as e:  # noqa: BLE001 - the scenario records what each rank raised
        return _raised(e, t, timeout, emb)


def own_init_fails(comm, workdir, rows, timeout=30.0):
    """Rank 1's own initializer raises before the load: the others learn it at once."""
    prefix = write(comm, workdir, rows)
    emb = make_emb(rows, "/device:CPU:0")
    tf1.init_from_checkpoint(prefix, {"emb": "emb"})

    def broken(shape, dtype=None, partition_info=None):
        raise ValueError("injected initializer failure")

    tf1.get_variable("own", shape=[5], initializer=broken if comm.rank == 1 else tf1.ones_initializer())
    t = time.perf_counter()
    try:
        run_load(comm, timeout=timeout)
        return {"raised": None, "elapsed_s": time.perf_counter() - t, "timeout": timeout}
    except Exception as e:  # noqa: BLE001 - the scenario records what each rank raised
        return _raised(e, t, timeout, emb)


def gpu_replicated(comm, workdir, rows):
    prefix = write(comm, workdir, rows)
    emb = make_emb(rows, "/device:GPU:0")
    tf1.init_from_checkpoint(prefix, {"emb": "emb"})
    run_load(comm, chunk_bytes=small_chunks(rows))  # the first load builds the NCCL communicator, compiles the kernels
    wall = run_load(comm, chunk_bytes=small_chunks(rows))
    exact = all(
        np.array_equal(p.numpy().view(np.uint32), part_expected(rows, k).view(np.uint32))
        for k, p in enumerate(emb._get_variable_list())
    )
    st = tf1.loader.last_stats()[0]
    return {
        "exact": exact,
        "bytes_read": st.bytes_read,
        "bytes_received": st.bytes_received,
        "transport": st.transport,
        "wall_s": wall,
        "tensor_bytes": rows * COLS * 4,
        "gbps_received": st.bytes_received / wall / 1e9,
    }


def gpu_sharded(comm, workdir, rows):
    prefix = write(comm, workdir, rows)
    emb = make_emb(rows, [f"/job:worker/task:{k % comm.size}/device:GPU:0" for k in range(PARTS)])
    tf1.init_from_checkpoint(prefix, {"emb": "emb"})
    wall = run_load(comm, chunk_bytes=small_chunks(rows))
    parts = emb._get_variable_list()
    held = [k for k in range(PARTS) if k % comm.size == comm.rank]
    exact = all(np.array_equal(parts[k].numpy().view(np.uint32), part_expected(rows, k).view(np.uint32)) for k in held)
    st = tf1.loader.last_stats()[0]
    return {
        "exact": exact,
        "bytes_read": st.bytes_read,
        "part_bytes": sum(parts[k].value().nbytes for k in held),
        "transport": st.transport,
        "wall_s": wall,
    }


WS_OLD, WS_NEW, WS_OOV, WS_COLS = 4096, 5000, 2, 16


def _ws_data(comm, workdir):
    """An old [4096, 16] table with its vocabulary, and a new vocabulary: 70% of the old
    tokens reordered, the rest new (prefilled from the backup initializer)."""
    d = os.path.join(workdir, "ws")
    prefix = os.path.join(d, "old")
    if comm.rank == 0:
        os.makedirs(d, exist_ok=True)
        rng = np.random.default_rng(11)
        old_tokens = [f"tok{i}".encode() for i in rng.permutation(WS_OLD)]
        kept = [old_tokens[i] for i in rng.permutation(WS_OLD)[: WS_OLD * 7 // 10]]
        new_tokens = kept + [f"new{i}".encode() for i in range(WS_NEW - len(kept))]
        new_tokens = [new_tokens[i] for i in rng.permutation(len(new_tokens))]
        for name, toks in (("old.txt", old_tokens), ("new.txt", new_tokens)):
            with open(os.path.join(d, name), "wb") as f:
                f.write(b"\n".join(toks) + b"\n")
        table = np.arange(WS_OLD * WS_COLS, dtype=np.uint32).reshape(WS_OLD, WS_COLS).view(np.float32)
        tf1.save_checkpoint(prefix, {"old_emb": table})
    comm.Barrier()
    return prefix, os.path.join(d, "new.txt"), os.path.join(d, "old.txt")


def _ws_device():
    return "/device:GPU:0" if os.environ.get("GPULOAD_TEST_WS_DEVICE") == "gpu" else "/device:CPU:0"


def _ws_load(comm, prefix, new_v, old_v, devices, collective, crc):
    """warm_start the 4-part [5002, 16] embedding and run the initializer (over ``comm`` when
    ``collective``); returns (parts, bytes read, stats, wall)."""
    tf1.reset_default_graph()
    emb = tf1.get_variable(
        "emb",
        shape=[WS_NEW + WS_OOV, WS_COLS],
        dtype="float32",
        partitioner=tf1.fixed_size_partitioner(PARTS),
        device=devices,
    )
    info = tf1.VocabInfo(
        new_v, WS_NEW, WS_OOV, old_v, backup_initializer=tf1.random_uniform_initializer(-1.0, 1.0, seed=5)
    )
    settings = {"verify_crc": crc, "chunk_bytes": 16384}
    if collective:
        settings["communicator"] = comm
    with tf1.config.set(**settings):
        tf1.warm_start(prefix, ".*", {"emb": info}, {"emb": "old_emb"})
        t = time.perf_counter()
        tf1.global_variables_initializer().run()
        wall = time.perf_counter() - t
    stats = tf1.loader.last_stats()
    return emb._get_variable_list(), sum(st.bytes_read for st in stats), stats, wall


def _ws_values(parts, which):
    return {k: np.asarray(parts[k].numpy()).view(np.uint32).copy() for k in which}


def _warm_start(comm, workdir, sharded):
    prefix, new_v, old_v = _ws_data(comm, workdir)
    dev = _ws_device()
    out = {}
    for crc in (True, False):
        # The single-process warm start, on every rank (the reference, and what one process reads).
        ref_parts, ref_read, _, _ = _ws_load(comm, prefix, new_v, old_v, dev, False, crc)
        ref = _ws_values(ref_parts, range(PARTS))
        if sharded:
            devices = [f"/job:worker/task:{k % comm.size}{dev}" for k in range(PARTS)]
            held = [k for k in range(PARTS) if k % comm.size == comm.rank]
        else:
            devices, held = dev, list(range(PARTS))
        parts, read, stats, wall = _ws_load(comm, prefix, new_v, old_v, devices, True, crc)
        got = _ws_values(parts, held)
        out[f"crc_{crc}"] = {
            "exact": all(np.array_equal(got[k], ref[k]) for k in held),
            "bytes_read": read,
            "single_process_read": ref_read,
            "wall_s": wall,
            "vocab_bytes": sum(st.vocab_bytes for st in stats),
            "transport": stats[0].transport if stats else None,
            "not_held_refuse": all(not parts[k].is_initialized() for k in range(PARTS) if k not in held),
        }
    return out


def warm_start(comm, workdir, rows):
    """warm_start with a vocabulary remap under a communicator: every rank loads the 4 parts."""
    return _warm_start(comm, workdir, sharded=False)


def warm_start_sharded(comm, workdir, rows):
    """The same, parts placed by task: rank r holds parts k with k % size == r."""
    return _warm_start(comm, workdir, sharded=True)


def warm_start_changed(comm, workdir, rows):
    """The checkpoint is saved again between warm_start and the run: every rank refuses it
    (the at-run() check of the single-process load, made before the exchange)."""
    prefix, new_v, old_v = _ws_data(comm, workdir)
    tf1.reset_default_graph()
    emb = tf1.get_variable(
        "emb",
        shape=[WS_NEW + WS_OOV, WS_COLS],
        dtype="float32",
        partitioner=tf1.fixed_size_partitioner(PARTS),
        device=_ws_device(),
    )
    info = tf1.VocabInfo(new_v, WS_NEW, WS_OOV, old_v)
    with tf1.config.set(communicator=comm):
        tf1.warm_start(prefix, ".*", {"emb": info}, {"emb": "old_emb"})
        comm.Barrier()
        if comm.rank == 0:  # a trainer saving the same prefix again: a new index file
            table = np.zeros((WS_OLD, WS_COLS), np.float32)
            tf1.save_checkpoint(prefix, {"old_emb": table})
        comm.Barrier()
        try:
            tf1.global_variables_initializer().run()
            return {"raised": None}
        except Exception as e:  # noqa: BLE001 - the scenario records what each rank raised
            return {
                "raised": type(e).__name__,
                "message": str(e)[:300],
                "assigned": [p.is_initialized() for p in emb._get_variable_list()],
            }


def mixed(comm, workdir, rows):
    """Ranks with different checkpoints, nothing to load, strings, two loads in a row."""
    rows = min(rows, 1 << 14)
    a = write(comm, workdir, rows)
    b = os.path.join(workdir, "ckpt-b")
    w = np.arange(1000 * 8, dtype=np.float64).reshape(1000, 8)
    words = np.array([b"alpha", b"beta", b"gamma"], dtype=object)
    if comm.rank == 0:
        tf1.save_checkpoint(b, {"w": w, "words": words})
    comm.Barrier()
    tf1.reset_default_graph()
    got = {}
    if comm.rank in (0, 1):
        emb = tf1.get_variable("emb", shape=[rows, COLS], partitioner=tf1.fixed_size_partitioner(3))
        tf1.init_from_checkpoint(a, {"emb": "emb"})
        got["emb"] = lambda: np.concatenate([p.value() for p in emb._get_variable_list()]).view(np.uint32)
    if comm.rank in (1, 3):
        wv = tf1.get_variable(
            "w",
            shape=[1000, 8],
            dtype="float64",
            device="/job:worker/task:3/device:CPU:0" if comm.rank == 3 else "/cpu:0",
        )
        sv = tf1.get_variable("words", shape=[3], dtype="string")
        tf1.init_from_checkpoint(b, {"w": "w", "words": "words"})
        got["w"] = lambda: wv.value()
        got["words"] = lambda: sv.value()
    own = tf1.get_variable("own", shape=[5], initializer=tf1.ones_initializer())
    run_load(comm)
    run_load(comm)  # a second collective load over the same communicator
    ok = np.array_equal(own.value(), np.ones(5, np.float32))
    if "emb" in got:
        ok = ok and np.array_equal(got["emb"](), expected(rows).view(np.uint32))
    if "w" in got:
        ok = ok and np.array_equal(got["w"](), w) and list(got["words"]()) == list(words)
    stats = tf1.loader.last_stats()
    return {
        "ok": bool(ok),
        "loaded": sorted(got),
        "bytes_read": sum(s.bytes_read for s in stats),
        "checkpoints": len(stats),
    }


def requests(comm, workdir, rows):
    """collective_load called with gpuload.load's requests, no graph: in place, allocated, none, refused."""
    import torch

    from gpuload.distributed.load import collective_load

    rows = min(rows, 1 << 14)
    prefix = write(comm, workdir, rows)
    want = expected(rows).view(np.uint32)
    half = rows // 2
    out = np.empty((half, COLS), np.float32)
    mine = {}
    if comm.rank == 0:  # half in place, half allocated; the other ranks ask for nothing
        mine = {
            "top": tf1.Request("emb", rows=(0, half), target=out),
            "bottom": tf1.Request("emb", rows=(half, rows), target=tf1.Spec(device="cpu")),
        }
    with tf1.config.set(communicator=comm, chunk_bytes=small_chunks(rows)):
        got = collective_load({prefix: mine})
    (result,) = got.values()
    if comm.rank == 0:
        ok = (
            result["top"] is out
            and np.array_equal(out.view(np.uint32), want[:half])
            and np.array_equal(result["bottom"].view(np.uint32), want[half:])
        )
    else:
        ok = dict(result) == {}
    # A target the collective load does not fill (a torch tensor, on rank 1): that rank
    # raises TargetError, the others learn it in the first exchange.
    bad = {prefix: {"t": tf1.Request("emb", target=torch.empty(rows, COLS))}} if comm.rank == 1 else {}
    try:
        with tf1.config.set(communicator=comm, collective_timeout=30.0):
            collective_load(bad)
        raised, message = None, ""
    except Exception as e:  # noqa: BLE001 - the scenario records what each rank raised
        raised, message = type(e).__name__, str(e)[:300]
    return {
        "ok": bool(ok),
        "prefixes": list(got) == [prefix],
        "bytes_read": result.stats.bytes_read,
        "raised": raised,
        "message": message,
    }


def check(name, results, rows):
    """The pass/fail decision, made on rank 0 over every rank's result."""
    tensor = rows * COLS * 4
    if name == "replicated":
        total = sum(r["bytes_read"] for r in results)
        return all(r["exact"] for r in results) and total <= 1.05 * tensor, {
            "total_read": total,
            "ratio": total / tensor,
        }
    if name == "sharded":
        ok = all(
            r["exact"]
            and r["others_refuse"]
            and r["bytes_read"] <= 1.05 * r["part_bytes"]
            and not any(r["is_initialized_others"])
            for r in results
        )
        return ok, {"total_read": sum(r["bytes_read"] for r in results)}
    if name == "corrupt":
        texts = {r["error"] for r in results}
        ok = None not in texts and len(texts) == 1 and not any(any(r["assigned"]) for r in results)
        return ok, {"same_text": len(texts) == 1}
    if name == "rank_fails":
        others = [r for i, r in enumerate(results) if i != 1]
        ok = results[1]["raised"] == "AssignmentMapError" and all(
            r["raised"] == "CollectiveTimeoutError" and r["elapsed_s"] <= r["timeout"] + 5 for r in others
        )
        return ok, {"max_elapsed_s": max(r["elapsed_s"] for r in others)}
    if name == "reader_fails":
        others = [r for i, r in enumerate(results) if i != 2]
        ok = (
            results[2]["raised"] == "ShardReadError"
            and not any(any(r["assigned"]) for r in results)
            and all(
                r["raised"] == "CollectiveError"
                and "rank 2" in r["message"]
                and "injected" in r["message"]
                and r["elapsed_s"] < 10
                for r in others
            )
        )
        return ok, {"max_elapsed_s": max(r["elapsed_s"] for r in others)}
    if name in ("plan_interrupted", "own_init_fails"):
        want = {"plan_interrupted": "KeyboardInterrupt", "own_init_fails": "ValueError"}[name]
        others = [r for i, r in enumerate(results) if i != 1]
        ok = (
            results[1]["raised"] == want
            and "injected" in results[1]["message"]
            and not any(any(r.get("assigned", ())) for r in results)
            and all(
                r["raised"] == "CollectiveError"
                and "rank 1" in r["message"]
                and "injected" in r["message"]
                and r["elapsed_s"] < 10
                for r in others
            )
        )
        return ok, {"max_elapsed_s": max(r["elapsed_s"] for r in others)}
    if name in ("warm_start", "warm_start_sharded"):
        ok, extra = True, {}
        for key in ("crc_True", "crc_False"):
            rs = [r[key] for r in results]
            total = sum(r["bytes_read"] for r in rs)
            one = rs[0]["single_process_read"]
            want = os.environ.get("GPULOAD_TEST_EXPECT_TRANSPORT")
            ok = (
                ok
                and all(r["exact"] and r["not_held_refuse"] and (want is None or r["transport"] == want) for r in rs)
                and total <= 1.05 * one
            )
            extra[key] = {
                "total_read": total,
                "single_process_read": one,
                "ratio": total / one,
                "transport": sorted({str(r["transport"]) for r in rs}),
            }
        return ok, extra
    if name == "warm_start_changed":
        ok = all(r["raised"] == "CheckpointChangedError" and not any(r["assigned"]) for r in results)
        return ok, {}
    if name == "requests":
        total = sum(r["bytes_read"] for r in results)
        tensor = min(rows, 1 << 14) * COLS * 4
        ok = (
            all(r["ok"] and r["prefixes"] for r in results)
            and total <= 1.05 * tensor
            and results[1]["raised"] == "TargetError"
            and "NumPy and CuPy" in results[1]["message"]
            and all(
                r["raised"] == "CollectiveError" and "rank 1" in r["message"] for i, r in enumerate(results) if i != 1
            )
        )
        return ok, {"total_read": total}
    if name == "mixed":
        return all(r["ok"] for r in results) and all(r["checkpoints"] == 2 for r in results), {}
    if name in ("gpu_replicated", "gpu_sharded"):
        want = os.environ.get("GPULOAD_TEST_EXPECT_TRANSPORT")
        total = sum(r["bytes_read"] for r in results)
        ok = all(r["exact"] and (want is None or r["transport"] == want) for r in results)
        ok = ok and total <= 1.05 * tensor
        if name == "gpu_sharded":
            ok = ok and all(r["bytes_read"] <= 1.05 * r["part_bytes"] for r in results)
        return ok, {"total_read": total, "transport": sorted({r["transport"] for r in results})}
    raise SystemExit(f"unknown scenario {name!r}")


def _share_sim_harness(comm):
    """Rank 0 compiles the simulator's kernel harness (g++) once; the others load its library."""
    import ctypes

    import kernel_harness

    path = None
    if comm.rank == 0:
        cuda_sim._harness()
        path = cuda_sim.state.harness.lib._name  # the CDLL's file
    path = comm.bcast(path, root=0)
    if comm.rank != 0:
        kernel_harness._built["lib"] = cuda_sim.state.harness = kernel_harness.Harness(ctypes.CDLL(path))


def main():
    name, workdir = sys.argv[1], sys.argv[2]
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 20
    comm = MPI.COMM_WORLD
    if SIMULATE_CUDA:
        _share_sim_harness(comm)
    try:
        result = globals()[name](comm, workdir, rows)
    except Exception:  # noqa: BLE001 - reported, then the job fails
        result = {"crash": traceback.format_exc()}
    if SIMULATE_CUDA:
        import gc

        gc.collect()
        # Every simulator violation of this process (races, wrong devices, unmatched NCCL
        # transfers, ...) fails the job, like the `sim` fixture fails a test.
        found = cuda_sim.finish_test()
        if found:
            result["sim_violations"] = found[:20]
    results = comm.gather(result, root=0)
    ok = True
    if comm.rank == 0:
        if any("crash" in r or "sim_violations" in r for r in results):
            ok, extra = False, {}
        else:
            ok, extra = check(name, results, rows)
        print("RESULT " + json.dumps({"scenario": name, "ok": ok, "ranks": results, **extra}), flush=True)
    ok = comm.bcast(ok, root=0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
