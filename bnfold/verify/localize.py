"""Find where a folded model first departs from the original, and which BN fold did it.

Intermediate tensors present in both main graphs (the fold keeps every BN's output name) are exposed
as extra outputs, both models run on the failing feed, and the first tensor in the folded model's
topological order that is outside tolerance is blamed on the fold whose node produced it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import onnx

from bnfold.verify import compare, runner

if TYPE_CHECKING:
    from bnfold.fold.report import FoldRecord


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


def localize(original: onnx.ModelProto, folded: onnx.ModelProto, feed: Mapping[str, np.ndarray],
             *, provider: str, opt_level: str, records: Sequence[FoldRecord] | None = None,
             atol: float | None = None, rtol: float | None = None) -> Localization | None:
    """Run both models with shared intermediates exposed; None when no shared tensor diverges."""
    skip = _bf16_tensors(original) | _bf16_tensors(folded)
    names = [n for n in shared_tensors(original, folded) if n not in skip]
    if not names:
        return None
    ref = runner.run(runner.make_session(expose(original, names), provider, opt_level), feed, names)
    got = runner.run(runner.make_session(expose(folded, names), provider, opt_level), feed, names)
    producers = _producers(folded.graph)
    for i, name in enumerate(names, start=1):
        a, b = ref[name], got[name]
        if a.shape != b.shape:
            max_abs, peak_rel = float("inf"), float("inf")
        else:
            t_atol, t_rtol = compare.tolerance_for(a.dtype, atol, rtol)
            m = compare.compare(a, b, t_atol, t_rtol)
            if m.mismatched == 0:
                continue
            max_abs, peak_rel = m.max_abs, m.peak_rel
        bn, direction, why = blame(name, original, folded, records)
        node = producers[name]
        return Localization(tensor=name, node=node.name, op_type=node.op_type, bn=bn,
                            direction=direction, max_abs=max_abs, peak_rel=peak_rel, checked=i,
                            explanation=why)
    return None
