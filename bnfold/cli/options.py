"""Options every command that runs a model spells the same way: ``--shape``, ``--dim``, ``--batch-size``.

``--shape NAME:DIMS`` fixes a whole input, ``--dim SYMBOL=N`` one named symbolic dim (the policy is
in ``bnfold.inputs``). Older spellings (``bench --batch``, ``export --input-shape``) keep working
as hidden aliases: ``AliasedOption`` shows only the first name in ``--help``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

SHAPE_HELP = "Shape of an input, e.g. input:1x3x224x224 (repeatable)."
DIM_HELP = "Size of a named symbolic input dimension, e.g. seq=128 (repeatable)."


class AliasedOption(click.Option):
    """An option whose names after the first are aliases: accepted, not shown in ``--help``."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        opts = self.opts
        self.opts = opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


def shape_options(note: str = "") -> Callable[[F], F]:
    """``--shape NAME:DIMS`` (into ``shapes``) and ``--dim SYMBOL=N`` (into ``dims``), both
    repeatable; ``note`` ends the help (e.g. " With --fold: for its verification.")."""
    def decorate(f: F) -> F:
        f = click.option("--dim", "dims", multiple=True, metavar="SYMBOL=N",
                         help=DIM_HELP + note)(f)
        return click.option("--shape", "shapes", multiple=True, metavar="NAME:DIMS",
                            help=SHAPE_HELP + note)(f)
    return decorate
