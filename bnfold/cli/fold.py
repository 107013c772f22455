"""``bnfold fold`` and ``bnfold inspect``: parse options, call the API, render the result."""
from __future__ import annotations

import json
from pathlib import Path

import click

import bnfold
from bnfold.cli import EXIT_VERIFY_FAILED
from bnfold.cli.options import shape_options
from bnfold.cli.progress import status_line
from bnfold.cli.render import fold_table, terminal_width
from bnfold.errors import BnfoldError
from bnfold.ort import OPT_LEVELS, PROVIDERS


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        click.echo(msg, err=True)


def _start_ort() -> None:
    """Start the ORT child the fold's proofs and the verification use, before the fold engine,
    onnx and numpy are imported here: its own ORT import (about 0.2 s) overlaps theirs, so it is
    ready when the first proof is sent (``bnfold fold`` on ResNet-50: about 0.25 s sooner)."""
    from bnfold.verification.shared_child import shared_process

    shared_process().start()


@click.command("fold")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write the folded model [default: MODEL.folded.onnx].")
@click.option("--in-place", is_flag=True, help="Overwrite MODEL (atomically) with the result.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store tensors in OUTPUT.data beside the model [default: as the input, or "
                   "when over 2 GiB].")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run onnx.checker and strict shape inference on the result.")
@click.option("--verify/--no-verify", "do_verify", default=True, show_default=True,
              help="Compare original and folded on ONNX Runtime; exit 1 if they differ.")
@click.option("--provider", "providers", multiple=True, type=click.Choice(list(PROVIDERS)),
              help="Execution provider(s) for --verify [default: cpu].")
@click.option("--opt-level", type=click.Choice(OPT_LEVELS), default="disabled",
              show_default=True, help="ORT graph optimization level for --verify.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the random inputs for --verify: feeds use SEED, SEED+1, SEED+2.")
@shape_options(" For --verify.")
@click.option("--batch-size", "batch_sizes", multiple=True, type=click.IntRange(min=1),
              help="Batch size to verify when the batch dim is symbolic (repeatable; every seed "
                   "runs at each) [default: one feed per seed, at batch 1, 2, 1: batch 2 shows "
                   "errors that couple the samples of a batch as well as a larger one].")
@click.option("--data", multiple=True, type=click.Path(dir_okay=False),
              help="Verify on inputs from .npz files (keys = input names) instead of random data.")
@click.option("--atol", type=click.FloatRange(min=0),
              help="Absolute tolerance [default: per dtype].")
@click.option("--rtol", type=click.FloatRange(min=0),
              help="Relative tolerance [default: per dtype].")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.json, report.md and report.html of the verification here.")
@click.option("--reparam/--no-reparam", default=True, show_default=True,
              help="Merge an Add of parallel Conv/BN/identity branches of one input (RepVGG, "
                   "ACNet, MobileOne) into one Conv after the BN folds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True,
              help="One line per BN even on a terminal (reasons are never cut; they wrap).")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress or messages on stderr (progress shows only on a terminal).")
def fold_cmd(model: Path, output: Path | None, in_place: bool, external_data: bool | None,
             check: bool, do_verify: bool, providers: tuple[str, ...], opt_level: str,
             seed: int, shapes: tuple[str, ...], dims: tuple[str, ...], batch_sizes: tuple[int, ...],
             data: tuple[str, ...], atol: float | None, rtol: float | None,
             report_dir: Path | None, reparam: bool, as_json: bool, verbose: bool,
             quiet: bool) -> None:
    """Fold BatchNormalization into neighbouring Conv/ConvTranspose/Gemm/MatMul layers.

    Writes the folded model and prints, for every BN, the node it went into (and the
    direction) or why it stayed. The input is never overwritten unless --in-place.
    Then verifies the folded model against the original on ONNX Runtime (graph
    optimizations disabled) and exits 1 if they differ beyond tolerance; the folded
    model is still written and the report says it failed (with --in-place the staged
    result is verified first, and MODEL is left unchanged when it fails).

    \b
    Examples:
      bnfold fold models/resnet_digits.onnx
      bnfold fold model.onnx -o model.nobn.onnx --json > fold.json
      bnfold fold big.onnx --external-data
      bnfold fold detector.onnx --shape images:1x3x640x640
      bnfold fold bert.onnx --dim batch=2 --dim sequence=128
    """
    if report_dir is not None and not do_verify:
        raise BnfoldError("--report needs --verify")
    _start_ort()
    from bnfold.pipeline import VerifyOptions, fold_file

    verify = VerifyOptions(providers=providers or ("cpu",), opt_level=opt_level, seed=seed,
                           shapes=shapes, dims=dims, batch_sizes=batch_sizes, data=data, atol=atol,
                           rtol=rtol, report_dir=report_dir) if do_verify else None
    status = status_line(quiet)

    def say(msg: str) -> None:
        if status is not None:
            status.clear()
        _say(msg, quiet)

    try:
        result = fold_file(model, output, in_place=in_place, external_data=external_data,
                           check=check, verify=verify, progress=status, say=say,
                           reparam=reparam, keep_model=False)
    finally:
        if status is not None:
            status.clear()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(fold_table(result.fold, width=None if verbose else terminal_width()))
        if result.report is not None:
            click.echo(result.report.summary())
    if not result.passed:
        click.get_current_context().exit(EXIT_VERIFY_FAILED)


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True,
              help="One line per BN even on a terminal (reasons are never cut; they wrap).")
def inspect_cmd(model: Path, as_json: bool, verbose: bool) -> None:
    """Show what `bnfold fold` would do to each BN, without writing anything.

    \b
    Examples:
      bnfold inspect models/resnet_digits.onnx
      bnfold inspect model.onnx --json | jq '.records[] | select(.folded | not)'
    """
    result = bnfold.inspect(model)
    if as_json:
        click.echo(json.dumps({"input": str(model), **result.to_dict()}, indent=2))
    else:
        click.echo(fold_table(result, width=None if verbose else terminal_width()))
