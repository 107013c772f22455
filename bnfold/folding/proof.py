"""Local proof of every fold: the original neighbourhood against its folded replacement.

For each folded BN the nodes the fold replaced (producer, bias Add, BN; or BN and consumer),
with the nodes computing their constant parameters, are cut from the original model, and the
nodes now computing the same output from the same activation input are cut from the folded
model (``region.py``). Both run on ONNX Runtime (CPU, graph optimizations disabled, so ORT
does not fuse the BN itself) on two seeded random draws of the real shapes, and must agree
within ``atol + rtol * peak`` of the output dtype, in float64. A region that fails is checked
against a float64 ground truth of the original: a fold at least as close to it as the
original passes (the original's own rounding is no fold error). All regions of a model and
their replacements go into one proof model (side by side, reading the same draws), so a model
costs one session, not two per BN (more past ``_BATCH_REGIONS`` or ``_BATCH_BYTES``);
where that batch cannot run, each region runs alone, on ``onnx.reference`` where ORT has no
kernel for its dtype. Folds whose proof fails are undone by the caller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterator, NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.folding.region import (Region, RegionError, Scope, cut, merged_region,
                                replaced, scopes)
from bnfold.folding.report import FoldRecord, Reason
from bnfold.graph.index import GraphKey, ValueInfo, subgraphs, value_infos
from bnfold.verification.compare import abs_errors, default_tolerance, region_precision
from bnfold.verification.ort_child import draws, pair_errors, trim_heap
from bnfold.verification.shared import SharedArrays
from bnfold.verification.shared_child import shared_process

Key = tuple[str, str]  # (graph path, BN output tensor)
SEEDS = (0, 1)
# weight bytes per batched proof pair: bounds the ORT child's memory, which holds a batch's
# weights mapped while the parent holds the model (the peak of ``bnfold fold``). ResNet-50 (93 MB
# of weights, so 186 MB proven): peak of bnfold + child 351 MB at 64 MB, 315 at 32, 297 at 16
# and 8 (the child's own ~65 MB then dominates), the proofs no slower at 16 (paired runs)
_BATCH_BYTES = 16 << 20
# regions per batch: ORT's session creation grows faster than its node count (1.0 s for 1,500
# regions, 6.5 s for 4,500), so batches stay small enough to keep the proofs linear
_BATCH_REGIONS = 256
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_FED = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
_FED_BYTES = 64 << 10  # initializers larger than this are fed to the batched proof, not parsed
_LOW = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class Proof:
    """One region's verdict: worst |folded - original|, the output peak, the tolerance."""

    passed: bool
    max_abs: float | None = None
    peak: float | None = None
    tol: float | None = None
    engine: str = ""
    detail: str = ""
    reason: Reason = Reason.PROOF_FAILED  # why the fold is undone when the proof fails


@dataclass
class _Group:
    keys: list[Key]
    original: Region | None = None
    folded: Region | None = None
    error: str = ""


def prove(original: onnx.ModelProto, folded: onnx.ModelProto, records: list[FoldRecord], *,
          original_base: str | None = None, folded_base: str | None = None,
          original_infos: dict[GraphKey, ValueInfo] | None = None) -> dict[Key, Proof]:
    """The proof of every folded record, by (graph path, BN output). ``original_infos``:
    ``value_infos(original)`` when the caller has it."""
    todo = [r for r in records if r.folded]
    if not todo:
        return {}
    if original_infos is None:
        original_infos = value_infos(original)
    o_scopes = scopes(original, original_infos)
    f_scopes = scopes(folded, {})
    for path, found in f_scopes.items():
        for f, o in zip(found, o_scopes.get(path, [])):
            f.shapes, f.dtypes = o.shapes, o.dtypes
    groups = _groups(todo, o_scopes, f_scopes, original_base, folded_base)
    proofs: dict[Key, Proof] = {}
    ready = [g for g in groups if not g.error]
    for g in groups:
        if g.error:
            proofs.update({k: Proof(False, detail=f"not proven: {g.error}") for k in g.keys})
    proc = shared_process()  # ORT in a child: a segfault on a region is not bnfold's death
    # freed memory back to the system before the child maps each batch, while this process
    # holds the folded model: first the fold's temporaries (float64 math, weights' bytes before
    # they went into the proto), then each batch's feeds and outputs. glibc keeps them in the
    # heap otherwise. ResNet-50, peak of bnfold + child: 296 -> 256 MB without verification
    trim_heap()
    for chunk, found in _run_chunks(_chunks(ready), original, proc):
        for g, proof in zip(chunk, found):
            proofs.update({k: proof for k in g.keys})
    return proofs


def _groups(records: list[FoldRecord], o_scopes: dict[str, list[Scope]],
            f_scopes: dict[str, list[Scope]], o_base: str | None,
            f_base: str | None) -> list[_Group]:
    """Folds whose replaced nodes overlap (chained folds) are proved together, as one region."""
    groups: list[_Group] = []
    by_scope: dict[tuple[str, int], list[tuple[FoldRecord, list, str, str]]] = {}
    for r in records:
        key = (r.graph, r.bn_output)
        found = [(i, s) for i, s in enumerate(o_scopes.get(r.graph, []))
                 if r.bn_output in s.producer]
        if not found:
            groups.append(_Group([key], error="the BN is not in the original graph"))
            continue
        i, scope = found[0]
        try:
            if r.direction == "reparam":
                folded = f_scopes.get(r.graph, [])
                if i >= len(folded):
                    raise RegionError("the graph is not in the folded model")
                nodes, front, out = merged_region(scope, folded[i], r.bn_output, r.target or "")
            else:
                nodes, front, out = replaced(scope, r.bn_output, r.target or "",
                                             r.direction or "", (r.region_nodes, r.region_inputs))
        except RegionError as exc:
            groups.append(_Group([key], error=str(exc)))
            continue
        by_scope.setdefault((r.graph, i), []).append((r, nodes, front, out))
    for (path, i), members in by_scope.items():
        o_scope, f_scope = o_scopes[path][i], f_scopes[path][i]
        for part in _overlapping(members):
            groups.append(_cut_group(part, o_scope, f_scope, o_base, f_base))
    return groups


def _overlapping(members: list) -> list[list]:
    """Partition fold members into sets whose replaced nodes share a node (union-find over
    node ids: linear in the folds, where comparing each with every set was quadratic)."""
    parent = list(range(len(members)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, m in enumerate(members):
        for n in m[1]:
            j = owner.setdefault(id(n), i)
            if j != i:
                parent[root(i)] = root(j)
    parts: dict[int, list] = {}
    for i, m in enumerate(members):
        parts.setdefault(root(i), []).append(m)
    return list(parts.values())


def _cut_group(part: list, o_scope: Scope, f_scope: Scope, o_base: str | None,
               f_base: str | None) -> _Group:
    keys = [(r.graph, r.bn_output) for r, *_ in part]
    nodes = {id(n): n for _, ns, _, _ in part for n in ns}.values()
    read = {x for n in nodes for x in n.input}
    made = {x for n in nodes for x in n.output}
    outputs = list(dict.fromkeys(o for *_, outs in part for o in outs if o not in read))
    frontier = list(dict.fromkeys(f for _, _, fs, _ in part for f in fs if f not in made))
    readers = {f: next(n for n in nodes if f in n.input) for f in frontier}
    try:
        original = cut(o_scope, outputs, frontier, readers, o_base)
        return _Group(keys, original, cut(f_scope, outputs, frontier, readers, f_base, original))
    except RegionError as exc:
        return _Group(keys, error=str(exc))
    except (OSError, ValueError) as exc:  # external data that cannot be read for the proof
        return _Group(keys, error=f"cannot read a weight: {exc}")


def _chunks(groups: list[_Group]) -> list[list[_Group]]:
    """Batches of at most ``_BATCH_BYTES`` of weights and ``_BATCH_REGIONS`` regions."""
    chunks: list[list[_Group]] = [[]]
    size = 0
    for g in groups:
        n = g.original.nbytes() + g.folded.nbytes()
        if chunks[-1] and (size + n > _BATCH_BYTES or len(chunks[-1]) >= _BATCH_REGIONS):
            chunks.append([])
            size = 0
        chunks[-1].append(g)
        size += n
    return [c for c in chunks if c]


@dataclass
class _Batch:
    """One chunk's proof model, its fed weights and what its draws are; once collected, the
    child's results per draw: the outputs (float16/bfloat16 regions, judged against a float32
    truth here) or each region output's errors (``pair_errors``, measured in the child: no
    arrays cross the pipe either way but these); None when the batch could not be built or
    run (its regions then run alone)."""

    chunk: list[_Group]
    weights: SharedArrays | None = None
    pair: onnx.ModelProto | None = None
    specs: list[tuple[str, list[int], str]] = field(default_factory=list)
    outs: list[Any] | None = None
    sent: bool = False

    @property
    def feeds(self) -> list[dict]:
        """The draws the child made, made again (for the calls that need them here)."""
        return [draws(seed, self.specs) for seed in SEEDS]

    @property
    def low(self) -> bool:
        """Whether a region has float16/bfloat16 outputs (judged on the outputs themselves)."""
        return any(d in _LOW for g in self.chunk for _, d in g.original.outputs)

    def output_pairs(self) -> list[tuple[str, str]]:
        return [(f"o{i}_{o}", f"f{i}_{o}") for i, g in enumerate(self.chunk)
                for o, _ in g.original.outputs]


def _run_chunks(chunks: list[list[_Group]], model: onnx.ModelProto,
                proc: Any) -> Iterator[tuple[list[_Group], list[Proof]]]:
    """Each chunk with its proofs, in order. The child runs one chunk's batch while this
    process builds the next one's and judges the one before (the two overlap on two cores:
    ResNet-50 has 14 chunks); a region that needs the child again (a failed batch or verdict,
    a float16 truth) waits until nothing is in flight."""
    before: _Batch | None = None
    batch: _Batch | None = None
    try:
        for chunk in [*chunks, None]:
            batch = _build(chunk, model) if chunk is not None else None
            if before is not None:
                _collect(before, proc)
            if batch is not None:
                _submit(batch, proc)
            if before is not None:
                found = _judge_batch(before)
                if any(p is None for p in found) or before.low:
                    if batch is not None:
                        _collect(batch, proc)  # the child is idle for the calls that follow
                    found = _settle(before, found, model, proc)
                yield before.chunk, [p for p in found if p is not None]
                trim_heap()
            before = batch
    finally:  # left early (an error, an interrupt): nothing stays in flight or on disk
        for left in (before, batch):
            if left is not None:
                _collect(left, proc)
                if left.weights is not None:
                    left.weights.close()


def _build(chunk: list[_Group], model: onnx.ModelProto) -> _Batch:
    """The chunk as one model holding every original region and its folded replacement side
    by side (``_pair``), with its weights file and seeded draws."""
    batch = _Batch(chunk, SharedArrays())
    try:
        batch.pair = _pair(chunk, model, batch.weights)
        batch.specs = _draw_specs(batch.pair, skip=batch.weights)
    except Exception:  # noqa: BLE001 - any failure of the batch: isolate region by region
        batch.weights.close()
        batch.pair, batch.weights = None, None
    return batch


def _submit(batch: _Batch, proc: Any) -> None:
    """Hand the batch to the child (ORT, CPU, no graph optimizations) without waiting."""
    if batch.pair is None:
        return
    try:
        outputs = ([o.name for o in batch.pair.graph.output] if batch.low
                   else ("errors", batch.output_pairs()))
        proc.submit("a fold's proof region", "once", batch.pair.SerializeToString(),
                    ["CPUExecutionProvider"], "disabled", batch.weights.spec(),
                    ("draws", list(SEEDS), batch.specs), outputs)
        batch.sent = True
    except Exception:  # noqa: BLE001 - a child that died: the regions run alone
        batch.weights.close()


def _collect(batch: _Batch, proc: Any) -> None:
    """The child's outputs of a submitted batch (once; None when it failed)."""
    if not batch.sent:
        return
    batch.sent = False
    try:
        batch.outs = proc.collect("a fold's proof region")[1]
    except Exception:  # noqa: BLE001 - any failure of the batch: isolate region by region
        batch.outs = None
    finally:
        batch.weights.close()


def _pairs(batch: _Batch) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per region of the batch: (original, folded) outputs for each draw (outputs sent back)."""
    return [[(out[f"o{i}_{o}"], out[f"f{i}_{o}"]) for out in batch.outs or []
             for o, _ in g.original.outputs] for i, g in enumerate(batch.chunk)]


class _Seen(NamedTuple):
    """What ``_judge`` reads of an output the child measured: its dtype and shape."""

    dtype: np.dtype
    shape: tuple[int, ...]


def _judge_batch(batch: _Batch) -> list[Proof | None]:
    """Each region's verdict from the batch's results, None where the child is needed again
    (no results, or a region that failed: it runs alone)."""
    if batch.outs is None:
        return [None] * len(batch.chunk)
    every: list[list[tuple[Any, Any]]] = []
    stats: list[list[tuple[float, float] | None]] = []
    if batch.low:  # the outputs came back: measured here
        every = _pairs(batch)
        found = iter(_errors([p for pairs in every for p in pairs]))
        stats = [[next(found) for _ in pairs] for pairs in every]
    else:  # measured in the child: per draw, each output pair's errors and shapes
        k = 0
        for g in batch.chunk:
            dtypes = [np.dtype(helper.tensor_dtype_to_np_dtype(d)) for _, d in g.original.outputs]
            measured = [(dt, *draw[k + j]) for draw in batch.outs for j, dt in enumerate(dtypes)]
            every.append([(_Seen(dt, tuple(r)), _Seen(dt, tuple(c)))
                          for dt, _, r, c in measured])
            stats.append([s for _, s, _, _ in measured])
            k += len(dtypes)
    verdicts: list[Proof | None] = []
    for pairs, found_stats in zip(every, stats):
        proof = _judge(pairs, "onnxruntime", found_stats)
        verdicts.append(proof if proof.passed else None)
    return verdicts


def _settle(batch: _Batch, found: list[Proof | None], model: onnx.ModelProto,
            proc: Any) -> list[Proof]:
    """The verdicts that need the child: regions run alone, and float16/bfloat16 regions
    judged against the float32 truth of the batch's draws."""
    truths = None
    every = [[] for _ in batch.chunk]
    if batch.outs is not None and batch.low:
        truths = _float32_truth(proc, _model([g.original for g in batch.chunk], model),
                                batch.feeds, {})
        every = _pairs(batch)
    out = []
    for i, (g, proof, pairs) in enumerate(zip(batch.chunk, found, every)):
        if proof is None:
            proof = _run_alone(g, model, proc)
        elif truths is not None:
            names = [f"r{i}_{o}" for o, _ in g.original.outputs]
            proof = _precision(proof, pairs, [t[n] for t in truths for n in names])
        out.append(proof)
    return out


def _run_alone(g: _Group, model: onnx.ModelProto, proc: Any) -> Proof:
    try:
        o_model, f_model = _model([g.original], model), _model([g.folded], model)
        feeds = [_feeds(o_model, seed) for seed in SEEDS]
    except Exception as exc:  # noqa: BLE001 - an unbuildable region is an unproven fold
        return Proof(False, detail=f"not proven: the proof model cannot be built: {exc}")
    errors = []
    for engine, run in (("onnxruntime", partial(_run_ort, proc)),
                        ("onnx.reference", _run_reference)):
        try:
            outs = run(o_model, f_model, feeds)
        except Exception as exc:  # noqa: BLE001 - try the next engine, then report both
            errors.append(f"{engine}: {str(exc).strip().splitlines()[0] if str(exc) else exc}")
            continue
        names = [f"r0_{o}" for o, _ in g.original.outputs]
        proof = _judge([(o[n], f[n]) for o, f in outs for n in names], engine)
        if proof.passed:
            truths = _float32_truth(proc, o_model, feeds, {})
            if truths is None:
                return proof
            return _precision(proof, [(o[n], f[n]) for o, f in outs for n in names],
                              [t[n] for t in truths for n in names])
        return _against_truth(proof, o_model, feeds, [(o[n], f[n]) for o, f in outs
                                                      for n in names])
    return Proof(False, detail="not proven: no engine runs the region: " + "; ".join(errors))


_errors = pair_errors  # (original, folded) pairs -> (max |difference|, max finite |original|)


def _judge(pairs: list[tuple[np.ndarray, np.ndarray]], engine: str,
           stats: list[tuple[float, float] | None] | None = None) -> Proof:
    """Pass when every pair agrees within its dtype's ``atol + rtol * peak``; ``stats``: the
    pairs' ``_errors`` when measured already."""
    worst, peak, tol, ok = 0.0, 0.0, 0.0, True
    for (ref, cand), found in zip(pairs, stats or _errors(pairs)):
        if found is None:
            return Proof(False, engine=engine, detail=f"shape {cand.shape} != {ref.shape}")
        d, p = found
        atol, rtol = default_tolerance(ref.dtype)
        ok = ok and d <= atol + rtol * p
        worst, peak, tol = max(worst, d), max(peak, p), max(tol, atol + rtol * p)
    detail = "" if ok else (f"max abs error {worst:.3g} > tolerance {tol:.3g} "
                            f"(output peak {peak:.3g}, {engine})")
    return Proof(ok, worst, peak, tol, engine, detail)


def _against_truth(proof: Proof, o_model: onnx.ModelProto, feeds: list[dict],
                   pairs: list[tuple[np.ndarray, np.ndarray]]) -> Proof:
    """A fold at least as close to the float64 truth as the original is no fold error."""
    try:
        from bnfold.graph.onnx_reference import evaluator

        wide = _to_float64(o_model)
        ev = evaluator(wide)
        names = [o.name for o in wide.graph.output]
        truth = [t for f in feeds for t in ev.run(names, {k: np.asarray(v, np.float64)
                                                          for k, v in f.items()})]
    except Exception:  # noqa: BLE001 - no truth: the plain comparison stands
        return proof
    if any(not np.shape(t) == np.shape(o) == np.shape(f) for t, (o, f) in zip(truth, pairs)):
        return proof  # a shape differs (ORT and onnx.reference disagree): no truth to judge by
    err_o = max(float(abs_errors(t, np.asarray(o, np.float64)).max(initial=0.0))
                for t, (o, _) in zip(truth, pairs))
    err_f = max(float(abs_errors(t, np.asarray(f, np.float64)).max(initial=0.0))
                for t, (_, f) in zip(truth, pairs))
    if err_f <= max(err_o, proof.tol or 0.0):
        return Proof(True, proof.max_abs, proof.peak, proof.tol, proof.engine + "+float64 truth",
                     f"folded is closer to the float64 truth ({err_f:.3g}) than the "
                     f"original ({err_o:.3g})")
    return Proof(False, proof.max_abs, proof.peak, proof.tol, proof.engine,
                 f"{proof.detail}; float64 truth: folded off by {err_f:.3g}, original by "
                 f"{err_o:.3g}")


def _float32_truth(proc: Any, o_model: onnx.ModelProto, feeds: list[dict],
                   weights: dict[str, np.ndarray] | SharedArrays) -> list[dict] | None:
    """The original proof model's outputs computed in float32, when it has float16/bfloat16
    outputs (else, or when it cannot run, None): the truth ``_precision`` judges by."""
    if not any(o.type.tensor_type.elem_type in _LOW for o in o_model.graph.output):
        return None
    from bnfold.verification.truth import widened_model

    def wide(values: dict | SharedArrays) -> dict:
        if isinstance(values, SharedArrays):
            values = values.arrays()
        return {k: v.astype(np.float32) if _narrow(v) else v for k, v in values.items()}

    key = "proof-truth"
    try:
        wide_model = widened_model(o_model, onnx.TensorProto.FLOAT)
        proc.load(key, wide_model.SerializeToString(), "a fold's proof region in float32",
                  ["CPUExecutionProvider"], "disabled", fixed=wide(weights))
        names = [o.name for o in wide_model.graph.output]
        try:
            return [proc.run(key, wide(f), names) for f in feeds]
        finally:
            proc.drop(key)
    except Exception:  # noqa: BLE001 - no truth: the plain comparison stands
        return None


def _narrow(a: np.ndarray) -> bool:
    return a.dtype == np.float16 or a.dtype.name == "bfloat16"


def _precision(proof: Proof, pairs: list[tuple[np.ndarray, np.ndarray]],
               truths: list[np.ndarray]) -> Proof:
    """A passing low-precision proof fails when the folded region is markedly less accurate than
    the original against the float32 truth, element by element (``compare.precision_check``):
    exact in real arithmetic, a fold can still lose digits to cancellation in float16."""
    checks = [c for (o, f), t in zip(pairs, truths) if (c := region_precision(o, f, t))]
    worst = max(checks, key=lambda c: c.folded - c.limit, default=None)
    if worst is None or worst.passed:
        return proof
    return Proof(False, proof.max_abs, proof.peak, proof.tol, proof.engine + "+float32 truth",
                 f"the folded region loses precision: {worst.describe()}",
                 Reason.PRECISION_LOSS)


def _model(regions: list[Region], source: onnx.ModelProto,
           weights: SharedArrays | None = None, tag: str = "r") -> onnx.ModelProto:
    """One standalone model holding ``regions`` side by side: activation inputs named r<i>_,
    every other tensor <tag><i>_ (see ``_add``)."""
    model = _empty(source)
    inputs, outputs = _add(model.graph, regions, tag, weights)
    return _finish(model, source, inputs, outputs)


def _pair(chunk: list[_Group], source: onnx.ModelProto,
          weights: SharedArrays) -> onnx.ModelProto:
    """One model running every original region (tensors o<i>_) and its folded replacement
    (f<i>_) on the same activation inputs (r<i>_): one ORT session and one run per draw for
    the whole chunk, each draw handed to the child once. The kernels and their inputs are
    those of separate models (no graph optimization runs), so are the outputs."""
    model = _empty(source)
    inputs, outputs = _add(model.graph, [g.original for g in chunk], "o", weights)
    f_inputs, f_outputs = _add(model.graph, [g.folded for g in chunk], "f", weights)
    fed = set(weights)
    drawn = {v.name for v in inputs if v.name not in fed}
    if {v.name for v in f_inputs if v.name not in fed} != drawn:
        # separate models would then refuse the draws of the original: run region by region
        raise RegionError("a folded region reads other activations than its original")
    inputs += [v for v in f_inputs if v.name in fed]
    return _finish(model, source, inputs, outputs + f_outputs)


def _empty(source: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto(ir_version=source.ir_version)
    model.graph.name = "bnfold_proof"
    return model


def _finish(model: onnx.ModelProto, source: onnx.ModelProto, inputs: list, outputs: list,
            ) -> onnx.ModelProto:
    graph = model.graph
    if source.ir_version < 4:  # IR 3 lists every initializer as a graph input
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in graph.initializer]
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    model.opset_import.extend(source.opset_import)
    model.functions.extend(source.functions)
    return model


def _add(graph: onnx.GraphProto, regions: list[Region], tag: str,
         weights: SharedArrays | None) -> tuple[list, list]:
    """Copy ``regions`` into ``graph``: activation inputs renamed r<i>_, the rest <tag><i>_;
    return the graph inputs and outputs they need.

    With ``weights`` (a shared file to fill), large float initializers become graph inputs and
    their bytes go into ``weights`` to be fed: the model is then a few KB to serialize and for
    ORT to parse, and each weight is copied once, into the file the ORT child maps.
    """
    inputs, outputs = [], []
    for i, region in enumerate(regions):
        names = {n for node in region.nodes for n in node.output if n}
        names |= {t.name for t in region.initializers}
        rename = {n: f"{tag}{i}_{n}" for n in names}
        rename.update({n: f"r{i}_{n}" for n, _, _ in region.inputs})
        for node in region.nodes:
            copy = graph.node.add()
            copy.CopyFrom(node)
            if copy.name:
                copy.name = f"{tag}{i}_{copy.name}"
            _rename(copy, rename)
        for t in region.initializers:
            if (weights is not None and t.data_type in _FED
                    and math.prod(t.dims) * 2 > _FED_BYTES):
                weights.add_tensor(rename[t.name], t, region.base_dir)
                inputs.append(helper.make_tensor_value_info(rename[t.name], t.data_type,
                                                            list(t.dims)))
                continue
            copy = graph.initializer.add()
            copy.CopyFrom(region.inline(t))
            copy.name = rename[t.name]
        inputs += [helper.make_tensor_value_info(rename[n], d, s) for n, d, s in region.inputs]
        outputs += [helper.make_tensor_value_info(f"{tag}{i}_{n}", d, None)
                    for n, d in region.outputs]
    return inputs, outputs


def _rename(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    for names in (node.input, node.output):
        for j, n in enumerate(names):
            if n in rename:
                names[j] = rename[n]
    for _, sub in subgraphs(node):
        for inner in sub.node:
            _rename(inner, rename)
        for out in sub.output:
            if out.name in rename:
                out.name = rename[out.name]


def _feeds(model: onnx.ModelProto, seed: int,
           skip: SharedArrays | None = None) -> dict[str, np.ndarray]:
    """Seeded random activations for the graph inputs (not initializers, not fed weights)."""
    return draws(seed, _draw_specs(model, skip))


def _draw_specs(model: onnx.ModelProto,
                skip: SharedArrays | None = None) -> list[tuple[str, list[int], str]]:
    """(name, shape, dtype name) of the inputs ``_feeds`` draws, in the graph's order."""
    inits = {t.name for t in model.graph.initializer} | set(skip or ())
    return [(vi.name, [d.dim_value for d in vi.type.tensor_type.shape.dim],
             np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).name)
            for vi in model.graph.input if vi.name not in inits]


def _run_ort(proc: Any, o_model: onnx.ModelProto, f_model: onnx.ModelProto, feeds: list[dict],
             weights: tuple[Any, Any] = ({}, {})) -> list[tuple[dict, dict]]:
    """Both models on ORT in the child process ``proc``, one after the other, on each feed;
    ``weights`` are each model's initializers given as inputs (see ``_model``)."""
    originals = _run_keyed(proc, "proof-original", o_model, feeds, weights[0])
    return list(zip(originals, _run_keyed(proc, "proof-folded", f_model, feeds, weights[1])))


def _run_keyed(proc: Any, key: str, model: onnx.ModelProto, feeds: list[dict],
               weights: Any) -> list[dict]:
    """``model`` on ORT (CPU, no graph optimizations) in the child ``proc`` under ``key``: all
    its outputs for each feed; ``weights`` handed to the child once; the session dropped after."""
    proc.load(key, model.SerializeToString(), "a fold's proof region", ["CPUExecutionProvider"],
              "disabled", fixed=weights)
    names = [o.name for o in model.graph.output]
    try:
        return [proc.run(key, f, names) for f in feeds]
    finally:
        proc.drop(key)


def _run_reference(o_model: onnx.ModelProto, f_model: onnx.ModelProto,
                   feeds: list[dict]) -> list[tuple[dict, dict]]:
    from bnfold.graph.onnx_reference import evaluator

    evs = [evaluator(m) for m in (o_model, f_model)]
    names = [o.name for o in o_model.graph.output]
    return [tuple(dict(zip(names, (np.asarray(x) for x in ev.run(names, f)))) for ev in evs)
            for f in feeds]


def _to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same region with every float tensor, Cast and value in float64."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    g = wide.graph
    for i, t in enumerate(g.initializer):
        if t.data_type in _FLOATS:
            g.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type in _FLOATS:
            vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    del g.value_info[:]
    for node in g.node:
        for a in node.attribute:
            if a.name == "to" and node.op_type == "Cast" and a.i in _FLOATS:
                a.i = onnx.TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in _FLOATS:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t)
                                                     .astype(np.float64), a.t.name))
    return wide
