"""``gpuload demo``: write a checkpoint, load it into a partitioned variable, check it.

A newcomer's first run: everything real, nothing shipped. It saves a float32 embedding
with :func:`gpuload.save_checkpoint`, maps it with :func:`gpuload.init_from_checkpoint`
into a variable split into row parts on the default device (GPU 0 when there is one),
runs the initializer, checks every part against the saved array and prints the plan and
the throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

__all__ = ["fill_parser", "run"]


def fill_parser(p: argparse.ArgumentParser):
    """Arguments of ``gpuload demo``; returns the handler."""
    p.add_argument("--rows", type=int, default=1 << 20, help="embedding rows (default 1048576)")
    p.add_argument("--cols", type=int, default=64, help="embedding columns (default 64)")
    p.add_argument("--parts", type=int, default=8, help="row partitions of the variable (default 8)")
    p.add_argument("--device", default=None, help="device for the variable (default: GPU 0 if present, else CPU)")
    p.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary directory)")
    return run


def _fail(message: str) -> int:
    print(f"gpuload demo: error: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    """Write, load and check; returns the exit status (2, with one line on stderr, for bad input)."""
    import gpuload
    from gpuload.backend.placement import check_device
    from gpuload.devices import Device

    for flag, value in (("--rows", args.rows), ("--cols", args.cols), ("--parts", args.parts)):
        if value < 1:
            return _fail(f"{flag} must be at least 1, got {value}")
    try:
        # Settings from GPULOAD_* variables and the device are checked before any work.
        cfg = gpuload.config.get()
        if args.device is not None:
            check_device(args.device)
    except (gpuload.errors.GpuloadError, ValueError) as e:
        return _fail(str(e))
    with tempfile.TemporaryDirectory(prefix="gpuload-demo-") as tmp:
        root = args.dir or tmp
        os.makedirs(root, exist_ok=True)
        rng = np.random.default_rng(0)
        table = rng.standard_normal((args.rows, args.cols), dtype=np.float32)
        prefix = os.path.join(root, "model.ckpt-1")
        t = time.perf_counter()
        gpuload.save_checkpoint(prefix, {"old_scope/embedding": table, "old_scope/bias": table[0].copy()})
        print(f"saved {table.nbytes / 2**20:.0f} MiB to {prefix} in {time.perf_counter() - t:.2f} s")
        for name, shape in gpuload.list_variables(root):
            print(f"  {name}: {shape}")

        gpuload.reset_default_graph()
        with gpuload.variable_scope("new_scope"):
            emb = gpuload.get_variable(
                "embedding",
                shape=table.shape,
                dtype="float32",
                partitioner=gpuload.fixed_size_partitioner(args.parts),
                device=args.device,
            )
            bias = gpuload.get_variable("bias", shape=[args.cols], dtype="float32", device=args.device)
        gpuload.init_from_checkpoint(root, {"old_scope/": "new_scope/"})
        op = gpuload.global_variables_initializer()
        where = emb._get_variable_list()[0].device
        device = Device.parse(where)
        if device.is_gpu:
            # Compile (or load from CuPy's cache) the kernels now: NVRTC time is not load time.
            from gpuload.backend import kernels

            secs = kernels.warmup(variants=["b4_b4"], devices=[device.index])
            print(f"box-copy kernels ready on {where} in {secs:.2f} s (compiled before the timed loads)")
        times = []
        for _ in range(2):  # the first load may race the OS writing the new file back to disk
            t = time.perf_counter()
            op.run()
            times.append(time.perf_counter() - t)
        elapsed = min(times)
        from gpuload.loader import last_stats

        parts = emb._get_variable_list()
        for part in parts:
            info = part._save_slice_info
            start = info.var_offset[0]
            expect = table[start : start + part.shape[0]]
            if not np.array_equal(part.numpy(), expect):
                print(f"MISMATCH in {part.name}")
                return 1
        if not np.array_equal(bias.numpy(), table[0]):
            print("MISMATCH in bias")
            return 1
        st = last_stats()[0]
        print(f"loaded {len(parts)} parts of {emb.name} onto {parts[0].device}")
        print(
            f"  load time: 1st run {times[0]:.3f} s, 2nd run {times[1]:.3f} s "
            f"({table.nbytes / elapsed / 1e9:.2f} GB/s, best run)"
        )
        # A load stages only what cannot land in place: row parts in host memory are read
        # straight into the variable, so the ring then allocates nothing.
        staged = (
            "nothing staged: every chunk was read straight into its part"
            if st.ring_bytes == 0
            else f"{st.ring_bytes / 2**20:.0f} MiB used"
        )
        print(f"  staging ring: {staged} (limit ring_bytes = {cfg.ring_bytes / 2**20:.0f} MiB)")
        print(
            f"  reader threads (summed): {st.read_s:.3f} s reading, {st.crc_s:.3f} s on CRC32C, "
            f"{st.copy_s + st.submit_s:.3f} s copying"
        )
        print("every part matches the saved array bit for bit")
    return 0
