"""Build the larger benchmark models with onnx.helper + numpy (random weights, real shapes).

Models (all with a dynamic batch dimension "N", opset 17, float32):
  resnet50       ResNet-50 v1 topology (53 BN after Conv), ~25.5 M weights, ~102 MB
  mobilenetv2    MobileNetV2 topology (52 BN after Conv, depthwise convs), ~3.5 M parameters
  mlp_gemm_bn    MLP: Gemm -> BN and MatMul -> BN on (N, C) activations, ~17 M parameters
  bn_preconv     pre-activation CNN: Relu -> BN -> unpadded Conv (BN must fold forward),
                 plus one Relu -> BN -> padded Conv that no tool may fold

They are written on demand into a cache directory (never committed: resnet50 is >100 MB).
Usage: python benchmarks/generate.py [--out DIR] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GENERATOR_VERSION = 1
DEFAULT_CACHE = os.environ.get("BNFOLD_BENCH_CACHE",
                               os.path.join(os.path.expanduser("~"), ".cache", "bnfold-bench"))


class Builder:
    """Accumulates nodes and float32 initializers; every node gets a unique name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self._n}"

    def const(self, kind: str, arr: np.ndarray) -> str:
        name = self._name(kind)
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        name = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [name + "_out"], name=name, **attrs))
        return name + "_out"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, pad: int | None = None,
             group: int = 1, bias: bool = False) -> str:
        pad = k // 2 if pad is None else pad
        fan_in = cin // group * k * k
        w = self.const("w", self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in))
        ins = [x, w] + ([self.const("b", self.rng.standard_normal(cout) * 0.01)] if bias else [])
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [self.const("gamma", r.uniform(0.5, 1.5, c)), self.const("beta", r.normal(0, 0.1, c)),
                  self.const("mean", r.normal(0, 0.1, c)), self.const("var", r.uniform(0.5, 1.5, c))]
        return self.op("BatchNormalization", [x] + params, epsilon=1e-5)

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = self.const("w", self.rng.standard_normal((cout, cin)) * np.sqrt(2.0 / cin))
        b = self.const("b", self.rng.standard_normal(cout) * 0.01)
        return self.op("Gemm", [x, w, b], transB=1)

    def matmul(self, x: str, cin: int, cout: int) -> str:
        w = self.const("w", self.rng.standard_normal((cin, cout)) * np.sqrt(2.0 / cin))
        return self.op("MatMul", [x, w])

    def model(self, name: str, x_shape: list[int | str], y: str,
              y_shape: list[int | str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="bnfold-benchmarks")
        m.ir_version = 8
        return m


def resnet50() -> onnx.ModelProto:
    """ResNet-50 v1: 7x7 stem, bottlenecks [3, 4, 6, 3], GAP, Gemm 2048 -> 1000."""
    b = Builder(50)
    x = b.op("Relu", [b.bn(b.conv("input", 3, 64, 7, stride=2), 64)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = b.op("Relu", [b.bn(b.conv(x, cin, width, 1), width)])
            y = b.op("Relu", [b.bn(b.conv(y, width, width, 3, stride=s), width)])
            y = b.bn(b.conv(y, width, width * 4, 1), width * 4)
            short = b.bn(b.conv(x, cin, width * 4, 1, stride=s), width * 4) if i == 0 else x
            x = b.op("Relu", [b.op("Add", [y, short])])
            cin = width * 4
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    return b.model("resnet50", ["N", 3, 224, 224], b.gemm(x, 2048, 1000), ["N", 1000])


def mobilenetv2() -> onnx.ModelProto:
    """MobileNetV2 1.0: inverted residuals with depthwise 3x3, ReLU6 as Clip(0, 6)."""
    b = Builder(2)
    lo, hi = b.const("clip_lo", np.array(0.0)), b.const("clip_hi", np.array(6.0))

    def relu6(t: str) -> str:
        return b.op("Clip", [t, lo, hi])

    x = relu6(b.bn(b.conv("input", 3, 32, 3, stride=2), 32))
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hid = cin * t
            y = x if t == 1 else relu6(b.bn(b.conv(x, cin, hid, 1), hid))
            y = relu6(b.bn(b.conv(y, hid, hid, 3, stride=stride, group=hid), hid))
            y = b.bn(b.conv(y, hid, c, 1), c)
            x = b.op("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    x = relu6(b.bn(b.conv(x, cin, 1280, 1), 1280))
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    return b.model("mobilenetv2", ["N", 3, 224, 224], b.gemm(x, 1280, 1000), ["N", 1000])


def mlp_gemm_bn() -> onnx.ModelProto:
    """MLP on (N, 1024): alternating Gemm -> BN -> Relu and MatMul -> BN -> Relu, hidden 2048."""
    b = Builder(7)
    x, cin = "input", 1024
    for i in range(4):
        lin = b.gemm(x, cin, 2048) if i % 2 == 0 else b.matmul(x, cin, 2048)
        x, cin = b.op("Relu", [b.bn(lin, 2048)]), 2048
    return b.model("mlp_gemm_bn", ["N", 1024], b.bn(b.gemm(x, cin, 1000), 1000), ["N", 1000])


def bn_preconv() -> onnx.ModelProto:
    """Pre-activation CNN on (N, 64, 64, 64): Relu -> BN feeds unpadded 1x1 and 3x3 convs."""
    b = Builder(11)
    x = b.op("Relu", [b.conv("input", 64, 128, 3, bias=True)])
    for _ in range(6):
        y = b.conv(b.bn(x, 128), 128, 128, 1, pad=0, bias=True)       # forward-foldable
        y = b.op("Relu", [y])
        y = b.conv(b.bn(y, 128), 128, 128, 3, pad=0, bias=True)       # forward-foldable, valid
        x = b.op("Relu", [y])
    x = b.conv(b.bn(x, 128), 128, 64, 3, pad=1, bias=True)            # padded: must stay
    return b.model("bn_preconv", ["N", 64, 64, 64], b.op("GlobalAveragePool", [x]),
                   ["N", 64, 1, 1])


GENERATORS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet50": resnet50, "mobilenetv2": mobilenetv2, "mlp_gemm_bn": mlp_gemm_bn,
    "bn_preconv": bn_preconv,
}


def ensure_models(cache_dir: str = DEFAULT_CACHE, only: list[str] | None = None,
                  log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict[str, str]:
    """Paths of the generated models, building (and checking) any that are not cached yet."""
    os.makedirs(cache_dir, exist_ok=True)
    paths = {}
    for name, gen in GENERATORS.items():
        if only and name not in only:
            continue
        path = os.path.join(cache_dir, f"{name}.v{GENERATOR_VERSION}.onnx")
        if not os.path.exists(path):
            log(f"generating {name} -> {path}")
            model = gen()
            onnx.checker.check_model(model, full_check=True)
            tmp = path + ".tmp"
            onnx.save_model(model, tmp)
            os.replace(tmp, path)
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_CACHE, help="cache directory [%(default)s]")
    ap.add_argument("--only", nargs="*", choices=sorted(GENERATORS), help="build only these")
    args = ap.parse_args(argv)
    for name, path in ensure_models(args.out, args.only).items():
        print(f"{name}\t{os.path.getsize(path) / 1e6:.1f} MB\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
