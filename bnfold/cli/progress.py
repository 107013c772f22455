"""A one-line status on stderr for long commands, shown only where a person watches it.

The fold and verify cores take a ``progress(message)`` callback and know nothing of terminals;
the CLI decides: on a terminal each message overwrites the last on one line, which is cleared
before anything else is printed; in a pipe, a file or with ``-q`` there is no callback at all.
"""
from __future__ import annotations

import sys
from typing import Callable, TextIO

_CLEAR = "\r\x1b[K"


class StatusLine:
    """Callable progress sink: rewrites one stderr line; ``clear()`` wipes it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.shown = stream, False

    def __call__(self, message: str) -> None:
        self.stream.write(f"{_CLEAR}{message} ...")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self.shown = False


def status_line(quiet: bool, stream: TextIO | None = None) -> StatusLine | None:
    """A StatusLine on ``stream`` (stderr) when it is a terminal and not ``quiet``, else None."""
    stream = stream if stream is not None else sys.stderr
    isatty: Callable[[], bool] = getattr(stream, "isatty", lambda: False)
    return StatusLine(stream) if not quiet and isatty() else None
