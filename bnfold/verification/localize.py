"""Find where a folded model first departs from the original, and which BN fold did it.

Intermediate tensors present in both main graphs (the fold keeps every BN's output name) are exposed
as extra outputs, both models run on the failing feed, and the first tensor in the folded model's
topological order that is outside tolerance is blamed on the fold whose node produced it. Tensors
that differ between two runs of the original (downstream of a random op) are skipped.

Models given by path are read without their external data; the exposed copy is written with
external data into a temporary folder (the data copied chunk-wise) and ORT loads it by path, so
models of any size work (a serialised proto is limited to 2 GiB).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np
import onnx

from bnfold.verification import compare, engines, runner

if TYPE_CHECKING:
    from bnfold.folding.report import FoldRecord

ModelArg = Union[str, Path, onnx.ModelProto]


@dataclass(frozen=True)
class Localization:
    """The first diverging intermediate tensor and the BN fold held responsible (if any)."""

    tensor: str
    node: str               # folded-model node that produces ``tensor``
    op_type: str
    bn: str | None          # BN whose fold is blamed; None when no fold touched ``node``
    direction: str | None   # "backward" | "forward"
    max_abs: float
    peak_rel: float
    checked: int            # intermediate tensors compared
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _layers(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(name, kind) of the main graph's Conv/ConvTranspose/Gemm/MatMul nodes; Gemm and MatMul
    are one kind (a MatMul -> BN fold turns the MatMul into a Gemm)."""
    return [(n.name, "Gemm/MatMul" if n.op_type in ("Gemm", "MatMul") else n.op_type)
            for n in model.graph.node if n.op_type in LAYER_OPS and n.domain in ("", "ai.onnx")]


def not_a_fold(original: onnx.ModelProto, folded: onnx.ModelProto) -> str | None:
    """Why ``folded`` cannot be a BN fold of ``original``, or None when it may be one.

    A fold removes BNs (and merged bias Adds) and rewrites weights; it keeps every Conv,
    ConvTranspose, Gemm and MatMul node, by name, only turning a MatMul into a Gemm, and never
    adds a BN. Two unrelated models with the same inputs and outputs differ there.
    """
    la, lb = _layers(original), _layers(folded)
    ca, cb = Counter(k for _, k in la), Counter(k for _, k in lb)
    if ca != cb:
        diff = ", ".join(f"{k} {ca[k]} vs {cb[k]}" for k in sorted(ca.keys() | cb.keys())
                         if ca[k] != cb[k])
        return f"their layers differ in number: {diff}"
    names_a, names_b = Counter(n for n, _ in la), Counter(n for n, _ in lb)
    if all(n for n, _ in la + lb) and names_a != names_b:
        only = sorted((names_a - names_b).keys())
        return (f"{len(only)} layer name(s) of the original are not in the folded model, e.g. "
                f"{only[0]!r}")
    bn_a, bn_b = (sum(n.op_type == "BatchNormalization" for n in m.graph.node)
                  for m in (original, folded))
    if bn_b > bn_a:
        return f"the folded model has more BatchNormalization nodes ({bn_b}) than the original ({bn_a})"
    return None


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def shared_tensors(original: onnx.ModelProto, folded: onnx.ModelProto) -> list[str]:
    """Main-graph tensors produced by nodes in both models, in the folded model's node order."""
    in_original = set(_producers(original.graph))
    seen: set[str] = set()
    names = []
    for node in folded.graph.node:
        for out in node.output:
            if out and out in in_original and out not in seen:
                seen.add(out)
                names.append(out)
    return names


def _bf16_tensors(model: onnx.ModelProto) -> set[str]:
    """Intermediate tensors inferred as bfloat16 (ORT's Python API cannot return them)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort; ORT reports real problems when run
        return set()
    return {vi.name for vi in inferred.graph.value_info
            if vi.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16}


def expose(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``names`` added as graph outputs (types left to ORT)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return exposed


def blame(tensor: str, original: onnx.ModelProto, folded: onnx.ModelProto,
          records: Sequence[FoldRecord] | None) -> tuple[str | None, str | None, str]:
    """(bn, direction, explanation) for the first diverging ``tensor``.

    With fold records: a backward fold's target now produces the BN's output tensor; a forward
    fold's target is the consumer that absorbed the BN. Without records the original graph tells:
    the tensor was a BN output, or its producer read a BN output that the folded model lacks.
    """
    node = _producers(folded.graph)[tensor]
    folded_names = {n.name for n in folded.graph.node if n.name}
    for r in records or ():
        if r.folded and r.graph == "main" and r.bn_output == tensor:
            return r.bn, r.direction, (f"{tensor!r} is the output of BN {r.bn!r}, folded "
                                       f"{r.direction} into {r.target!r}")
    for r in records or ():
        if r.folded and r.graph == "main" and r.target == node.name:
            return r.bn, r.direction, (f"{tensor!r} is produced by {node.name!r}, into which BN "
                                       f"{r.bn!r} was folded {r.direction}")
    orig_prod = _producers(original.graph)
    src = orig_prod.get(tensor)
    if src is not None and src.op_type == "BatchNormalization" and src.name not in folded_names:
        return src.name, "backward", (f"{tensor!r} is the output of BN {src.name!r}, now produced "
                                      f"by {node.name!r}")
    orig_node = next((n for n in original.graph.node if n.name and n.name == node.name), None)
    for inp in orig_node.input if orig_node is not None else ():
        bn = orig_prod.get(inp)
        if bn is not None and bn.op_type == "BatchNormalization" and bn.name not in folded_names:
            return bn.name, "forward", (f"{tensor!r} is produced by {node.name!r}, which read the "
                                        f"output of BN {bn.name!r} in the original model")
    return None, None, (f"{tensor!r} (from {node.op_type} {node.name!r}) is the first tensor to "
                        "diverge, and no BN fold touched that node")


def _graph_of(model: ModelArg) -> tuple[onnx.ModelProto, Path | None]:
    """The proto (external data left on disk) and the folder its data files are relative to."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    from bnfold.io.model_io import load_model

    return load_model(model, load_external_data=False, check=False), Path(model).parent


def _exposed(model: onnx.ModelProto, base: Path | None, names: Sequence[str], role: str,
             proc: engines.OrtProcess, provider: str, opt_level: str,
             reference: bool) -> engines.Runner:
    """``model`` with ``names`` as extra outputs, loaded on ORT (by path when it has external
    data) or on onnx.reference."""
    exposed = expose(model, names)
    label = f"the {role} model with intermediate tensors exposed"
    if reference:
        if base is not None:
            from bnfold.io.model_io import load_external

            load_external(exposed, base)
        return engines.ReferenceModel(exposed, label)
    key = f"localize-{role}"
    source = engines.ort_source(exposed, proc, key, source_dir=base)
    proc.load(key, source, label, runner.provider_chain(provider), opt_level)
    return engines.OrtModel(proc, key, label, provider)


def _moved(a: np.ndarray, b: np.ndarray) -> bool:
    """Two runs of the original disagree (bit for bit: any random op shows)."""
    return a.shape != b.shape or compare.abs_errors(a, b).max(initial=0.0) > 0.0


def localize(original: ModelArg, folded: ModelArg, feed: Mapping[str, np.ndarray], *,
             provider: str, opt_level: str, records: Sequence[FoldRecord] | None = None,
             atol: float | None = None, rtol: float | None = None,
             proc: engines.OrtProcess | None = None, reference: bool = False
             ) -> Localization | None:
    """Run both models with shared intermediates exposed; None when no shared tensor diverges.

    ``proc``: the ORT child to use (a new one when None); ``reference``: run on onnx.reference
    (as the failing case did, when ORT had no kernel). Raises ``engines.Crashed`` when ORT dies.
    """
    if proc is None:
        with engines.OrtProcess() as own:
            return localize(original, folded, feed, provider=provider, opt_level=opt_level,
                            records=records, atol=atol, rtol=rtol, proc=own, reference=reference)
    orig, orig_base = _graph_of(original)
    fold, fold_base = _graph_of(folded)
    skip = _bf16_tensors(orig) | _bf16_tensors(fold)
    names = [n for n in shared_tensors(orig, fold) if n not in skip]
    if not names:
        return None
    run_a = _exposed(orig, orig_base, names, "original", proc, provider, opt_level, reference)
    ref = run_a.run(feed, names)
    again = run_a.run(feed, names)
    proc.drop("localize-original")  # one big model in memory at a time
    got = _exposed(fold, fold_base, names, "folded", proc, provider, opt_level,
                   reference).run(feed, names)
    proc.drop("localize-folded")
    producers = _producers(fold.graph)
    for i, name in enumerate(names, start=1):
        a, b = ref[name], got[name]
        if _moved(a, again[name]):
            continue
        if a.shape != b.shape:
            max_abs, peak_rel = float("inf"), float("inf")
        else:
            t_atol, t_rtol = compare.tolerance_for(a.dtype, atol, rtol)
            m = compare.compare(a, b, t_atol, t_rtol)
            if m.mismatched == 0:
                continue
            max_abs, peak_rel = m.max_abs, m.peak_rel
        bn, direction, why = blame(name, orig, fold, records)
        node = producers[name]
        return Localization(tensor=name, node=node.name, op_type=node.op_type, bn=bn,
                            direction=direction, max_abs=max_abs, peak_rel=peak_rel, checked=i,
                            explanation=why)
    return None
