"""Fold report card: BN count before -> after and max abs error vs the original, per case.

Runs the ResNet-50-sized and MobileNetV2-sized generated CNNs (benchmarks/generate.py), the
committed models under models/, and one model per refusal case from the test builders.
Usage: python benchmarks/fold_cases.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

import bnfold  # noqa: E402
from modelgen import Builder, count_bn, max_error, tolerance  # noqa: E402


def refusal_cases() -> dict:
    import onnx

    cases = {}

    b = Builder(opset=15)
    x = b.input("x", ["N", 3, 8, 8])
    b.output(b.node("BatchNormalization", [b.conv(x, 3, 4)] + b.bn_params(4), n_out=3,
                    training_mode=1))
    cases["training_mode=1"] = b.model()

    b = Builder(opset=7)
    x = b.input("x", [2, 3, 8, 8])
    params = [b.const(np.broadcast_to(b.rng.uniform(0.5, 1.5, (4, 1, 1)), (4, 8, 8)))
              for _ in range(4)]
    b.output(b.node("BatchNormalization", [b.conv(x, 3, 4)] + params, spatial=0))
    model = b.model()
    model.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer)  # IR 3: initializers are inputs
    cases["opset-7 spatial=0"] = model

    b = Builder()
    x = b.input("x", ["N", 3, 8, 8])
    y = b.conv(x, 3, 4)
    b.output(b.bn(y, 4))
    b.output(b.node("Relu", [y]))
    cases["producer fan-out"] = b.model()

    b = Builder()
    x = b.input("x", ["N", 3, 8, 8])
    y = b.conv(x, 3, 4)
    b.output(b.bn(y, 4))
    b.output(y)
    cases["producer is graph output"] = b.model()

    b = Builder(ir_version=8)
    x = b.input("x", ["N", 3, 8, 8])
    params = b.bn_params(4)
    b.input(params[3], [4])
    b.output(b.bn(b.conv(x, 3, 4), 4, params=params))
    cases["params are graph inputs"] = b.model()

    for name, var in (("variance + eps <= 0", [1, -1, 1, 1]), ("NaN parameter", [1, 1, np.nan, 1])):
        b = Builder()
        x = b.input("x", ["N", 3, 8, 8])
        params = [b.const(np.ones(4)), b.const(np.zeros(4)), b.const(np.zeros(4)),
                  b.const(np.array(var, dtype=float))]
        b.output(b.bn(b.conv(x, 3, 4), 4, params=params))
        cases[name] = b.model()

    b = Builder()
    x = b.input("x", ["N", 4, 8, 8])
    b.output(b.conv(b.bn(x, 4), 4, 6, pads=1))
    cases["BN before padded Conv"] = b.model()

    b = Builder()
    x = b.input("x", ["N", 4, 3])
    b.output(b.bn(b.node("MatMul", [x, b.const(b.weights((3, 4)))]), 4))
    cases["MatMul rank-3 (channel != columns)"] = b.model()

    b = Builder(opset=15, dtype=np.float16, param_dtype=np.float32)
    x = b.input("x", ["N", 3, 8, 8])
    p = [b.const(np.full(4, v), dtype=np.float32) for v in (1e4, 0.0, 0.0, 1e-4)]
    b.output(b.bn(b.conv(x, 3, 4), 4, params=p))
    cases["fp16 overflow"] = b.model()
    return cases


def main() -> int:
    import onnx

    import generate

    models: dict[str, onnx.ModelProto] = {"ResNet-50-sized CNN (generated)": generate.resnet50(),
                                          "MobileNetV2-sized CNN (generated)": generate.mobilenetv2()}
    for path in sorted((ROOT / "models").glob("*.onnx")):
        if path.name.endswith(".folded.onnx"):
            continue
        models[f"models/{path.name}"] = onnx.load(path)
    models.update(refusal_cases())
    print("| model | BN before | BN after | reasons kept | max abs error | output peak | fold s |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, model in models.items():
        t0 = time.perf_counter()
        result = bnfold.fold(model)
        dt = time.perf_counter() - t0
        reasons = sorted({r.reason.code for r in result.kept})
        try:
            err = f"{max_error(model, result.model, batches=(1, 8)):.3g}"
            peak = f"{tolerance(model, 1.0):.3g}"
        except Exception as exc:  # ORT cannot run some refused originals (e.g. training mode)
            err = peak = f"n/a ({type(exc).__name__}: ORT cannot run the original)"
        print(f"| {name} | {count_bn(model)} | {count_bn(result.model)} | "
              f"{', '.join(reasons) or '-'} | {err} | {peak} | {dt:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
