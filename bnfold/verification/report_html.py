"""Single self-contained HTML report: inline CSS, the histogram as a base64 PNG, no network."""
from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING

from bnfold.verification import tables
from bnfold.verification.plot import error_histogram_png

if TYPE_CHECKING:
    from bnfold.verification.report import Report

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
.verdict{display:inline-block;padding:.3em .8em;border-radius:4px;color:#fff;font-weight:bold}
.pass{background:#2e7d32}.fail{background:#c62828}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.FAIL{color:#c62828;font-weight:bold}td.pass{color:#2e7d32}
code{background:#f6f6f6;padding:0 .2em}img{max-width:100%}
"""


def table_html(t: tables.Table) -> str:
    """A titled <table> with a data-table id so tests and scripts can find it."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in t.headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="{esc(c)}">{esc(c)}</td>' if c in ("pass", "FAIL")
                         else f"<td>{esc(c)}</td>" for c in row) + "</tr>"
        for row in t.rows)
    return (f'<h2>{esc(t.title)}</h2>\n<table data-table="{esc(t.key)}">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n")


def render_html(report: Report) -> str:
    """The complete HTML document."""
    esc = html.escape
    ok = report.passed
    png = error_histogram_png(report.errors)
    plot = (f'<h2>Error histogram</h2>\n<img alt="error histogram" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">\n'
            if png else "<h2>Error histogram</h2>\n<p>Not available (matplotlib is not installed "
                        "or there was nothing to plot).</p>\n")
    note = f"<p><em>{esc(report.localization_note)}</em></p>\n" if report.localization_note else ""
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>bnfold verify: {'PASSED' if ok else 'FAILED'}</title><style>{_CSS}</style></head><body>",
        f"<h1>bnfold verify <span class=\"verdict {'pass' if ok else 'fail'}\">"
        f"{'PASSED' if ok else 'FAILED'}</span></h1>",
        f"<p>{esc(report.summary())}</p>",
        f"<p>original: <code>{esc(report.original)}</code><br>"
        f"folded: <code>{esc(report.folded)}</code></p>",
        note,
        *(table_html(t) for t in tables.results(report)),
        plot,
        *(table_html(t) for t in tables.context(report)),
        "</body></html>\n",
    ]
    return "\n".join(parts)
