"""``gpuload bench --ranks N``: storage bytes and time of a collective load over N MPI ranks.

Launches itself under ``mpiexec -n N`` (the mpich wheel's, next to this Python, else the
one on PATH). Rank 0 writes an embedding ``[rows, 64]`` float32 checkpoint; then every
rank loads it into a variable of ``--parts`` row parts, twice, each after a barrier:

* collective: ``gpuload.config.set(communicator=MPI.COMM_WORLD)``: every needed chunk is
  read by one rank and moved to the others over MPI;
* naive: no communicator: every rank reads everything it needs itself.

Layouts: ``replicated`` (every rank holds every part) or ``sharded`` (part k on
``/job:worker/task:k``, so rank k holds part k; needs ``--parts`` = N), on the CPU or, with
``--device gpu``, on one GPU per rank (chunks then move with NCCL). It prints the
storage bytes read per rank and in total, and the wall time (slowest rank), for both.
The page cache is warm after the first load, so times compare transport costs, not disks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _parser(prog: str = "gpuload bench"):
    p = argparse.ArgumentParser(
        prog=f"{prog} --ranks N", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ranks", type=int, required=True, help="MPI ranks to launch")
    p.add_argument("--size", default="256MiB", help="tensor size (default 256MiB)")
    p.add_argument("--parts", type=int, help="row parts (default: --ranks)")
    p.add_argument("--layout", choices=["replicated", "sharded"], default="replicated")
    p.add_argument("--crc", choices=["on", "off"], default="on")
    p.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default="cpu",
        help="where the parts live; gpu: one GPU per rank (rank k sees the k-th visible GPU), chunks move with NCCL",
    )
    p.add_argument("--dir", help="where the checkpoint is written (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for the whole run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None, prog: str = "gpuload bench") -> int:
    args = _parser(prog).parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.ranks < 1:
        raise SystemExit("--ranks must be >= 1")
    here = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(here) if here.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        print("gpuload bench --ranks: no mpiexec found; pip install 'gpuload[mpi]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        # The user's --dir (if any) gives way to the temporary folder inside it (argparse: last wins).
        cmd = [
            mpiexec,
            "-n",
            str(args.ranks),
            sys.executable,
            __file__,
            *[a for a in (argv if argv is not None else sys.argv[1:]) if a != "--worker"],
            "--worker",
            "--dir",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        return proc.returncode or 1
    res = json.loads(lines[-1][7:])
    print(_report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


def _report(res) -> str:
    mib = 1 << 20
    out = [
        f"{res['ranks']} ranks, {res['layout']} on {res['device']}, tensor {res['tensor_bytes'] / mib:.0f} MiB "
        f"in {res['parts']} row parts, CRC {res['crc']}, collective transport {res.get('transport', '-')}"
    ]
    out.append(f"{'load':<11} {'wall s':>8} {'total read MiB':>15} {'x tensor':>9}   read MiB per rank")
    for mode in ("collective", "naive"):
        r = res[mode]
        total = sum(r["bytes_read"])
        out.append(
            f"{mode:<11} {r['wall_s']:>8.3f} {total / mib:>15.1f} {total / res['tensor_bytes']:>9.2f}   "
            + " ".join(f"{b / mib:.1f}" for b in r["bytes_read"])
        )
    return "\n".join(out)


def _worker(args) -> int:
    import numpy as np
    from mpi4py import MPI

    if args.device == "gpu":  # one process per GPU, before CuPy initialises CUDA
        import subprocess as sp

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = (
            visible.split(",")
            if visible
            else [
                ln.split(":")[0].split()[-1]
                for ln in sp.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines()
                if ln.startswith("GPU")
            ]
        )
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[MPI.COMM_WORLD.rank % len(ids)]

    import gpuload as tf1
    from gpuload.config import parse_size

    comm = MPI.COMM_WORLD
    parts = args.parts or comm.size
    rows = max(parts, parse_size(args.size) // (64 * 4))
    prefix = os.path.join(args.dir, "bench-ranks")
    if comm.rank == 0:
        tf1.save_checkpoint(prefix, {"emb": np.arange(rows * 64, dtype=np.uint32).reshape(rows, 64).view(np.float32)})
    comm.Barrier()
    if args.layout == "sharded":
        if parts != comm.size:
            raise SystemExit("--layout sharded needs --parts equal to --ranks")
        devices = [f"/job:worker/task:{k}/device:{args.device.upper()}:0" for k in range(parts)]
    else:
        devices = f"/device:{args.device.upper()}:0"
    res = {
        "ranks": comm.size,
        "layout": args.layout,
        "parts": parts,
        "crc": args.crc,
        "device": args.device,
        "tensor_bytes": rows * 64 * 4,
    }
    for mode in ("collective", "naive"):
        tf1.reset_default_graph()
        tf1.get_variable(
            "emb", shape=[rows, 64], dtype="float32", partitioner=tf1.fixed_size_partitioner(parts), device=devices
        )
        tf1.init_from_checkpoint(prefix, {"emb": "emb"})
        settings = {"verify_crc": args.crc == "on"}
        if mode == "collective":
            settings["communicator"] = comm
        comm.Barrier()
        t = time.perf_counter()
        with tf1.config.set(**settings):
            if mode == "naive" and args.layout == "sharded":
                # Without a communicator the task is ignored: each rank loads only its own part.
                tf1.variables_initializer([tf1.global_variables()[comm.rank]]).run()
            else:
                tf1.global_variables_initializer().run()
        wall = time.perf_counter() - t
        stats = tf1.loader.last_stats()
        read = sum(s.bytes_read for s in stats)
        if mode == "collective" and comm.rank == 0:
            res["transport"] = stats[0].transport if stats else "-"
        walls = comm.gather(wall, root=0)
        reads = comm.gather(read, root=0)
        if comm.rank == 0:
            res[mode] = {"wall_s": max(walls), "bytes_read": reads}
    if comm.rank == 0:
        print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
