"""Markdown rendering of a verification report, for pasting into a pull request."""
from __future__ import annotations

from typing import TYPE_CHECKING

from bnfold.verification import tables

if TYPE_CHECKING:
    from bnfold.verification.report import Report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(t: tables.Table) -> str:
    """A GitHub-flavoured Markdown table under a level-3 heading."""
    lines = [f"### {t.title}", "", "| " + " | ".join(map(_cell, t.headers)) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def render_markdown(report: Report) -> str:
    """The whole report: verdict line, models compared, then every table (results first,
    environment last)."""
    verdict = "PASSED" if report.passed else "FAILED"
    head = [f"## bnfold verify: {verdict}", "", report.summary(), "",
            f"- original: `{report.original}`", f"- folded: `{report.folded}`", ""]
    if report.localization_note:
        head += [f"> {report.localization_note}", ""]
    body = "\n".join(table_markdown(t) + "\n" for t in tables.all_tables(report))
    return "\n".join(head) + "\n" + body
