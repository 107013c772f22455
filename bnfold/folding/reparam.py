"""Structural re-parameterization: parallel branches of one input, summed, become one Conv.

RepVGG, ACNet and MobileOne train a block as branches that read the same input ``x`` and are
summed by a tree of binary ``Add`` nodes: Conv kxk (+BN), Conv 1x1 (+BN), a lone BN reading
``x`` (the identity branch, ``s*x + t``), ``x`` itself, or a per-channel constant (timm's
MobileOne starts its sum at ``0``). Once the BN folds have put each
branch BN into its Conv, the sum is one convolution (float64, cast once):

- each Conv kernel is zero-padded into the largest kernel, at the tap offset its padding
  implies (a 1x1 with pads 0 lands on the centre of a kxk with pads k//2);
- the identity branch is an identity kernel at that centre (output m reads input m of its
  group), scaled by the BN's ``s``; ``t`` goes into the bias; the biases and constants add.

A tree merges only when (else the lone BNs keep a BRANCHES_DO_NOT_MERGE reason with numbers):
every intermediate output is read by the tree alone; the Convs share strides, group, output
and input channels, weight dtype, and the dilation of every dim wider than 1; no auto_pad; each
branch's padding differs from the merged one's by whole taps on both sides (same output size,
same alignment); an identity branch needs stride 1 and as many output as input channels.
A tree is merged only when it holds a BN (a lone one, or one folded into a branch Conv): that
BN's record carries the merge (direction "reparam") and its local proof, region = the tree.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from bnfold.folding import math as fm
from bnfold.folding.bn import BnAffine, Refusal, label, read_bn
from bnfold.folding.report import FoldRecord, Reason
from bnfold.folding.rewrite import Rewriter, cast_exact, set_attr
from bnfold.folding.rules.common import declared_shapes_agree, elem_type, per_channel, weight
from bnfold.folding.rules.validate import conv_weight
from bnfold.graph.index import GraphIndex, attr

_DEFAULT = ("", "ai.onnx")
Key = tuple[str, str]  # (graph path, BN output)


@dataclass
class Tree:
    """An Add tree: its root, internal Adds, the input ``x`` and the leaf operands."""

    root: onnx.NodeProto
    adds: list[onnx.NodeProto]
    x: str
    convs: list[onnx.NodeProto] = field(default_factory=list)
    bns: list[onnx.NodeProto] = field(default_factory=list)
    identities: int = 0  # how many times x itself is summed
    consts: list[str] = field(default_factory=list)  # constant leaves (timm's ``out = 0``)


@dataclass(frozen=True)
class _Conv:
    node: onnx.NodeProto
    w: np.ndarray
    bias: np.ndarray          # float64
    pads: list[int]           # begin..., end...
    dilations: list[int]


@dataclass(frozen=True)
class Merge:
    """A tree that is one Conv: the branch Conv kept for it and its float64 weight and bias."""

    tree: Tree
    keep: onnx.NodeProto
    weight: np.ndarray
    bias: np.ndarray
    pads: list[int]
    dilations: list[int]


def find_trees(g: GraphIndex) -> list[Tree]:
    """Every Add tree whose leaves are all Conv, BN or ``x`` reading one ``x``, with a Conv."""
    trees = []
    for node in g.graph.node:
        if not _is_add(node) or _internal(g, node.output[0]):
            continue
        adds, leaves, todo = [], [], [node]
        while todo:
            add = todo.pop()
            adds.append(add)
            for operand in add.input:
                p = g.producer(operand)
                if p is not None and _is_add(p) and _internal(g, operand):
                    todo.append(p)
                else:
                    leaves.append(operand)
        tree = _leaves(g, node, adds, leaves)
        if tree is not None:
            trees.append(tree)
    return trees


def _is_add(node: onnx.NodeProto) -> bool:
    return node.op_type == "Add" and node.domain in _DEFAULT and len(node.input) == 2


def _internal(g: GraphIndex, tensor: str) -> bool:
    """Read once, by an Add, and no graph output: part of a larger tree."""
    readers = g.consumers(tensor)
    return g.uses(tensor) == 1 and len(readers) == 1 and _is_add(readers[0])


def _leaves(g: GraphIndex, root: onnx.NodeProto, adds: list[onnx.NodeProto],
            leaves: list[str]) -> Tree | None:
    producers = [g.producer(t) for t in leaves]
    branch = [p for p in producers if p is not None and p.domain in _DEFAULT
              and p.op_type in ("Conv", "BatchNormalization") and p.input]
    for x in dict.fromkeys(p.input[0] for p in branch):
        tree = Tree(root, adds, x)
        for t, p in zip(leaves, producers):
            if t == x:
                tree.identities += 1
            elif p in branch and p.input[0] == x:
                (tree.convs if p.op_type == "Conv" else tree.bns).append(p)
            else:
                tree.consts.append(t)
        if tree.convs and all(g.const(t) is not None for t in tree.consts):
            return tree
    return None


def match(g: GraphIndex, tree: Tree, protected: set[str]) -> Merge | Refusal:
    """The merged Conv of ``tree``, or why its branches are not one convolution."""
    if g.opset < 7:
        return _no(f"Add at opset {g.opset} broadcasts only with an attribute")
    nodes = tree.adds + tree.convs + tree.bns
    for leaf in tree.convs + tree.bns:
        if g.uses(leaf.output[0]) != 1 or g.is_graph_output(leaf.output[0]):
            return _no(f"{label(leaf)}'s output is read outside the Add tree")
    touched = {t for n in nodes for t in list(n.input) + list(n.output) if t}
    touched -= {tree.x, tree.root.output[0]}
    if touched & protected:
        bound = sorted(touched & protected)[0]
        return Refusal(Reason.TRAINING_BINDING, f"training_info names {bound!r}, which the "
                       "merge would rewrite or remove")
    readers = nodes + [p for t in touched for p in [g.producer(t)] if p is not None]
    refs = [a.name for n in readers for a in n.attribute if a.ref_attr_name]
    if refs:
        return Refusal(Reason.UNSUPPORTED_NEIGHBOUR, f"attribute {refs[0]!r} of the tree refers "
                       "to a function attribute: its value is unknown here")
    found = declared_shapes_agree(g, *nodes)
    if found:
        return found
    convs = []
    for node in tree.convs:
        conv = _read_conv(g, node)
        if isinstance(conv, Refusal):
            return conv
        convs.append(conv)
    bns = []
    for node in tree.bns:
        bn = read_bn(g, node)
        if isinstance(bn, Refusal):
            return Refusal(bn.reason, f"identity branch {label(node)}: {bn.detail}")
        bns.append(bn)
    merge = _merge(tree, convs, bns, [int(attr(n, "group", 1)) for n in tree.convs])
    if isinstance(merge, Refusal):
        return merge
    for t in tree.consts:
        value = np.asarray(g.const(t), dtype=np.float64)
        vec = per_channel(value, merge.weight.ndim, merge.weight.shape[0])
        if vec is None:
            return _no(f"constant {t!r} of shape {list(value.shape)} is not per-channel")
        merge = replace(merge, bias=merge.bias + vec)
    return merge


def _no(detail: str) -> Refusal:
    return Refusal(Reason.BRANCHES_DO_NOT_MERGE, detail)


def _read_conv(g: GraphIndex, node: onnx.NodeProto) -> _Conv | Refusal:
    found = conv_weight(g, node)
    if isinstance(found, Refusal):
        return found
    w, _ = found  # the channels only need to be valid here
    bias = np.zeros(w.shape[0])
    if len(node.input) > 2 and node.input[2]:
        b = weight(g, node, 2, "bias")
        if isinstance(b, Refusal):
            return b
        if b.shape != (w.shape[0],):
            return _no(f"{label(node)} bias has shape {list(b.shape)}")
        bias = np.asarray(b, dtype=np.float64)
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return _no(f"{label(node)} has auto_pad={attr(node, 'auto_pad')!r}: pads are implicit")
    n = w.ndim - 2
    pads = list(attr(node, "pads", None) or [0] * 2 * n)
    dilations = list(attr(node, "dilations", None) or [1] * n)
    return _Conv(node, w, bias, pads, dilations)


def _merge(tree: Tree, convs: list[_Conv], bns: list[BnAffine], groups: list[int],
           ) -> Merge | Refusal:
    first = convs[0]
    for c, group in zip(convs, groups):
        for what, a, b in (("strides", attr(c.node, "strides", None) or [1] * (c.w.ndim - 2),
                            attr(first.node, "strides", None) or [1] * (first.w.ndim - 2)),
                           ("group", group, groups[0]), ("rank", c.w.ndim, first.w.ndim),
                           ("output channels", c.w.shape[0], first.w.shape[0]),
                           ("input channels per group", c.w.shape[1], first.w.shape[1]),
                           ("weight dtype", elem_type(c.w), elem_type(first.w))):
            if list(np.atleast_1d(a)) != list(np.atleast_1d(b)):
                return _no(f"{what} {_show(a)} of {label(c.node)} vs {_show(b)} of "
                           f"{label(first.node)}")
    n, m, cpg = first.w.ndim - 2, first.w.shape[0], first.w.shape[1]
    strides = list(attr(first.node, "strides", None) or [1] * n)
    if bns or tree.identities:
        c_in = cpg * groups[0]
        if c_in != m:
            return _no(f"identity branch: the Convs map {c_in} input to {m} output channels")
        if any(s != 1 for s in strides):
            return _no(f"identity branch with Conv strides {strides}: it reads every pixel")
        for bn in bns:
            if bn.channels != m:
                return _no(f"identity branch {label(bn.node)} has {bn.channels} channels, "
                           f"the Convs {m}")
    size, pads, dil = [], [0] * 2 * n, [1] * n
    for d in range(n):  # the widest kernel of each dim sets the merged size, pads, dilation
        widest = max(convs, key=lambda c: c.w.shape[2 + d])
        size.append(widest.w.shape[2 + d])
        pads[d], pads[n + d], dil[d] = widest.pads[d], widest.pads[n + d], widest.dilations[d]
    leaves = [(c.w.shape[2:], c.pads, c.dilations, label(c.node)) for c in convs]
    leaves += [((1,) * n, [0] * 2 * n, [1] * n, "identity")] if bns or tree.identities else []
    offsets = []
    for k, p, dl, name in leaves:
        offset = []
        for d in range(n):
            if k[d] > 1 and dl[d] != dil[d]:
                return _no(f"{name} dilation {dl[d]} vs {dil[d]} in spatial dim {d}")
            a, rest = divmod(pads[d] - p[d], dil[d])
            after = size[d] - k[d] - a
            if rest or a < 0 or after < 0 or pads[n + d] - p[n + d] != dil[d] * after:
                return _no(f"{name} kernel {list(k)} with pads {p} does not line up with "
                           f"kernel {size} with pads {pads} (dilations {dil})")
            offset.append(a)
        offsets.append(tuple(offset))
    w = sum(fm.embed_kernel(c.w, tuple(size), o) for c, o in zip(convs, offsets))
    b = sum(c.bias for c in convs)
    for bn in bns:
        w = w + fm.identity_kernel(bn.scale, cpg, tuple(size), offsets[-1])
        b = b + bn.shift
    if tree.identities:
        w = w + fm.identity_kernel(np.full(m, float(tree.identities)), cpg, tuple(size),
                                   offsets[-1])
    keep = max(convs, key=lambda c: int(np.prod(c.w.shape[2:]))).node
    return Merge(tree, keep, w, b, pads, dil)


def _show(v: object) -> str:
    return str(list(v)) if isinstance(v, (list, tuple)) else str(v)


def apply(g: GraphIndex, merge: Merge, rw: Rewriter, notes: list[str]) -> str:
    """Rewrite the tree as its kept Conv with the merged weights; return that Conv's label."""
    keep, tree = merge.keep, merge.tree
    t = elem_type(g.const(keep.input[1]))
    w_new = cast_exact(merge.weight, t, f"{label(keep)} merged weight", notes)
    b_new = cast_exact(merge.bias, t, f"{label(keep)} merged bias", notes)
    rw.set_const_input(g, keep, 1, w_new, keep.input[1])
    rw.set_const_input(g, keep, 2, b_new, f"{keep.name or tree.root.output[0]}_bias")
    set_attr(keep, "pads", merge.pads)
    set_attr(keep, "dilations", merge.dilations)
    if attr(keep, "kernel_shape", None) is not None:
        set_attr(keep, "kernel_shape", list(w_new.shape[2:]))
    for node in tree.adds + tree.convs + tree.bns:
        rw.drop_value_info(node.output[0])
        if node is not keep:
            rw.remove_node(node)
    keep.output[0] = tree.root.output[0]
    return label(keep)


def reparameterize(g: GraphIndex, rw: Rewriter, path: str, records: dict[int, FoldRecord],
                   protected: set[str], unmerged: dict[Key, str], notes: list[str]) -> None:
    """Merge every tree of the graph that holds a BN; update ``records`` (id(BN) -> record).

    A tree one of whose BNs is in ``unmerged`` (its merge failed the proof) stays as it is.
    """
    by_target: dict[str, list[int]] = {}
    for key, r in records.items():
        if r.folded and r.graph == path:
            by_target.setdefault(r.target, []).append(key)
    dirty: set[str] = set()  # names a merge of this call removed or rewrote (not its output)
    for tree in find_trees(g):
        if _names(tree) & dirty:  # trees are disjoint, so this is rare: then look afresh
            g, dirty = _reindex(g), set()
        branch = [k for c in tree.convs for k in by_target.get(label(c), [])]
        lone = [id(n) for n in tree.bns if id(n) in records]
        keys = branch + lone
        if not keys:
            continue  # no BN in the tree: nothing to account for it, nor to prove it
        failed = [unmerged[(path, records[k].bn_output)] for k in keys
                  if (path, records[k].bn_output) in unmerged]
        if failed:
            _refuse(records, lone, Refusal(Reason.PROOF_FAILED, f"the merge failed its proof: {failed[0]}"))
            continue
        found = match(g, tree, protected)
        if isinstance(found, Refusal):
            _refuse(records, lone, found)
            continue
        merged = tuple(label(c) for c in tree.convs)
        target = apply(g, found, rw, notes)
        for k in keys:
            r = records[k]
            records[k] = FoldRecord(bn=r.bn, graph=path, target=target, direction="reparam",
                                    bn_output=r.bn_output, merged=merged)
        dirty |= _names(tree)


def _names(tree: Tree) -> set[str]:
    """Every tensor a tree's nodes read or write but its output, which keeps its readers (a
    merge gives it another producer, which no other tree's merge looks at). The index is not
    rebuilt after each merge: later trees are other nodes, so what they look up is unchanged;
    one reading a name an earlier merge rewrote gets a fresh index first."""
    nodes = tree.adds + tree.convs + tree.bns
    return {t for n in nodes for t in list(n.input) + list(n.output) if t} - {tree.root.output[0]}


def _refuse(records: dict[int, FoldRecord], lone: list[int], why: Refusal) -> None:
    """Lone BNs the generic "no neighbour" reason described get the tree's own reason."""
    for k in lone:
        r = records[k]
        if r.reason in (Reason.NO_FOLDABLE_NEIGHBOUR, None) or why.reason == Reason.PROOF_FAILED:
            records[k] = replace(r, reason=why.reason, detail=f"reparam: {why.detail}")


def _reindex(g: GraphIndex) -> GraphIndex:
    """A fresh index of the edited graph with the same shapes, dtypes and scope."""
    return GraphIndex(g.graph, ir_version=g.ir_version, opset=g.opset, shapes=g.shapes,
                      dtypes=g.dtypes, outer=g.outer, base_dir=g.base_dir,
                      opset_imports=g.opset_imports, mismatches=g.mismatches,
                      const_memo=g.const_memo)
