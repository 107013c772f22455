"""fold(): run the fold rules on every graph to a fixed point and account for every BN."""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from bnfold.fold.bn import BnAffine, Refusal, label, read_bn
from bnfold.fold.check import check_folded
from bnfold.fold.report import FoldRecord, FoldResult, Reason
from bnfold.fold.rewrite import FoldOverflow, Rewriter, remove_orphans
from bnfold.fold.rules.backward import fold_backward
from bnfold.fold.rules.forward import fold_forward
from bnfold.graph import GraphIndex, subgraphs, walk_graphs
from bnfold.model_io import MIN_OPSET, check_model_proto, default_opset, load_model
from bnfold.shapes import infer
from bnfold.skeleton import skeleton

ModelLike = onnx.ModelProto | str | os.PathLike

__all__ = ["fold", "inspect", "FoldResult", "FoldRecord", "Reason"]


def fold(model: ModelLike, *, check: bool = True, copy: bool = True,
         lazy_external: bool = False) -> FoldResult:
    """Fold every BatchNormalization that can be folded exactly; say why for the others.

    ``model`` is a path (loaded with its external data) or a ModelProto (copied first unless
    ``copy=False``, in which case it is folded in place). With ``check`` the result must pass
    onnx.checker with strict shape inference; if it does not, the unchanged input is returned
    with CHECK_FAILED reasons (for ``copy=False`` a backup is kept for that purpose).

    ``lazy_external`` (paths only): leave external data on disk and read each weight when a
    fold needs it, so a multi-GB model is not held in memory. Folded weights become inline;
    the others still reference the model's folder, given as ``result.external_base``: save
    with ``save_model(result.model, out, source_dir=result.external_base)``.
    """
    base = _external_base(model) if lazy_external else None
    proto = _as_model(model, copy=copy, lazy=base is not None)
    backup = None
    if check and isinstance(model, onnx.ModelProto) and not copy:
        backup = onnx.ModelProto()
        backup.CopyFrom(proto)
    before = skeleton(proto) if check else None
    records, notes = _fold_model(proto, base)
    result = FoldResult(model=proto, records=records, warnings=notes, external_base=base)
    if before is not None and result.folded:
        problem = check_folded(before, proto)
        if problem:
            kept = backup if backup is not None else _as_model(model, copy=True,
                                                               lazy=base is not None)
            return FoldResult(model=kept, records=[_undo(r, problem) for r in records],
                              warnings=notes + [f"folded model failed its check: {problem}"],
                              external_base=base)
    return result


def inspect(model: ModelLike) -> FoldResult:
    """The per-BN analysis of ``fold`` without changing the caller's model or writing files.

    A path is read lazily (external data stays on disk), so the working copy is cheap.
    """
    base = _external_base(model)
    source = _as_model(model, copy=False, lazy=base is not None)
    work = onnx.ModelProto()
    work.CopyFrom(source)
    records, notes = _fold_model(work, base)
    return FoldResult(model=source, records=records, warnings=notes, external_base=base)


def _external_base(model: ModelLike) -> str | None:
    """The folder a lazily loaded model's external data stays in (None for a ModelProto)."""
    if isinstance(model, (str, Path, os.PathLike)):
        return str(Path(model).parent)
    return None


def _as_model(model: ModelLike, *, copy: bool, lazy: bool = False) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        check_model_proto(model, f"model {model.graph.name or '(unnamed)'}")
        if not copy:
            return model
        dup = onnx.ModelProto()
        dup.CopyFrom(model)
        return dup
    if isinstance(model, (str, Path, os.PathLike)):
        return load_model(model, load_external_data=not lazy)
    raise TypeError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")


def _undo(record: FoldRecord, problem: str) -> FoldRecord:
    if not record.folded:
        return record
    return FoldRecord(bn=record.bn, graph=record.graph, reason=Reason.CHECK_FAILED,
                      detail=problem, bn_output=record.bn_output)


def _all_names(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    for _, g in walk_graphs(graph):
        names.update(t.name for t in g.initializer)
        names.update(t.values.name for t in g.sparse_initializer)
        names.update(v.name for v in list(g.input) + list(g.output) + list(g.value_info))
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
    return names


def _fold_model(model: onnx.ModelProto,
                base_dir: str | None = None) -> tuple[list[FoldRecord], list[str]]:
    """Fold in place; return one record per BN (in graph order) and numeric notes.

    ``base_dir``: where initializers still stored externally are read from.
    """
    opset = default_opset(model) or MIN_OPSET
    infos = infer(model)  # shapes from strict inference, and declarations that contradict them
    per_graph = {id(graph): (graph, infos.get(key, ({}, {}, {})))
                 for key, graph in walk_graphs(model.graph)}
    ctx = _Context(model.ir_version, opset, per_graph, _all_names(model.graph, set()), base_dir,
                   list(model.opset_import))
    records: list[FoldRecord] = []
    _fold_graph(model.graph, "main", ctx, None, records)
    return records, ctx.notes


class _Context:
    """What every graph's fold shares: versions, per-graph value infos, names in use, notes."""

    def __init__(self, ir_version: int, opset: int, per_graph: dict, names: set[str],
                 base_dir: str | None = None,
                 opset_imports: list[onnx.OperatorSetIdProto] | None = None) -> None:
        self.ir_version, self.opset = ir_version, opset
        self.opset_imports = opset_imports  # constant subgraphs are evaluated under these
        self.per_graph = per_graph  # id(graph) -> (graph kept alive, (shapes, dtypes, mismatches))
        self.names = names
        self.base_dir = base_dir
        self.notes: list[str] = []

    def index(self, graph: onnx.GraphProto, outer: GraphIndex | None) -> GraphIndex:
        shapes, dtypes, mismatches = self.per_graph.get(id(graph), (graph, ({}, {}, {})))[1]
        return GraphIndex(graph, ir_version=self.ir_version, opset=self.opset,
                          shapes=dict(shapes), dtypes=dict(dtypes), outer=outer,
                          base_dir=self.base_dir, opset_imports=self.opset_imports,
                          mismatches=mismatches)


def _is_bn(node: onnx.NodeProto) -> bool:
    return node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx")


def _fold_graph(graph: onnx.GraphProto, path: str, ctx: _Context, outer: GraphIndex | None,
                records: list[FoldRecord]) -> None:
    """Fold BNs of ``graph`` pass by pass until nothing changes, then its subgraphs."""
    order = [n for n in graph.node if _is_bn(n)]
    folded: dict[int, FoldRecord] = {}
    refused: dict[int, FoldRecord] = {}
    rw = Rewriter(graph, ctx.names, ctx.ir_version)
    changed = True
    while changed:
        changed = False
        g = ctx.index(graph, outer)
        touched: set[int] = set()
        for node in [n for n in graph.node if _is_bn(n)]:
            around = _neighbourhood(g, node)
            if around & touched:
                changed = True  # a fold this pass changed its neighbours: look again next pass
                continue
            outcome = _try_fold(g, node, rw, ctx.notes)
            if isinstance(outcome, FoldRecord):
                refused[id(node)] = _with_path(outcome, path)
                continue
            target, direction = outcome
            folded[id(node)] = FoldRecord(bn=label(node), graph=path, target=target,
                                          direction=direction, bn_output=node.output[0])
            refused.pop(id(node), None)
            touched |= around
            changed = True
    remove_orphans(graph, rw.orphan_candidates, ctx.ir_version)
    for node in order:
        records.append(folded.get(id(node)) or refused[id(node)])
    index = ctx.index(graph, outer)
    for node in graph.node:
        for attr_name, sub in subgraphs(node):
            _fold_graph(sub, f"{path}/{label(node)}.{attr_name}", ctx, index, records)


def _neighbourhood(g: GraphIndex, bn: onnx.NodeProto) -> set[int]:
    """Ids of the nodes a fold of ``bn`` may rewrite (as the index saw them)."""
    ids = {id(bn)} | {id(n) for n in g.consumers(bn.output[0])}
    producer = g.producer(bn.input[0]) if bn.input else None
    if producer is not None:
        ids.add(id(producer))
        ids |= {id(p) for p in map(g.producer, producer.input) if p is not None}
    return ids


def _with_path(record: FoldRecord, path: str) -> FoldRecord:
    return FoldRecord(bn=record.bn, graph=path, reason=record.reason, detail=record.detail,
                      bn_output=record.bn_output)


def _try_fold(g: GraphIndex, node: onnx.NodeProto, rw: Rewriter,
              notes: list[str]) -> tuple[str, str] | FoldRecord:
    """Fold one BN backward, else forward; or return the record that says why it stays."""
    bn = read_bn(g, node)
    if isinstance(bn, Refusal):
        return FoldRecord(bn=label(node), graph="", reason=bn.reason, detail=bn.detail,
                          bn_output=node.output[0])
    refusals: list[tuple[str, Refusal]] = []
    for direction, rule in (("backward", fold_backward), ("forward", fold_forward)):
        try:
            outcome = rule(g, bn, rw, notes)
        except FoldOverflow as exc:
            outcome = Refusal(Reason.OVERFLOW, str(exc))
            notes.append(f"{label(node)}: kept, {exc}")
        if isinstance(outcome, str):
            return outcome, direction
        refusals.append((direction, outcome))
    return _explain(node, bn, refusals)


def _explain(node: onnx.NodeProto, bn: BnAffine,
             refusals: list[tuple[str, Refusal]]) -> FoldRecord:
    specific = [(d, r) for d, r in refusals if r.specific]
    if specific:
        reason = specific[0][1].reason
        detail = "; ".join(f"{d}: {r.detail or r.reason.value}" for d, r in specific)
    else:
        reason, detail = Reason.NO_FOLDABLE_NEIGHBOUR, ""
    return FoldRecord(bn=label(node), graph="", reason=reason, detail=detail, bn_output=bn.y)
