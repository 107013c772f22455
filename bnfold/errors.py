"""The one exception family a user can cause; the CLI turns it into one stderr line and exit 2."""
from __future__ import annotations


class BnfoldError(Exception):
    """Bad input or usage: the message says what is wrong and what to do about it."""


class InputError(BnfoldError):
    """The model file (or another input) cannot be used as given."""


class OutputError(BnfoldError):
    """The output cannot be written where asked."""
