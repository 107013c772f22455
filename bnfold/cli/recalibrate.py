"""``bnfold recalibrate``: re-estimate BN statistics from data; optionally fold the result."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from bnfold.cli import EXIT_VERIFY_FAILED
from bnfold.cli.options import shape_options
from bnfold.errors import OutputError
from bnfold.pipeline import VerifyOptions, default_output, fold_file


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        click.echo(msg, err=True)


def _check_output(model: Path, out: Path) -> None:
    """Refuse, before any work, an output that is the input or cannot be written."""
    if out.exists() and model.exists() and os.path.samefile(model, out):
        raise OutputError(f"{out}: is the input model; write the recalibrated model elsewhere")
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; give a file name")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{out}: folder '{folder}' does not exist")


@click.command("recalibrate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Inputs to measure on: an .npz (one array per input) or a folder of .npy "
                   "files (memory-mapped: any size).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where to write the recalibrated model (BN kept, statistics replaced).")
@click.option("--momentum", type=click.FloatRange(0, 1),
              help="Blend each batch into the old statistics with this momentum instead of "
                   "measuring them afresh (see --convention).")
@click.option("--cumulative", is_flag=True,
              help="Average per-batch statistics with equal weight, as PyTorch's update_bn "
                   "(momentum=None) does [default: pooled statistics of all the data].")
@click.option("--convention", type=click.Choice(["pytorch", "onnx"]), default="pytorch",
              show_default=True,
              help="pytorch: unbiased variance, momentum weighs the batch; onnx: biased "
                   "variance, momentum weighs the old value.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Samples per ONNX Runtime run [default: each array or file whole].")
@click.option("--max-batches", type=click.IntRange(min=1), help="Stop after this many batches.")
@click.option("--fold", "do_fold", is_flag=True,
              help="Also fold the recalibrated model (with its verification).")
@click.option("--folded-output", type=click.Path(path_type=Path),
              help="With --fold: where to write the folded model [default: OUTPUT.folded.onnx].")
@shape_options(" With --fold: for its verification.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.json and report.md (per BN: old/new statistics, shift).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
def recalibrate_cmd(model: Path, data: Path, output: Path, momentum: float | None,
                    cumulative: bool, convention: str, batch_size: int | None,
                    max_batches: int | None, do_fold: bool, folded_output: Path | None,
                    shapes: tuple[str, ...], dims: tuple[str, ...], report_dir: Path | None,
                    as_json: bool, quiet: bool) -> None:
    """Re-estimate the running mean and variance of every BN from DATA.

    Each BN is measured in inference mode with the BNs before it already recalibrated (one
    pass over the data per BN level), in float64 with an exact merge across batches. Use it
    after weight averaging, pruning or a change of input domain, before folding.

    \b
    Examples:
      bnfold recalibrate model.onnx --data calib.npz -o model.recal.onnx
      bnfold recalibrate model.onnx --data calib_npy/ -o m.onnx --batch-size 64 --fold
      bnfold recalibrate model.onnx --data calib.npz -o m.onnx --cumulative --report recal/
    """
    from bnfold.io.output_paths import same_file
    from bnfold.recalibration import recalibrate

    if momentum is not None and cumulative:
        raise click.UsageError("use either --momentum or --cumulative, not both")
    folded_path = (folded_output or default_output(output)) if do_fold else None
    for out in [output] + ([folded_path] if folded_path else []):
        _check_output(model, out)
    if folded_path is not None and same_file(folded_path, output):
        raise OutputError(f"{folded_path}: is the recalibrated model (-o); give --folded-output "
                          "another name")
    mode = "cumulative" if cumulative else "momentum" if momentum is not None else "pooled"
    _say(f"recalibrating {model} on {data} ({mode})", quiet)
    result = recalibrate(model, data, mode=mode, momentum=momentum, convention=convention,
                         batch_size=batch_size, max_batches=max_batches,
                         progress=None if quiet else lambda m: click.echo(m, err=True))
    from bnfold.io.model_io import save_model

    written = save_model(result.model, output, overwrite=True)
    _say(f"wrote {', '.join(written)}", quiet)
    if report_dir is not None:
        _say(f"wrote {', '.join(result.write(report_dir))}", quiet)
    payload = {"input": str(model), "output": str(output), **result.to_dict(arrays=False)}
    passed = True
    if do_fold:
        _say("folding the recalibrated model", quiet)
        folded = fold_file(output, folded_path, verify=VerifyOptions(shapes=shapes, dims=dims),
                           keep_model=False)
        fold, report, passed = folded.fold, folded.report, folded.passed
        payload["fold"] = {**fold.to_dict(), "output": str(folded_path),
                           "verification": json.loads(report.to_json())}
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(result.to_markdown().split("\n", 2)[2].rstrip())
        if do_fold:
            from bnfold.cli.render import fold_table, terminal_width

            click.echo("")
            click.echo(fold_table(fold, width=terminal_width()))
            click.echo(f"wrote {folded_path}")
            click.echo(report.summary())
    if not passed:
        click.get_current_context().exit(EXIT_VERIFY_FAILED)
