"""Plain-text rendering of fold results for the terminal."""
from __future__ import annotations

from bnfold.fold.report import FoldResult


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fold_table(result: FoldResult, *, verbose: bool = False) -> str:
    """One row per BN: where it went (and which way), or why it stayed; then totals."""
    rows = [("BN", "graph", "outcome", "into / reason")]
    for r in result.records:
        if r.folded:
            arrow = "<- backward" if r.direction == "backward" else "-> forward"
            rows.append((r.bn, r.graph, f"folded {arrow}", r.target or ""))
        else:
            why = r.reason.code if r.reason else "?"
            text = f"{why}: {r.detail}" if r.detail else f"{why}: {r.reason.value}"
            rows.append((r.bn, r.graph, "kept", text if verbose else _cut(text, 90)))
    widths = [min(max(len(row[i]) for row in rows), 40) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        cells = [_cut(c, w).ljust(w) for c, w in zip(row[:3], widths)]
        lines.append("  ".join(cells + [row[3]]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 13)
    lines.append("")
    lines.append(f"BatchNormalization: {result.bn_before} before -> {result.bn_after} after "
                 f"({len(result.folded)} folded, {len(result.kept)} kept)")
    return "\n".join(lines)
