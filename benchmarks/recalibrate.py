"""Time and peak memory of ``bnfold recalibrate`` on a large generated model.

Generates the ResNet-50-sized benchmark model (benchmarks/generate.py, 102 MB, 53 BN),
writes calibration data as a folder of .npy files (memory-mapped by bnfold), runs
``bnfold recalibrate`` in a child process and reports wall time, peak RSS (kernel's
ru_maxrss of the child) and the number of passes over the data.
Usage: python benchmarks/recalibrate.py [--images 16] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import DEFAULT_CACHE, ensure_models  # noqa: E402


def run(model: Path, data: Path, out: Path, batch_size: int) -> dict:
    cmd = [sys.executable, "-m", "bnfold", "recalibrate", str(model), "--data", str(data),
           "-o", str(out), "--batch-size", str(batch_size), "--json", "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bnfold recalibrate failed: {stderr.decode()[-2000:]}")
    result = json.loads(stdout)
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, **result}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    args = ap.parse_args(argv)
    model = Path(ensure_models(args.cache, only=["resnet50"])["resnet50"])
    size = model.stat().st_size
    with tempfile.TemporaryDirectory(prefix="bnfold-recal-bench-") as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(0, args.images, args.batch_size):
            n = min(args.batch_size, args.images - i)
            np.save(folder / f"part{i:05d}.npy",
                    rng.standard_normal((n, 3, 224, 224)).astype(np.float32))
        r = run(model, folder, Path(tmp) / "out.onnx", args.batch_size)
    print("| model | size | BN | passes | images | batch | wall s | s per pass | peak RSS | RSS / size |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| ResNet-50-sized (generated) | {size / 1e6:.1f} MB | {r['bn']} | {r['passes']} | "
          f"{r['samples_per_pass']} | {args.batch_size} | {r['wall_s']:.1f} | "
          f"{r['wall_s'] / r['passes']:.2f} | {r['peak_rss_bytes'] / 1e6:.0f} MB | "
          f"{r['peak_rss_bytes'] / size:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
