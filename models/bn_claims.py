"""Test the seed's two claims for BatchNorm on scikit-learn's digits, and say what held.

Claims: (1) BN speeds up training; (2) BN makes the initial weight scale matter far less.
A 64-100-100-100-10 sigmoid MLP (the shape of Ioffe & Szegedy's MNIST experiment) is trained by
plain SGD with and without BN (``bnfold.reference.mlp``) over a grid of learning rates x
hidden-layer init scales x seeds. Run from the repository root (about 3 minutes on 2 cores):

    python -m models.bn_claims            # writes models/bn_claims.png and models/bn_claims.md
    python -m models.bn_claims --quick    # a 2x2 grid, one seed, for a smoke test
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bnfold.reference import mlp
from models import digits_data

LRS = (0.03, 0.1, 0.3, 1.0, 3.0)
SCALES = (0.1, 0.3, 1.0, 3.0, 10.0)
SEEDS = (0, 1, 2)
STEPS = 1000
TARGET = 0.90
OUT_DIR = Path(__file__).resolve().parent


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The repo's digits split, flattened to 64 features standardized with training statistics."""
    x_tr, y_tr, x_te, y_te = digits_data.split()
    x_tr = x_tr.reshape(len(x_tr), -1).astype(np.float64)
    x_te = x_te.reshape(len(x_te), -1).astype(np.float64)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-8
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def _limit_threads() -> None:
    """One BLAS thread per worker: these matrices are small, and threads would fight over cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def run_one(cfg: mlp.TrainConfig) -> dict:
    """Train one configuration; for BN runs also fold BN away and measure the logit change."""
    x_tr, y_tr, x_te, y_te = load_data()
    layers, hist = mlp.train(cfg, x_tr, y_tr, x_te, y_te)
    fold_dev = 0.0
    if cfg.batch_norm and not hist.diverged:
        logits, _ = mlp.forward(layers, x_te, cfg.activation, train=False)
        folded, _ = mlp.forward(mlp.fold(layers), x_te, cfg.activation, train=False)
        fold_dev = float(np.max(np.abs(logits - folded)))
    return {**asdict(cfg), **asdict(hist), "fold_dev": fold_dev}


def run_grid(lrs: tuple[float, ...], scales: tuple[float, ...], seeds: tuple[int, ...],
             steps: int, jobs: int) -> list[dict]:
    """Every (BN?, lr, scale, seed) run, in ``jobs`` worker processes."""
    configs = [mlp.TrainConfig(batch_norm=bn, lr=lr, init_scale=s, seed=seed, steps=steps)
               for bn in (False, True) for lr in lrs for s in scales for seed in seeds]
    if jobs <= 1:
        _limit_threads()
        return [run_one(c) for c in configs]
    with ProcessPoolExecutor(jobs, initializer=_limit_threads) as pool:
        return list(pool.map(run_one, configs))


def _cell(results: list[dict], bn: bool, lr: float, scale: float) -> list[dict]:
    return [r for r in results if r["batch_norm"] == bn and r["lr"] == lr
            and r["init_scale"] == scale]


def _steps_to(run: dict, target: float) -> float:
    hit = mlp.History(run["steps"], run["train_loss"], run["test_acc"]).steps_to(target)
    return float("inf") if hit is None else float(hit)


def summarize(results: list[dict], target: float) -> list[dict]:
    """Per (lr, scale): mean final accuracy and training loss, median steps to ``target``."""
    rows = []
    for lr in sorted({r["lr"] for r in results}):
        for scale in sorted({r["init_scale"] for r in results}):
            row = {"lr": lr, "init_scale": scale}
            for bn, tag in ((False, "plain"), (True, "bn")):
                runs = _cell(results, bn, lr, scale)
                row[f"acc_{tag}"] = float(np.mean([r["test_acc"][-1] for r in runs]))
                row[f"loss_{tag}"] = float(np.mean([r["train_loss"][-1] for r in runs]))
                row[f"steps_{tag}"] = float(np.median([_steps_to(r, target) for r in runs]))
                row[f"reached_{tag}"] = sum(np.isfinite(_steps_to(r, target)) for r in runs)
                row[f"diverged_{tag}"] = sum(r["diverged"] for r in runs)
            row["seeds"] = len(runs)
            rows.append(row)
    return rows


def findings(rows: list[dict], results: list[dict]) -> list[str]:
    """Plain statements computed from the table: where BN helped, where it did not."""
    faster = sum(r["steps_bn"] < r["steps_plain"] for r in rows)
    slower = sum(r["steps_bn"] > r["steps_plain"] for r in rows)
    better = sum(r["acc_bn"] > r["acc_plain"] + 0.01 for r in rows)
    worse = [r for r in rows if r["acc_bn"] < r["acc_plain"] - 0.01]
    lines = [(f"Claim 1 (speed): BN reached {TARGET:.0%} test accuracy in fewer median steps in "
              f"{faster} of {len(rows)} (lr, scale) cells, in more steps in {slower}; its final "
              f"accuracy was more than 1 point higher in {better} cells and more than 1 point "
              f"lower in {len(worse)}.")]
    for r in worse:
        lines.append(f"  BN did worse at lr={r['lr']:g}, init scale={r['init_scale']:g}: "
                     f"{r['acc_bn']:.3f} vs {r['acc_plain']:.3f}.")
    lower_loss = sum(r["loss_bn"] < r["loss_plain"] for r in rows)
    higher_loss = [r for r in rows if r["loss_bn"] > r["loss_plain"]]
    lines.append(f"Final training loss was lower with BN in {lower_loss} of {len(rows)} cells "
                 f"and higher in {len(higher_loss)}" + (":" if higher_loss else "."))
    for r in higher_loss:
        lines.append(f"  lr={r['lr']:g}, init scale={r['init_scale']:g}: {r['loss_bn']:.3f} "
                     f"with BN vs {r['loss_plain']:.3f} without.")
    lines.append(f"Runs whose loss overflowed: {sum(r['diverged_plain'] for r in rows)} without "
                 f"BN, {sum(r['diverged_bn'] for r in rows)} with BN.")
    spreads = []
    for lr in sorted({r["lr"] for r in rows}):
        cells = [r for r in rows if r["lr"] == lr]
        plain = max(c["acc_plain"] for c in cells) - min(c["acc_plain"] for c in cells)
        bn = max(c["acc_bn"] for c in cells) - min(c["acc_bn"] for c in cells)
        spreads.append(f"lr={lr:g}: {plain:.3f} without BN, {bn:.3f} with BN")
    lines.append("Claim 2 (init scale): spread (max - min) of final accuracy across init "
                 "scales, per learning rate: " + "; ".join(spreads) + ".")
    fold = max(r["fold_dev"] for r in results if r["batch_norm"])
    lines.append(f"Folding every trained BN net with fold_params changed test logits by at most "
                 f"{fold:.2g}.")
    return lines


def _fmt_steps(steps: float, reached: int, seeds: int) -> str:
    return "never" if not np.isfinite(steps) else f"{steps:.0f} ({reached}/{seeds})"


def markdown(rows: list[dict], lines: list[str], command: str, seconds: float) -> str:
    """The table (one line per cell) and the findings, with the command that made them."""
    out = [f"# BatchNorm claims on digits: `{command}` ({seconds:.0f} s)", "",
           (f"Final test accuracy (mean over {rows[0]['seeds']} seeds), median SGD steps to "
            f"{TARGET:.0%} test accuracy (seeds that reached it) and final training loss (mean "
            f"mini-batch cross-entropy over the last {mlp.TrainConfig.eval_every} steps), "
            "without and with BN."), "",
           ("| lr | init scale | acc plain | acc BN | steps plain | steps BN "
            "| loss plain | loss BN |"),
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        plain = _fmt_steps(r["steps_plain"], r["reached_plain"], r["seeds"])
        bn = _fmt_steps(r["steps_bn"], r["reached_bn"], r["seeds"])
        out.append(f"| {r['lr']:g} | {r['init_scale']:g} | {r['acc_plain']:.3f} | "
                   f"{r['acc_bn']:.3f} | {plain} | {bn} | {r['loss_plain']:.3f} | "
                   f"{r['loss_bn']:.3f} |")
    bullets = [f"  - {s.strip()}" if s.startswith(" ") else f"- {s}" for s in lines]
    return "\n".join([*out, "", *bullets, ""])


def plot(results: list[dict], rows: list[dict], path: Path) -> None:
    """Loss curves at the middle learning rate for three init scales, and accuracy heat maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({r["lr"] for r in rows})
    scales = sorted({r["init_scale"] for r in rows})
    lr_mid = lrs[len(lrs) // 2]
    shown = sorted({scales[0], scales[len(scales) // 2], scales[-1]})
    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    for ax, scale in zip(axes[0], shown, strict=False):
        for bn, color in ((False, "tab:red"), (True, "tab:blue")):
            for i, run in enumerate(_cell(results, bn, lr_mid, scale)):
                ax.plot(run["steps"], run["train_loss"], color=color, alpha=0.7,
                        label=("with BN" if bn else "without BN") if i == 0 else None)
        ax.set(title=f"training loss, lr={lr_mid:g}, init scale={scale:g}", xlabel="SGD step",
               ylabel="mean mini-batch cross-entropy", yscale="log")
        ax.legend()
    grids = {tag: np.array([[next(r[f"acc_{tag}"] for r in rows
                                  if r["lr"] == lr and r["init_scale"] == s) for s in scales]
                            for lr in lrs]) for tag in ("plain", "bn")}
    panels = ((grids["plain"], "final test accuracy, without BN", "viridis", (0, 1)),
              (grids["bn"], "final test accuracy, with BN", "viridis", (0, 1)),
              (grids["bn"] - grids["plain"], "accuracy with BN minus without", "RdBu", (-1, 1)))
    for ax, (grid, title, cmap, (lo, hi)) in zip(axes[1], panels, strict=True):
        im = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if cmap == "viridis" and v < 0.5 else "black")
        ax.set(title=title, xlabel="hidden-layer init scale (x LeCun std)", ylabel="learning rate",
               xticks=range(len(scales)), xticklabels=[f"{s:g}" for s in scales],
               yticks=range(len(lrs)), yticklabels=[f"{lr:g}" for lr in lrs])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Sigmoid MLP on scikit-learn digits, plain SGD, with and without BatchNorm")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the grid, print the table and findings, write the PNG and the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 lrs x 2 scales, 1 seed, 200 steps")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the PNG and .md")
    args = parser.parse_args(argv)
    lrs, scales, seeds, steps = ((0.3, 1.0), (0.1, 1.0), (0,), 200) if args.quick else (
        LRS, SCALES, SEEDS, STEPS)
    start = time.perf_counter()
    results = run_grid(lrs, scales, seeds, steps, args.jobs)
    seconds = time.perf_counter() - start
    rows = summarize(results, TARGET)
    command = "python -m models.bn_claims" + (" --quick" if args.quick else "")
    text = markdown(rows, findings(rows, results), command, seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bn_claims.md").write_text(text)
    plot(results, rows, args.out / "bn_claims.png")
    print(text)
    print(f"wrote {args.out / 'bn_claims.png'} and {args.out / 'bn_claims.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
