"""Inference latency of bnfold's output vs the best other tool's output vs the original.

Reads the outputs that fold_tools.py left (CACHE/fold_tools.json), picks per model the
best other tool (fewest BN left among outputs ORT loads and that match the original
within 1e-3 relative, then fastest fold), and times the three models paired and
interleaved (bnfold.bench.measure_variants, one process each) at ORT optimization
levels disabled and all. Usage: python benchmarks/latency.py [--runs 100] [--models NAME ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
MAX_REL_ERR = 1e-3


def best_other(row: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The other tool whose valid output leaves the fewest BN; ties go to the faster fold."""
    valid = [(name, r) for name, r in row["tools"].items()
             if name not in ("loadsave", "bnfold") and "error" not in r and r.get("ort_ok")
             and r.get("max_rel_err", 1.0) <= MAX_REL_ERR]
    return min(valid, key=lambda nr: (nr[1]["bn_left"], nr[1]["median_s"]), default=None)


def measure_row(row: dict[str, Any], levels: list[str], threads: int, warmup: int,
                runs: int, processes: int) -> dict[str, Any]:
    """Paired latency of original / bnfold / best other for one model."""
    from bnfold.bench import measure_variants
    from bnfold.bench.stats import paired_speedup

    variants = [("original", row["path"]), ("bnfold", row["tools"]["bnfold"]["output"])]
    best = best_other(row)
    if best:
        variants.append((best[0], best[1]["output"]))
    res = measure_variants(variants, opt_levels=levels, threads=(threads,), warmup=warmup,
                           runs=runs, processes=processes,
                           progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    out = {"model": row["model"], "bn": row["bn"], "best_other": best[0] if best else None,
           "bn_left": {n: (row["tools"][n]["bn_left"] if n != "original" else row["bn"])
                       for n, _ in variants}, "result": res.to_dict(), "vs_best": {}}
    if best:
        for cr in res.configs:
            samples = {v.name: v.samples_ms for v in cr.variants}
            sp = paired_speedup(samples[best[0]], samples["bnfold"])
            out["vs_best"][cr.config.opt_level] = sp.to_dict()
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per model, level and variant; speedups vs original (and vs best)."""
    head = ["model", "ORT level", "variant", "BN left", "p50 ms", "p90 ms", "mean ± sd ms",
            "speedup vs original [95% CI]", "bnfold vs best other [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        for cfg in row["result"]["configs"]:
            level = cfg["opt_level"]
            speed = next(iter(k for k in cfg if k.startswith("speedup_vs_")))
            for v in cfg["variants"]:
                sp = cfg[speed].get(v["name"])
                sp_txt = f"{sp['ratio']:.3f} [{sp['ci_low']:.3f}, {sp['ci_high']:.3f}]" if sp else "1"
                vb = row["vs_best"].get(level) if v["name"] == "bnfold" else None
                vb_txt = f"{vb['ratio']:.3f} [{vb['ci_low']:.3f}, {vb['ci_high']:.3f}]" if vb else ""
                lines.append(f"| {row['model']} | {level} | {v['name']} | {row['bn_left'][v['name']]} "
                             f"| {v['p50']:.3f} | {v['p90']:.3f} | {v['mean']:.3f} ± {v['stdev']:.3f} "
                             f"| {sp_txt} | {vb_txt} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import generate

    ap = argparse.ArgumentParser(description="Latency: original vs bnfold vs best other tool.")
    ap.add_argument("--cache", default=generate.DEFAULT_CACHE)
    ap.add_argument("--fold-json", help="fold_tools.py results [CACHE/fold_tools.json]")
    ap.add_argument("--models", nargs="*", help="model names to run [default: all]")
    ap.add_argument("--levels", nargs="*", default=["disabled", "all"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--processes", type=int, default=1,
                    help="fresh worker-process sets the rounds are split over [%(default)s]")
    ap.add_argument("--json", dest="json_path", help="write results here [CACHE/latency.json]")
    args = ap.parse_args(argv)
    fold_json = args.fold_json or os.path.join(args.cache, "fold_tools.json")
    if not os.path.exists(fold_json):
        print(f"error: {fold_json} not found; run benchmarks/fold_tools.py first", file=sys.stderr)
        return 2
    with open(fold_json, encoding="utf-8") as fh:
        rows = [r for r in json.load(fh)["rows"]
                if (not args.models or r["model"] in args.models)
                and "output" in r["tools"].get("bnfold", {})]
    results = []
    for row in rows:
        print(f"{row['model']}", file=sys.stderr, flush=True)
        results.append(measure_row(row, args.levels, args.threads, args.warmup, args.runs,
                                   args.processes))
    from bnfold.bench.result import machine_info

    with open(args.json_path or os.path.join(args.cache, "latency.json"), "w", encoding="utf-8") as fh:
        json.dump({"machine": machine_info(), "rows": results}, fh, indent=2)
    print(format_table(results))
    print(f"\nbatch = model default, {args.threads} intra-op thread(s), {args.warmup} warm-up + "
          f"{args.runs} interleaved rounds split over {args.processes} process set(s), each model "
          "in its own process; speedup = ratio of "
          "medians (>1 = faster), paired bootstrap CI")
    return 0


if __name__ == "__main__":
    sys.exit(main())
