"""Tidy a graph from torch's dynamo exporter (run with optimize=False) without touching any BN.

torch's own optimizer fuses BatchNormalization, so export runs without it and this module
does the safe part of its work: fold constant subgraphs, drop the computed all-zero bias
the exporter gives bias-free Conv/ConvTranspose (an Expand/CastLike of a Shape, which for
Conv3d even has the wrong shape), delete dead nodes, then run strict shape inference and the
full ONNX checker. Nodes are renamed after the PyTorch module that produced them
("block1.bn1"), and the exporter's per-node metadata (stack traces with local paths) is dropped.
"""
from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold.errors import BnfoldError, first_line

_BIAS_OPS = ("Conv", "ConvTranspose")
_PASS_THROUGH = ("CastLike", "Cast", "Identity", "Expand")
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass
class CleanupReport:
    """What the cleanup changed, for the export summary."""

    zero_biases_dropped: list[str] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0


def clean_exported(model: onnx.ModelProto) -> tuple[onnx.ModelProto, CleanupReport]:
    """Return a cleaned copy of ``model`` and what changed; raise BnfoldError if it is invalid."""
    report = CleanupReport(nodes_before=len(model.graph.node))
    model = fold_constants(model)
    report.zero_biases_dropped = drop_zero_conv_bias(model)
    remove_dead_nodes(model)
    name_nodes_by_module(model)
    report.nodes_after = len(model.graph.node)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                  data_prop=True)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = first_line(exc)
        raise BnfoldError(f"exported graph is not valid ONNX after cleanup: {first}") from exc
    return model, report


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs with onnxscript (no rewrite rules: BN stays); lift constants."""
    import onnx_ir.passes.common as passes
    from onnxscript import ir
    from onnxscript.optimizer import fold_constants_ir

    ir_model = ir.serde.deserialize_model(model)
    fold_constants_ir(ir_model)
    passes.RemoveUnusedNodesPass()(ir_model)
    passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(ir_model)
    return ir.serde.serialize_model(ir_model)


def _constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of ``name`` if it is an initializer or a Constant node's output, else None."""
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _is_zero_tensor(model: onnx.ModelProto, name: str,
                    producers: dict[str, onnx.NodeProto]) -> bool:
    """True if ``name`` is a constant of zeros, possibly cast and broadcast (Expand) from one."""
    seen: set[str] = set()
    while name not in seen:
        seen.add(name)
        value = _constant_value(model, name)
        if value is not None:
            return value.size > 0 and not np.any(value)
        node = producers.get(name)
        if node is None or node.op_type not in _PASS_THROUGH:
            return False
        name = node.input[0]
    return False


def drop_zero_conv_bias(model: onnx.ModelProto) -> list[str]:
    """Remove all-zero bias inputs from Conv/ConvTranspose in place; return the node names.

    A zero bias adds nothing, so dropping it is exact, and it removes the exporter's
    shape-dependent bias computation that a folder would otherwise have to see through.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    dropped = []
    for node in model.graph.node:
        if node.op_type in _BIAS_OPS and len(node.input) == 3 and node.input[2]:
            if _is_zero_tensor(model, node.input[2], producers):
                del node.input[2]
                dropped.append(node.name)
    return dropped


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Delete nodes and initializers no graph output depends on (main graph), in place."""
    graph = model.graph
    needed = {out.name for out in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output) or _has_subgraph(node):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))
    keep.reverse()
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    inits = [init for init in graph.initializer if init.name in needed]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for attr in node.attribute)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every tensor name a node's subgraphs read (over-approximate: keeps outer values alive)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                names.update(inner.input)
                names.update(_subgraph_inputs(inner))
    return names


def _module_path(node: onnx.NodeProto) -> str:
    """The PyTorch module path the exporter recorded for ``node`` ("" when unknown/root)."""
    for prop in node.metadata_props:
        if prop.key == _SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            return str(scopes[-2]) if isinstance(scopes, list) and len(scopes) >= 2 else ""
    return ""


def name_nodes_by_module(model: onnx.ModelProto) -> None:
    """Rename main-graph nodes after their module ("stem.1", or "block1/Add" when a module
    made several nodes), unique, and clear the exporter's node metadata, in place."""
    nodes = list(model.graph.node)
    paths = [_module_path(n) for n in nodes]
    per_path = Counter(paths)
    wanted = [p if p and per_path[p] == 1 else (f"{p}/{n.op_type}" if p else n.op_type)
              for p, n in zip(paths, nodes, strict=True)]
    counts = Counter(wanted)
    used: Counter[str] = Counter()
    for node, name in zip(nodes, wanted, strict=True):
        if counts[name] > 1:
            used[name] += 1
            name = f"{name}_{used[name]}"
        node.name = name
        del node.metadata_props[:]
