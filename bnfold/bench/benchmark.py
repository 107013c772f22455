"""``bnfold.benchmark``: paired latency of an original model and its folded twin on ORT."""
from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from bnfold.bench.result import BenchResult, build_config_result
from bnfold.bench.runner import Progress, RunConfig, Runner, VariantRun
from bnfold.errors import BnfoldError, InputError
from bnfold.inputs import ShapeRequest, TensorSpec, check_signatures, graph_inputs
from bnfold.ort import OPT_LEVELS, provider_chain


def check_provider(provider: str) -> None:
    """Raise BnfoldError unless ``provider`` is known and present in this onnxruntime build."""
    provider_chain(provider)


def check_same_signature(variants: Sequence[tuple[str, str]]) -> list[TensorSpec]:
    """The first model's input specs; InputError unless every model takes its inputs (names,
    dtypes, fixed dims) and gives its outputs, as ``verify`` checks: so a mismatch is one line,
    not an ORT error."""
    from bnfold.io.model_io import load_model

    first_name, first_path = variants[0]
    first = load_model(first_path, load_external_data=False)
    for name, path in variants[1:]:
        other = load_model(path, load_external_data=False)
        try:
            check_signatures(first, other)
        except InputError as exc:
            raise InputError(f"{name} ({path}) does not fit {first_name} ({first_path}): {exc}"
                             ) from exc
        for a, b in zip(graph_inputs(first), graph_inputs(other)):
            fixed = [(i, da, db) for i, (da, db) in enumerate(zip(a.shape or (), b.shape or ()))
                     if isinstance(da, int) and isinstance(db, int) and da != db]
            if fixed:
                i, da, db = fixed[0]
                raise InputError(f"{name} ({path}) does not fit {first_name} ({first_path}): "
                                 f"input {a.name!r} has size {db} on axis {i}, not {da}")
    return graph_inputs(first)


def _validate(opt_levels: Sequence[str], threads: Sequence[int], warmup: int, runs: int) -> None:
    bad = [lv for lv in opt_levels if lv not in OPT_LEVELS]
    if bad or not opt_levels:
        raise BnfoldError(f"unknown optimization level {bad}; choose from {', '.join(OPT_LEVELS)}")
    if runs < 2:
        raise BnfoldError("runs must be at least 2 (stdev and the speedup interval need pairs)")
    if warmup < 0 or any(t < 0 for t in threads):
        raise BnfoldError("warmup and threads must be >= 0 (threads 0 = onnxruntime default)")


def measure_variants(variants: Sequence[tuple[str, str]], *, providers: Sequence[str] = ("cpu",),
                     opt_levels: Sequence[str] = ("disabled", "basic", "all"),
                     threads: Sequence[int] = (1,), batch_sizes: Sequence[int | None] = (None,),
                     warmup: int = 10, runs: int = 100,
                     shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
                     dims: Mapping[str, int] | Sequence[str] | None = None,
                     processes: int = 1, isolate: bool = True, allow_spinning: bool = False,
                     seed: int = 0, confidence: float = 0.95,
                     progress: Progress | None = None) -> BenchResult:
    """Time named model files over the grid; speedups are relative to the first variant.

    Every variant gets the same inputs, generated from the first model's declared inputs under
    ``bnfold.inputs``' shape policy: ``shapes`` ("NAME:DIMS") and ``dims`` ("SYMBOL=N") fix them,
    a batch of None is the model's fixed batch (else 1), and a symbolic dim left open is an
    InputError (no size is guessed).
    ``processes`` > 1 splits the rounds over that many fresh sets of worker processes;
    session creation time is then the median over the sets.
    """
    if len(variants) < 2:
        raise BnfoldError("need at least two models to compare")
    _validate(opt_levels, threads, warmup, runs)
    if not 1 <= processes <= runs:
        raise BnfoldError("processes must be between 1 and the number of runs")
    for p in providers:
        check_provider(p)
    for name, path in variants:
        if not os.path.isfile(path):
            raise InputError(f"model file not found: {path} ({name})")
    specs = check_same_signature(variants)
    request = ShapeRequest.of(shapes, dims)
    request.check(specs)
    asked = [b for b in batch_sizes if b is not None]
    batches = [b if b is not None else request.fixed_batch(specs) or 1
               for b in request.batches(specs, asked, default=[1])]
    inputs = {b: request.feed(specs, b, seed) for b in dict.fromkeys(batches)}
    configs = [RunConfig(p, lv, t, b) for p, lv, t, b
               in itertools.product(providers, opt_levels, threads, dict.fromkeys(batches))]
    collected = {cfg: [VariantRun(name, 0.0, []) for name, _ in variants] for cfg in configs}
    creates: dict[RunConfig, list[list[float]]] = {cfg: [] for cfg in configs}
    chunks = [runs // processes + (1 if i < runs % processes else 0) for i in range(processes)]
    for p_i, chunk in enumerate(chunks, 1):
        # fresh worker processes per chunk: a process's own memory layout and core
        # placement can bias it by several percent; K process sets average that out
        with Runner(variants, isolate=isolate, allow_spinning=allow_spinning) as runner:
            for k, cfg in enumerate(configs, 1):
                if progress:
                    where = f" (process set {p_i}/{processes})" if processes > 1 else ""
                    progress(f"[{k}/{len(configs)}] {cfg.label()}{where}: {warmup} warm-up + "
                             f"{chunk} timed rounds")
                measured = runner.measure(cfg, inputs[cfg.batch], warmup=warmup, runs=chunk,
                                          progress=progress)
                creates[cfg].append([m.create_ms for m in measured])
                for acc, m in zip(collected[cfg], measured):
                    acc.samples_ms.extend(m.samples_ms)
    results = []
    for cfg in configs:
        for i, acc in enumerate(collected[cfg]):
            acc.create_ms = float(np.median([c[i] for c in creates[cfg]]))
        results.append(build_config_result(cfg, collected[cfg], confidence=confidence, seed=seed))
    settings: dict[str, Any] = {"warmup": warmup, "runs": runs, "processes": processes,
                                "isolate": isolate, "allow_spinning": allow_spinning,
                                "confidence": confidence, "seed": seed,
                                "order": "interleaved A B B A (rotated when > 2 models)",
                                "io_binding": True, "shapes": {k: list(v) for k, v in request.shapes.items()},
                                "dims": dict(request.dims)}
    return BenchResult(models=dict(variants), configs=results, settings=settings)


def benchmark(original: Any, folded: Any = None, **options: Any) -> BenchResult:
    """Paired latency of ``original`` vs ``folded`` (paths or ModelProtos) on ONNX Runtime.

    With ``folded=None`` the original is folded on the fly with ``bnfold.fold``. Options are
    those of :func:`measure_variants` (providers, opt_levels, threads, batch_sizes, warmup,
    runs, shapes, dims, processes, isolate, allow_spinning, seed, confidence, progress).
    """
    progress: Progress | None = options.get("progress")
    request = ShapeRequest.of(options.get("shapes"), options.get("dims"))  # bad flags fail before the fold
    options.update(shapes=dict(request.shapes), dims=dict(request.dims))
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as tmp:
        orig_path = _as_path(original, os.path.join(tmp, "original.onnx"))
        fold_info = None
        if folded is None:
            from bnfold.folding import fold

            if progress:
                progress(f"folding {orig_path} with bnfold.fold")
            res = fold(orig_path if not isinstance(original, onnx.ModelProto) else original)
            fold_info = {"bn_before": res.bn_before, "bn_after": res.bn_after}
            folded = res.model
        fold_path = _as_path(folded, os.path.join(tmp, "folded.onnx"))
        result = measure_variants([("original", orig_path), ("folded", fold_path)], **options)
    result.fold = fold_info
    if isinstance(original, onnx.ModelProto):
        result.models["original"] = "<in-memory model>"
    if not isinstance(folded, (str, os.PathLike)):
        result.models["folded"] = "<folded in memory>" if fold_info else "<in-memory model>"
    return result


def _as_path(model: Any, tmp_path: str) -> str:
    """A file path ORT can open: the given path, or ``model`` written to ``tmp_path``.

    ``save_model`` picks external data when the model is too big for one protobuf file.
    """
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    if isinstance(model, onnx.ModelProto):
        from bnfold.io.model_io import save_model

        save_model(model, tmp_path, overwrite=True)
        return tmp_path
    raise BnfoldError(f"expected a model path or onnx.ModelProto, got {type(model).__name__}")
