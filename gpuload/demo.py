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
import tempfile
import time

import numpy as np

__all__ = ["main", "fill_parser", "run"]


def fill_parser(p: argparse.ArgumentParser):
    """Arguments of ``gpuload demo``; returns the handler."""
    p.add_argument("--rows", type=int, default=1 << 20, help="embedding rows (default 1048576)")
    p.add_argument("--cols", type=int, default=64, help="embedding columns (default 64)")
    p.add_argument("--parts", type=int, default=8, help="row partitions of the variable (default 8)")
    p.add_argument("--device", default=None, help="device for the variable (default: GPU 0 if present, else CPU)")
    p.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary directory)")
    return run


def run(args) -> int:
    import gpuload

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
                "embedding", shape=table.shape, dtype="float32",
                partitioner=gpuload.fixed_size_partitioner(args.parts), device=args.device)
            bias = gpuload.get_variable("bias", shape=[args.cols], dtype="float32", device=args.device)
        gpuload.init_from_checkpoint(root, {"old_scope/": "new_scope/"})
        op = gpuload.global_variables_initializer()
        where = emb._get_variable_list()[0].device
        if where.startswith("/device:GPU:"):
            # Compile (or load from CuPy's cache) the kernels now: NVRTC time is not load time.
            from gpuload.device import kernels

            secs = kernels.warmup(variants=["b4_b4"], devices=[int(where.rsplit(":", 1)[1])])
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
            expect = table[start:start + part.shape[0]]
            if not np.array_equal(part.numpy(), expect):
                print(f"MISMATCH in {part.name}")
                return 1
        if not np.array_equal(bias.numpy(), table[0]):
            print("MISMATCH in bias")
            return 1
        st = last_stats()[0]
        print(f"loaded {len(parts)} parts of {emb.name} onto {parts[0].device}: "
              f"{', '.join(f'{t:.3f} s' for t in times)} "
              f"({table.nbytes / elapsed / 1e9:.2f} GB/s at best; staging ring {st.ring_bytes / 2**20:.0f} MiB; "
              f"reader threads spent {st.read_s:.3f} s reading, {st.crc_s:.3f} s on CRC32C, "
              f"{st.copy_s + st.submit_s:.3f} s copying)")
        print("every part matches the saved array bit for bit")
    return 0


def main(argv=None) -> int:
    """``gpuload demo [options]`` as a function."""
    from gpuload.cli import main as cli_main

    return cli_main(["demo", *(argv or [])])
