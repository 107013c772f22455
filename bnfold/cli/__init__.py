"""The ``bnfold`` command: a click group; each command lives in its own module here."""
from __future__ import annotations

import os
import sys
from typing import Any

import click

from bnfold.errors import BnfoldError, first_line

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class _Group(click.Group):
    """One stderr line per failure, never a traceback: BnfoldError (bad input or usage) and
    OSError/MemoryError (the machine) exit 2; any other exception is a bug in bnfold and
    exits 3 saying so (BNFOLD_DEBUG=1 re-raises it for the traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BnfoldError as exc:
            click.echo(f"bnfold: error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("bnfold: interrupted", err=True)
            ctx.exit(130)
        except (OSError, MemoryError) as exc:  # disk full, permissions, out of memory
            if os.environ.get("BNFOLD_DEBUG"):
                raise
            click.echo(f"bnfold: error: {type(exc).__name__}: {first_line(exc, empty='')}", err=True)
            ctx.exit(EXIT_USAGE)
        except Exception as exc:  # a bug: never a traceback for users; BNFOLD_DEBUG=1 shows it
            if os.environ.get("BNFOLD_DEBUG"):
                raise
            click.echo(f"bnfold: internal error: {type(exc).__name__}: {first_line(exc, empty='')} "
                       "(a bug in bnfold, please report it; BNFOLD_DEBUG=1 shows the traceback)",
                       err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bnfold")
def main() -> None:
    """bnfold: fold BatchNormalization away in ONNX models, verify, benchmark.

    \b
    Examples:
      bnfold inspect models/resnet_digits.onnx
      bnfold fold models/resnet_digits.onnx -o /tmp/resnet.folded.onnx
      bnfold fold model.onnx --json > fold.json
    """


def _register() -> None:
    from bnfold.cli.fold import fold_cmd, inspect_cmd

    main.add_command(fold_cmd)
    main.add_command(inspect_cmd)
    from bnfold.cli.bench import bench_cmd

    main.add_command(bench_cmd)
    from bnfold.cli.verify import verify_cmd

    main.add_command(verify_cmd)
    from bnfold.cli.export import export_cmd

    main.add_command(export_cmd)
    from bnfold.cli.recalibrate import recalibrate_cmd

    main.add_command(recalibrate_cmd)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
