"""How fold cost grows with the number of BN and with the model's size (linear or not).

Two sweeps of generated Conv -> BN -> Relu chains, written to a work folder and deleted after
each point; every point is measured

* in process, in a fresh interpreter: imports and one fold of a tiny chain first (not timed:
  it starts the ORT child the proofs use), then the median of ``--repeat`` folds file to file
  (``fold(path, lazy_external=True)`` + ``save_model``: what ``bnfold fold --no-verify`` does),
  with and without proofs; peak RSS is the process's VmHWM over its RSS after the warm-up
  (the ORT child of the proofs is not in it);
* as the command line (``cli_runs.measure``, fresh process, interpreter start included):
  ``bnfold fold M -o OUT --no-verify`` and ``bnfold fold M -o OUT`` (verifying), wall time and
  the peak of the SUM of RSS over the process tree.

BN count: n blocks Conv(8 -> 8, 1x1) -> BN -> Relu (n = 100 ... 10,000), so the weights stay
small and the per-BN cost shows: flat µs per BN means linear. Size: the same chain with
256-channel 3x3 convs, 10 MB ... 1.5 GB in one file, plus ``--external-gb`` points stored
with external data (``large_model.generate``, 1024 channels, written tensor by tensor).

Writes ``fold_scaling.json`` and the plots ``fold_scaling_bn.png`` and ``fold_scaling_size.png``
(``scaling_plot.py``) into ``--out`` [benchmarks/results]; ``--plot JSON`` only redraws them.

Usage: python benchmarks/fold_scaling.py [--quick] [--bn 100 1000 10000] [--mb 10 100 1500]
       [--external-gb 3] [--repeat 3] [--no-prove] [--no-cli] [--dir WORK] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
BN_POINTS = [100, 300, 1000, 3000, 10000]
MB_POINTS = [10, 30, 100, 300, 1000, 1500]
QUICK_BN, QUICK_MB = [100, 1000], [10, 50]
SIZE_CHANNELS = 256


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


def _fold_to_file(path: str, out: str, prove: bool) -> Any:
    import bnfold
    from bnfold.io.model_io import save_model

    if os.path.exists(out):
        os.remove(out)
    result = bnfold.fold(path, prove=prove, lazy_external=True)
    save_model(result.model, out, overwrite=True, source_dir=result.external_base)
    return result


def _remove_model(path: str) -> None:
    """A model file and the data files beside it that carry its name."""
    folder, name = os.path.split(path)
    for f in os.listdir(folder or "."):
        if f == name or f.startswith(name + "."):
            os.remove(os.path.join(folder, f))


def worker(path: str, prove: bool, repeat: int) -> dict[str, float]:
    """In the subprocess: warm up on a tiny chain, then ``repeat`` timed folds of ``path``."""
    import statistics

    import onnx

    sys.path.insert(0, HERE)
    import fold_tools as ft

    work = tempfile.mkdtemp(prefix="bnfold-scaling-worker-")
    try:
        tiny = os.path.join(work, "tiny.onnx")
        onnx.save(chain(2, 8, 1), tiny)
        _fold_to_file(tiny, os.path.join(work, "tiny.out.onnx"), prove)
        out = os.path.join(os.path.dirname(path), "folded." + os.path.basename(path))
        ft._reset_peak_rss()
        base = ft._rss_kb("VmRSS")
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            result = _fold_to_file(path, out, prove)
            times.append(time.perf_counter() - start)
            if len(result.folded) != len(result.records):
                raise SystemExit(f"{len(result.records) - len(result.folded)} BN of the chain not folded")
            del result
            _remove_model(out)
        return {"s": statistics.median(times), "peak_mb": (ft._rss_kb("VmHWM") - base) / 1e3,
                "repeat": repeat}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(path: str, prove: bool, repeat: int) -> dict[str, float]:
    """``worker`` in a fresh interpreter that imports this checkout's bnfold."""
    code = (f"import sys, json; sys.path.insert(0, {HERE!r}); import fold_scaling as f; "
            f"print('RESULT', json.dumps(f.worker({path!r}, {prove!r}, {repeat})))")
    from cli_runs import child_env

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env=child_env())
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        return {"error": f"worker failed on {path}: {out.stderr.strip()[-300:]}"}
    return json.loads(lines[-1][len("RESULT "):])


def measure_cli(path: str, verify: bool) -> dict[str, Any]:
    """``bnfold fold PATH -o OUT [--no-verify]`` as a fresh process (``cli_runs.measure``)."""
    from cli_runs import child_env, measure as run_measured, script

    out = os.path.join(os.path.dirname(path), "cli." + os.path.basename(path))
    cmd = script("bnfold") + ["fold", path, "-o", out, "-q"] + ([] if verify else ["--no-verify"])
    try:
        return run_measured(cmd, child_env())
    finally:
        _remove_model(out)


def measure_point(path: str, point: dict[str, Any], modes: list[bool], repeat: int, cli: bool,
                  log: Any) -> dict[str, Any]:
    """Every measurement of one model into ``point`` (which names it: bn, mb, external)."""
    point["fold"] = {}
    for prove in modes:
        log(f"  fold {'with' if prove else 'without'} proofs")
        point["fold"]["prove" if prove else "no_prove"] = measure(path, prove, repeat)
    if cli:
        point["cli"] = {}
        for verify in (False, True):
            log(f"  bnfold fold{'' if verify else ' --no-verify'}")
            point["cli"]["verify" if verify else "no_verify"] = measure_cli(path, verify)
    return point


def bn_sweep(counts: list[int], work: str, modes: list[bool], repeat: int, cli: bool,
             log: Any) -> list[dict[str, Any]]:
    import onnx

    points = []
    for n in counts:
        path = os.path.join(work, f"bn{n}.onnx")
        onnx.save(chain(n, 8, 1), path)
        log(f"BN sweep: {n} BN")
        points.append(measure_point(path, {"sweep": "bn", "bn": n, "nodes": 3 * n, "external": False,
                                           "mb": os.path.getsize(path) / 1e6}, modes, repeat, cli, log))
        _remove_model(path)
    return points


def size_sweep(mbs: list[float], external_gb: list[float], work: str, modes: list[bool], repeat: int,
               cli: bool, log: Any) -> list[dict[str, Any]]:
    import onnx

    import large_model

    points = []
    for mb in mbs:
        n = max(1, round(mb * 1e6 / (4 * SIZE_CHANNELS * SIZE_CHANNELS * 9)))
        path = os.path.join(work, f"mb{mb:g}.onnx")
        onnx.save(chain(n, SIZE_CHANNELS, 3), path)
        size = os.path.getsize(path) / 1e6
        log(f"size sweep: {size:.0f} MB, {n} BN, one file")
        points.append(measure_point(path, {"sweep": "mb", "bn": n, "mb": size, "external": False},
                                    modes, repeat, cli, log))
        _remove_model(path)
    for gb in external_gb:
        path = Path(work) / f"ext{gb:g}.onnx"
        n = large_model.generate(path, gb)
        size = large_model.disk_size(path) / 1e6
        log(f"size sweep: {size:.0f} MB, {n} BN, external data")
        points.append(measure_point(str(path), {"sweep": "mb", "bn": n, "mb": size, "external": True},
                                    modes, repeat, cli, log))
        _remove_model(str(path))
    return points


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mb(peak: float | None, size: float | None) -> str:
    """Peak MB, and its multiple of the model's size when given."""
    if peak is None:
        return "-"
    return f"{peak:.0f}" + (f" ({peak / size:.2f}x)" if size else "")


def format_tables(points: list[dict[str, Any]]) -> str:
    """Markdown: one table per sweep, then the fitted exponents (1.0 = linear)."""
    from scaling_plot import pick, slopes

    out = []
    for sweep, x_key, unit, scale in (("bn", "bn", "µs/BN", 1e6), ("mb", "mb", "ms/MB", 1e3)):
        pts = sorted((p for p in points if p["sweep"] == sweep), key=lambda p: p[x_key])
        if not pts:
            continue
        rel = " (x size)" if sweep == "mb" else ""
        out += ["| BN | MB | storage | fold s, proofs | " + unit + " | fold s, no proofs | " + unit
                + f" | in-process peak MB | CLI --no-verify s | peak tree MB{rel} | CLI verify s "
                f"| peak tree MB{rel} | verifying: largest process MB{rel} |",
                "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in pts:
            cells = [str(p["bn"]), f"{p['mb']:.1f}", "external" if p["external"] else "one file"]
            for mode in ("prove", "no_prove"):
                s = pick(p, ("fold", mode, "s"))
                cells += [_cell(s, ".3f"), _cell(s / p[x_key] * scale if s is not None else None, ".1f")]
            cells.append(_cell(pick(p, ("fold", "prove", "peak_mb")), ".0f"))
            for mode in ("no_verify", "verify"):
                wall, tree = pick(p, ("cli", mode, "wall_s")), pick(p, ("cli", mode, "peak_tree_mb"))
                cells += [_cell(wall, ".2f"), _mb(tree, p["mb"] if rel else None)]
            cells.append(_mb(pick(p, ("cli", "verify", "peak_single_mb")), p["mb"] if rel else None))
            out.append("| " + " | ".join(cells) + " |")
        fits = slopes(pts, x_key)
        out += ["", f"time ~ {x_key}^b, b fitted on the larger half of the points (1 = linear): "
                + ", ".join(f"{k} {_cell(v, '.2f')}" for k, v in fits.items()), ""]
        errors = [f"{p[x_key]:g}: {r['error']}" for p in pts for part in ("fold", "cli")
                  for r in p.get(part, {}).values() if "error" in r]
        out += [f"failed: {e}" for e in errors]
    return "\n".join(out)


def write_plots(run: dict[str, Any], out_dir: str) -> list[str]:
    """The PNG of each sweep that has points, beside the JSON."""
    from scaling_plot import plot_sweep

    written = []
    for sweep, name, title in (("bn", "fold_scaling_bn.png", "fold cost against BN count"),
                               ("mb", "fold_scaling_size.png", "fold cost against model size")):
        pts = [p for p in run["points"] if p["sweep"] == sweep]
        if pts:
            written.append(plot_sweep(pts, sweep, os.path.join(out_dir, name),
                                      f"{title} ({run.get('machine', {}).get('cpu', '')})"))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bn", type=int, nargs="*", default=None, help=f"BN counts [{BN_POINTS}]")
    ap.add_argument("--mb", type=float, nargs="*", default=None, help=f"one-file sizes [{MB_POINTS}]")
    ap.add_argument("--external-gb", type=float, nargs="*", default=None,
                    help="sizes stored with external data [3]")
    ap.add_argument("--quick", action="store_true", help=f"BN {QUICK_BN}, MB {QUICK_MB}, no external")
    ap.add_argument("--repeat", type=int, default=3, help="timed folds per point [%(default)s]")
    ap.add_argument("--no-prove", action="store_true", help="fold(prove=False) only")
    ap.add_argument("--no-cli", action="store_true", help="skip the command-line runs")
    ap.add_argument("--dir", default=None, help="work folder for the models [a new temp folder]")
    ap.add_argument("--out", default=RESULTS, help="JSON and PNGs go here [%(default)s]")
    ap.add_argument("--plot", metavar="JSON", help="only redraw the plots and tables of a saved run")
    args = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    if args.plot:
        with open(args.plot, encoding="utf-8") as fh:
            run = json.load(fh)
        print(format_tables(run["points"]))
        print("\n".join(write_plots(run, os.path.dirname(os.path.abspath(args.plot)))))
        return 0
    bn = args.bn if args.bn is not None else QUICK_BN if args.quick else BN_POINTS
    mb = args.mb if args.mb is not None else QUICK_MB if args.quick else MB_POINTS
    ext = args.external_gb if args.external_gb is not None else [] if args.quick else [3.0]
    modes = [True, False] if not args.no_prove else [False]
    work = tempfile.mkdtemp(prefix="bnfold-scaling-", dir=args.dir)
    need = 3.5 * max([m / 1e3 for m in mb] + ext + [0]) * 1e9
    if shutil.disk_usage(work).free < need:
        shutil.rmtree(work)
        raise SystemExit(f"need {need / 1e9:.1f} GB free in {os.path.dirname(work)}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    try:
        points = bn_sweep(bn, work, modes, args.repeat, not args.no_cli, log)
        points += size_sweep(mb, ext, work, modes, args.repeat, not args.no_cli, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from bnfold.bench.result import machine_info

    run = {"machine": machine_info(), "repeat": args.repeat, "argv": sys.argv[1:] if argv is None else argv,
           "wall_s": time.perf_counter() - start, "points": points}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "fold_scaling.json")
    with open(json_path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(run, fh, indent=1)
    os.replace(json_path + ".tmp", json_path)
    print(format_tables(points))
    for path in [json_path, *write_plots(run, args.out)]:
        print(f"wrote {path}")
    print(f"{len(points)} points in {run['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
