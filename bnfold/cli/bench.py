"""``bnfold bench``: paired latency of an original model and its folded twin."""
from __future__ import annotations

import json

import click

from bnfold.cli.options import AliasedOption, shape_options
from bnfold.ort import OPT_LEVELS, PROVIDERS


@click.command("bench")
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("folded", required=False, type=click.Path(dir_okay=False))
@click.option("--provider", "providers", multiple=True, type=click.Choice(list(PROVIDERS)),
              default=("cpu",), show_default=True, help="Execution provider (repeatable).")
@click.option("--opt-level", "opt_levels", multiple=True, type=click.Choice(OPT_LEVELS),
              default=("disabled", "basic", "all"), show_default=True,
              help="ORT graph optimization level (repeatable).")
@click.option("--threads", multiple=True, type=click.IntRange(min=0), default=(1,),
              show_default=True, help="Intra-op threads, 0 = ORT default (repeatable).")
@click.option("--batch-size", "--batch", "batches", cls=AliasedOption, multiple=True,
              type=click.IntRange(min=1),
              help="Batch size (repeatable) [default: the model's fixed batch, else 1].")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0),
              help="Untimed rounds before timing.")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(min=2),
              help="Timed interleaved rounds (each round runs every model once).")
@shape_options()
@click.option("--processes", default=1, show_default=True, type=click.IntRange(min=1),
              help="Split the rounds over this many fresh worker-process sets (averages out "
                   "per-process layout effects).")
@click.option("--same-process", is_flag=True,
              help="Run both sessions in one worker process instead of one each.")
@click.option("--allow-spinning", is_flag=True,
              help="Let ORT thread pools spin while idle (off: they would steal the other "
                   "model's cores).")
@click.option("--confidence", default=0.95, show_default=True, type=click.FloatRange(0.5, 0.999),
              help="Confidence level of the bootstrap interval of the speedup.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for inputs and bootstrap.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--samples", is_flag=True, help="With --json: include every timed latency.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a PNG of the latency distributions here.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def bench_cmd(original: str, folded: str | None, providers: tuple[str, ...],
              opt_levels: tuple[str, ...], threads: tuple[int, ...], batches: tuple[int, ...],
              warmup: int, runs: int, shapes: tuple[str, ...], dims: tuple[str, ...],
              processes: int, same_process: bool,
              allow_spinning: bool, confidence: float, seed: int, as_json: bool, samples: bool,
              plot_path: str | None, quiet: bool) -> None:
    """Paired latency of ORIGINAL vs FOLDED on ONNX Runtime.

    Without FOLDED, ORIGINAL is folded on the fly with bnfold.fold. Each model runs in
    its own process; timed rounds alternate A B B A so drift cancels. Reports p50/p90/p99,
    mean ± stdev, throughput, session creation time and the speedup (median ratio,
    >1 = folded is faster) with a paired bootstrap confidence interval.

    \b
    Examples:
      bnfold bench models/resnet_digits.onnx
      bnfold bench a.onnx a.folded.onnx --opt-level disabled --opt-level all --runs 300 --processes 3
      bnfold bench model.onnx --threads 1 --threads 2 --batch-size 1 --batch-size 8 --plot lat.png
      bnfold bench bert.onnx --dim sequence=128 --batch-size 4
      bnfold bench detector.onnx --shape images:1x3x640x640
      bnfold bench model.onnx --json --samples > bench.json
      bnfold bench model.onnx --provider cuda     # needs onnxruntime-gpu
    """
    from bnfold.bench import benchmark, check_provider

    for p in providers:
        check_provider(p)  # fail fast, before folding or spawning anything
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    result = benchmark(original, folded, providers=providers, opt_levels=opt_levels,
                       threads=threads, batch_sizes=batches or (None,), warmup=warmup, runs=runs,
                       shapes=shapes, dims=dims, processes=processes, isolate=not same_process,
                       allow_spinning=allow_spinning, seed=seed, confidence=confidence,
                       progress=progress)
    if plot_path:
        from bnfold.bench.plot import plot_latencies

        plot_latencies(result, plot_path)
        if not quiet:
            click.echo(f"plot written to {plot_path}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(samples=samples), indent=2))
        return
    if result.fold:
        click.echo(f"folded on the fly: {result.fold['bn_before']} BN -> {result.fold['bn_after']} BN")
    click.echo(result.table())
    click.echo(f"speedup = p50(original) / p50(folded); {int(confidence * 100)}% paired bootstrap "
               f"CI; {runs} rounds after {warmup} warm-up; {result.machine['cpu']}, "
               f"{result.machine['cores']} cores, onnxruntime {result.machine['onnxruntime']}")
