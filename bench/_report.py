"""The benchmark's outputs: the console table, the markdown table, and the plot.

The plot needs matplotlib (the ``bench`` and ``test`` extras install it); without it the
run says so and writes the JSON and tables only.
"""

from __future__ import annotations

_MIB = 1 << 20

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
