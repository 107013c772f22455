"""Plain-text rendering of fold results for the terminal (or a pipe)."""
from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI starts ORT's child before the fold engine is imported
    from bnfold.folding.report import FoldResult

_HEAD = ("BN", "graph", "outcome", "into / reason")
_ARROWS = {"backward": "<- backward", "forward": "-> forward", "reparam": "<> reparam"}


def _reason(r) -> str:  # noqa: ANN001 - a FoldRecord
    why = r.reason.code if r.reason else "?"
    return f"{why}: {r.detail}" if r.detail else f"{why}: {r.reason.value}"


def proof_cell(max_abs: float | None, tol: float | None, engine: str) -> str:
    """A fold's local proof error against its tolerance, e.g. '4.8e-06 <= 1.2e-03'."""
    if max_abs is None:
        return "-"
    where = "" if engine == "onnxruntime" else f" ({engine})"
    return f"{max_abs:.2g} <= {tol:.2g}{where}" if tol is not None else f"{max_abs:.2g}{where}"


def fold_table(result: FoldResult, *, width: int | None = None) -> str:
    """One row per BN: where it went (and which way) with its local proof error, or why it
    stayed; then totals.

    Nothing is cut: with ``width`` (a terminal's columns) long reasons wrap under their column,
    without it (a pipe, a file) each row is one line, whole.
    """
    rows = [_HEAD]
    for r in result.records:
        if r.folded:
            arrow = _ARROWS.get(r.direction or "", "-> forward")
            proof = proof_cell(r.proof_max_abs, r.proof_tol, r.proof_engine)
            into = r.target or ""
            if r.merged:
                into += f" (merged {' + '.join(r.merged)})"
            rows.append((r.bn, r.graph, f"folded {arrow}",
                         f"{into}  (proof {proof})" if proof != "-" else into))
        else:
            rows.append((r.bn, r.graph, "kept", _reason(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    indent = sum(widths) + 2 * 3
    room = None if width is None else max(width - indent, 30)
    lines = []
    for i, row in enumerate(rows):
        head = "  ".join(c.ljust(w) for c, w in zip(row[:3], widths))
        last = [row[3]] if room is None else (textwrap.wrap(row[3], room) or [""])
        lines.append(f"{head}  {last[0]}".rstrip())
        lines.extend(" " * indent + more for more in last[1:])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(_HEAD[3]))
    lines.append("")
    if not result.records:
        lines = ["no BatchNormalization nodes: nothing to fold"]
    else:
        lines.append(f"BatchNormalization: {result.bn_before} before -> {result.bn_after} after "
                     f"({len(result.folded)} folded, {len(result.kept)} kept)")
    return "\n".join(lines)


def terminal_width() -> int | None:
    """The terminal's columns when stdout is a terminal, else None (print whole lines)."""
    import shutil
    import sys

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None
