"""Plain-text rendering of fold results for the terminal."""
from __future__ import annotations

from bnfold.fold.report import FoldResult


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def proof_cell(max_abs: float | None, tol: float | None, engine: str) -> str:
    """A fold's local proof error against its tolerance, e.g. '4.8e-06 <= 1.2e-03'."""
    if max_abs is None:
        return "-"
    where = "" if engine == "onnxruntime" else f" ({engine})"
    return f"{max_abs:.2g} <= {tol:.2g}{where}" if tol is not None else f"{max_abs:.2g}{where}"


def fold_table(result: FoldResult, *, verbose: bool = False) -> str:
    """One row per BN: where it went (and which way) with its local proof error, or why it
    stayed; then totals."""
    rows = [("BN", "graph", "outcome", "into / reason")]
    for r in result.records:
        if r.folded:
            arrow = "<- backward" if r.direction == "backward" else "-> forward"
            proof = proof_cell(r.proof_max_abs, r.proof_tol, r.proof_engine)
            rows.append((r.bn, r.graph, f"folded {arrow}",
                         f"{r.target or ''}  (proof {proof})" if proof != "-" else r.target or ""))
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
