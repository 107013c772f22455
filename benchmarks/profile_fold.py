"""Where `bnfold fold` spends its time: cProfile of fold(path) -> save_model per phase.

Prints, per model, the cumulative seconds of the functions that make up the pipeline
(the phases overlap where one calls another; "total" is the whole call) and the peak
RSS of a separate run. Usage: python benchmarks/profile_fold.py [MODEL.onnx ...]
"""
from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# (label, module file suffix, function name): summed cumulative time over all calls
PHASES = [
    ("fold(path) (total)", "bnfold/folding/__init__.py", "fold"),
    ("  load_model (structure; weights stay in the file)", "bnfold/io/model_io.py", "load_model"),
    ("    wire scan of the file (weights_in_file)", "bnfold/io/weights_in_file.py",
     "structure_bytes"),
    ("  shape inference (shapes.infer)", "bnfold/graph/shapes.py", "infer"),
    ("  rules (_fold_graph)", "bnfold/folding/__init__.py", "_fold_graph"),
    ("    float64 scale and round once (math.product)", "bnfold/folding/math.py", "product"),
    ("    cast_exact", "bnfold/folding/rewrite.py", "cast_exact"),
    ("    write_tensor (folded weight into the proto)", "bnfold/folding/rewrite.py", "write_tensor"),
    ("  skeleton (data-free copy for checks)", "bnfold/io/skeleton.py", "skeleton"),
    ("  check_folded (checker + strict shape inference)", "bnfold/folding/check.py", "check_folded"),
    ("  proofs (proof.prove)", "bnfold/folding/proof.py", "prove"),
    ("    regions cut (_groups, original weights read)", "bnfold/folding/proof.py", "_groups"),
    ("    proof model + weights into /dev/shm (_pair)", "bnfold/folding/proof.py", "_pair"),
    ("    random feeds (_feeds)", "bnfold/folding/proof.py", "_feeds"),
    ("    batches handed to the ORT child (_submit)", "bnfold/folding/proof.py", "_submit"),
    ("    waiting for the ORT child (_collect)", "bnfold/folding/proof.py", "_collect"),
    ("    verdicts (_errors)", "bnfold/folding/proof.py", "_errors"),
    ("save_model (total)", "bnfold/io/model_io.py", "save_model"),
    ("  streamed write (proto_stream.write_model)", "bnfold/io/proto_stream.py", "write_model"),
    ("fsync (all callers)", "~", "<built-in method posix.fsync>"),
]


def profile(path: str, out: str) -> tuple[float, dict[str, float]]:
    """Run the `bnfold fold` path once under cProfile; return wall time and per-phase seconds."""
    import bnfold
    from bnfold.io.model_io import save_model

    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    result = bnfold.fold(path, lazy_external=True)  # as `bnfold fold` does
    save_model(result.model, out, overwrite=True, source_dir=result.external_base)
    prof.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    phases = {}
    for label, suffix, func in PHASES:
        phases[label] = sum(v[3] for (file, _, name), v in stats.items()
                            if name == func and file.endswith(suffix))
    return wall, phases


def peak_rss_mb(path: str, out: str) -> float:
    """Peak RSS of the same pipeline in a fresh process, over its post-import RSS."""
    code = "\n".join([
        "import sys, bnfold",
        "from bnfold.io.model_io import save_model",
        f"sys.path.insert(0, {HERE!r})",
        "import fold_tools as ft",
        "ft._reset_peak_rss()",
        "base = ft._rss_kb('VmRSS')",
        f"r = bnfold.fold({path!r}, lazy_external=True)",
        f"save_model(r.model, {out!r}, overwrite=True, source_dir=r.external_base)",
        "print((ft._rss_kb('VmHWM') - base) / 1e3)",
    ])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # this bnfold
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, env=env).stdout.strip())


def main(argv: list[str]) -> int:
    import tempfile

    import generate

    paths = argv or list(generate.ensure_models().values())
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.onnx")
        for path in paths:
            profile(path, out)  # warm the file cache and lazy imports
            wall, phases = profile(path, out)
            mem = peak_rss_mb(path, out)
            size = os.path.getsize(path) / 1e6
            print(f"\n{os.path.basename(path)} ({size:.1f} MB): {wall:.3f} s under cProfile, "
                  f"peak RSS +{mem:.0f} MB over imports")
            for label, secs in phases.items():
                print(f"  {label:<52} {secs:7.3f} s  {100 * secs / wall:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
