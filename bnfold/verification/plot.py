"""Histogram of absolute errors per output, as a PNG to embed in the HTML report.

matplotlib (Agg backend) is imported only here, and only when a report is rendered; without it
the HTML report says so instead of showing the plot.
"""
from __future__ import annotations

import io
from typing import Mapping

import numpy as np


def error_histogram_png(errors: Mapping[str, np.ndarray]) -> bytes | None:
    """PNG bytes of log10|folded - original| histograms, one series per output; None without
    matplotlib or without data. Exact matches (error 0) are counted in the title, not plotted."""
    if not errors:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    exact_total = 0
    for name, err in errors.items():
        e = np.asarray(err, dtype=np.float64)
        e = e[np.isfinite(e)]
        nonzero = e[e > 0]
        exact_total += int(e.size - nonzero.size)
        if nonzero.size:
            ax.hist(np.log10(nonzero), bins=50, alpha=0.6, label=f"{name} ({nonzero.size})")
    ax.set_xlabel("log10 |folded - original|")
    ax.set_ylabel("elements")
    ax.set_title(f"Absolute error per element ({exact_total} exactly equal, not shown)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
