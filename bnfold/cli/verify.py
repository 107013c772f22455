"""``bnfold verify``: prove a folded model computes what the original does, on ONNX Runtime."""
from __future__ import annotations

import click

from bnfold.cli.options import shape_options
from bnfold.ort import OPT_LEVELS, PROVIDERS

EXIT_OK, EXIT_FAILED = 0, 1


@click.command("verify")
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("folded", type=click.Path(dir_okay=False))
@click.option("--provider", "providers", multiple=True, type=click.Choice(list(PROVIDERS)),
              default=("cpu",), show_default=True,
              help="Execution provider to compare on (repeatable); cuda/tensorrt need onnxruntime-gpu.")
@click.option("--opt-level", type=click.Choice(OPT_LEVELS), default="disabled", show_default=True,
              help="ORT graph optimisation level for both models (disabled tests the fold alone).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the random inputs: feeds use SEED, SEED+1, SEED+2.")
@shape_options()
@click.option("--batch-size", "batch_sizes", multiple=True, type=click.IntRange(min=1),
              help="Batch size to try when the batch dim is symbolic (repeatable; every seed runs "
                   "at each) [default: one feed per seed, at batch 1, 2, 1: batch 2 shows errors "
                   "that couple the samples of a batch as well as a larger one].")
@click.option("--data", "data", multiple=True, type=click.Path(dir_okay=False),
              help="Inputs from an .npz (keys = input names; repeatable) instead of random data.")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Class labels (.npy) for --data: also report both models' accuracy.")
@click.option("--atol", type=click.FloatRange(min=0), help="Absolute tolerance [default: per dtype].")
@click.option("--rtol", type=click.FloatRange(min=0), help="Relative tolerance [default: per dtype].")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write report.json, report.md and report.html into this directory.")
@click.option("--no-localize", is_flag=True, help="On failure, skip finding the diverging BN fold.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def verify_cmd(original: str, folded: str, providers: tuple[str, ...], opt_level: str, seed: int,
               shapes: tuple[str, ...], dims: tuple[str, ...], batch_sizes: tuple[int, ...],
               data: tuple[str, ...],
               labels: str | None, atol: float | None, rtol: float | None,
               report_dir: str | None, no_localize: bool, as_json: bool, quiet: bool) -> None:
    """Compare every output of FOLDED against ORIGINAL on ONNX Runtime.

    Exit 0 when all outputs are within tolerance, 1 when not (the first diverging tensor and the
    BN fold responsible are named), 2 on bad input (different signatures, unreadable .npz,
    unavailable provider).

    \b
    Examples:
      bnfold verify model.onnx model.folded.onnx
      bnfold verify model.onnx model.folded.onnx --shape input:1x3x224x224 --report out/
      bnfold verify bert.onnx bert.folded.onnx --dim sequence=128 --batch-size 2
      bnfold verify models/resnet_digits.onnx /tmp/resnet.folded.onnx \\
          --data models/digits_test.npz --labels models/digits_test_labels.npy
      bnfold verify a.onnx b.onnx --provider cuda --opt-level all --json > verify.json
    """
    from bnfold.verification import verify

    if not quiet:
        click.echo(f"verifying {folded} against {original} on {', '.join(providers)} "
                   f"(ORT optimisations: {opt_level})", err=True)
    report = verify(original, folded, providers=providers, opt_level=opt_level, seed=seed,
                    shapes=list(shapes), dims=list(dims), batch_sizes=list(batch_sizes) or None,
                    data=list(data) or None, labels=labels, atol=atol, rtol=rtol,
                    localize_failures=not no_localize)
    if report_dir:
        paths = report.write(report_dir)
        if not quiet:
            click.echo(f"report written: {', '.join(map(str, paths))}", err=True)
    if as_json:
        click.echo(report.to_json())
    else:
        click.echo(report.summary())
        for c in report.checks:
            m = c.metrics
            click.echo(f"  {'ok  ' if c.passed else 'FAIL'} {c.case} | {c.output} {c.shape} "
                       f"max_abs={m.max_abs:.3g} peak_rel={m.peak_rel:.3g} cos={m.cosine:.6f}"
                       + ("" if m.top1_agreement is None else f" top1={m.top1_agreement:.2%}"))
        if report.accuracy is not None:
            acc = report.accuracy
            click.echo(f"  accuracy on {acc.samples} samples: original {acc.original:.2%}, "
                       f"folded {acc.folded:.2%}, same prediction {acc.agreement:.2%}")
        if report.localization is not None:
            click.echo(f"  localised: {report.localization.explanation}")
        elif report.localization_note:
            click.echo(f"  {report.localization_note}")
    click.get_current_context().exit(EXIT_OK if report.passed else EXIT_FAILED)
