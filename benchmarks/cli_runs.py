"""Command lines timed as a user runs them: a fresh process each, interpreter start included.

``measure`` runs one command and returns its wall time and two peaks of resident memory:
the largest single process (the kernel's ``ru_maxrss`` from ``wait4``: the command and every
descendant it waited for, taken in a small launcher process, see ``LAUNCHER``) and the largest
SUM over the process tree (psutil samples the command and its children every ``interval``
seconds; pages shared between processes count once per process; a peak shorter than the
interval can be missed, so the sum reported is at least the largest single process; the
sampled value is kept as ``sampled_tree_mb``). ``compare_cli`` runs ``bnfold fold`` with and
without verification and ``onnxslim`` on one model, paired and interleaved: each round runs
every command once, in an order rotated per round, so load drift hits all alike.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def rotated(items: list[Any], round_index: int) -> list[Any]:
    """``items`` rotated left by ``round_index``: round r starts with item r (mod n)."""
    if not items:
        return []
    k = round_index % len(items)
    return items[k:] + items[:k]


def _tree_rss(proc: Any) -> int:
    """Sum of RSS over ``proc`` and its living descendants (0 once it is gone)."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


# Runs the measured command and reports its own wall time and ru_maxrss. A process started
# straight from this one would not do: on exec, Linux carries the peak RSS of the memory it
# leaves (vfork: this process's whole peak) into the child's ru_maxrss. The launcher is a small
# interpreter, so what it hands down is its own few MB.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as fh:
    json.dump({"wall_s": wall, "rc": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, fh)
"""


def _kill_below(pid: int) -> None:
    """Kill every descendant of the launcher ``pid`` (a command past its timeout); the launcher
    then reports the command's exit status (-9) and ends."""
    import psutil

    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def measure(cmd: list[str], env: dict[str, str] | None = None, interval: float = 0.01,
            timeout: float = 600.0) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, exit code, peak RSS (MB) of the tree sum and of one process.

    ``cmd`` runs under ``LAUNCHER`` (its start is not timed, its RSS not summed); the output goes
    to a temporary file (a pipe nobody reads could block the command).
    """
    import json

    import psutil

    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, report, *cmd], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            try:
                proc = psutil.Process(launcher.pid)
            except psutil.Error:
                return
            while not done.is_set():
                try:
                    below = proc.children()
                except psutil.Error:
                    return
                peak[0] = max([peak[0]] + [_tree_rss(p) for p in below])
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timer = threading.Timer(timeout, _kill_below, (launcher.pid,))
        timer.start()
        try:
            launcher.wait()
        finally:
            timer.cancel()
            done.set()
            sampler.join()
        log.seek(0)
        tail = log.read().decode(errors="replace").strip().splitlines()[-1:]
        if not os.path.exists(report):
            return {"rc": launcher.returncode, "error": f"launcher failed ({launcher.returncode}): "
                    f"{(tail or [''])[0][:160]}"}
        with open(report, encoding="utf-8") as fh:
            got = json.load(fh)
    single = got["maxrss_kb"] * 1024 / 1e6
    # the sum over the tree is at least its largest process: a sample can miss a short peak
    out = {"wall_s": got["wall_s"], "rc": got["rc"], "sampled_tree_mb": peak[0] / 1e6,
           "peak_tree_mb": max(peak[0] / 1e6, single), "peak_single_mb": single}
    if got["rc"] != 0:
        out["error"] = f"exit {got['rc']}: {(tail or [''])[0][:160]}"
    return out


def script(name: str) -> list[str]:
    """A console script of this interpreter's environment (``bnfold``, ``onnxslim``), or
    ``python -m name`` when the script is not installed there."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return [path] if os.access(path, os.X_OK) else [sys.executable, "-m", name]


def commands(model: str, out_dir: str) -> dict[str, tuple[list[str], str]]:
    """The compared command lines and the output each writes."""
    stem = os.path.join(out_dir, "cli")
    return {
        "bnfold fold": (script("bnfold") + ["fold", model, "-o", stem + ".bnfold.onnx", "-q"],
                        stem + ".bnfold.onnx"),
        "bnfold fold --no-verify": (script("bnfold") + ["fold", model, "-o", stem + ".nv.onnx",
                                                        "--no-verify", "-q"], stem + ".nv.onnx"),
        "onnxslim": (script("onnxslim") + [model, stem + ".slim.onnx"], stem + ".slim.onnx"),
    }


def child_env() -> dict[str, str]:
    """This process's environment with this checkout first on PYTHONPATH, so the console
    scripts import this bnfold, not whichever checkout the environment installed."""
    paths = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))


def compile_bytecode() -> None:
    """Byte-compile this checkout's bnfold, as ``pip install`` does for an installed package and
    for the other tools: an editable install under PYTHONDONTWRITEBYTECODE (as on this machine)
    otherwise compiles bnfold's modules from source in every command (about 0.15 s each)."""
    import compileall

    compileall.compile_dir(os.path.join(ROOT, "bnfold"), quiet=1)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median wall time over the rounds, the largest peaks; an error if any round failed."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return {"error": failed[0]["error"], "runs": runs}
    return {"median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "peak_tree_mb": max(r["peak_tree_mb"] for r in runs),
            "peak_single_mb": max(r["peak_single_mb"] for r in runs), "runs": runs}


def compare_cli(name: str, model: str, rounds: int, out_dir: str, timeout: float = 600.0,
                log: Any = None) -> dict[str, Any]:
    """Every command of ``commands`` once per round, rotated; per command ``summarize``."""
    cmds = commands(model, out_dir)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cmds}
    env = child_env()
    compile_bytecode()
    for r in range(rounds):
        for label in rotated(list(cmds), r):
            cmd, dst = cmds[label]
            if os.path.exists(dst):
                os.remove(dst)
            if log:
                log(f"  cli round {r + 1}/{rounds}: {label}")
            runs[label].append(measure(cmd, env, timeout=timeout))
    for _, dst in cmds.values():
        if os.path.exists(dst):
            os.remove(dst)
    return {"model": name, "path": model, "size_mb": os.path.getsize(model) / 1e6, "rounds": rounds,
            "commands": {c: summarize(v) for c, v in runs.items()}}
