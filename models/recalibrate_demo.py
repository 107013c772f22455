"""Recalibrating BN statistics of resnet_digits.onnx with ``bnfold.recalibrate``: two demos.

1. Stale statistics: reset every BN to mean 0, variance 1 (what a model soup or a careless
   conversion can leave); test accuracy collapses; recalibrated on the digits training split
   (labels unused) it returns to the original accuracy.
2. Domain shift (AdaBN): the test images are changed by a contrast/brightness shift,
   x -> c * x + b, and by inversion, x -> 1 - x. Accuracy of the original model on the shifted
   test split, then after recalibrating on the equally shifted, unlabeled training split.

Writes models/recalibrate_demo.md and models/recalibrate_demo.png.
Usage: python -m models.recalibrate_demo
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import bnfold
from bnfold.io.model_io import load_model
from models.digits_data import split

ROOT = Path(__file__).resolve().parent
MODEL = ROOT / "resnet_digits.onnx"
SHIFTS = [("none", 1.0, 0.0), ("contrast 0.5, +0.25", 0.5, 0.25), ("contrast 0.3, +0.5", 0.3, 0.5),
          ("contrast 2, -0.5", 2.0, -0.5), ("contrast 0.2, +0.8", 0.2, 0.8)]


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    return float(np.mean(logits.argmax(axis=1) == y))


def reset_statistics(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose BNs all have running mean 0 and running variance 1."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type == "BatchNormalization":
            for slot, fill in ((3, 0.0), (4, 1.0)):
                t = inits[node.input[slot]]
                t.CopyFrom(numpy_helper.from_array(
                    np.full(tuple(t.dims), fill, np.float32), t.name))
    return out


def batches(x: np.ndarray, size: int = 128) -> list[dict[str, np.ndarray]]:
    return [{"input": x[i:i + size].astype(np.float32)} for i in range(0, len(x), size)]


def stale_statistics_demo() -> dict[str, float]:
    """Accuracy: original, statistics reset, reset then recalibrated on the training split."""
    x_tr, _, x_te, y_te = split()
    model = load_model(MODEL)
    reset = reset_statistics(model)
    fixed = bnfold.recalibrate(reset, batches(x_tr)).model
    return {"original": accuracy(model, x_te, y_te), "reset": accuracy(reset, x_te, y_te),
            "recalibrated": accuracy(fixed, x_te, y_te)}


def domain_shift_demo() -> list[tuple[str, float, float]]:
    """(shift, accuracy before, accuracy after recalibrating on shifted unlabeled data)."""
    x_tr, _, x_te, y_te = split()
    model = load_model(MODEL)
    rows = []
    for name, c, b in SHIFTS + [("inverted, 1 - x", -1.0, 1.0)]:
        tr, te = c * x_tr + b, c * x_te + b
        adapted = bnfold.recalibrate(model, batches(tr)).model
        rows.append((name, accuracy(model, te, y_te), accuracy(adapted, te, y_te)))
    return rows


def main() -> int:
    stale = stale_statistics_demo()
    shift = domain_shift_demo()
    lines = ["# Recalibrating BN statistics (`python -m models.recalibrate_demo`)", "",
             "resnet_digits.onnx, digits test split (360 images); recalibration uses the "
             "training split's 1437 images without labels (`bnfold.recalibrate`, pooled "
             "statistics, batches of 128).", "",
             "## Stale statistics", "",
             "| model | test accuracy |", "|---|---:|",
             f"| original | {stale['original']:.2%} |",
             f"| every BN reset to mean 0, variance 1 | {stale['reset']:.2%} |",
             f"| reset, then recalibrated | {stale['recalibrated']:.2%} |", "",
             "## Domain shift (AdaBN): test images x -> c * x + b", "",
             "| shift | accuracy, original statistics | after recalibrating on shifted data |",
             "|---|---:|---:|"]
    lines += [f"| {n} | {a:.2%} | {r:.2%} |" for n, a, r in shift]
    lines += ["", "A contrast/brightness change is an affine map of the pixels, which the first "
              "convolution turns into a per-channel scale and shift (except where its zero "
              "padding reads the border), so recalibrating the BN after it undoes most of it. "
              "Inversion flips the sign of every first-layer channel, which statistics cannot "
              f"undo: recalibration does not rescue it ({shift[-1][1]:.1%} -> {shift[-1][2]:.1%}). "
              "The strongest shifts (contrast 0.2-0.3) lose information to the border effects "
              "and to later layers' nonlinearity, so only part of the accuracy comes back.", ""]
    (ROOT / "recalibrate_demo.md").write_text("\n".join(lines))
    _plot(shift)
    print("\n".join(lines))
    return 0


def _plot(rows: list[tuple[str, float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r[0] for r in rows]
    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(pos - 0.2, [r[1] for r in rows], 0.4, label="original statistics")
    ax.bar(pos + 0.2, [r[2] for r in rows], 0.4, label="recalibrated on shifted data")
    ax.set_xticks(pos, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("resnet_digits under input shift: BN recalibration (AdaBN) with bnfold")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "recalibrate_demo.png", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
