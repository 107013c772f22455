"""Fold time of an exporter-style model whose every BN parameter is computed, and how many ORT
sessions its constant subgraphs cost.

A chain of n blocks Conv(8 -> 8, 3x3) -> BN -> Relu where each of the BN's four parameters is
``Cast(Squeeze(Unsqueeze(p, 0), 0))``, as some exporters write them: 4n constant subgraphs.
The first fold warms the ORT child; the best of ``--repeat`` folds is printed with the number
of ORT sessions constant evaluation loaded per fold (``--plain`` folds the same chain with the
parameters as plain initializers, for the baseline).

Usage: python benchmarks/consteval_cost.py [--bn 40 100] [--repeat 5] [--plain]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def chain(n: int, computed: bool, c: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([0], np.int64), "axis")]
    nodes, x = [], "x"

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    for i in range(n):
        w = init(f"w{i}", rng.normal(0, 0.5, (c, c, 3, 3)))
        nodes.append(helper.make_node("Conv", [x, w], [f"conv{i}"], pads=[1] * 4))
        params = []
        for p, v in zip(("g", "b", "m", "v"), (rng.uniform(0.5, 1.5, c), rng.normal(0, 0.5, c),
                                               rng.normal(0, 0.5, c), rng.uniform(0.5, 2, c))):
            name = init(f"{p}{i}", v)
            if computed:
                nodes += [helper.make_node("Unsqueeze", [name, "axis"], [f"{name}_u"]),
                          helper.make_node("Squeeze", [f"{name}_u", "axis"], [f"{name}_s"]),
                          helper.make_node("Cast", [f"{name}_s"], [f"{name}_c"], to=1)]
                name = f"{name}_c"
            params.append(name)
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}"] + params, [f"bn{i}"]))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"]))
        x = f"relu{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", c, 8, 8])], [helper.make_tensor_value_info(
            x, TensorProto.FLOAT, ["N", c, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bn", type=int, nargs="+", default=[40, 100])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--plain", action="store_true")
    args = ap.parse_args()
    import bnfold
    import bnfold.graph.consteval as consteval

    sessions = [0]
    real = consteval._run_ort

    def counted(model: onnx.ModelProto) -> dict:
        sessions[0] += 1
        return real(model)

    consteval._run_ort = counted
    for n in args.bn:
        model = chain(n, not args.plain)
        bnfold.fold(model)
        best = float("inf")
        sessions[0] = 0
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = bnfold.fold(model)
            best = min(best, time.perf_counter() - start)
        print(f"{n} BN ({'plain' if args.plain else f'{4 * n} computed parameters'}): "
              f"BN {result.bn_before} -> {result.bn_after}, fold {best * 1e3:.0f} ms, "
              f"{sessions[0] / args.repeat:.0f} ORT session(s) for constants per fold")


if __name__ == "__main__":
    main()
