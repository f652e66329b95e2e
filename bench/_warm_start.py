"""The warm-start row of the benchmark: ``bench_load.py --warm-start`` (``gpuload bench --warm-start``).

Issue #10's scenario: an old float32 embedding ``[rows, dim]`` (default 1,000,000 x 64)
with a vocabulary of ``rows`` tokens; a new vocabulary of ``0.8 * rows`` of those tokens,
reordered, plus ``0.2 * rows`` new ones, and 2 OOV buckets; the new variable in 8 row
parts. gpuload (``gpuload.warm_start`` + ``global_variables_initializer().run()``, CRC on
and off) and TensorFlow (``tf.compat.v1.train.warm_start`` + the initializer run in a
session) warm-start from the same files, each run in a fresh process, timed from the
call to the last value in place; each result is checked against the remap computed with
NumPy. Targets (CPU): gpuload >= 10x faster than TensorFlow, peak RSS growth <= 1 GiB.

Workers import only the standard library and NumPy at module level: the TensorFlow one
runs under ``--peer-python`` (or ``$GPULOAD_PEER_PYTHON``), where gpuload may be absent.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

T_SPEEDUP = 10.0  # gpuload >= 10x TensorFlow (CPU)
T_RSS = 1 << 30  # peak host memory growth <= 1 GiB

_NAME = "emb"


def data_dir(bench_dir: Path, rows: int, dim: int) -> Path:
    return Path(bench_dir) / f"warm-start-{rows}x{dim}"


def ensure_data(bench_dir, rows: int, dim: int, oov: int = 2, seed: int = 10) -> dict:
    """Write (once) the old checkpoint, both vocabularies and the expected mapping."""
    import gpuload

    d = data_dir(bench_dir, rows, dim)
    meta_path = d / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(Path(p).exists() for p in meta["files"]):
            return meta
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    known, fresh = int(rows * 0.8), rows - int(rows * 0.8)
    old_ids = rng.permutation(rows)
    old_tokens = [b"w%09d" % i for i in old_ids]
    (d / "old_vocab.txt").write_bytes(b"\n".join(old_tokens) + b"\n")
    keep = rng.permutation(rows)[:known]  # old rows the new vocabulary keeps, in new order
    mapping = np.concatenate([keep, np.full(fresh, -1)]).astype(np.int64)
    order = rng.permutation(rows)
    mapping = mapping[order]
    fresh_ids = iter(range(fresh))
    new_tokens = [old_tokens[m] if m >= 0 else b"n%09d" % next(fresh_ids) for m in mapping]
    (d / "new_vocab.txt").write_bytes(b"\n".join(new_tokens) + b"\n")
    np.save(d / "mapping.npy", mapping)
    table = np.empty((rows, dim), np.float32)
    step = 1 << 16
    for a in range(0, rows, step):  # bounded memory while generating
        table[a : a + step] = rng.standard_normal((min(step, rows - a), dim), dtype=np.float32)
    prefix = str(d / "ckpt" / "model.ckpt")
    gpuload.save_checkpoint(prefix, {_NAME: table})
    data_files = sorted(str(p) for p in (d / "ckpt").glob("model.ckpt.data-*"))
    meta = {
        "rows": rows,
        "dim": dim,
        "new_vocab_size": rows,
        "oov": oov,
        "known": known,
        "fresh": fresh,
        "ckpt": prefix,
        "ckpt_dir": str(d / "ckpt"),
        "old_vocab": str(d / "old_vocab.txt"),
        "new_vocab": str(d / "new_vocab.txt"),
        "mapping": str(d / "mapping.npy"),
        "data_files": data_files,
        "files": data_files + [str(d / "old_vocab.txt"), str(d / "new_vocab.txt")],
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def _verify(meta, arrays) -> dict:
    """Every value of the 8 parts against old[mapping] (zeros for new tokens and OOV rows)."""
    try:
        got = np.concatenate([np.asarray(a) for a in arrays])
        rows, dim, oov = meta["rows"], meta["dim"], meta["oov"]
        if got.shape != (meta["new_vocab_size"] + oov, dim):
            return {"ok": False, "detail": f"shape {got.shape}"}
        # A gpuload checkpoint of one tensor keeps it at offset 0 of its data file.
        old = np.fromfile(meta["data_files"][0], dtype=np.float32, count=rows * dim).reshape(rows, dim)
        mapping = np.load(meta["mapping"])
        hit = mapping >= 0
        ok = bool(
            np.array_equal(got[: len(mapping)][hit], old[mapping[hit]])
            and not got[: len(mapping)][~hit].any()
            and not got[len(mapping) :].any()
        )
        return {"ok": ok, "detail": "all values" if ok else "values differ from old[mapping]", "parts": len(arrays)}
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}


def run_gpuload_ws(spec) -> dict:
    from _workers import CpuUse, PeakRSS, _sum_stats, prepare_cache

    import gpuload
    import gpuload.loader

    meta = spec["meta"]
    gpuload.config.set(**spec["config"])
    gpuload.reset_default_graph()
    parts = spec["parts"]
    device = spec.get("device", "/cpu:0")
    plain = spec.get("plain", False)  # the plain load of the old table, for the GPU comparison
    rows = meta["rows"] if plain else meta["new_vocab_size"] + meta["oov"]
    v = gpuload.get_variable(
        _NAME,
        [rows, meta["dim"]],
        "float32",
        initializer=gpuload.zeros_initializer(),
        device=device,
        partitioner=lambda shape, dtype: [parts, 1],
    )
    info = gpuload.VocabInfo(meta["new_vocab"], meta["new_vocab_size"], meta["oov"], meta["old_vocab"])
    res = {"kind": "ws_gpuload", "config": spec["config"], "device": device, "plain": plain}
    if device != "/cpu:0":
        from gpuload.backend import kernels

        kernels.warmup(["b4_b4"], [0])  # compiling is not load time
        kernels.get_gather_kernel(np.float32, np.float32)
        import cupy
    res.update(prepare_cache("warm", meta["files"]))
    with PeakRSS() as rss, CpuUse() as cpu:
        t0 = time.perf_counter()
        if plain:
            gpuload.init_from_checkpoint(meta["ckpt_dir"], {_NAME: _NAME})
        else:
            gpuload.warm_start(meta["ckpt_dir"], ".*", {_NAME: info})
        t1 = time.perf_counter()
        gpuload.global_variables_initializer().run()
        if device != "/cpu:0":
            cupy.cuda.Device(0).synchronize()
        seconds = time.perf_counter() - t0
    res.update(rss.as_dict())
    res.update(cpu.as_dict())
    res.update({"seconds": seconds, "call_s": t1 - t0, "run_s": seconds - (t1 - t0)})
    res["stats"] = _sum_stats([s.as_dict() for s in gpuload.loader.last_stats()])
    arrays = [p.numpy() for p in v._get_variable_list()]
    if plain:
        old = np.fromfile(meta["data_files"][0], dtype=np.float32).reshape(meta["rows"], meta["dim"])
        ok = bool(np.array_equal(np.concatenate(arrays), old))
        res["verify"] = {"ok": ok, "detail": "all values" if ok else "values differ", "parts": len(arrays)}
    else:
        res["verify"] = _verify(meta, arrays)
    res["ok"] = res["verify"]["ok"]
    return res


def run_tensorflow_ws(spec) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from _workers import CpuUse, PeakRSS, prepare_cache

    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    meta = spec["meta"]
    parts = spec["parts"]
    res = {"kind": "ws_tensorflow", "version": tf.__version__}
    g = tf.Graph()
    with g.as_default(), tf.device("/cpu:0"):
        v = tf1.get_variable(
            _NAME,
            shape=[meta["new_vocab_size"] + meta["oov"], meta["dim"]],
            dtype=tf.float32,
            initializer=tf1.zeros_initializer(),
            partitioner=tf1.fixed_size_partitioner(parts),
        )
        sess = tf1.Session(graph=g)
        info = tf1.train.VocabInfo(meta["new_vocab"], meta["new_vocab_size"], meta["oov"], meta["old_vocab"])
        res.update(prepare_cache("warm", meta["files"]))
        with PeakRSS() as rss, CpuUse() as cpu:
            t0 = time.perf_counter()
            tf1.train.warm_start(meta["ckpt_dir"], ".*", {_NAME: info})
            init = tf1.global_variables_initializer()
            t1 = time.perf_counter()
            sess.run(init)
            seconds = time.perf_counter() - t0
    res.update(rss.as_dict())
    res.update(cpu.as_dict())
    res.update({"seconds": seconds, "call_s": t1 - t0, "run_s": seconds - (t1 - t0)})
    arrays = sess.run([p.value() for p in list(v)])
    sess.close()
    res["verify"] = _verify(meta, arrays)
    res["ok"] = res["verify"]["ok"]
    return res


WORKERS = {"ws_gpuload": run_gpuload_ws, "ws_tensorflow": run_tensorflow_ws}


def _stat(runs, key):
    vals = [r[key] for r in runs if r.get("ok") and r.get(key) is not None]
    return (min(vals), statistics.median(vals)) if vals else (None, None)


def run(args, run_worker, sysinfo) -> int:
    """Run the warm-start benchmark (gpuload CRC on/off, TensorFlow); write JSON, md and PNG."""
    rows = args.ws_rows
    dim = 64
    parts = 8
    bench_dir = Path(args.dir or os.environ.get("GPULOAD_BENCH_DIR") or Path("/tmp") / "gpuload-bench")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"warm start: [{rows} x {dim}] float32, old vocabulary {rows} tokens, new {int(rows * 0.8)} of them "
        f"reordered + {rows - int(rows * 0.8)} new, 2 OOV buckets, {parts} row parts",
        flush=True,
    )
    t_data = time.perf_counter()
    meta = ensure_data(bench_dir, rows, dim)
    print(f"data in {data_dir(bench_dir, rows, dim)} ({time.perf_counter() - t_data:.1f} s)", flush=True)
    crc_modes = {"both": [True, False], "on": [True], "off": [False]}[args.crc]
    jobs = [
        (
            f"gpuload crc={'on' if c else 'off'}",
            sys.executable,
            {"kind": "ws_gpuload", "meta": meta, "parts": parts, "config": {"verify_crc": c}},
        )
        for c in crc_modes
    ]
    skipped = []
    if "gpu" in [d.strip() for d in args.devices.split(",")]:
        try:
            import gpuload

            gpu_ok = gpuload.is_gpu_available()
        except Exception:  # noqa: BLE001 - reported as a skip
            gpu_ok = False
        if gpu_ok:
            for c in crc_modes:
                cfg = {"verify_crc": c}
                jobs.append(
                    (
                        f"gpuload gpu crc={'on' if c else 'off'}",
                        sys.executable,
                        {"kind": "ws_gpuload", "meta": meta, "parts": parts, "config": cfg, "device": "/gpu:0"},
                    )
                )
                jobs.append(
                    (
                        f"plain load gpu crc={'on' if c else 'off'}",
                        sys.executable,
                        {
                            "kind": "ws_gpuload",
                            "meta": meta,
                            "parts": parts,
                            "config": cfg,
                            "device": "/gpu:0",
                            "plain": True,
                        },
                    )
                )
        else:
            skipped.append("gpu: skipped: no usable CUDA device (gpuload.is_gpu_available() is False)")
    peers = [p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none"]
    probe = sysinfo.probe_peers(args.peer_python) if "tensorflow" in peers else {}
    if "tensorflow" in peers:
        st = probe.get("tensorflow") or {"ok": False, "reason": probe.get("error", "not probed")}
        if st.get("ok"):
            jobs.append(("tensorflow", args.peer_python, {"kind": "ws_tensorflow", "meta": meta, "parts": parts}))
        else:
            skipped.append(f"tensorflow: skipped: {st.get('reason')} (under {args.peer_python})")
    for s in skipped:
        print(s, flush=True)
    runs: dict[str, list] = {name: [] for name, _, _ in jobs}
    for rep in range(args.repeat):
        for name, python, spec in jobs:
            res = run_worker(spec, python, args.timeout)
            runs[name].append(res)
            status = (
                f"{res['seconds']:7.2f} s  peak RSS +{res['rss_peak_delta'] / (1 << 20):6.0f} MiB"
                if res.get("ok")
                else f"FAILED: {res.get('error') or res.get('verify')}"
            )
            print(f"  run {rep + 1}: {name:16s} {status}", flush=True)
    summary = []
    tf_best = _stat(runs.get("tensorflow", []), "seconds")[0]
    for name, rs in runs.items():
        best, median = _stat(rs, "seconds")
        rss = max((r["rss_peak_delta"] for r in rs if r.get("ok")), default=None)
        row = {
            "what": name,
            "ok": bool(rs) and all(r.get("ok") for r in rs),
            "best_s": best,
            "median_s": median,
            "rss_peak_delta_max": rss,
            "runs": len(rs),
            "call_s_best": _stat(rs, "call_s")[0],
            "run_s_best": _stat(rs, "run_s")[0],
        }
        if name.startswith("gpuload gpu"):
            plain = _stat(runs.get(name.replace("gpuload gpu", "plain load gpu"), []), "seconds")[0]
            row["vs_plain_load"] = best / plain if best and plain else None
            row["target_vs_plain_pass"] = None if row["vs_plain_load"] is None else row["vs_plain_load"] <= 1.5
        if name.startswith("gpuload"):
            good = [r for r in rs if r.get("ok")]
            row["stats"] = min(good, key=lambda r: r["seconds"])["stats"] if good else None
            row["speedup_vs_tf"] = tf_best / best if tf_best and best else None
            row["target_speedup_pass"] = None if row["speedup_vs_tf"] is None else row["speedup_vs_tf"] >= T_SPEEDUP
            row["target_rss_pass"] = None if rss is None else rss <= T_RSS
        summary.append(row)
    info = {
        "schema": 1,
        "kind": "warm_start",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": sysinfo.machine(bench_dir),
        "versions": sysinfo.versions(),
        "peers": probe,
        "config": {
            "rows": rows,
            "dim": dim,
            "parts": parts,
            "oov": 2,
            "repeat": args.repeat,
            "peer_python": args.peer_python,
            "argv": sys.argv[1:],
        },
        "skipped": skipped,
        "runs": runs,
        "summary": summary,
        "targets": {"speedup_vs_tf": T_SPEEDUP, "rss_peak_delta_bytes": T_RSS, "gpu_vs_plain_load": 1.5},
    }
    lines = [
        "| what | best s | median s | call s | run s | peak RSS growth | x TensorFlow | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        if r.get("vs_plain_load") is not None:
            skipped_note = "PASS" if r["target_vs_plain_pass"] else "FAIL"
            print(
                f"{r['what']}: {r['vs_plain_load']:.2f}x the plain GPU load of the old table "
                f"(target <= 1.5x): {skipped_note}"
            )

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    for r in summary:
        targets = (
            ""
            if "speedup_vs_tf" not in r
            else (
                f"10x: {'-' if r['target_speedup_pass'] is None else ('PASS' if r['target_speedup_pass'] else 'FAIL')}, "
                f"1 GiB: {'-' if r['target_rss_pass'] is None else ('PASS' if r['target_rss_pass'] else 'FAIL')}"
            )
        )
        lines.append(
            f"| {r['what']} | {f(r['best_s'])} | {f(r['median_s'])} | {f(r['call_s_best'])} | "
            f"{f(r['run_s_best'])} | {f(r['rss_peak_delta_max'] and r['rss_peak_delta_max'] / (1 << 20), '{:.0f} MiB')} | "
            f"{f(r.get('speedup_vs_tf'), '{:.1f}x')} | {targets} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    host = f"{info['machine']['cpu']}-{info['machine']['cores']}c"
    slug = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")[:40]
    base = out_dir / f"{_dt.datetime.now().strftime('%Y-%m-%dT%H%M')}-{slug}-warm-start-{rows}"
    if not args.no_plot:
        info["plot"] = _plot(summary, base.with_suffix(".png"), f"warm start [{rows} x {dim}] float32, 8 row parts")
    base.with_suffix(".json").write_text(json.dumps(info, indent=1, default=str))
    m = info["machine"]
    md = [
        f"# gpuload warm-start benchmark: [{rows} x {dim}] float32",
        "",
        f"- date: {info['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores; {m['os']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- scenario: old vocabulary {rows} tokens; new vocabulary {int(rows * 0.8)} of them reordered + "
        f"{rows - int(rows * 0.8)} new; 2 OOV buckets; 8 row parts on the CPU; zeros as backup",
        f"- {args.repeat} run(s) each, each in a fresh process; timed: the warm_start call plus the "
        f"initializer run; every result checked value by value against old[mapping]",
        f"- command: `bench/bench_load.py {' '.join(sys.argv[1:])}`",
        "",
        table,
    ]
    md += [
        f"- {r['what']}: {r['vs_plain_load']:.2f}x the time of a plain GPU load of the old table (target <= 1.5x)"
        for r in summary
        if r.get("vs_plain_load") is not None
    ]
    if skipped:
        md += ["", "## Skipped", ""] + [f"- {s}" for s in skipped]
    if info.get("plot"):
        md += ["", f"![warm start]({info['plot']})"]
    base.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(
        f"\nwrote {base.with_suffix('.json')}, {base.with_suffix('.md')}"
        + ("" if args.no_plot else f", {base.with_suffix('.png')}")
    )
    return 0 if all(r["ok"] for r in summary) else 1


def _plot(summary, path: Path, title: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in summary if r["best_s"] is not None]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(
        [r["what"] for r in ok],
        [r["best_s"] for r in ok],
        color=["#2a7" if r["what"].startswith("gpuload") else "#888" for r in ok],
    )
    for i, r in enumerate(ok):
        ax.text(r["best_s"], i, f" {r['best_s']:.2f} s", va="center")
    ax.set_xlim(0, 1.2 * max(r["best_s"] for r in ok) if ok else 1)
    ax.set_xlabel("seconds (best run; call + initializer run)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
