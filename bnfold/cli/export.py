"""``bnfold export``: PyTorch factory -> ONNX, every BN kept; ``--fold`` also folds and verifies."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bnfold.cli import EXIT_VERIFY_FAILED
from bnfold.cli.options import AliasedOption
from bnfold.cli.render import fold_table, terminal_width

if TYPE_CHECKING:
    from bnfold.exporting.exporter import ExportResult
    from bnfold.exporting.with_fold import ExportFoldResult


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        click.echo(msg, err=True)


def _export_lines(r: ExportResult) -> list[str]:
    verdict = "PASS" if r.ok else "FAIL"
    sizes = ", ".join(map(str, r.batch_sizes))
    return [f"exported {r.path}: opset {r.opset}, {r.bn_nodes} BatchNormalization kept "
            f"({r.bn_calls} BN calls in PyTorch), "
            f"{'dynamic' if r.dynamic_batch else 'static'} batch",
            f"ONNX Runtime vs PyTorch (batch {sizes}): max abs error {r.max_abs_error:.3g} "
            f"(tolerance {r.tolerance:.3g}): {verdict}"]


@click.command("export")
@click.argument("factory", metavar="MODULE:FACTORY")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the ONNX model (with BN).")
@click.option("--shape", "--input-shape", "input_shape", cls=AliasedOption, required=True,
              metavar="DIMS", help="Example input shape, e.g. 1x3x32x32 (float32, seeded random values).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="A state_dict saved with torch.save, loaded before export.")
@click.option("--opset", type=click.IntRange(min=18), help="ONNX opset [default: torch's].")
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True,
              help="Make the first input axis symbolic so any batch size runs.")
@click.option("--fold", "do_fold", is_flag=True,
              help="Also fold the export, verify the fold, and show PyTorch's own fusion.")
@click.option("--folded-output", type=click.Path(dir_okay=False, path_type=Path),
              help="With --fold: where to write the folded model [default: OUTPUT.folded.onnx].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True,
              help="Also say which BatchNorm modules the factory returned in training mode.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
def export_cmd(factory: str, output: Path, input_shape: str, weights: str | None,
               opset: int | None, dynamic_batch: bool, do_fold: bool, folded_output: Path | None,
               as_json: bool, verbose: bool, quiet: bool) -> None:
    """Export a PyTorch model to ONNX keeping every BatchNormalization (eval mode).

    MODULE:FACTORY names a callable returning a torch.nn.Module (the current directory is
    importable). The export is run on ONNX Runtime and compared with PyTorch; exit 1 if it
    differs or a BN was lost. The module is put in eval mode first (BN uses its running
    statistics); -v says which BatchNorm modules the factory returned in training mode.

    \b
    Examples:
      bnfold export models.zoo:resnet_digits --weights models/resnet_digits.pt \
          -o /tmp/resnet.onnx --shape 1x1x8x8 --fold
      bnfold export mypkg.nets:make_net --weights net.pt -o net.onnx --shape 1x3x32x32
      bnfold export models.zoo:mlp_digits -o /tmp/mlp.onnx --shape 1x64 --fold --json
    """
    from bnfold.exporting.exporter import batchnorm_modules, load_factory, require_torch
    from bnfold.inputs import parse_dims

    torch = require_torch()
    shape = parse_dims(input_shape, what="--shape", minimum=1)
    _say(f"building {factory}", quiet)
    model = load_factory(factory, weights)
    training = [name for name, m in batchnorm_modules(model) if m.training]
    model.eval()  # a CLI user cannot call model.eval(): inference export is what was asked for
    if training and verbose:
        _say(f"put {len(training)} BatchNorm module(s) in eval mode: {', '.join(training)}", quiet)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    _say("exporting (torch dynamo exporter, BN kept)", quiet)
    if do_fold:
        from bnfold.exporting.with_fold import export_and_fold

        result = export_and_fold(model, example, output, folded_output, opset=opset,
                                 dynamic_batch=dynamic_batch)
        exported, ok = result.export, result.ok
    else:
        from bnfold.exporting.exporter import export

        exported = export(model, example, output, opset=opset, dynamic_batch=dynamic_batch)
        ok = exported.ok
    if as_json:
        click.echo(json.dumps(result.to_dict() if do_fold else exported.to_dict(), indent=2))
    else:
        lines = _export_lines(exported)
        if do_fold:
            lines += ["", fold_table(result.fold, width=terminal_width()), f"wrote {result.folded_path}",
                      f"verify: {result.report.summary()}", ""] + _comparison_lines(result)
        click.echo("\n".join(lines))
    if not ok:
        click.get_current_context().exit(EXIT_VERIFY_FAILED)


def _comparison_lines(result: ExportFoldResult) -> list[str]:
    """bnfold's fold beside PyTorch's eval-mode fusion, both against unfused PyTorch."""
    t = result.torch
    fold = result.fold
    lines = ["fold vs PyTorch's own fusion (same input, error vs unfused PyTorch):",
             f"  bnfold fold        {fold.bn_before} -> {fold.bn_after} BN   "
             f"max abs error {result.bnfold_max_abs_error:.3g}"]
    if t.bn_after is None:
        lines.append(f"  torch fx fuse      not available: {t.note}")
    else:
        lines.append(f"  torch fx fuse      {t.bn_before} -> {t.bn_after} BN   "
                     f"max abs error {t.max_abs_error:.3g}")
    return lines
