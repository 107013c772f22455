"""How fold cost grows with the number of BN and with the model's size (linear or not).

Two sweeps, each point in a fresh interpreter (imports not timed; the first fold in that
process warms the ORT child, then the median of ``--repeat`` folds is taken; peak RSS is the
process's VmHWM over its post-import RSS, reset before the timed folds):

* BN count: a chain of n blocks Conv(8 -> 8, 1x1) -> BN -> Relu (n = 100 ... 10,000), so the
  weights stay small and the per-BN driver cost shows. Printed: ms per fold, µs per BN, and the
  ratio of µs per BN to the smallest n's: flat means linear, growing means a super-linear term.
* Model size: the same chain with wide 3x3 convs (c channels), sized 10 MB ... ``--max-mb``.

Usage: python benchmarks/fold_scaling.py [--bn 100 1000 5000 10000] [--mb 10 100 400]
       [--repeat 3] [--no-prove]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def chain(n: int, channels: int, k: int) -> Any:
    """n x (Conv(channels, k x k, same padding) -> BN -> Relu), float32, batch "N", 8x8."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    scale = np.sqrt(2.0 / (channels * k * k))
    for i in range(n):
        w = (rng.standard_normal((channels, channels, k, k)) * scale).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}",
                                      pads=[k // 2] * 4))
        params = [rng.uniform(0.5, 1.5, channels), rng.standard_normal(channels) * 0.1,
                  rng.standard_normal(channels) * 0.1, rng.uniform(0.5, 1.5, channels)]
        names = [f"{p}{i}" for p in ("g", "b", "m", "v")]
        inits += [numpy_helper.from_array(a.astype(np.float32), nm) for a, nm in zip(params, names)]
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *names], [f"bn{i}"],
                                      name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["N", channels, 8, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT,
                                                             ["N", channels, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def worker(path: str, prove: bool, repeat: int) -> dict[str, float]:
    """In the subprocess: fold ``path`` (a warm-up, then ``repeat`` timed folds)."""
    import statistics
    import time

    sys.path.insert(0, HERE)
    import fold_tools as ft

    import bnfold

    bnfold.fold(path, prove=prove)  # imports, ORT child start
    ft._reset_peak_rss()
    base = ft._rss_kb("VmRSS")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = bnfold.fold(path, prove=prove)
        times.append(time.perf_counter() - start)
        assert len(result.folded) == len(result.records), "every BN of the chain must fold"
        del result
    return {"s": statistics.median(times), "peak_mb": (ft._rss_kb("VmHWM") - base) / 1e3}


def measure(path: str, prove: bool, repeat: int) -> dict[str, float]:
    code = (f"import sys, json; sys.path.insert(0, {HERE!r}); import fold_scaling as f; "
            f"print('RESULT', json.dumps(f.worker({path!r}, {prove!r}, {repeat})))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # this bnfold
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"worker failed on {path}: {out.stderr.strip()[-400:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    import onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bn", type=int, nargs="*", default=[100, 1000, 5000, 10000])
    ap.add_argument("--mb", type=float, nargs="*", default=[10, 100, 400])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-prove", action="store_true", help="fold(prove=False) only")
    args = ap.parse_args(argv)
    modes = [False] if args.no_prove else [False, True]
    with tempfile.TemporaryDirectory() as tmp:
        print("| BN | nodes | MB | proofs | fold ms | µs per BN | µs/BN vs first | peak MB over "
              "imports | x size |")
        print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
        first: dict[bool, float] = {}
        for n in args.bn:
            path = os.path.join(tmp, f"bn{n}.onnx")
            onnx.save(chain(n, 8, 1), path)
            _row(path, n, modes, args.repeat, first)
        print()
        print("| BN | channels | MB | proofs | fold ms | ms per 100 MB | peak MB over imports "
              "| x size |")
        print("|---:|---:|---:|---|---:|---:|---:|---:|")
        for mb in args.mb:
            c = 256
            n = max(1, round(mb * 1e6 / (4 * c * c * 9)))
            path = os.path.join(tmp, f"mb{mb:g}.onnx")
            onnx.save(chain(n, c, 3), path)
            size = os.path.getsize(path) / 1e6
            for prove in modes:
                r = measure(path, prove, args.repeat)
                print(f"| {n} | {c} | {size:.0f} | {'yes' if prove else 'no'} | {r['s'] * 1e3:.0f} "
                      f"| {r['s'] * 1e3 / size * 100:.0f} | {r['peak_mb']:.0f} "
                      f"| {r['peak_mb'] / size:.2f} |", flush=True)
            os.remove(path)
    return 0


def _row(path: str, n: int, modes: list[bool], repeat: int, first: dict[bool, float]) -> None:
    size = os.path.getsize(path) / 1e6
    for prove in modes:
        r = measure(path, prove, repeat)
        per = r["s"] * 1e6 / n
        first.setdefault(prove, per)
        print(f"| {n} | {3 * n} | {size:.1f} | {'yes' if prove else 'no'} | {r['s'] * 1e3:.0f} "
              f"| {per:.0f} | {per / first[prove]:.2f} | {r['peak_mb']:.0f} "
              f"| {r['peak_mb'] / size:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
