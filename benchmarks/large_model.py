"""Fold a generated multi-GB CNN stored with external data; report wall time and peak RSS.

The model (Conv -> BN -> Relu blocks with wide 3x3 convs) is written straight to disk one
tensor at a time, so generating it needs little memory. ``bnfold fold`` then runs in a child
process; its peak RSS comes from the kernel (wait4 ru_maxrss). ``--stages`` instead runs
load / fold / save in this process and prints the RSS after each, to find where memory goes:
by default as the CLI does it (external data left on disk, read weight by weight), with
``--eager`` loading every tensor first, as ``bnfold.fold(path)`` does.

    python benchmarks/large_model.py                 # ~3 GB model, CLI fold, then deleted
    python benchmarks/large_model.py --size-gb 1 --stages
    python benchmarks/large_model.py --size-gb 1 --stages --eager
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

import numpy as np
import onnx
from onnx import helper, numpy_helper

CHANNELS = 1024
ALIGN = 4096


def _external(name: str, array: np.ndarray, f, location: str) -> onnx.TensorProto:
    """Append ``array`` to the open data file and return a tensor that points at it."""
    pad = (-f.tell()) % ALIGN
    f.write(b"\0" * pad)
    offset = f.tell()
    f.write(np.ascontiguousarray(array, dtype="<f4").tobytes())
    t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=array.shape)
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(array.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    t.data_location = onnx.TensorProto.EXTERNAL
    return t


def generate(path: Path, size_gb: float, seed: int = 0) -> int:
    """Write a Conv/BN/Relu CNN of about ``size_gb`` GB beside ``path``; return its layers."""
    per_layer = CHANNELS * CHANNELS * 9 * 4
    layers = max(1, round(size_gb * 1e9 / per_layer))
    rng = np.random.default_rng(seed)
    location = path.name + ".data"
    inits, nodes = [], []
    x = "x"
    with open(path.parent / location, "wb") as f:
        for i in range(layers):
            w = rng.standard_normal((CHANNELS, CHANNELS, 3, 3), dtype=np.float32)
            w *= np.float32(1.0 / np.sqrt(CHANNELS * 9))
            inits.append(_external(f"w{i}", w, f, location))
            del w
            params = [rng.uniform(0.5, 1.5, CHANNELS), rng.normal(0, 0.1, CHANNELS),
                      rng.normal(0, 0.1, CHANNELS), rng.uniform(0.5, 2.0, CHANNELS)]
            names = [f"bn{i}_{p}" for p in ("scale", "bias", "mean", "var")]
            inits += [numpy_helper.from_array(p.astype(np.float32), n) for p, n in zip(params, names)]
            inits.append(numpy_helper.from_array(np.zeros(CHANNELS, np.float32), f"b{i}"))
            nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                          pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
            nodes.append(helper.make_node("BatchNormalization", [f"c{i}"] + names, [f"n{i}"],
                                          name=f"bn{i}"))
            nodes.append(helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
        f.flush()
        os.fsync(f.fileno())
    graph = helper.make_graph(
        nodes, "large_cnn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", CHANNELS, 4, 4])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, ["N", CHANNELS, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return layers


def disk_size(path: Path) -> int:
    model = onnx.load_model(str(path), load_external_data=False)
    files = {path} | {path.parent / e.value for t in model.graph.initializer
                      for e in t.external_data if e.key == "location"}
    return sum(p.stat().st_size for p in files)


def fold_in_child(model: Path, out: Path) -> dict:
    """Run ``bnfold fold`` in a child process; wall time, peak RSS (kernel) and its JSON.

    --no-verify: this measures the fold itself (verification runs both models on ORT, and
    ORT holds its own copy of every weight).
    """
    cmd = [sys.executable, "-c", "import sys; from bnfold.cli import main; sys.exit(main())",
           "fold", str(model), "-o", str(out), "--no-verify", "--json", "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"bnfold fold failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    result = json.loads(stdout)
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "folded": len([r for r in result["records"] if r["folded"]]),
            "bn_before": result["bn_before"], "bn_after": result["bn_after"]}


def spot_check(model: Path, out: Path) -> float:
    """Max |folded w0 - w0 * BN scale| read by memory map (no full load); ~0 when correct."""
    src = onnx.load_model(str(model), load_external_data=False)
    dst = onnx.load_model(str(out), load_external_data=False)
    inits = {t.name: t for t in src.graph.initializer}

    def mapped(m: onnx.ModelProto, folder: Path, name: str) -> np.ndarray:
        t = next(t for t in m.graph.initializer if t.name == name)
        info = {e.key: e.value for e in t.external_data}
        return np.memmap(folder / info["location"], dtype="<f4", mode="r",
                         offset=int(info.get("offset", 0)), shape=tuple(t.dims))

    gamma, _, _, var = (numpy_helper.to_array(inits[f"bn0_{p}"]).astype(np.float64)
                        for p in ("scale", "bias", "mean", "var"))
    scale = gamma / np.sqrt(var + 1e-5)
    conv = next(n for n in dst.graph.node if n.op_type == "Conv")
    want = mapped(src, model.parent, "w0")[:8].astype(np.float64) * scale[:8, None, None, None]
    got = mapped(dst, out.parent, conv.input[1])[:8].astype(np.float64)
    return float(np.abs(got - want).max())


def stages(model: Path, out: Path, eager: bool = False) -> list[tuple[str, float]]:
    """RSS (GiB) after each step of load / fold / save, in this process.

    Lazy (the CLI's way): fold reads each weight from disk when it folds it, and save copies
    the untouched tensors from the source data file. Eager: every tensor is loaded first.
    """
    import psutil

    import bnfold
    from bnfold.io.model_io import load_model, save_model

    proc = psutil.Process()
    marks = [("start", proc.memory_info().rss / 2**30)]
    if eager:
        loaded = load_model(model)
        marks.append(("load_model", proc.memory_info().rss / 2**30))
        result = bnfold.fold(loaded, check=True, copy=False)
        marks.append(("fold(check=True, copy=False)", proc.memory_info().rss / 2**30))
    else:
        result = bnfold.fold(model, check=True, lazy_external=True)
        marks.append(("fold(path, lazy_external=True)", proc.memory_info().rss / 2**30))
    save_model(result.model, out, external_data=True, source_dir=result.external_base)
    marks.append(("save_model(external_data=True)", proc.memory_info().rss / 2**30))
    return marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=3.0, help="model size in GB [3.0]")
    ap.add_argument("--dir", type=Path, default=None, help="work folder [a new temp folder]")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--stages", action="store_true",
                    help="run load/fold/save in-process and print RSS after each step")
    ap.add_argument("--eager", action="store_true",
                    help="with --stages: load all external data first (the Python API default)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bnfold-large-", dir=args.dir))
    need = 2.2 * args.size_gb * 1e9
    if shutil.disk_usage(work).free < need:
        shutil.rmtree(work)
        raise SystemExit(f"need {need / 1e9:.1f} GB free in {work.parent}")
    try:
        model, out = work / "large.onnx", work / "large.folded.onnx"
        t0 = time.perf_counter()
        layers = generate(model, args.size_gb)
        size = disk_size(model)
        print(f"generated {layers} Conv/BN blocks, {size / 1e9:.2f} GB in "
              f"{time.perf_counter() - t0:.1f} s: {model}", file=sys.stderr)
        if args.stages:
            for name, gib in stages(model, out, eager=args.eager):
                print(f"{name:34s} RSS {gib:6.2f} GiB ({gib * 2**30 / size:.2f}x model)")
            return
        report = fold_in_child(model, out)
        report.update(model_bytes=size, output_bytes=disk_size(out),
                      peak_rss_over_model=report["peak_rss_bytes"] / size,
                      output_files=sorted(p.name for p in work.iterdir()),
                      spot_check_max_abs_error=spot_check(model, out))
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
