"""BN folding on real architectures: bnfold against the other ONNX tools that fold BN.

torchvision and timm networks with random weights and random BN statistics
(``real_arch_models``), each exported twice keeping every BN (bnfold's dynamo exporter and
torch's TorchScript exporter), small inputs. Every tool (``real_arch_tools``) folds every export
in this process; per tool: BN left, error against the original on ONNX Runtime (optimizations
disabled, the export's fixed random input, relative to the output's peak), onnx.checker with
strict shape inference, median time. bnfold also reports its own verdict (``bnfold.verify``)
and a reason for every BN it keeps; the summary groups those reasons: the fold engine's work list.

Needs torchvision and timm (see README, Benchmarks). Usage:
    python benchmarks/real_arch.py [--quick] [--models resnet18 mixnet_s] [--exports dynamo]
        [--tools bnfold onnxslim] [--repeat 1] [--json out.json] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # this checkout's bnfold, not an installed one
import real_arch_models as models  # noqa: E402
import real_arch_tools as tools  # noqa: E402

DEFAULT_CACHE = os.path.join(os.environ.get("BNFOLD_BENCH_CACHE") or
                             os.path.expanduser("~/.cache/bnfold-bench"), "real_arch")
DEFAULT_TOL = 1e-4  # relative error above which an output counts as wrong


def kept_records(result: Any) -> list[dict[str, str]]:
    """bnfold's kept BNs as plain dicts: node, reason code and its numbers."""
    return [{"bn": r.bn, "reason": r.reason.code if r.reason else "?", "detail": r.detail}
            for r in result.kept]


def bnfold_verdict(src: str, result: Any) -> dict[str, Any]:
    """bnfold's own end-to-end verdict on its fold (one seed).

    Each call gets its own ORT child: ``verify`` keeps the sessions of a caller's child keyed by
    role ("original:cpu"), so a child shared across models would compare the previous model.
    """
    import bnfold

    try:
        report = bnfold.verify(src, result.model, fold_result=result, seeds=[0],
                               localize_failures=False)
    except Exception as exc:  # noqa: BLE001 - a verify crash is recorded, not fatal
        return {"verdict": f"error: {type(exc).__name__}: {str(exc)[:160]}"}
    return {"verdict": "pass" if report.passed else "FAIL"}


def pattern_of(detail: str) -> str:
    """A kept BN's detail with node and tensor names and numbers blanked, to group alike BNs:
    "producer is Concat, consumer is Relu", "backward: '<t>' is also read by <n>..."."""
    text = re.sub(r"\s*\([^)]*\)", "", detail).split(";")[0]
    text = re.sub(r"'[^']*'", "'<t>'", text)
    text = re.sub(r"[A-Za-z_/][\w.:/-]*[./][\w.:/-]*\w", "<n>", text)
    text = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", text)
    return re.sub(r"<n>(, <n>)+", "<n>...", text).strip()


def bench_export(arch: models.Arch, export: str, fns: dict[str, Any], args: argparse.Namespace,
                 work: str) -> dict[str, Any]:
    """Every tool on one export of one network."""
    import onnx

    row: dict[str, Any] = {"model": arch.name, "export": export, "size": arch.size, "tools": {}}
    try:
        src, meta = models.export_arch(arch, export, args.cache, seed=args.seed,
                                       negative_gamma=args.negative_gamma, log=_log)
    except Exception as exc:  # noqa: BLE001 - an export failure is listed, not fatal
        row["error"] = f"export failed: {type(exc).__name__}: {str(exc).strip()[:200]}"
        return row
    row.update(meta)
    model = onnx.load(src)
    row["bn_before"], row["nodes"] = tools.count_bn(model), tools.count_nodes(model)
    x = models.example_input(arch, args.seed)
    ref = tools.ort_run(src, x)
    for name, fn in fns.items():
        _log(f"    {arch.name}/{export}: {name}")
        dst = os.path.join(work, f"{arch.name}.{export}.{name}.onnx")
        res = tools.run_tool(fn, src, dst, args.repeat, x, ref)
        result = res.pop("fold_result", None)
        if result is not None:
            res["kept"] = kept_records(result)
            res["warnings"] = list(result.warnings)
            if not args.no_verify:
                res.update(bnfold_verdict(src, result))
        row["tools"][name] = res
    return row


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _pair(values: list[str]) -> str:
    """One value when every export agrees, else "dynamo / torchscript"."""
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def _left(res: dict[str, Any] | None) -> str:
    if res is None:
        return "-"
    return "err" if "error" in res else str(res["bn_after"])


def _notes(row: dict[str, Any], tol: float) -> list[str]:
    """What went wrong on one export: tool crashes, invalid or wrong outputs, bnfold's verdict."""
    tag = row["export"][:3]
    if "error" in row:
        return [f"{tag}: {row['error']}"]
    out = []
    for name, res in row["tools"].items():
        if "error" in res:
            out.append(f"{tag}: {name} crashed ({res['error'][:80]})")
            continue
        if not res["checker_ok"]:
            out.append(f"{tag}: {name} fails checker")
        if res.get("ort_error"):
            out.append(f"{tag}: {name} not loadable in ORT")
        elif res["rel_err"] is not None and res["rel_err"] > tol:
            out.append(f"{tag}: {name} wrong (rel err {res['rel_err']:.1e})")
        if res.get("verdict", "pass") != "pass":
            out.append(f"{tag}: bnfold verdict {res['verdict'][:60]}")
    if row.get("export_ok") is False:
        out.append(f"{tag}: export differs from PyTorch ({row.get('export_max_abs', 0):.1e})")
    return out


def format_table(rows: list[dict[str, Any]], tool_names: list[str], tol: float = DEFAULT_TOL) -> str:
    """Markdown: model | BN before | BN left per tool | bnfold error | notes (exports merged)."""
    head = ["model", "BN before"] + [f"{t} left" for t in tool_names] + ["bnfold rel err", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_model[row["model"]].append(row)
    for name, group in by_model.items():
        ok = [r for r in group if "error" not in r]
        cells = [name, _pair([str(r["bn_before"]) for r in ok]) if ok else "-"]
        cells += [_pair([_left(r["tools"].get(t)) for r in ok]) if ok else "-" for t in tool_names]
        errs = [r["tools"].get("bnfold", {}).get("rel_err") for r in ok]
        cells.append(_pair([f"{e:.1e}" if e is not None else "-" for e in errs]) if ok else "-")
        cells.append("; ".join(n for r in group for n in _notes(r, tol)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(rows: list[dict[str, Any]], tool_names: list[str], tol: float = DEFAULT_TOL) -> dict[str, Any]:
    """Totals per tool and export, where bnfold leaves more than another tool, bnfold's reasons."""
    ok = [r for r in rows if "error" not in r]
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in ok:
        totals[r["export"]]["BN before"] += r["bn_before"]
        for t in tool_names:
            res = r["tools"].get(t)
            if res is not None and "error" not in res:
                totals[r["export"]][t] += res["bn_after"]
    behind = []
    for r in ok:
        ours = r["tools"].get("bnfold")
        if not ours or "error" in ours:
            continue
        for t, res in r["tools"].items():
            good = "error" not in res and res["checker_ok"] and res["rel_err"] is not None \
                and res["rel_err"] <= tol
            if t != "bnfold" and good and res["bn_after"] < ours["bn_after"]:
                behind.append({"model": r["model"], "export": r["export"], "tool": t,
                               "bnfold": ours["bn_after"], "other": res["bn_after"]})
    reasons: dict[str, dict[str, Any]] = {}
    for r in ok:
        tag = f"{r['model']}/{r['export'][:3]}"
        for k in r["tools"].get("bnfold", {}).get("kept", []):
            entry = reasons.setdefault(k["reason"], {"count": 0, "models": defaultdict(int),
                                                    "patterns": {}, "examples": {}})
            entry["count"] += 1
            entry["models"][tag] += 1
            pat = entry["patterns"].setdefault(pattern_of(k["detail"]),
                                               {"count": 0, "models": defaultdict(int)})
            pat["count"] += 1
            pat["models"][tag] += 1
            entry["examples"].setdefault(r["model"], f"{k['bn']}: {k['detail'][:160]}")
    for entry in reasons.values():
        entry["models"] = dict(entry["models"])
        entry["patterns"] = {p: {"count": v["count"], "models": dict(v["models"])} for p, v in
                             sorted(entry["patterns"].items(), key=lambda kv: -kv[1]["count"])}
    failed = [{"model": r["model"], "export": r["export"], "error": r["error"]}
              for r in rows if "error" in r]
    return {"totals": {e: dict(v) for e, v in totals.items()}, "bnfold_behind": behind,
            "bnfold_kept_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1]["count"])),
            "failed": failed}


def format_summary(summary: dict[str, Any], tool_names: list[str]) -> str:
    """The summary as text: totals table, bnfold-behind list, reasons grouped."""
    lines = ["", "BN left in total, per export:", "",
             "| export | BN before | " + " | ".join(tool_names) + " |",
             "|---|" + "---:|" * (len(tool_names) + 1)]
    for export, tot in summary["totals"].items():
        lines.append(f"| {export} | {tot.get('BN before', 0)} | "
                     + " | ".join(str(tot.get(t, "-")) for t in tool_names) + " |")
    behind = summary["bnfold_behind"]
    lines += ["", f"Exports where bnfold leaves more BN than another tool: {len(behind)}"]
    lines += [f"  {b['model']} ({b['export']}): bnfold {b['bnfold']}, {b['tool']} {b['other']}"
              for b in behind]
    lines += ["", "BNs bnfold keeps, by reason, then by pattern (node names and numbers removed):"
              + ("" if summary["bnfold_kept_by_reason"] else " none")]
    for code, entry in summary["bnfold_kept_by_reason"].items():
        lines.append(f"  {code}: {entry['count']}")
        for pat, v in entry["patterns"].items():
            per = ", ".join(f"{m} {n}" for m, n in v["models"].items())
            lines.append(f"    {v['count']:4d}  {pat}  [{per}]")
        lines += [f"      e.g. {m}: {e}" for m, e in entry["examples"].items()]
    if summary["failed"]:
        lines += ["", "Exports that failed:"]
        lines += [f"  {f['model']} ({f['export']}): {f['error']}" for f in summary["failed"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="BN folding on real architectures, bnfold vs other tools.")
    ap.add_argument("--models", nargs="*", help=f"networks [default: all {len(models.ARCHS)}]")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(models.QUICK)}")
    ap.add_argument("--exports", nargs="*", default=list(models.EXPORTS), choices=models.EXPORTS)
    ap.add_argument("--tools", nargs="*", default=list(tools.TOOLS), choices=tools.TOOLS)
    ap.add_argument("--repeat", type=int, default=1, help="timed passes per tool [%(default)s]")
    ap.add_argument("--seed", type=int, default=0, help="weights, BN statistics and input [%(default)s]")
    ap.add_argument("--negative-gamma", type=float, default=0.0,
                    help="fraction of BN channels with a negative scale [%(default)s]")
    ap.add_argument("--tol", type=float, default=DEFAULT_TOL, help="relative error counted wrong")
    ap.add_argument("--no-verify", action="store_true", help="skip bnfold's own verdict")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="exported models [%(default)s]")
    ap.add_argument("--json", dest="json_path", help="write every result here")
    ap.add_argument("--render", metavar="JSON", help="only print the table of a saved run")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        with open(args.render, encoding="utf-8") as fh:
            saved = json.load(fh)
        print(format_table(saved["rows"], saved["tools"], saved["tol"]))
        print(format_summary(summarize(saved["rows"], saved["tools"], saved["tol"]), saved["tools"]))
        return 0
    names = list(models.QUICK) if args.quick else (args.models or list(models.ARCHS))
    unknown = [n for n in names if n not in models.ARCHS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {', '.join(models.ARCHS)}")
    versions = tools.tool_versions(args.tools)
    versions.update({p: tools.package_version(p) for p in ("onnx", "torch", "torchvision", "timm")})
    _log("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    fns: dict[str, Any] = {}
    for t in args.tools:
        try:
            fns[t] = tools.make_tool(t)
        except ImportError as exc:
            _log(f"skipping {t}: {exc}")
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="real_arch_") as work:
        for name in names:
            for export in args.exports:
                _log(f"{name} ({export})")
                rows.append(bench_export(models.ARCHS[name], export, fns, args, work))
    wall = time.perf_counter() - start
    summary = summarize(rows, list(fns), args.tol)
    print(format_table(rows, list(fns), args.tol))
    print(format_summary(summary, list(fns)))
    print(f"\n{len(names)} models x {len(args.exports)} exports in {wall:.0f} s; versions: "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump({"versions": versions, "tools": list(fns), "tol": args.tol, "wall_s": wall,
                       "argv": sys.argv[1:], "skipped": models.SKIPPED, "rows": rows,
                       "summary": summary}, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
