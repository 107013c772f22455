"""fold(): run the fold rules on every graph to a fixed point and account for every BN."""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import onnx

from bnfold.folding.bn import label
from bnfold.folding.check import check_folded
from bnfold.folding.functions import (as_graph, function_opset, function_path, reference_refusal,
                                   write_back)
from bnfold.folding.proof import Proof
from bnfold.folding.proof import prove as prove_folds
from bnfold.folding.reparam import reparameterize
from bnfold.folding.report import FoldRecord, FoldResult, Reason
from bnfold.folding.match import DECOMPOSED, match_bn, match_decomposed, record_of
from bnfold.folding.rewrite import Rewriter, remove_orphans
from bnfold.folding.rules.carry import CONVS, LINEAR, Plan
from bnfold.folding.rules.carry import apply as apply_plan
from bnfold.folding.training import protected_names, training_graphs, training_refusal
from bnfold.graph.index import GraphIndex, GraphKey, subgraphs, walk_graphs
from bnfold.io.model_io import (MIN_OPSET, check_model_proto, default_opset, load_external,
                                load_model)
from bnfold.graph.shapes import GraphShapes, infer
from bnfold.io.skeleton import skeleton
from bnfold.io import weights_in_file
from bnfold.io.spill import Spill

ModelLike = onnx.ModelProto | str | os.PathLike

__all__ = ["fold", "inspect", "FoldResult", "FoldRecord", "Reason"]


def fold(model: ModelLike, *, check: bool = True, copy: bool = True,
         lazy_external: bool = False, prove: bool = True, reparam: bool = True,
         progress: Callable[[str], None] | None = None, spill: Spill | None = None,
         ) -> FoldResult:
    """Fold every BatchNormalization that can be folded exactly; say why for the others.

    ``model`` is a path (loaded with its external data) or a ModelProto (copied first unless
    ``copy=False``, in which case it is folded in place). With ``check`` the result must pass
    onnx.checker with strict shape inference; if it does not, the unchanged input is returned
    with CHECK_FAILED reasons (for ``copy=False`` a backup is kept for that purpose).

    With ``prove`` every fold gets its local proof (``bnfold.folding.proof``): the region it
    replaced and its replacement run on ONNX Runtime and must agree. A fold whose proof fails
    is undone (the fold reruns from the input without it, reason PROOF_FAILED); each folded
    record carries its proof error.

    ``lazy_external`` (paths only): leave external data on disk and read each weight when a
    fold needs it, so a multi-GB model is not held in memory. Folded weights become inline;
    the others still reference the model's folder, given as ``result.external_base``: save
    with ``save_model(result.model, out, source_dir=result.external_base)`` (add
    ``read_in=False`` to copy them file to file instead of reading them into the proto).

    With ``reparam`` (``bnfold.folding.reparam``) an Add of parallel Conv/BN/identity branches
    of one input (RepVGG, ACNet, MobileOne) that holds a BN becomes one Conv after the BN
    folds; its BNs' records say so (direction "reparam") and the tree is proven as one region.
    A merge whose proof fails is undone alone: its branch BNs still fold into their Convs.

    ``progress`` (e.g. a CLI's status line) gets a short message as each BN is first looked at
    ("folding BN 3 of 53") and before the proofs run.

    A path is always folded lazily, its weights read from the file as the folds need them
    (``bnfold.io.weights_in_file`` for a single file): only the graph structure is parsed, the
    proofs' original is a copy of that structure, and without ``lazy_external`` the weights
    no fold changed are read in at the end.

    ``spill`` (``bnfold.io.spill.Spill``, with ``lazy_external``): large folded weights are
    written to its scratch file as they are made and ``result.model`` points at them, so the
    fold holds no copy of them; keep the spill open until the model is saved.
    """
    try:
        with gc_paused(), (spill.active() if spill is not None else nullcontext()):
            result = _fold(model, check, copy, prove, progress, reparam)
        if result.external_base is not None and not lazy_external:
            load_external(result.model, result.external_base)
            result.external_base = None
    finally:  # a model file replaced later (in place) keeps no disk space through an open fd
        weights_in_file.close_files()
    return result


def _copied(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _fold(model: ModelLike, check: bool, copy: bool, prove: bool,
          progress: Callable[[str], None] | None, reparam: bool) -> FoldResult:
    """``fold`` with a path's weights left on disk (``result.external_base``)."""
    base = _external_base(model)
    proto = _as_model(model, copy=copy, lazy=base is not None)
    backup = None
    if (check or prove) and isinstance(model, onnx.ModelProto) and not copy:
        backup = _copied(proto)
    pristine = None
    if prove and backup is None and not isinstance(model, onnx.ModelProto) and _count_bns(proto):
        pristine = _copied(proto)  # the proofs' original: the structure, weights in the file
    before = skeleton(proto) if check else None
    # the input's shapes, inferred once: every (re)fold starts from the input, and the input is
    # the proofs' original (on a copy of the skeleton the check uses: made once)
    infos = infer(proto, _copied(before) if before is not None else None)
    excluded: dict[tuple[str, str], tuple[Reason, str]] = {}
    unmerged: dict[tuple[str, str], str] = {}  # BNs of reparam merges whose proof failed
    original: tuple[onnx.ModelProto, str | None] | None = None
    while True:
        records, notes = _fold_model(proto, base, excluded, progress, reparam, unmerged, infos)
        if before is not None and any(r.folded for r in records):
            problem = check_folded(before, proto)
            if problem:
                kept = backup if backup is not None else _as_model(model, copy=True,
                                                                   lazy=base is not None)
                return FoldResult(model=kept, records=_undo_all(records, problem),
                                  warnings=notes + [f"folded model failed its check: {problem}"],
                                  external_base=base)
        if not prove or not any(r.folded for r in records):
            return FoldResult(model=proto, records=records, warnings=notes, external_base=base)
        original = original or _original(model, backup, pristine)
        if progress is not None:
            progress(f"proving {sum(r.folded for r in records)} fold(s) on ONNX Runtime")
        proofs = prove_folds(original[0], proto, records, original_base=original[1],
                             folded_base=base,
                             original_infos={k: (g.shapes, g.dtypes) for k, g in infos.items()})
        records = [_with_proof(r, proofs.get((r.graph, r.bn_output))) for r in records]
        failed = {k: (p.reason, p.detail) for k, p in proofs.items() if not p.passed}
        if not failed:
            return FoldResult(model=proto, records=records, warnings=notes, external_base=base)
        if failed.keys() <= excluded.keys() | unmerged.keys():  # a refold kept an undone fold
            kept = backup if backup is not None else _as_model(model, copy=True,
                                                               lazy=base is not None)
            problem = "a fold whose proof failed could not be undone alone; nothing folded"
            return FoldResult(model=kept, records=_undo_all(records, problem,
                                                                 Reason.PROOF_FAILED),
                              warnings=notes + [problem], external_base=base)
        merges = {(r.graph, r.bn_output) for r in records if r.direction == "reparam"}
        unmerged.update({k: d for k, (_, d) in failed.items() if k in merges})
        excluded.update({k: d for k, d in failed.items() if k not in merges})
        proto = _fresh(model, backup, proto, base)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: a fold makes many long-lived protos and arrays but
    few cycles, and each full collection walks them all (at 8,000 BNs, 7-8 of them made the
    fold 13-18 % slower and grow faster than linearly). The caller's setting is restored on
    the way out, exception or not; the next automatic collection finds any cycles left."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _original(model: ModelLike, backup: onnx.ModelProto | None,
              pristine: onnx.ModelProto | None = None) -> tuple[onnx.ModelProto, str | None]:
    """The unfolded input for the proofs, and the folder its external data is read from
    (``pristine``: a copy of a path's model taken before the fold)."""
    if backup is not None:
        return backup, None
    if isinstance(model, onnx.ModelProto):
        return model, None
    if pristine is not None:
        return pristine, str(Path(model).parent)
    # checked when first loaded (``_as_model``): the proofs' copy need not run the checker again
    return (load_model(model, load_external_data=False, check=False, weights_in_file=True),
            str(Path(model).parent))


def _fresh(model: ModelLike, backup: onnx.ModelProto | None, proto: onnx.ModelProto,
           base: str | None) -> onnx.ModelProto:
    """The input again, to refold without the folds whose proof failed."""
    if backup is not None:  # copy=False: refold the caller's own object
        proto.CopyFrom(backup)
        return proto
    return _as_model(model, copy=True, lazy=base is not None)


def _with_proof(record: FoldRecord, proof: Proof | None) -> FoldRecord:
    if proof is None or not record.folded:
        return record
    return replace(record, proof_max_abs=proof.max_abs, proof_peak=proof.peak,
                   proof_tol=proof.tol, proof_engine=proof.engine)


def inspect(model: ModelLike) -> FoldResult:
    """The per-BN analysis of ``fold`` without changing the caller's model or writing files.

    No local proofs run here (they need ONNX Runtime and cost a session): a BN inspect
    calls foldable may still be kept by ``fold`` with PROOF_FAILED.

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
        return load_model(model, load_external_data=not lazy, weights_in_file=lazy)
    raise TypeError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")


def _undo(record: FoldRecord, problem: str, reason: Reason = Reason.CHECK_FAILED) -> FoldRecord:
    if not record.folded:
        return record
    return FoldRecord(bn=record.bn, graph=record.graph, reason=reason, detail=problem,
                      bn_output=record.bn_output, op=record.op)


def _undo_all(records: list[FoldRecord], problem: str,
              reason: Reason = Reason.CHECK_FAILED) -> list[FoldRecord]:
    """Every record as kept: BNs with ``reason``; decomposed Mul/Add folds (no BN) vanish, as
    any Mul/Add that does not fold has no record."""
    return [_undo(r, problem, reason) for r in records if r.op == "BatchNormalization"]


def _all_names(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    for _, g in walk_graphs(graph):
        names.update(t.name for t in g.initializer)
        names.update(t.values.name for t in g.sparse_initializer)
        names.update(v.name for v in list(g.input) + list(g.output) + list(g.value_info))
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
    return names


def _fold_model(model: onnx.ModelProto, base_dir: str | None = None,
                exclude: dict[tuple[str, str], tuple[Reason, str]] | None = None,
                progress: Callable[[str], None] | None = None, reparam: bool = True,
                unmerged: dict[tuple[str, str], str] | None = None,
                infos: dict[GraphKey, GraphShapes] | None = None,
                ) -> tuple[list[FoldRecord], list[str]]:
    """Fold in place; return one record per BN (in graph order) and numeric notes.

    ``base_dir``: where initializers still stored externally are read from. ``exclude``:
    (graph path, BN output) -> (reason, detail) of BNs to keep because their proof failed.
    ``progress``: told "folding BN k of n" as each BN is first looked at. ``reparam``: merge
    Add trees of parallel branches after the folds, except those holding a BN in ``unmerged``.
    ``infos``: ``shapes.infer(model)`` when the caller has it.
    """
    opset = default_opset(model) or MIN_OPSET
    if infos is None:
        infos = infer(model)  # shapes from strict inference, declarations that contradict them
    per_graph = {id(graph): (graph, infos.get(key, ({}, {}, {})))
                 for key, graph in walk_graphs(model.graph)}
    names = _all_names(model.graph, set())
    for graph in training_graphs(model):
        _all_names(graph, names)  # a new initializer must not shadow a training graph's name
    ctx = _Context(model.ir_version, opset, per_graph, names, base_dir, list(model.opset_import))
    ctx.protected = protected_names(model)
    ctx.exclude = exclude or {}
    ctx.seen = _Seen(progress, _count_bns(model))
    ctx.reparam, ctx.unmerged = reparam, unmerged or {}
    records: list[FoldRecord] = []
    _fold_graph(model.graph, "main", ctx, None, records)
    _fold_functions(model, ctx, records)
    return records, ctx.notes


def _fold_functions(model: onnx.ModelProto, ctx: "_Context", records: list[FoldRecord]) -> None:
    """Fold the BNs in each model-local function's body (and its subgraphs), in place."""
    for f in model.functions:
        _all_names(as_graph(f), ctx.names)
    for f in model.functions:
        body = as_graph(f)
        sub = _Context(ctx.ir_version, function_opset(f, ctx.opset), {}, ctx.names,
                       ctx.base_dir)
        sub.notes, sub.protected, sub.exclude = ctx.notes, ctx.protected, ctx.exclude
        sub.seen, sub.reparam, sub.unmerged = ctx.seen, ctx.reparam, ctx.unmerged
        sub.const_memo = ctx.const_memo
        _fold_graph(body, function_path(f), sub, None, records)
        write_back(f, body)


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
        self.protected: set[str] = set()  # tensors training_info binds or reads
        self.exclude: dict[tuple[str, str], tuple[Reason, str]] = {}
        self.seen = _Seen(None, 0)
        self.reparam = True
        self.unmerged: dict[tuple[str, str], str] = {}
        self.const_memo: dict = {}  # constant subgraphs evaluated by earlier passes, by content

    def index(self, graph: onnx.GraphProto, outer: GraphIndex | None) -> GraphIndex:
        shapes, dtypes, mismatches = self.per_graph.get(id(graph), (graph, ({}, {}, {})))[1]
        return GraphIndex(graph, ir_version=self.ir_version, opset=self.opset,
                          shapes=dict(shapes), dtypes=dict(dtypes), outer=outer,
                          base_dir=self.base_dir, opset_imports=self.opset_imports,
                          mismatches=mismatches, const_memo=self.const_memo)


class _Seen:
    """Counts BNs as they are first looked at and tells ``progress`` ("folding BN k of n")."""

    def __init__(self, progress: Callable[[str], None] | None, total: int) -> None:
        self.progress, self.total, self.ids = progress, total, set()

    def __call__(self, node: onnx.NodeProto) -> None:
        if self.progress is not None and id(node) not in self.ids:
            self.ids.add(id(node))
            self.progress(f"folding BN {len(self.ids)} of {max(self.total, len(self.ids))}")


def _count_bns(model: onnx.ModelProto) -> int:
    graphs = [g for _, g in walk_graphs(model.graph)]
    graphs += [g for f in model.functions for _, g in walk_graphs(as_graph(f))]
    return sum(1 for g in graphs for n in g.node if _is_bn(n))


def _is_bn(node: onnx.NodeProto) -> bool:
    return node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx")


def _fold_graph(graph: onnx.GraphProto, path: str, ctx: _Context, outer: GraphIndex | None,
                records: list[FoldRecord]) -> None:
    """Fold BNs of ``graph`` pass by pass until nothing changes, then decomposed BNs (constant
    Mul/Add/Sub) the same way, then its subgraphs."""
    order = [n for n in graph.node if _is_bn(n)]
    folded: dict[int, FoldRecord] = {}
    refused: dict[int, FoldRecord] = {}
    rw = Rewriter(graph, ctx.names, ctx.ir_version)
    changed = True
    while changed:  # each pass reads a fresh index; the last one changed nothing: it stays true
        changed = False
        g = ctx.index(graph, outer)
        touched: set[int] = set()
        for node in [n for n in graph.node if _is_bn(n)]:
            ctx.seen(node)
            if (path, node.output[0]) in ctx.exclude:
                reason, detail = ctx.exclude[(path, node.output[0])]
                refused[id(node)] = FoldRecord(bn=label(node), graph=path, reason=reason,
                                               detail=detail, bn_output=node.output[0])
                continue
            if (_near(g, node) | _near_absorber(g, node)) & touched:
                changed = True  # its plan would reach a node this pass changed: match it next pass
                continue
            outcome = _guarded(g, node, ctx) or match_bn(g, node, ctx.notes)
            if isinstance(outcome, FoldRecord):
                refused[id(node)] = _with_path(outcome, path)
                continue
            outcome = _plan_guarded(g, outcome, ctx) or outcome
            if isinstance(outcome, FoldRecord):
                refused[id(node)] = _with_path(outcome, path)
                continue
            around = _reach(g, outcome)
            if around & touched:
                changed = True  # a fold this pass changed its neighbours: look again next pass
                continue
            folded[id(node)] = record_of(outcome, path)
            refused.pop(id(node), None)
            apply_plan(g, outcome, rw, ctx.notes)
            touched |= around
            changed = True
    decomposed, g = _fold_decomposed(graph, path, ctx, outer, rw, g)
    if ctx.reparam:
        folded.update((k, r) for k, r in refused.items() if k not in folded)
        reparameterize(g, rw, path, folded, ctx.protected, ctx.unmerged, ctx.notes)
    remove_orphans(graph, rw.orphan_candidates, ctx.ir_version)
    for node in order:
        records.append(folded.get(id(node)) or refused[id(node)])
    records.extend(decomposed)
    index = None
    for node in graph.node:
        for attr_name, sub in subgraphs(node):
            index = index or ctx.index(graph, outer)  # the graph as the passes left it
            _fold_graph(sub, f"{path}/{label(node)}.{attr_name}", ctx, index, records)


def _fold_decomposed(graph: onnx.GraphProto, path: str, ctx: _Context,
                     outer: GraphIndex | None, rw: Rewriter,
                     g: GraphIndex) -> tuple[list[FoldRecord], GraphIndex]:
    """Fold Mul/Add/Sub by per-channel constants (a BN a converter wrote out) into the layer
    before or after them; a record for each one folded (the others are no BN: no record).

    ``g``: an index of the graph as it is (the BN passes' last, which changed nothing); the
    index of the graph as this leaves it is returned with the records."""
    records: list[FoldRecord] = []
    changed, first = True, True
    while changed:
        changed = False
        g = g if first else ctx.index(graph, outer)
        first = False
        touched: set[int] = set()
        for node in [n for n in graph.node if n.op_type in DECOMPOSED and n.domain in ("",
                                                                                         "ai.onnx")]:
            if (path, node.output[0]) in ctx.exclude or _guarded(g, node, ctx):
                continue
            if _near(g, node) & touched:
                changed = True
                continue
            plan = match_decomposed(g, node)
            if plan is None or _plan_guarded(g, plan, ctx):
                continue
            around = _reach(g, plan)
            if around & touched:
                changed = True
                continue
            records.append(record_of(plan, path))
            apply_plan(g, plan, rw, ctx.notes)
            touched |= around
            changed = True
    return records, g


def _reach(g: GraphIndex, plan: Plan) -> set[int]:
    """Ids of the nodes a plan reads or rewrites, with their readers and producers."""
    ids: set[int] = set()
    for n in plan.nodes:
        ids |= _near(g, n)
    return ids


def _near(g: GraphIndex, node: onnx.NodeProto) -> set[int]:
    """Ids of ``node``, its readers and its producers: every plan seeded at ``node`` reaches
    them (``_reach``), so where they meet a fold of this pass the plan would be put off; the
    seed is then put off before its (float64) plan is computed at all."""
    ids = {id(node)}
    ids |= {id(r) for o in node.output for r in g.consumers(o)}
    ids |= {id(p) for p in map(g.producer, node.input) if p is not None}
    return ids


def _near_absorber(g: GraphIndex, node: onnx.NodeProto) -> set[int]:
    """``_near`` of the layer that writes the BN's input when it is one a BN folds into: the
    backward plan, tried first, reaches it. Where that meets a fold of this pass the plan would
    be put off after its float64 weights were made (a third of MobileNetV2's matches), so the
    BN is put off before; were the plan forward after all, it is matched next pass."""
    producer = g.producer(node.input[0]) if node.input else None
    if producer is None or producer.op_type not in CONVS + LINEAR:
        return set()
    return _near(g, producer)


def _plan_guarded(g: GraphIndex, plan: Plan, ctx: _Context) -> FoldRecord | None:
    """The record of a plan whose nodes training_info binds or a function attribute hides."""
    refusal = (training_refusal(g, plan.seed, ctx.protected, plan.nodes)
               or reference_refusal(g, plan.seed, plan.nodes))
    if refusal is None:
        return None
    return FoldRecord(bn=label(plan.seed), graph="", reason=refusal.reason,
                      detail=refusal.detail, bn_output=plan.seed.output[0])


def _with_path(record: FoldRecord, path: str) -> FoldRecord:
    return FoldRecord(bn=record.bn, graph=path, reason=record.reason, detail=record.detail,
                      bn_output=record.bn_output)


def _guarded(g: GraphIndex, node: onnx.NodeProto, ctx: _Context) -> FoldRecord | None:
    """The record of a BN no rule may touch (training_info names its tensors, or a function's
    attribute reference hides a value), else None."""
    refusal = training_refusal(g, node, ctx.protected) or reference_refusal(g, node)
    if refusal is None:
        return None
    return FoldRecord(bn=label(node), graph="", reason=refusal.reason, detail=refusal.detail,
                      bn_output=node.output[0])
