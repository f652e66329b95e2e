"""The ``gpuload`` command line.

Subcommands register themselves with :func:`subcommand`; ``main`` builds one argparse
parser from every registered subcommand::

    @subcommand("bench", help="...")
    def _bench_args(p):               # p: the subcommand's ArgumentParser
        p.add_argument(...)
        return run_bench              # called as run_bench(args) -> exit status

``gpuload inspect CKPT`` lists a checkpoint's tensors; ``--tensor NAME`` prints one;
``--verify`` checks every stored CRC32C.
"""

from __future__ import annotations

import argparse
import sys

from gpuload.errors import CheckpointError, CheckpointFormatError, GpuloadError, ShardReadError

__all__ = ["main", "subcommand", "build_parser"]

_SUBCOMMANDS: list[tuple[str, dict, object]] = []


def subcommand(name: str, **parser_kwargs):
    """Register a subcommand: decorate a function that fills its parser and returns the handler."""

    def register(fill):
        _SUBCOMMANDS[:] = [s for s in _SUBCOMMANDS if s[0] != name]
        _SUBCOMMANDS.append((name, parser_kwargs, fill))
        return fill

    return register


def build_parser() -> argparse.ArgumentParser:
    """The full parser, one subparser per registered subcommand."""
    from gpuload import __version__

    parser = argparse.ArgumentParser(prog="gpuload", description="TensorFlow checkpoints without TensorFlow.")
    parser.add_argument("--version", action="version", version=f"gpuload {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, kwargs, fill in _SUBCOMMANDS:
        p = sub.add_parser(name, **kwargs)
        handler = fill(p)
        p.set_defaults(_handler=handler)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 problem found, 2 usage/input error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return _run_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._handler(args) or 0)
    except GpuloadError as e:  # bad input or no usable device: one line, no traceback
        print(f"gpuload {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gpuload inspect ... | head`
        return 0


# --- inspect ----------------------------------------------------------------------------


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@subcommand(
    "inspect",
    help="list a checkpoint's tensors, print one, or verify every checksum",
    description="List every tensor of a checkpoint (name, dtype, shape, bytes, shard, slices).",
)
def _inspect_args(p: argparse.ArgumentParser):
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory, prefix, or one of its files")
    p.add_argument("--tensor", metavar="NAME", action="append", help="print this tensor's value (repeatable)")
    p.add_argument("--verify", action="store_true", help="check every stored CRC32C; exit 1 naming each corrupt tensor")
    p.add_argument("--no-progress", action="store_true", help="no progress bar with --verify")
    return _inspect


def _inspect(args) -> int:
    from gpuload.format.bundle import Bundle

    out = sys.stdout
    with Bundle.open(args.checkpoint) as bundle:
        if args.tensor:
            return _print_tensors(bundle, args.tensor, out)
        _print_table(bundle, out)
        if args.verify:
            return _verify(bundle, out, progress=not args.no_progress)
    return 0


def _print_table(bundle, out) -> None:
    rows = []
    total = 0
    for name in bundle.names():
        pieces = bundle.pieces(name)
        nbytes = sum(p.entry.size for p in pieces)
        total += nbytes
        shards = sorted({p.entry.shard_id for p in pieces})
        e = bundle.entry(name)
        rows.append(
            (
                name,
                bundle.tf_dtype_name(name),
                str(list(e.shape)),
                str(nbytes),
                ",".join(map(str, shards)),
                str(len(e.slices)) if e.slices else "-",
            )
        )
    header = ("name", "dtype", "shape", "bytes", "shard", "slices")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    right = {3}

    def fmt(r):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    print(f"checkpoint {bundle.prefix}", file=out)
    print(fmt(header), file=out)
    print(fmt(tuple("-" * w for w in widths)), file=out)
    for r in rows:
        print(fmt(r), file=out)
    print(
        f"{len(rows)} tensors, {total} bytes ({_human(total)}) in {bundle.num_shards} data file(s)"
        f"{', big-endian' if bundle.big_endian else ''}",
        file=out,
    )


def _print_tensors(bundle, names, out) -> int:
    import numpy as np

    status = 0
    for name in names:
        try:
            value = bundle.read_tensor(name)
        except (CheckpointError, ShardReadError) as e:  # one bad tensor (or data file) does not stop the rest
            print(f"{name}: error: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"{name}: {bundle.tf_dtype_name(name)} {list(value.shape)}", file=out)
        if value.dtype == object:
            text = np.array2string(value, formatter={"object": _show_bytes}, threshold=200)
        else:
            text = np.array2string(value, threshold=1000)
        print(text, file=out)
    return status


def _show_bytes(b) -> str:
    """A string element for a terminal: text when it is printable UTF-8, else the bytes repr.

    Both forms are reprs, so control characters and escapes cannot reach the
    terminal raw; long elements are cut.
    """
    if not isinstance(b, bytes):
        return repr(b)
    cut = b[:80]
    try:
        text = cut.decode("utf-8")
        shown = repr(text) if text.isprintable() else repr(cut)
    except UnicodeDecodeError:
        shown = repr(cut)
    return shown if len(b) <= 80 else f"{shown}...({len(b)} bytes)"


def _verify(bundle, out, progress: bool) -> int:
    from tqdm import tqdm

    entries = bundle.data_entries()
    total = sum(e.size for e in entries)
    bad = []
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="verify",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    ) as bar:
        for e in entries:
            done = 0

            def step(n):
                nonlocal done
                done += n
                bar.update(n)

            try:
                bundle.verify_entry(e, progress=step)
            except (CheckpointError, ShardReadError) as err:  # a missing data file fails its entries only
                bad.append((bundle.tensor_of(e), err))
                bar.update(e.size - done)
    if bad:
        for name, err in bad:
            # a file that cannot be read (missing, I/O error) says nothing of its bytes
            label = "CORRUPT" if isinstance(err, CheckpointFormatError) else "UNREADABLE"
            print(f"{label} {name}: {err}", file=out)
        print(f"verify: {len(bad)} of {len(entries)} stored entries are corrupt or unreadable", file=out)
        return 1
    print(f"verify: all {len(entries)} stored entries ok ({_human(total)})", file=out)
    return 0


def _demo_args(p: argparse.ArgumentParser):
    from gpuload.demo import fill_parser

    return fill_parser(p)


subcommand(
    "demo", help="write a checkpoint, load it with init_from_checkpoint into a partitioned variable, and check it"
)(_demo_args)


def _bench_args(p: argparse.ArgumentParser):
    # Listed here for `gpuload --help`; main() hands `gpuload bench ...` to the benchmark's
    # own parser, which lives in the source checkout and is loaded only when it runs.
    return None


def _run_bench(argv) -> int:
    import importlib.util
    from pathlib import Path

    ranks = any(a == "--ranks" or a.startswith("--ranks=") for a in argv)  # bench/bench_ranks.py
    path = Path(__file__).resolve().parents[1] / "bench" / ("bench_ranks.py" if ranks else "bench_load.py")
    if not path.exists():
        print(
            f"gpuload bench: the benchmark lives in the source checkout ({path} not found); see bench/README.md",
            file=sys.stderr,
        )
        return 2
    spec = importlib.util.spec_from_file_location("gpuload_bench_load", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv, prog="gpuload bench")


subcommand(
    "bench", help="the load benchmark against the machine's limits and the peers (source checkout; see bench/README.md)"
)(_bench_args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
