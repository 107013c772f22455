"""The performance goals of issue 13 as numbers: ratios, geometric means, verdicts, tables.

Pure functions over the rows that ``fold_tools.py`` writes (one row per model, a dict of tool
results with ``median_s``) and over its CLI measurements (``cli_runs.py``), so they are tested
without running a benchmark. A goal whose measurement is missing is reported "not measured",
never passed.

Goals (fold = ``bnfold`` tool, file to file, in process, imports excluded):
  fold / onnxscript BN fusion: geometric mean over every model <= 0.8, worst model <= 1.2
  fold / ORT offline basic optimization on ResNet-50 <= 1.0
  CLI ``bnfold fold M -o OUT`` (verifying) / ``onnxslim M OUT`` on ResNet-50 <= 1.0
  peak RSS of ``bnfold fold`` / model file size: verifying <= 3, --no-verify <= 2
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FOLD = "bnfold"
UNPROVEN = "bnfold_unproven"  # bnfold.fold(prove=False): informational, never a goal
GEOMEAN_LIMIT, MAX_LIMIT, ORT_LIMIT, CLI_LIMIT = 0.8, 1.2, 1.0, 1.0
RSS_VERIFY_LIMIT, RSS_NO_VERIFY_LIMIT = 3.0, 2.0
RESNET50 = "resnet50"


@dataclass(frozen=True)
class Goal:
    """One goal: its measured value (None when not measured), the limit, how it was measured."""

    name: str
    value: float | None
    limit: float
    detail: str

    @property
    def verdict(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "not measured"
        return "PASS" if self.value <= self.limit else "NOT MET"


def geomean(values: list[float]) -> float:
    """Geometric mean of positive numbers (NaN for none): the mean of ratios that is fair to
    ratios above and below 1."""
    if not values:
        return float("nan")
    if any(v <= 0 for v in values):
        raise ValueError(f"geometric mean of non-positive values {values}")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def median_of(res: dict[str, Any] | None) -> float | None:
    """A tool's median seconds on one model, None when it crashed or did not run."""
    if not res or "error" in res or not res.get("median_s"):
        return None
    return float(res["median_s"])


def fold_ratios(rows: list[dict[str, Any]], other: str, ours_tool: str = FOLD
                ) -> dict[str, float]:
    """bnfold's (``ours_tool``'s) median time over ``other``'s, per model where both ran."""
    out = {}
    for row in rows:
        ours = median_of(row["tools"].get(ours_tool))
        theirs = median_of(row["tools"].get(other))
        if ours is not None and theirs is not None:
            out[row["model"]] = ours / theirs
    return out


def is_resnet50(model: str) -> bool:
    """The generated ResNet-50 ("resnet50") and its real exports ("resnet50.dynamo", ...)."""
    return model == RESNET50 or model.startswith(RESNET50 + ".")


def tool_goals(rows: list[dict[str, Any]]) -> list[Goal]:
    """The in-process fold-time goals, from the per-model medians."""
    vs_script = fold_ratios(rows, "onnxscript")
    n = f"{len(vs_script)} of {len(rows)} models"
    worst = max(vs_script.items(), key=lambda kv: kv[1], default=None)
    vs_ort = {m: r for m, r in fold_ratios(rows, "ort_basic").items() if is_resnet50(m)}
    worst_ort = max(vs_ort.items(), key=lambda kv: kv[1], default=None)
    return [
        Goal("fold / onnxscript, geometric mean", geomean(list(vs_script.values())) if vs_script
             else None, GEOMEAN_LIMIT, n),
        Goal("fold / onnxscript, worst model", worst[1] if worst else None, MAX_LIMIT,
             f"{worst[0]} ({n})" if worst else n),
        Goal("fold / ort_basic on ResNet-50", worst_ort[1] if worst_ort else None, ORT_LIMIT,
             ", ".join(f"{m} {r:.2f}" for m, r in vs_ort.items()) or "no ResNet-50 measured"),
    ]


def unproven_note(rows: list[dict[str, Any]]) -> str | None:
    """One line on what the per-fold proofs cost: bnfold without them (``bnfold.fold(prove=
    False)``, not what the CLI runs) against onnxscript, and the proofs' share of bnfold's
    time; None when that tool did not run."""
    bare = fold_ratios(rows, "onnxscript", UNPROVEN)
    share = fold_ratios(rows, UNPROVEN)  # bnfold / bnfold_unproven
    if not bare or not share:
        return None
    worst = max(bare.items(), key=lambda kv: kv[1])
    return (f"without its per-fold proofs (bnfold.fold(prove=False), informational, not a goal): "
            f"fold / onnxscript geometric mean {geomean(list(bare.values())):.2f}, worst "
            f"{worst[1]:.2f} ({worst[0]}); the proofs make bnfold {geomean(list(share.values())):.2f}x "
            f"slower (geometric mean over {len(share)} models)")


def ort_floor_note(rows: list[dict[str, Any]]) -> str | None:
    """One line on what waiting for ONNX Runtime costs: the seconds bnfold's fold spends
    sending to its ORT child and waiting for it (``ort_checks_s``: proof batches, constant
    cross-checks, less what runs while the next batch is built) over the other tools' whole
    fold. Where that alone is above a limit, the goal cannot be met without hiding more of
    the ORT checks. None when no row carries the measurement."""
    def floor(other: str, keep: Any = lambda m: True) -> dict[str, float]:
        out = {}
        for row in rows:
            res, theirs = row["tools"].get(FOLD) or {}, median_of(row["tools"].get(other))
            if "error" not in res and res.get("ort_checks_s") and theirs and keep(row["model"]):
                out[row["model"]] = float(res["ort_checks_s"]) / theirs
        return out

    vs_script = floor("onnxscript")
    if not vs_script:
        return None
    share = {row["model"]: row["tools"][FOLD]["ort_checks_s"] / median_of(row["tools"][FOLD])
             for row in rows if row["model"] in vs_script and median_of(row["tools"][FOLD])}
    mean = geomean(list(vs_script.values()))
    over = sorted((m for m, r in vs_script.items() if r > MAX_LIMIT), key=vs_script.get)
    worst = max(vs_script.items(), key=lambda kv: kv[1])
    text = (f"waiting for the ORT checks (bnfold's time in its ORT child's commands, "
            f"{geomean(list(share.values())):.0%} of its fold time, geometric mean): over "
            f"onnxscript's whole fold {mean:.2f} geometric mean "
            f"({'above' if mean > GEOMEAN_LIMIT else 'within'} the {GEOMEAN_LIMIT} goal), "
            f"above {MAX_LIMIT} on {len(over)} of {len(vs_script)} models (worst {worst[1]:.2f}, "
            f"{worst[0]})")
    vs_ort = floor("ort_basic", is_resnet50)
    if vs_ort:
        text += "; over ort_basic on ResNet-50: " + ", ".join(f"{m} {r:.2f}"
                                                               for m, r in vs_ort.items())
    return text


def cli_goals(cli: dict[str, Any] | None) -> list[Goal]:
    """The CLI wall-time and peak-RSS goals from ``cli_runs.compare_cli`` results."""
    if not cli or "commands" not in cli:
        return [Goal("CLI fold / onnxslim CLI on ResNet-50", None, CLI_LIMIT, "run with --cli"),
                Goal("peak RSS / size, verifying", None, RSS_VERIFY_LIMIT, "run with --cli"),
                Goal("peak RSS / size, --no-verify", None, RSS_NO_VERIFY_LIMIT, "run with --cli")]
    cmds, size = cli["commands"], cli["size_mb"]

    def wall(name: str) -> float | None:
        c = cmds.get(name)
        return None if not c or "error" in c else c["median_wall_s"]

    def rss(name: str) -> tuple[float | None, str]:
        c = cmds.get(name)
        if not c or "error" in c:
            return None, (c or {}).get("error", "not run")
        return (c["peak_tree_mb"] / size,
                f"tree sum {c['peak_tree_mb']:.0f} MB, largest process {c['peak_single_mb']:.0f} MB "
                f"({c['peak_single_mb'] / size:.2f}x), model {size:.0f} MB")

    fold, slim = wall("bnfold fold"), wall("onnxslim")
    ratio = fold / slim if fold is not None and slim is not None else None
    nv = wall("bnfold fold --no-verify")
    detail = (f"{cli['model']}: {fold:.2f} s vs {slim:.2f} s" if ratio is not None else cli["model"])
    if nv is not None and slim is not None:
        detail += f"; --no-verify {nv:.2f} s = {nv / slim:.2f}x"
    verify_rss, verify_detail = rss("bnfold fold")
    plain_rss, plain_detail = rss("bnfold fold --no-verify")
    return [Goal("CLI fold / onnxslim CLI on ResNet-50", ratio, CLI_LIMIT, detail),
            Goal("peak RSS / size, verifying", verify_rss, RSS_VERIFY_LIMIT, verify_detail),
            Goal("peak RSS / size, --no-verify", plain_rss, RSS_NO_VERIFY_LIMIT, plain_detail)]


def format_goals(goals: list[Goal]) -> str:
    """Markdown: goal | measured | limit | verdict | how."""
    lines = ["| goal | measured | limit | verdict | measured on |", "|---|---:|---:|---|---|"]
    for g in goals:
        value = "-" if g.verdict == "not measured" else f"{g.value:.2f}"
        lines.append(f"| {g.name} | {value} | <= {g.limit:g} | {g.verdict} | {g.detail} |")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "err"
    ms = seconds * 1000.0
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def format_model_table(rows: list[dict[str, Any]], tools: list[str]) -> str:
    """Markdown, one line per model: median ms of every tool, bnfold's ratio to each other
    tool, BN left per tool, and the outputs ORT refused or computed wrong."""
    others = [t for t in tools if t != FOLD]
    head = (["model", "MB", "BN"] + [f"{t} ms" for t in tools] + [f"fold / {t}" for t in others]
            + ["BN left (" + " / ".join(t for t in tools if t != "loadsave") + ")", "notes"])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for row in rows:
        res = row["tools"]
        ours = median_of(res.get(FOLD))
        cells = [row["model"], f"{row['size_mb']:.1f}", str(row["bn"])]
        cells += [_ms(median_of(res.get(t))) for t in tools]
        for t in others:
            theirs = median_of(res.get(t))
            cells.append(f"{ours / theirs:.2f}" if ours is not None and theirs is not None else "-")
        cells.append(" / ".join(str(res.get(t, {}).get("bn_left", "-")) for t in tools if t != "loadsave"))
        cells.append("; ".join(_notes(res)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _notes(res: dict[str, dict[str, Any]], tol: float = 1e-3) -> list[str]:
    """Crashes, outputs ORT cannot load, outputs that differ from the original."""
    out = []
    for tool, r in res.items():
        if "error" in r:
            out.append(f"{tool}: {r['error'][:60]}")
        elif r.get("ort_ok") is False:
            out.append(f"{tool}: ORT refuses output")
        elif r.get("max_rel_err", 0.0) > tol:
            out.append(f"{tool}: wrong output (rel err {r['max_rel_err']:.1e})")
    return out


def format_cli_table(cli: dict[str, Any]) -> str:
    """Markdown: CLI command | median wall s | x onnxslim | peak RSS tree / largest process."""
    size = cli["size_mb"]
    slim = cli["commands"].get("onnxslim", {}).get("median_wall_s")
    lines = [f"CLI on {cli['model']} ({size:.0f} MB), {cli['rounds']} interleaved rounds, fresh "
             "process each (interpreter start included):", "",
             "| command | median wall s | x onnxslim | peak RSS MB, process tree (x size) "
             "| peak RSS MB, largest process (x size) |", "|---|---:|---:|---:|---:|"]
    for name, c in cli["commands"].items():
        if "error" in c:
            lines.append(f"| {name} | {c['error']} | | | |")
            continue
        ratio = f"{c['median_wall_s'] / slim:.2f}" if slim else "-"
        lines.append(f"| {name} | {c['median_wall_s']:.2f} | {ratio} | {c['peak_tree_mb']:.0f} "
                     f"({c['peak_tree_mb'] / size:.2f}x) | {c['peak_single_mb']:.0f} "
                     f"({c['peak_single_mb'] / size:.2f}x) |")
    return "\n".join(lines)
