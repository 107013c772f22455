"""PNG of latency distributions per config (matplotlib, Agg backend, imported lazily)."""
from __future__ import annotations

import math
import os

from bnfold.bench.result import BenchResult
from bnfold.errors import BnfoldError, OutputError


def plot_latencies(result: BenchResult, path: str | os.PathLike[str]) -> str:
    """Write one box-and-strip panel per config (variants side by side) to ``path``; return it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BnfoldError("--plot needs matplotlib: pip install 'bnfold[plot]'") from exc
    import numpy as np

    n = len(result.configs)
    if n == 0:
        raise BnfoldError("nothing to plot: the benchmark has no configs")
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, cr in zip(axes.flat, result.configs):
        data = [v.samples_ms for v in cr.variants]
        ax.boxplot(data, showfliers=False)
        for k, samples in enumerate(data, 1):
            jitter = rng.uniform(-0.12, 0.12, len(samples))
            ax.scatter(np.full(len(samples), k) + jitter, samples, s=4, alpha=0.35)
        ax.set_xticks(range(1, len(data) + 1), [v.name for v in cr.variants])
        c = cr.config
        sp = cr.speedup
        ax.set_title(f"{c.provider} {c.opt_level} t={c.threads} b={c.batch}\n"
                     f"speedup {sp.ratio:.3f}x [{sp.ci_low:.3f}, {sp.ci_high:.3f}]", fontsize=9)
        ax.set_ylabel("latency (ms)")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise OutputError(f"cannot write plot {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
    return os.fspath(path)
