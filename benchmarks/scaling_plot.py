"""Plots and fits of fold_scaling.py's sweeps: is the fold's cost linear in BN count and size?

Pure functions over the sweep points that ``fold_scaling.py`` saves (no benchmark runs here):
``loglog_slope`` is the exponent b of a least-squares fit time ~ a * x**b over the larger half
of the points (fixed costs flatten the small ones; 1.0 = linear, clearly above 1 = a
super-linear term), and ``plot_sweep`` writes one PNG per sweep with three log-log panels: time
against x with a slope-1 reference line, time per unit (per BN, per MB) against x, flat when
linear, and peak RSS against x (for the size sweep as x of the model's size, with the goals'
2x and 3x lines). matplotlib is imported inside, with the Agg backend.
"""
from __future__ import annotations

import math
import os
from typing import Any

# series: (label, how to read its seconds from a point, how to read its peak MB, line style)
SERIES = [
    ("fold, proofs (in process)", ("fold", "prove", "s"), ("fold", "prove", "peak_mb"), "o-"),
    ("fold, no proofs (in process)", ("fold", "no_prove", "s"), ("fold", "no_prove", "peak_mb"), "s-"),
    ("CLI --no-verify", ("cli", "no_verify", "wall_s"), ("cli", "no_verify", "peak_tree_mb"), "^--"),
    ("CLI, verifying", ("cli", "verify", "wall_s"), ("cli", "verify", "peak_tree_mb"), "v--"),
]
UNITS = {"bn": ("BN count", "µs per BN", 1e6), "mb": ("model size (MB)", "ms per MB", 1e3)}


def pick(point: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    """A nested value of a point, None when that measurement is missing or failed."""
    value: Any = point
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return None
        value = value[k]
    return float(value) if isinstance(value, (int, float)) else None


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Exponent b of y ~ a * x**b, least squares in log-log over the larger half of x (at least
    two points); None with fewer than two distinct x."""
    pairs = sorted((x, y) for x, y in zip(xs, ys) if x > 0 and y > 0)
    pairs = pairs[-max(2, (len(pairs) + 1) // 2):]
    if len({x for x, _ in pairs}) < 2:
        return None
    lx, ly = [math.log(x) for x, _ in pairs], [math.log(y) for _, y in pairs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def series(points: list[dict[str, Any]], x_key: str,
           keys: tuple[str, ...]) -> tuple[list[float], list[float]]:
    """The (x, value) pairs of one measurement over the points that have it, sorted by x."""
    pairs = sorted((float(p[x_key]), v) for p in points if (v := pick(p, keys)) is not None)
    return [x for x, _ in pairs], [v for _, v in pairs]


def slopes(points: list[dict[str, Any]], x_key: str) -> dict[str, float | None]:
    """The fitted exponent of every series' time against ``x_key``."""
    return {label: loglog_slope(*series(points, x_key, t)) for label, t, _, _ in SERIES
            if series(points, x_key, t)[0]}


def plot_sweep(points: list[dict[str, Any]], x_key: str, path: str, title: str) -> str:
    """Write the three-panel PNG of one sweep (``x_key`` "bn" or "mb") to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not points:
        raise ValueError("no points to plot")
    x_label, per_label, per_scale = UNITS[x_key]
    fig, (ax_t, ax_u, ax_m) = plt.subplots(1, 3, figsize=(16, 4.8))
    fits = slopes(points, x_key)
    for label, t_keys, m_keys, style in SERIES:
        xs, ts = series(points, x_key, t_keys)
        if not xs:
            continue
        fit = fits.get(label)
        ax_t.loglog(xs, ts, style, label=label + (f" (slope {fit:.2f})" if fit is not None else ""))
        ax_u.loglog(xs, [t / x * per_scale for x, t in zip(xs, ts)], style, label=label)
        mx, ms = series(points, x_key, m_keys)
        if ms:
            ax_m.loglog(mx, [m / x for x, m in zip(mx, ms)] if x_key == "mb" else ms, style, label=label)
    xs_all = sorted({float(p[x_key]) for p in points})
    ref_x, ref_t = series(points, x_key, SERIES[0][1])
    if ref_t and len(xs_all) > 1:  # through the largest point of the first series
        ax_t.loglog(xs_all, [ref_t[-1] * x / ref_x[-1] for x in xs_all], "k:",
                    label="linear (slope 1)")
    ax_t.set(xlabel=x_label, ylabel="seconds", title="time (log-log)")
    ax_u.set(xlabel=x_label, ylabel=per_label, title=f"{per_label} (log-log): flat = linear")
    if x_key == "mb":
        for ratio, style in ((2.0, "r--"), (3.0, "m--")):
            ax_m.axhline(ratio, color=style[0], linestyle="--", linewidth=1, label=f"goal {ratio:g}x")
        ax_m.set(xlabel=x_label, ylabel="peak RSS / model size",
                 title="peak RSS / size (CLI: sum over the process tree)")
    else:
        ax_m.set(xlabel=x_label, ylabel="peak RSS MB",
                 title="peak RSS (in process: over imports; CLI: tree sum)")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for ax in (ax_t, ax_u, ax_m):
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
