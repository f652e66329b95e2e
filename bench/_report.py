"""Stage 4b of the benchmark: the outputs. The console header and table, the markdown,
the JSON record and the plot, from the run's ``info`` record (config, machine, limits,
measurements and the summary of ``_summary.py``); :func:`replot` redraws them from a
results JSON.

The plot needs matplotlib (the ``bench`` and ``test`` extras install it); without it the
run says so and writes the JSON and tables only.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path

from _config import human
from _summary import READ_CRC, READ_CRC_HUGE, T_READ_CRC, headline

_MIB = 1 << 20
_GIB = 1 << 30

COLUMNS = [
    "what",
    "layout",
    "dev",
    "crc",
    "cache",
    "GB/s best",
    "GB/s med",
    "limit",
    "ratio",
    "vs fresh",
    "vs read+crc",
    "vs read+crc huge",
    "vs base",
    "read s",
    "crc s",
    "copy s",
    "submit s",
    "wait s",
    "drain s",
    "cpu s",
    "noise %",
    "peak RSS MiB",
    "bound MiB",
    "ok",
    "targets",
]


def _f(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def _stage(st, key, wall):
    """A LoadStats seconds field, or ``?`` when it cannot be right (negative, or far beyond
    the wall time even summed over threads): the raw value stays in the JSON."""
    v = st.get(key)
    if v is None:
        return "-"
    if v < -1e-3 or (wall and v > 64 * wall):
        return "?"
    return f"{v:.2f}"


def rows(summary) -> list[list[str]]:
    out = []
    for g in summary:
        st = g.get("stats") or {}
        wall = g.get("seconds_best")
        tg = g.get("targets") or {}
        targets = " ".join(f"{k}:{'PASS' if t['pass'] else 'FAIL'}" for k, t in tg.items()) or "-"
        rss = g.get("rss_peak_delta")
        out.append(
            [
                g["what"],
                g["layout"],
                g["device"],
                {True: "on", False: "off", None: "-"}[g.get("crc")],
                g["cache"],
                _f(g.get("gbps_best")),
                _f(g.get("gbps_median")),
                g.get("limit_key") or "-",
                _f(g.get("ratio")),
                _f(g.get("ratio_fresh")),
                _f(g.get("ratio_read_crc")),
                _f(g.get("ratio_read_crc_huge")),
                _f(g.get("ratio_base")),
                *(_stage(st, k, wall) for k in ("read_s", "crc_s", "copy_s", "submit_s", "wait_read_s", "drain_s")),
                _f(g.get("cpu_own_s")),
                _f(g.get("noise_pct"), 0),
                "-" if rss is None else f"{rss / _MIB:.0f}",
                "-" if g.get("rss_bound") is None else f"{g['rss_bound'] / _MIB:.0f}",
                "yes" if g.get("ok") else "NO",
                targets,
            ]
        )
    return out


def console_table(summary) -> str:
    body = rows(summary)
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in body])


def markdown_table(summary) -> str:
    body = rows(summary)
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def limits_table(limits: dict) -> str:
    out = ["| limit | GB/s best | GB/s median | what |", "|---|---|---|---|"]
    for k, v in limits.items():
        out.append(f"| {k} | {_f(v.get('best'))} | {_f(v.get('median'))} | {v.get('name', '')} |")
    return "\n".join(out)


# --- the plot ------------------------------------------------------------------------------


def plot_series(summary, limits):
    """Points per series and the limit lines: what both renderers draw."""
    layouts = []
    for g in summary:
        if g["layout"] not in layouts:
            layouts.append(g["layout"])

    def order(name):
        kind, n = name.split(":")
        return (kind != "rows", int(n))

    layouts.sort(key=order)
    xs, pos, prev = {}, 0.0, None
    for lay in layouts:  # a gap between the row layouts and the column layouts
        kind = lay.split(":")[0]
        if prev is not None:
            pos += 1.6 if kind != prev else 1.0
        xs[lay] = pos
        prev = kind
    series = {}
    for g in summary:
        if g.get("gbps_best") is None:
            continue
        crc = "" if g.get("crc") is None else (" crc on" if g["crc"] else " crc off")
        label = f"{g['what']} {g['device']}{crc} {g['cache']}"
        series.setdefault(label, []).append((xs[g["layout"]], g["gbps_best"]))
    lines = []
    for key in (
        "readinto_1t",
        "pread_dest_2t",
        READ_CRC,
        "pread_4t",
        "odirect_seq",
        "cold_readinto_1t",
        "gpu0_h2d_pinned",
        "gpu_all_h2d_pinned",
    ):
        v = limits.get(key)
        if v and v.get("best"):
            lines.append((f"limit: {key}", v["best"]))
    return xs, {k: sorted(v) for k, v in series.items()}, lines


def _what_of(label: str) -> str:
    """The loader part of a series label ("gpuload", "safetensors get_slice", ...)."""
    return label.split(" cpu")[0].split(" gpu")[0]


def plot(summary, limits, path, title: str) -> str:
    """Write the PNG; return which renderer drew it."""
    xs, series, lines = plot_series(summary, limits)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "none (matplotlib not installed: pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(12, 6.5), dpi=110)
    # One colour per loader, one line style per cache state, one marker per CRC setting.
    whats = []
    for label in series:
        what = _what_of(label)
        if what not in whats:
            whats.append(what)
    colour = {w: f"C{i % 10}" for i, w in enumerate(whats)}
    styles = {"warm": "-", "cold": "--", "cold-direct": "-."}
    for label, pts in series.items():
        cache = label.rsplit(" ", 1)[-1]
        marker = "o" if " crc on " in label else ("s" if " crc off " in label else "^")
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            ls=styles.get(cache, ":"),
            marker=marker,
            color=colour[_what_of(label)],
            label=label,
            ms=6,
            lw=1.6,
        )
    greys = ["0.15", "0.35", "0.5", "0.65", "0.8"]
    dashes = [(1, 1), (4, 2), (6, 2, 1, 2), (2, 3), (8, 3)]
    for i, (label, y) in enumerate(lines):
        ax.axhline(
            y, color=greys[i % len(greys)], lw=1.2, dashes=dashes[i % len(dashes)], label=f"{label} ({y:.2f} GB/s)"
        )
    ax.set_xticks(list(xs.values()))
    ax.set_xticklabels([f"{lay.split(':')[1]} {'row' if lay.startswith('rows') else 'column'} parts" for lay in xs])
    ax.set_xlabel("row parts (left), column parts (right)")
    ax.set_ylabel("GB/s (10^9 bytes / s, best run)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


# --- the run's record, header and markdown ------------------------------------------------------


def new_info(config, date: str | None = None) -> dict:
    """The results JSON's record, before anything is measured: date, machine, versions, config."""
    f = config.facts
    return {
        "schema": 1,
        "date": date or _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f.machine,
        "versions": f.versions,
        "gpus": f.gpuinfo,
        "peers": f.peer_probe,
        "config": config.as_json(),
    }


def header(info) -> str:
    m, v, gi = info["machine"], info["versions"], info["gpus"]
    fs = m["filesystem"]
    lines = [
        f"machine   : {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"{(m['ram_bytes'] or 0) / _GIB:.1f} GiB RAM, host {m['hostname']}",
        f"os        : {m['os']} (kernel {m['kernel']}), load avg {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}",
        f"filesystem: {fs.get('fstype', '?')} on {fs.get('device', '?')} at {fs.get('mount', '?')}"
        + (f", rotational={fs['rotational']}, scheduler {fs.get('scheduler', '?')}" if "rotational" in fs else "")
        + (f", model {fs['model']}" if fs.get("model") else ""),
        "versions  : " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    if gi.get("count"):
        lines.append(
            f"gpus      : {gi['count']} x "
            + ", ".join(d["name"] for d in gi["devices"])
            + f"; driver {gi.get('driver')}, runtime {gi.get('runtime')}, cupy {gi.get('cupy')}"
        )
    else:
        lines.append(f"gpus      : none ({gi.get('reason')})")
    c = info["config"]
    lines.append(f"data      : {c['shape']} {c['dtype']} = {human(c['bytes'])} in {c['dir']}")
    lines.append(f"gpuload   : {json.dumps(c['gpuload_config'])} (each row sets verify_crc and direct_io)")
    lines.append(
        f"runs      : layouts {','.join(c['layouts'])}; devices {','.join(c['devices']) or '-'}; "
        f"crc {c['crc']}; caches {','.join(c['caches'])}; repeat {c['repeat']} (fresh process each)"
    )
    return "\n".join(lines)


def title(info) -> str:
    c, m, gi = info["config"], info["machine"], info["gpus"]
    return (
        f"gpuload {info['versions'].get('gpuload')} - {human(c['bytes'])} {c['dtype']} {c['shape']} - "
        f"{m['cpu']} x{m['cores']}"
        + (f" - {gi['devices'][0]['name']}" if gi.get("count") else "")
        + f" - {info['date'][:10]}"
    )


def headline_text(summary, limits) -> str | None:
    """Issue #9's column-part target in one line: cols:4, CPU, CRC on, warm, against read+CRC."""
    g = headline(summary)
    if g is None or not g.get("gbps_best"):
        return None
    t = (g.get("targets") or {}).get("read+crc>=0.9x")
    lim = (limits.get(READ_CRC) or {}).get("best")
    if t is None or not lim:
        return f"column-part target: gpuload cols:4 crc on {g['gbps_best']:.2f} GB/s; {READ_CRC} not measured"
    text = (
        f"column-part target: gpuload cols:4 crc on {g['gbps_best']:.2f} GB/s = {t['value']:.2f} x {READ_CRC} "
        f"({lim:.2f} GB/s) -> {'PASS' if t['pass'] else 'FAIL'} (>= {T_READ_CRC}x)"
    )
    huge = (limits.get(READ_CRC_HUGE) or {}).get("best")
    if huge and g.get("ratio_read_crc_huge") is not None:
        text += f"; {g['ratio_read_crc_huge']:.2f} x {READ_CRC_HUGE} ({huge:.2f} GB/s, gpuload's huge-page allocation)"
    return text


def markdown(info) -> str:
    m, c = info["machine"], info["config"]
    fs = m["filesystem"]
    gi = info["gpus"]
    gpu = (
        f"{gi['count']} x {gi['devices'][0]['name']} (driver {gi.get('driver')}, cupy {gi.get('cupy')})"
        if gi.get("count")
        else f"none ({gi.get('reason')})"
    )
    lines = [
        f"# gpuload load benchmark: {human(c['bytes'])} {c['dtype']} {c['shape']}",
        "",
        f"- date: {info['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {(m['ram_bytes'] or 0) / _GIB:.1f} GiB RAM; {m['os']}",
        f"- filesystem: {fs.get('fstype')} on {fs.get('device')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_end', []))}",
        f"- GPU: {gpu}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- gpuload config: `{json.dumps(c['gpuload_config'])}`; {c['repeat']} run(s) per row, each in a fresh process",
        f"- command: `bench/bench_load.py {' '.join(c['argv'])}`",
    ]
    if c.get("baseline"):
        b = c["baseline"]
        lines.append(
            f"- baseline: the rows `{b['label']}` ran the gpuload of `{b['checkout']}`, interleaved with this "
            "checkout's; `vs base` is this gpuload's best GB/s over the baseline's on the same row"
        )
    lines += [
        "",
        "GB/s is 10^9 bytes of tensor per second, from `run()` to the last byte in place. `ratio` is the best "
        "run against the best run of the `limit` named. Stage seconds (`read`, `crc`: summed over reader "
        "threads; `submit` (the consumer's copy/submit), `wait`, `drain`: consumer thread) are from "
        "`gpuload.loader.last_stats()` of the best run. Peak RSS is the process's peak during `run()` "
        "minus its RSS before; the bound is destination + ring + 64 MiB. `vs fresh` compares warm CPU rows with "
        "the fastest read into a fresh destination array (`readinto_dest_1t`, `pread_dest_Nt`). `vs read+crc` "
        f"compares warm CPU rows with CRC on with `{READ_CRC}` (2 threads `preadv` 4 MiB pieces into a fresh "
        f"`np.empty` array and CRC32C each piece while in cache; the `read+crc>=0.9x` target), `vs read+crc huge` "
        f"with `{READ_CRC_HUGE}` (the same into memory allocated as gpuload allocates it: anonymous mmap + "
        "MADV_HUGEPAGE). A stage shown as `?` is a LoadStats value that cannot be right (negative, or far beyond "
        "the wall time); the raw value is in the JSON. `noise %` is the CPU other processes used during the best "
        "run, as a share of all cores.",
    ]
    head = headline_text(info["summary"], info["limits"])
    if head:
        lines += ["", f"**{head}**"]
    lines += [
        "",
        markdown_table(info["summary"]),
        "",
        "## Limits measured in the same run",
        "",
        limits_table(info["limits"]),
    ]
    for name, t in (info.get("machine_targets") or {}).items():
        lines += [
            "",
            f"- {name}: gpuload kernel {t['kernel_gbps']:.1f} GB/s / D2D {t['d2d_gbps']:.1f} GB/s = "
            f"{t['value']:.2f} -> {'PASS' if t['pass'] else 'FAIL'}",
        ]
    prof = {k: v for k, v in (info.get("profiles") or {}).items() if isinstance(v, dict) and "threads" in v}
    if prof:
        lines += [
            "",
            "## Where the time went (py-spy, one extra warm CPU run each)",
            "",
            "Share of each thread role's samples during `run()`, by what the thread was doing.",
            "",
        ]
        for key, v in prof.items():
            gb = v.get("gbps_under_profiler")
            lines.append(f"- **{key}** ({'-' if gb is None else f'{gb:.2f}'} GB/s under the profiler)")
            for role, s in v["threads"].items():
                parts = ", ".join(f"{b} {p:.0f}%" for b, p in s["buckets"].items() if p >= 1)
                lines.append(f"  - {role} ({s['threads']} thread(s)): {parts}")
    if info.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in info["skipped"]]
    if info.get("plot"):
        lines += ["", f"![GB/s against part count]({info['plot']['path']})"]
    return "\n".join(lines) + "\n"


def console(info) -> str:
    """What the console shows after the runs: the table, the headline, machine targets, skips."""
    out = ["", console_table(info["summary"])]
    head = headline_text(info["summary"], info["limits"])
    if head:
        out += ["", head]
    vs_base = [g for g in info["summary"] if g.get("ratio_base") is not None]
    if vs_base:
        crc = {True: "on", False: "off", None: "-"}
        out.append(
            f"vs {info['config']['baseline']['label']} (best over best, same run): "
            + ", ".join(
                f"{g['layout']} {g['device']} crc {crc[g['crc']]} {g['cache']} {g['ratio_base']:.2f}" for g in vs_base
            )
        )
    for name, t in (info.get("machine_targets") or {}).items():
        out.append(
            f"{name}: kernel {t['kernel_gbps']:.1f} GB/s / D2D {t['d2d_gbps']:.1f} GB/s = {t['value']:.2f} "
            f"(correct={t['correct']}) -> {'PASS' if t['pass'] else 'FAIL'}"
        )
    out += info.get("skipped") or []
    return "\n".join(out)


def results_base(info, out_dir: Path) -> Path:
    """``<out>/<date>-<cpu-or-gpu>-<size>[-quick]``: the JSON, PNG and markdown share it."""
    gi, m, c = info["gpus"], info["machine"], info["config"]
    host = f"{gi['devices'][0]['name']}" if gi.get("count") else f"{m['cpu']}-{m['cores']}c"
    slug = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")[:40]
    stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H%M")
    return Path(out_dir) / f"{stamp}-{slug}-{human(c['bytes'])}{'-quick' if c.get('quick') else ''}"


def write(info, out_dir: Path, plot_png: bool = True) -> list[Path]:
    """Write the PNG (unless ``plot_png`` is false), JSON and markdown (and ``latest.md`` for a
    full run); return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = results_base(info, out_dir)
    json_path, png_path, md_path = base.with_suffix(".json"), base.with_suffix(".png"), base.with_suffix(".md")
    written = []
    if plot_png:
        info["plot"] = {"path": png_path.name, "renderer": plot(info["summary"], info["limits"], png_path, title(info))}
        if png_path.exists():
            written.append(png_path)
    json_path.write_text(json.dumps(info, indent=1, default=str))
    md = markdown(info)
    md_path.write_text(md)
    written = [json_path, *written, md_path]
    if not info["config"].get("quick"):
        (out_dir / "latest.md").write_text(md)
        written.append(out_dir / "latest.md")
    return written


def replot(json_path: Path, write_latest: bool) -> int:
    """Redraw ``<run>.png`` and ``<run>.md`` (and ``latest.md``) from a results JSON."""
    import _profile

    info = json.loads(json_path.read_text())
    base = json_path.with_suffix("")
    for v in (info.get("profiles") or {}).values():  # re-bucket while the raw samples exist
        if isinstance(v, dict) and v.get("raw") and Path(v["raw"]).exists():
            v["threads"] = _profile.summarize(v["raw"])
    info["plot"] = {
        "path": base.with_suffix(".png").name,
        "renderer": plot(info["summary"], info["limits"], base.with_suffix(".png"), title(info)),
    }
    md = markdown(info)
    base.with_suffix(".md").write_text(md)
    if write_latest and not info["config"].get("quick"):
        (json_path.parent / "latest.md").write_text(md)
    json_path.write_text(json.dumps(info, indent=1, default=str))
    print(f"redrew {base.with_suffix('.png')} and {base.with_suffix('.md')}")
    return 0
