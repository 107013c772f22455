"""Byte-mutation fuzzer: bit flips, byte smashes, truncations and splices of ONNX files
against ``bnfold inspect`` and ``bnfold fold``.

A finding is: an exit code other than 0 or 2, a traceback on stderr, an exception that
escaped the CLI, a worker process that died (a crash in C code), an exit 2 whose message
comes from the generic handler (an internal error, not a BnfoldError), or a fold that
exited 0 but wrote a model onnx.checker rejects. Seeds are models/*.onnx plus small models
built in code (an If subgraph, fp16 Gemm, and one with external data, whose data file is
mutated too).

Mutants run in a worker process, in-process through click's CliRunner (fast); if the
worker dies, the mutant it was on is recorded as a crash and a new worker carries on.

    python benchmarks/mutate_models.py --count 2000 --seed 1 --save /tmp/findings
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERIC = "set BNFOLD_DEBUG=1"


def built_seeds(folder: Path) -> list[Path]:
    """Small models made in code: Conv/BN, Gemm/BN, If subgraph, external data."""
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np
    from modelgen import Builder
    from onnx import helper

    from bnfold.io.model_io import save_model

    seeds = []
    b = Builder(seed=1)
    x = b.input("x", ["N", 4, 6, 6])
    y = b.bn(b.conv(x, 4, 8, group=2), 8)
    b.output(b.bn(b.conv(b.node("Relu", [y]), 8, 8, k=1, pads=0), 8))
    seeds.append((b.model(), "conv_bn.onnx", False))
    b = Builder(seed=2, dtype=np.float16)
    x = b.input("x", ["N", 6])
    w = b.const(b.weights((6, 5)))
    b.output(b.bn(b.node("Gemm", [b.bn(x, 6), w]), 5))
    seeds.append((b.model(), "gemm_bn_fp16.onnx", False))
    b = Builder(seed=3)
    x = b.input("x", ["N", 3, 4, 4])
    b.inputs.append(helper.make_tensor_value_info("cond", 9, []))
    inner = Builder(seed=4)
    inner.count = 100
    branch_out = inner.bn(inner.conv("x", 3, 3), 3)
    then = helper.make_graph(inner.nodes, "then", [], [helper.make_tensor_value_info(
        branch_out, 1, None)], inner.inits)
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["other_out"])], "else", [],
                              [helper.make_tensor_value_info("other_out", 1, None)])
    b.output(b.node("If", ["cond"], then_branch=then, else_branch=other))
    seeds.append((b.model(), "if_bn.onnx", False))
    b = Builder(seed=5)
    x = b.input("x", ["N", 16, 4, 4])
    b.output(b.bn(b.conv(x, 16, 16), 16))
    seeds.append((b.model(), "external.onnx", True))
    for model, name, external in seeds:
        save_model(model, folder / name, external_data=external)
    return sorted(folder.glob("*.onnx"))


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random mutation of ``data`` and a short description of it."""
    kind = rng.choice(["flip", "flip", "smash", "truncate", "splice", "zero"])
    buf = bytearray(data)
    if kind == "flip":
        n = rng.randint(1, 8)
        for _ in range(n):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf), f"flip {n} bits"
    if kind == "smash":
        i = rng.randrange(len(buf))
        n = rng.randint(1, 16)
        buf[i:i + n] = bytes(rng.randrange(256) for _ in range(n))
        return bytes(buf), f"smash {n} bytes at {i}"
    if kind == "truncate":
        i = rng.randrange(len(buf))
        return bytes(buf[:i]), f"truncate at {i}"
    if kind == "splice":
        i, j = sorted(rng.randrange(len(buf)) for _ in range(2))
        k = rng.randrange(len(buf))
        return bytes(buf[:k] + buf[i:j] + buf[k:]), f"splice [{i}:{j}] at {k}"
    i = rng.randrange(len(buf))
    n = rng.randint(1, 64)
    buf[i:i + n] = bytes(min(n, len(buf) - i))
    return bytes(buf), f"zero {n} bytes at {i}"


def make_mutants(seeds: list[Path], folder: Path, count: int, seed: int) -> list[dict]:
    """Write ``count`` mutants; external-data seeds get their data file mutated sometimes."""
    rng = random.Random(seed)
    mutants = []
    for i in range(count):
        src = rng.choice(seeds)
        case = folder / f"case{i}"
        case.mkdir()
        data_files = [p for p in src.parent.glob(src.name + ".data")]
        for p in data_files:
            shutil.copy(p, case / p.name)
        target = src
        if data_files and rng.random() < 0.3:
            target = data_files[0]
        data, how = mutate(target.read_bytes(), rng)
        if target == src:
            (case / src.name).write_bytes(data)
        else:
            shutil.copy(src, case / src.name)
            (case / target.name).write_bytes(data)
        mutants.append({"model": str(case / src.name), "seed_model": src.name,
                        "mutated": target.name, "how": how})
    return mutants


def run_one(model: str) -> list[dict]:
    """``bnfold inspect`` and ``bnfold fold`` on one file, in-process; findings (or none)."""
    import onnx
    from click.testing import CliRunner

    from bnfold.cli import main

    findings = []
    out = str(Path(model).with_name("out.onnx"))
    for args in (["inspect", model], ["fold", "-q", model, "-o", out]):
        result = CliRunner().invoke(main, args)
        err = result.stderr
        problem = None
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problem = f"exception escaped: {type(result.exception).__name__}: {result.exception}"
        elif result.exit_code == 1 and args[0] == "fold":
            problem = "exit 1: the folded model failed verification on ORT"
        elif result.exit_code not in (0, 2):
            problem = f"exit {result.exit_code}"
        elif "Traceback" in err:
            problem = "traceback on stderr"
        elif result.exit_code == 2 and GENERIC in err:
            problem = "internal error: " + err.strip().splitlines()[-1]
        elif result.exit_code == 2 and len(err.strip().splitlines()) != 1:
            problem = f"{len(err.strip().splitlines())} stderr lines"
        elif args[0] == "fold" and result.exit_code == 0:
            try:
                onnx.checker.check_model(out)
            except Exception as exc:  # noqa: BLE001 - any checker failure on our output is a finding
                problem = f"fold wrote an invalid model: {str(exc).splitlines()[0]}"
        if problem:
            findings.append({"command": args[0], "exit": result.exit_code, "problem": problem,
                             "stderr": err.strip()[-500:]})
    return findings


def worker() -> None:
    """Read model paths on stdin; print START, then one JSON result line, for each."""
    for line in sys.stdin:
        model = line.strip()
        print(f"START {model}", flush=True)
        print(json.dumps({"model": model, "findings": run_one(model)}), flush=True)


def campaign(mutants: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Run every mutant through workers, restarting a worker that dies; findings and exits."""
    todo = [m["model"] for m in mutants]
    by_model = {m["model"]: m for m in mutants}
    findings: list[dict] = []
    done = 0
    while done < len(todo):
        with tempfile.TemporaryFile("w+") as pending:  # a file, not a pipe: no deadlock
            pending.write("\n".join(todo[done:]) + "\n")
            pending.seek(0)
            proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=pending,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True, cwd=str(ROOT))
        current = None
        for line in proc.stdout:
            if line.startswith("START "):
                current = line[6:].strip()
                continue
            result = json.loads(line)
            findings += [{**by_model[result["model"]], **f} for f in result["findings"]]
            done += 1
            current = None
        code = proc.wait()
        if current is not None:  # the worker died on this mutant
            findings.append({**by_model[current], "command": "inspect/fold", "exit": code,
                             "problem": f"process died (exit {code})"})
            done += 1
    return findings, {"mutants": len(todo), "commands": 2 * len(todo)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=500, help="mutants to try [500]")
    ap.add_argument("--seed", type=int, default=0, help="random seed [0]")
    ap.add_argument("--save", type=Path, default=None, help="copy finding cases here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker()
        return
    work = Path(tempfile.mkdtemp(prefix="bnfold-mutate-"))
    try:
        (work / "seeds").mkdir()
        seeds = sorted((ROOT / "models").glob("*.onnx")) + built_seeds(work / "seeds")
        mutants = make_mutants(seeds, work, args.count, args.seed)
        findings, totals = campaign(mutants)
        if args.save and findings:
            args.save.mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(findings):
                shutil.copytree(Path(f["model"]).parent, args.save / f"finding{i}",
                                dirs_exist_ok=True)
        print(json.dumps({**totals, "seeds": [s.name for s in seeds],
                          "findings": len(findings), "details": findings}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
