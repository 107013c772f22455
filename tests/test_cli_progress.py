"""The CLI's status line: shown on a terminal, absent in a pipe or with -q."""
from __future__ import annotations

import io

from bnfold.cli.progress import StatusLine, status_line


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_on_a_terminal_rewrites_one_line_and_clears_it():
    tty = _Tty()
    status = status_line(False, tty)
    assert isinstance(status, StatusLine)
    status("folding BN 1 of 2")
    status("folding BN 2 of 2")
    status.clear()
    assert "\n" not in tty.getvalue()
    assert tty.getvalue().count("\r") == 3 and "folding BN 2 of 2" in tty.getvalue()


def test_no_status_line_in_a_pipe_or_when_quiet():
    assert status_line(False, io.StringIO()) is None
    assert status_line(True, _Tty()) is None
