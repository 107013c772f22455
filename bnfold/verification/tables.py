"""The report's tables as (title, headers, rows) of strings, shared by the Markdown and HTML views."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnfold.verification.report import Report


@dataclass(frozen=True)
class Table:
    """A titled table of already formatted cells."""

    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    key: str  # stable id: "environment", "tolerances", "output:<name>", "fold", ...


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def environment(report: Report) -> Table:
    rows = [(k, str(v)) for k, v in report.environment.items()]
    return Table("Environment", ("item", "value"), rows, "environment")


def cases(report: Report) -> Table:
    rows = [(c.name, c.provider, c.source,
             ", ".join(f"{k}: {v}" for k, v in c.input_shapes.items()), c.engine)
            for c in report.cases]
    return Table("Cases", ("case", "provider", "inputs from", "input shapes", "engine"), rows,
                 "cases")


def tolerances(report: Report) -> Table:
    rows = [(dtype, f"{t['atol']:g}", f"{t['rtol']:g}") for dtype, t in report.tolerances().items()]
    rows.append(("int*/bool", "0", "0"))
    return Table("Tolerances (|folded - original| <= atol + rtol * max|original|, per output)",
                 ("dtype", "atol", "rtol"), rows, "tolerances")


def output_tables(report: Report) -> list[Table]:
    """One table per model output, a row per case."""
    headers = ("case", "dtype", "shape", "max abs", "max rel", "rel to peak", "mean abs",
               "cosine", "top-1 agree", "atol", "rtol", "mismatched",
               "float64 truth error (original / folded)", "result")
    tables = []
    for out in report.outputs:
        rows = []
        for c in (c for c in report.checks if c.output == out):
            m = c.metrics
            rows.append((c.case, c.dtype, c.shape, _g(m.max_abs), _g(m.max_rel), _g(m.peak_rel),
                         _g(m.mean_abs), f"{m.cosine:.9f}",
                         "-" if m.top1_agreement is None else f"{m.top1_agreement:.2%}",
                         f"{c.atol:g}", f"{c.rtol:g}", f"{m.mismatched}/{m.size}",
                         "-" if c.truth is None else
                         f"{c.truth.original_error:.3g} / {c.truth.folded_error:.3g}", c.status))
        tables.append(Table(f"Output {out}", headers, rows, f"output:{out}"))
    return tables


def localization(report: Report) -> Table | None:
    loc = report.localization
    if loc is None:
        return None
    rows = [("first diverging tensor", loc.tensor), ("produced by", f"{loc.op_type} {loc.node}"),
            ("BN fold responsible", loc.bn or "none"), ("fold direction", loc.direction or "-"),
            ("max abs there", _g(loc.max_abs)), ("rel to peak there", _g(loc.peak_rel)),
            ("tensors compared", str(loc.checked)), ("why", loc.explanation)]
    return Table("Localisation", ("item", "value"), rows, "localization")


def accuracy(report: Report) -> Table | None:
    acc = report.accuracy
    if acc is None:
        return None
    rows = [(acc.output, str(acc.samples), f"{acc.original:.2%}", f"{acc.folded:.2%}",
             f"{acc.agreement:.2%}")]
    return Table("Accuracy on labelled data", ("output", "samples", "original", "folded",
                                               "same prediction"), rows, "accuracy")


def fold(report: Report) -> Table | None:
    """The per-BN fold table from the fold step, when the report verifies a fold."""
    if report.fold is None:
        return None
    rows = [(r["bn"], r.get("graph", ""), "folded" if r.get("folded") else "kept",
             r.get("target") or "-", r.get("direction") or "-",
             _g(r.get("proof_max_abs")), _g(r.get("proof_tol")), r.get("proof_engine") or "-",
             r.get("reason_text") or "-", r.get("detail") or "")
            for r in report.fold.get("records", [])]
    return Table(f"BatchNormalization folds ({report.fold.get('bn_before', len(rows))} BN -> "
                 f"{report.fold.get('bn_after', '?')} left; each fold proved locally)",
                 ("BN", "graph", "outcome", "into", "direction", "proof max abs",
                  "proof tolerance", "proof engine", "reason kept", "detail"), rows, "fold")


NO_FOLD_TABLE = ("This report compares two given models, so it has no per-BN fold table: that "
                 "table is in reports written by `bnfold fold --report`. "
                 "`bnfold inspect ORIGINAL` shows what a fold of the original would do.")


def fold_note(report: Report) -> Table | None:
    """Where the fold table is, when the report verifies two files rather than a fold."""
    if report.fold is not None:
        return None
    return Table("BatchNormalization folds", ("note",), [(NO_FOLD_TABLE,)], "fold-note")


def notes(report: Report) -> Table | None:
    """What the verdict rests on beyond the tolerance rule: engines, truth, exclusions, crashes,
    and how symbolic input dims were sized."""
    found = ([report.crash] if report.crash else []) + report.notes
    rows = [(n,) for n in found + ([report.input_size] if report.input_size else [])]
    return Table("Notes", ("note",), rows, "notes") if rows else None


def results(report: Report) -> list[Table]:
    """What the verdict rests on, first: notes, each output's checks, tolerances, the
    localisation of a failure and accuracy (absent sections skipped)."""
    found = [notes(report), *output_tables(report), tolerances(report), localization(report),
             accuracy(report)]
    return [t for t in found if t is not None]


def context(report: Report) -> list[Table]:
    """What was folded and run, after the results: fold table (or where to find it), cases,
    environment."""
    found = [fold(report) or fold_note(report), cases(report), environment(report)]
    return [t for t in found if t is not None]


def all_tables(report: Report) -> list[Table]:
    """Every table in report order: verdict-related results, then fold table, cases,
    environment."""
    return results(report) + context(report)
