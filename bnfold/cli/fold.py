"""``bnfold fold`` and ``bnfold inspect``: parse options, call the API, render the result."""
from __future__ import annotations

import json
from pathlib import Path

import click

import bnfold
from bnfold.cli import EXIT_VERIFY_FAILED
from bnfold.cli.progress import StatusLine, status_line
from bnfold.cli.render import fold_table, terminal_width
from bnfold.verify.runner import OPT_LEVELS, PROVIDERS
from bnfold.errors import BnfoldError
from bnfold.model_io import check_output_paths, stage_model


def default_output(path: Path) -> Path:
    """model.onnx -> model.folded.onnx, beside the input."""
    name = path.name[:-5] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{name}.folded.onnx")


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        click.echo(msg, err=True)


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
              help="Seed of the random inputs for --verify.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DIMS",
              help="Concrete shape of an input with symbolic dims, e.g. input:1x3x224x224.")
@click.option("--batch-size", "batch_sizes", multiple=True, type=click.IntRange(min=1),
              help="Batch sizes to verify when the batch dim is symbolic [default: 1 and 8].")
@click.option("--data", multiple=True, type=click.Path(dir_okay=False),
              help="Verify on inputs from .npz files (keys = input names) instead of random data.")
@click.option("--atol", type=click.FloatRange(min=0),
              help="Absolute tolerance [default: per dtype].")
@click.option("--rtol", type=click.FloatRange(min=0),
              help="Relative tolerance [default: per dtype].")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.json, report.md and report.html of the verification here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True,
              help="One line per BN even on a terminal (reasons are never cut; they wrap).")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress or messages on stderr (progress shows only on a terminal).")
def fold_cmd(model: Path, output: Path | None, in_place: bool, external_data: bool | None,
             check: bool, do_verify: bool, providers: tuple[str, ...], opt_level: str,
             seed: int, shapes: tuple[str, ...], batch_sizes: tuple[int, ...],
             data: tuple[str, ...], atol: float | None, rtol: float | None,
             report_dir: Path | None, as_json: bool, verbose: bool, quiet: bool) -> None:
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
    """
    if in_place and output is not None:
        raise BnfoldError("use either --in-place or -o/--output, not both")
    if report_dir is not None and not do_verify:
        raise BnfoldError("--report needs --verify")
    if do_verify:
        from bnfold.verify.runner import provider_chain

        for provider in providers:
            provider_chain(provider)  # an unavailable provider fails before any work is done
    options = {"providers": providers or ("cpu",), "opt_level": opt_level, "seed": seed,
               "shapes": list(shapes) or None, "batch_sizes": list(batch_sizes) or None,
               "data": list(data) or None, "atol": atol, "rtol": rtol}
    out = model if in_place else (output or default_output(model))
    inputs = check_output_paths(model, out, in_place=in_place, external_data=external_data)
    status = status_line(quiet)
    proc = None
    try:
        if do_verify:
            from bnfold.verify.api import probe_size
            from bnfold.verify.engines import OrtProcess

            proc = OrtProcess().start()
            # the sizes the original runs are found before any work (a model no size fits is refused)
            options["size"] = probe_size(model, proc, **{k: options[k] for k in (
                "shapes", "providers", "opt_level", "seed", "data")})
            options["proc"], options["progress"] = proc, status
        _say(f"loading and folding {model}", quiet)
        result = bnfold.fold(model, check=check, lazy_external=True, progress=status)
        _clear(status)
        for note in result.warnings:
            _say(f"warning: {note}", quiet)
        written = output is not None or result.bn_before > 0  # no BN: a copy only when asked
        if not written:
            _say(f"nothing written: {model} left unchanged" if in_place else
                 "nothing written (give -o OUT to write a copy anyway)", quiet)
        report = (_write_and_verify(model, out, result, inputs, in_place, external_data,
                                    do_verify, report_dir, options, quiet)
                  if written else None)
    finally:
        _clear(status)
        if proc is not None:
            proc.close()
    if as_json:
        payload = {"input": str(model), "output": str(out) if written else None,
                   **result.to_dict()}
        if report is not None:
            payload["verification"] = json.loads(report.to_json())
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(fold_table(result, width=None if verbose else terminal_width()))
        if report is not None:
            click.echo(report.summary())
    if report is not None and not report.passed:
        click.get_current_context().exit(EXIT_VERIFY_FAILED)


def _clear(status: StatusLine | None) -> None:
    if status is not None:
        status.clear()


def _write_and_verify(model: Path, out: Path, result: "bnfold.FoldResult", inputs: list,
                      in_place: bool, external_data: bool | None, do_verify: bool,
                      report_dir: Path | None, options: dict, quiet: bool):  # noqa: ANN202
    """Write the result atomically (with --in-place only after it verified) and verify it."""
    if external_data is None and len(inputs) > 1:  # the input has external data: so has the output
        external_data = True
    report = None
    with stage_model(result.model, out, overwrite=True, external_data=external_data,
                     source_dir=result.external_base,
                     protect=inputs[1:] if in_place else inputs) as staged:
        if do_verify and in_place:  # verify the staged files before they replace the input
            report = _verify(model, result, str(staged.path), out, report_dir, options, quiet)
        if report is not None and not report.passed:
            _say(f"verification failed: {model} left unchanged", quiet)
        else:
            _say(f"wrote {', '.join(staged.commit())}", quiet)
    if do_verify and not in_place:  # by path: ORT reads external data, so >2 GiB works too
        report = _verify(model, result, str(out), out, report_dir, options, quiet)
    return report


def _verify(original: Path, result: "bnfold.FoldResult", folded: object, out: Path,
            report_dir: Path | None, options: dict, quiet: bool):  # noqa: ANN202
    """Compare on ONNX Runtime; write the reports when asked."""
    from bnfold.verify import verify

    _say("verifying on ONNX Runtime", quiet)
    report = verify(original, folded, fold_result=result, **options)
    _clear(options.get("progress"))
    report.folded = str(out)
    if report_dir is not None:
        report.write(report_dir)
        _say(f"wrote reports to {report_dir}", quiet)
    return report


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
