"""The one exception family a user can cause; the CLI turns it into one stderr line and exit 2."""
from __future__ import annotations


class BnfoldError(Exception):
    """Bad input or usage: the message says what is wrong and what to do about it."""


class InputError(BnfoldError):
    """The model file (or another input) cannot be used as given."""


class OutputError(BnfoldError):
    """The output cannot be written where asked."""


def first_line(exc: BaseException, *, empty: str | None = None) -> str:
    """The first line of ``exc``'s message, for a one-line report (onnx, ONNX Runtime and torch
    put pages of context after it); ``empty`` (default: the exception's type name) when the
    message is blank."""
    lines = str(exc).strip().splitlines()
    if lines:
        return lines[0].strip()
    return type(exc).__name__ if empty is None else empty
