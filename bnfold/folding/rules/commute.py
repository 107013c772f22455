"""Ops an affine map y = S*x + T (element by element) passes through, and what it becomes.

Each op states its condition here; when it fails, the op stops the map with a reason.

- Identity, Dropout (inference: no training_mode, and its mask unread), Cast between float
  types where the absorbing side is at least as wide as the BN side: the map is unchanged.
- Reshape, Flatten, Transpose, Squeeze, Unsqueeze: only move elements; the map moves with
  them (tracked element by element with an index array over the static shapes).
- MaxPool / GlobalMaxPool: a max commutes with s*x + t only when every s > 0 (MaxPool pads
  with -inf, so its padding needs nothing more); the Indices output must be unread.
- AveragePool / GlobalAveragePool: linear with weights summing to 1; with padding only when
  count_include_pad=0 (padding counted as zeros would not be mapped).
- Resize with mode=nearest: copies elements, so any sign of s works; tf_crop_and_resize is
  refused (it writes an extrapolation value the map would not touch).
  Pools and Resize work within a channel: the map must be per-channel (axis 1) there.
- Add / Sub / Mul with a constant that does not enlarge the data: merged into the map, and
  the node goes away (a bias Add between a layer and its BN, a decomposed BN).
- Concat (backward: the map is split per input) and Split / Concat (forward).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from bnfold.folding.bn import FLOAT_TYPES, Refusal, label
from bnfold.folding.math import ElementAffine
from bnfold.folding.report import Reason
from bnfold.graph.index import GraphIndex, attr

MOVES = ("Identity", "Dropout", "Cast", "Reshape", "Flatten", "Transpose", "Squeeze",
         "Unsqueeze")
WITHIN_CHANNEL = ("MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Resize")
CONSTANT_OPS = ("Add", "Sub", "Mul")
OPS = MOVES + WITHIN_CHANNEL + CONSTANT_OPS + ("Concat", "Split")
_WIDTH = {onnx.TensorProto.FLOAT16: 16, onnx.TensorProto.BFLOAT16: 16,
          onnx.TensorProto.FLOAT: 32, onnx.TensorProto.DOUBLE: 64}


@dataclass(frozen=True)
class Step:
    """The map on the far side of one op: (tensor, map) pairs; ``removed`` when the op's effect
    joined the map (its node goes), with ``data`` its data input."""

    pairs: list[tuple[str, ElementAffine]]
    removed: bool = False
    data: str = ""


class Fill:
    """The size given to dimensions shape inference left unknown, and whether one was."""

    def __init__(self, value: int) -> None:
        self.value, self.used = value, False


def dims(g: GraphIndex, name: str, fill: Fill) -> tuple[int, ...] | None:
    """Static shape of ``name`` with unknown dims set to ``fill`` (None: rank unknown)."""
    shape = g.shape(name)
    if shape is None or any(d is not None and int(d) < 0 for d in shape):
        return None  # unknown, or a negative dim (a malformed model): no static map over it
    fill.used = fill.used or None in shape
    return tuple(fill.value if d is None else int(d) for d in shape)


def _stop(node: onnx.NodeProto, reason: Reason, detail: str) -> Refusal:
    return Refusal(reason, f"{label(node)}: {detail}")


def condition(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine,
              toward_bn: str, toward_absorber: str) -> Refusal | None:
    """None when ``node`` commutes with ``emap``; else why not. ``toward_bn``/``toward_absorber``:
    the node's tensors on either side (for Cast widths)."""
    op = node.op_type
    if op == "Dropout":
        mode = node.input[2] if len(node.input) > 2 else ""
        if mode and (g.const(mode) is None or bool(np.asarray(g.const(mode)).any())):
            return _stop(node, Reason.COMMUTE_CONDITION, "training_mode is not a constant false")
        if g.opset < 7 and not attr(node, "is_test", 0):
            return _stop(node, Reason.COMMUTE_CONDITION, "is_test=0 (opset < 7)")
    if op == "Cast":
        a, b = g.dtype(toward_bn), g.dtype(toward_absorber)
        if a not in FLOAT_TYPES or b not in FLOAT_TYPES or _WIDTH[b] < _WIDTH[a] or (
                _WIDTH[a] == _WIDTH[b] and a != b):
            names = [onnx.TensorProto.DataType.Name(d) if d else "unknown" for d in (a, b)]
            return _stop(node, Reason.COMMUTE_CONDITION,
                         f"Cast between {names[1]} (absorber side) and {names[0]} (BN side): "
                         "the absorber side must be a float type at least as wide")
    if op in ("MaxPool", "GlobalMaxPool"):
        s = emap.scale
        if np.any(s <= 0):
            return _stop(node, Reason.NEGATIVE_SCALE_POOL,
                         f"{int(np.count_nonzero(s <= 0))} scale(s) <= 0 (min {s.min():.4g})")
    if op == "AveragePool" and attr(node, "count_include_pad", 0):
        pad = _pool_padding(node)
        if pad:
            return _stop(node, Reason.COMMUTE_CONDITION,
                         f"count_include_pad=1 with {pad}: padding is averaged as zeros")
    if op == "Resize":
        mode = _text(attr(node, "mode", b"nearest"))
        ctm = _text(attr(node, "coordinate_transformation_mode", b"half_pixel"))
        if mode != "nearest" or ctm == "tf_crop_and_resize":
            return _stop(node, Reason.COMMUTE_CONDITION, f"Resize mode={mode}, "
                         f"coordinate_transformation_mode={ctm}: only nearest copies elements")
    return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pool_padding(node: onnx.NodeProto) -> str:
    auto_pad = _text(attr(node, "auto_pad", b"NOTSET"))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return f"auto_pad={auto_pad}"
    pads = attr(node, "pads", None) or []
    return f"pads={list(pads)}" if auto_pad != "VALID" and any(pads) else ""


def unread_extras(g: GraphIndex, node: onnx.NodeProto) -> Refusal | None:
    """Dropout's mask or MaxPool's indices must not be read: they would not follow the map."""
    if node.op_type not in ("Dropout", "MaxPool"):
        return None
    for out in node.output[1:]:
        if out and (g.consumers(out) or g.is_graph_output(out)):
            return _stop(node, Reason.COMMUTE_CONDITION, f"its second output {out!r} is read")
    return None


def move(g: GraphIndex, node: onnx.NodeProto, arr: np.ndarray) -> np.ndarray | Refusal:
    """Apply an element-moving op to ``arr`` (numpy semantics of the ONNX op).

    A Reshape whose shape is computed at run time (``x.view(x.size(0), -1)``) takes its
    target from the inferred output shape when at most one dimension of it is unknown."""
    op = node.op_type
    try:
        if op in ("Identity", "Dropout", "Cast"):
            return arr
        if op == "Transpose":
            return np.transpose(arr, attr(node, "perm", None))
        if op == "Flatten":
            axis = int(attr(node, "axis", 1)) % (arr.ndim + 1) if arr.ndim else 0
            return arr.reshape(int(np.prod(arr.shape[:axis])), -1)
        if op == "Reshape":
            target = _ints(g, node, 1, "shape")
            if isinstance(target, Refusal):
                target = _inferred_target(g, node) or target
            if isinstance(target, Refusal):
                return target
            if not attr(node, "allowzero", 0):
                target = [arr.shape[i] if d == 0 else d for i, d in enumerate(target)]
            return arr.reshape(target)
        axes = _ints(g, node, 1, "axes", optional=op == "Squeeze")
        if isinstance(axes, Refusal):
            return axes
        if op == "Squeeze":
            return np.squeeze(arr, axis=None if axes is None else tuple(axes))
        out = arr
        rank = arr.ndim + len(axes)
        for a in sorted(int(a) % rank for a in axes):
            out = np.expand_dims(out, a)
        return out
    except (ValueError, TypeError, np.exceptions.AxisError) as exc:
        return _stop(node, Reason.CHANNEL_MISMATCH, f"cannot apply it to shape "
                                                    f"{list(arr.shape)}: {exc}")


def _inferred_target(g: GraphIndex, node: onnx.NodeProto) -> list[int] | None:
    shape = g.shape(node.output[0])
    if shape is None or sum(d is None for d in shape) > 1:
        return None
    return [-1 if d is None else int(d) for d in shape]


def _ints(g: GraphIndex, node: onnx.NodeProto, index: int, name: str,
          optional: bool = False) -> list[int] | None | Refusal:
    """An int list given as attribute (old opsets) or as constant input ``index``."""
    value = attr(node, name, None)
    if value is not None:
        return [int(v) for v in value]
    if len(node.input) > index and node.input[index]:
        const = g.const(node.input[index])
        if const is None:
            return _stop(node, Reason.COMMUTE_CONDITION, f"its {name} is not a constant")
        return [int(v) for v in np.asarray(const).reshape(-1)]
    return None if optional else _stop(node, Reason.COMMUTE_CONDITION, f"no {name}")


def constant_operand(g: GraphIndex, node: onnx.NodeProto) -> tuple[int, np.ndarray] | None:
    """(index of the data input, float64 constant) of an Add/Sub/Mul with one constant."""
    if len(node.input) != 2 or node.input[0] == node.input[1]:
        return None
    for data in (0, 1):
        if node.op_type == "Sub" and data == 1:
            return None  # c - x negates x: not handled
        value = g.const(node.input[1 - data])
        if value is not None and value.dtype.kind == "f" and np.isfinite(value).all():
            if g.const(node.input[data]) is None:
                return data, np.asarray(value, dtype=np.float64)
    return None


def _padded(arr: np.ndarray, rank: int) -> np.ndarray:
    return arr.reshape((1,) * (rank - arr.ndim) + arr.shape)


def _mismatch(node: onnx.NodeProto, detail: str) -> Refusal:
    return _stop(node, Reason.CHANNEL_MISMATCH, detail)


def _constant_step(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine, fill: Fill,
                   backward: bool) -> Step | Refusal:
    found = constant_operand(g, node)
    if found is None:
        return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, f"{label(node)} has no constant operand",
                       specific=False)
    data, c = found
    if c.ndim > len(emap.shape) or np.broadcast_shapes(c.shape, emap.shape) != emap.shape or (
            dims(g, node.input[data], fill) not in (None, emap.shape)):
        return _mismatch(node, f"its constant {list(c.shape)} broadcasts the data "
                               f"{list(emap.shape)} to another shape")
    s, t = emap.scale, emap.shift
    if node.op_type == "Mul":
        s, t = (s * c, t) if backward else (s * c, t * c)
    else:
        c = -c if node.op_type == "Sub" else c
        t = t + s * c if backward else t + c
    other = node.input[data] if backward else node.output[0]
    return Step([(other, ElementAffine(emap.shape, s, t))], removed=True, data=node.input[data])


def _moved_back(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine,
                fill: Fill) -> Step | Refusal:
    if node.op_type in ("Identity", "Dropout", "Cast"):
        return Step([(node.input[0], emap)])
    in_shape = dims(g, node.input[0], fill)
    if in_shape is None:
        return _mismatch(node, "the rank of its input is unknown")
    rank = len(emap.shape)
    if node.op_type == "Transpose" and len(in_shape) == rank:
        perm = attr(node, "perm", None) or list(range(rank))[::-1]
        inverse = list(np.argsort(perm))
        return Step([(node.input[0], ElementAffine(in_shape, _padded(emap.scale, rank).transpose(
            inverse), _padded(emap.shift, rank).transpose(inverse)))])
    index = move(g, node, np.arange(int(np.prod(in_shape)), dtype=np.int64).reshape(in_shape))
    if isinstance(index, Refusal):
        return index
    if index.shape != emap.shape:
        emap = _refilled(g, node, emap, index.shape)
    if isinstance(emap, Refusal):
        return emap
    scale, shift = emap.full()
    s_in, t_in = np.empty(index.size), np.empty(index.size)
    s_in[index.reshape(-1)], t_in[index.reshape(-1)] = scale.reshape(-1), shift.reshape(-1)
    return Step([(node.input[0], ElementAffine(in_shape, s_in.reshape(in_shape),
                                               t_in.reshape(in_shape)).compact())])


def _refilled(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine,
              moved: tuple[int, ...]) -> ElementAffine | Refusal:
    """``emap`` over ``moved``, the shape the node's filled input moves to, when the two differ
    only in dims inference left unknown on the output (each side got its own fill, e.g. N*T
    rows from [N, T, C]) and the map does not vary along them; else a mismatch."""
    out = g.shape(node.output[0])
    differ = [i for i, (a, b) in enumerate(zip(moved, emap.shape)) if a != b]
    size_one = all(np.shape(_padded(a, len(moved)))[i] == 1 for a in (emap.scale, emap.shift)
                   for i in differ) if len(moved) == len(emap.shape) else False
    if out is None or not size_one or any(out[i] is not None for i in differ):
        return _mismatch(node, f"input moves to {list(moved)}, the map covers "
                               f"{list(emap.shape)}")
    return ElementAffine(moved, emap.scale, emap.shift)


def _within_channel(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine, other: str,
                    fill: Fill) -> Step | Refusal:
    shape = dims(g, other, fill)
    if shape is None or len(shape) != len(emap.shape) or len(shape) < 3 or (
            shape[1] != emap.shape[1]):
        return _mismatch(node, f"shapes {list(emap.shape)} and {shape} do not share channel "
                               "axis 1")
    st = emap.along(1)
    if st is None:
        return _mismatch(node, f"the map over {list(emap.shape)} varies within a channel; "
                               f"{node.op_type} mixes values within a channel")
    return Step([(other, ElementAffine.per_channel(shape, *st))])


def _sliced(emap: ElementAffine, axis: int,
            parts: list[tuple[str, tuple[int, ...]]]) -> Step:
    """``emap`` cut along ``axis`` into consecutive slices, one per (tensor, shape) of ``parts``
    (Concat's inputs, Split's outputs)."""
    rank = len(emap.shape)
    scale, shift = _padded(emap.scale, rank), _padded(emap.shift, rank)
    pairs, start = [], 0
    for name, shape in parts:
        cut = (slice(None),) * axis + (slice(start, start + shape[axis]),)
        pairs.append((name, ElementAffine(shape, *(a if a.shape[axis] == 1 else a[cut]
                                                   for a in (scale, shift)))))
        start += shape[axis]
    return Step(pairs)


def _concat_back(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine,
                 fill: Fill) -> Step | Refusal:
    rank = len(emap.shape)
    axis = int(attr(node, "axis", 1)) % max(rank, 1)
    if len(set(node.input)) != len(node.input):
        return _mismatch(node, "it reads one tensor twice: two slices, one producer")
    shapes = [dims(g, x, fill) for x in node.input]
    if any(s is None or len(s) != rank for s in shapes) or sum(
            s[axis] for s in shapes) != emap.shape[axis]:
        return _mismatch(node, f"input shapes {shapes} do not make {list(emap.shape)}")
    return _sliced(emap, axis, list(zip(node.input, shapes)))


def back_step(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine,
              fill: Fill) -> Step | Refusal:
    """The map(s) on ``node``'s inputs that give ``emap`` on its output."""
    op = node.op_type
    refusal = (condition(g, node, emap, node.output[0], node.input[0] if node.input else "")
               or unread_extras(g, node))
    if refusal:
        return refusal
    if op in MOVES:
        return _moved_back(g, node, emap, fill)
    if op in WITHIN_CHANNEL:
        return _within_channel(g, node, emap, node.input[0], fill)
    if op in CONSTANT_OPS:
        return _constant_step(g, node, emap, fill, backward=True)
    if op == "Concat":
        return _concat_back(g, node, emap, fill)
    return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, f"{label(node)} ({op}) neither absorbs nor "
                                                 "passes the map", specific=False)


def _moved_forward(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine) -> Step | Refusal:
    if node.op_type in ("Identity", "Dropout", "Cast"):
        return Step([(node.output[0], emap)])
    rank = len(emap.shape)
    if node.op_type == "Transpose":
        perm = attr(node, "perm", None) or list(range(rank))[::-1]
        s, t = (_padded(a, rank).transpose(perm) for a in (emap.scale, emap.shift))
        return Step([(node.output[0], ElementAffine(tuple(emap.shape[p] for p in perm), s, t))])
    scale, shift = emap.full()
    s, t = move(g, node, scale), move(g, node, shift)
    for moved in (s, t):
        if isinstance(moved, Refusal):
            return moved
    return Step([(node.output[0], ElementAffine(s.shape, s, t).compact())])


def _split_forward(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine,
                   fill: Fill) -> Step | Refusal:
    rank = len(emap.shape)
    axis = int(attr(node, "axis", 0)) % max(rank, 1)
    shapes = [dims(g, o, fill) for o in node.output]
    if any(s is None or len(s) != rank for s in shapes) or sum(
            s[axis] for s in shapes) != emap.shape[axis]:
        return _mismatch(node, f"output shapes {shapes} do not split {list(emap.shape)}")
    return _sliced(emap, axis, list(zip(node.output, shapes)))


def _concat_forward(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine, tensor: str,
                    fill: Fill) -> Step | Refusal:
    """The other inputs join with the identity map (scale 1, shift 0)."""
    rank = len(emap.shape)
    axis = int(attr(node, "axis", 1)) % max(rank, 1)
    if list(node.input).count(tensor) != 1:
        return _mismatch(node, "it reads the BN output twice")
    scales, shifts = [], []
    for name in node.input:
        shape = emap.shape if name == tensor else dims(g, name, fill)
        if shape is None or len(shape) != rank:
            return _mismatch(node, f"input {name!r} has an unknown or different rank")
        if name == tensor:
            s, t = emap.full()
        else:
            s, t = np.ones(shape), np.zeros(shape)
        scales.append(s)
        shifts.append(t)
    s, t = np.concatenate(scales, axis), np.concatenate(shifts, axis)
    return Step([(node.output[0], ElementAffine(s.shape, s, t).compact())])


def forward_step(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine, tensor: str,
                 fill: Fill) -> Step | Refusal:
    """The map(s) on ``node``'s outputs when its input ``tensor`` carries ``emap``."""
    op = node.op_type
    if op not in ("Concat", "Add", "Mul", "Sub") and (node.input[0] != tensor or tensor in
                                                       node.input[1:]):
        return Refusal(Reason.UNSUPPORTED_NEIGHBOUR, f"the BN output is not only the data input "
                                                     f"of {label(node)}")
    refusal = (condition(g, node, emap, tensor, node.output[0]) or unread_extras(g, node))
    if refusal:
        return refusal
    if op in MOVES:
        return _moved_forward(g, node, emap)
    if op in WITHIN_CHANNEL:
        return _within_channel(g, node, emap, node.output[0], fill)
    if op in CONSTANT_OPS:
        step = _constant_step(g, node, emap, fill, backward=False)
        if isinstance(step, Step) and step.data != tensor:
            return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, specific=False)
        return step
    if op == "Split":
        return _split_forward(g, node, emap, fill)
    if op == "Concat":
        return _concat_forward(g, node, emap, tensor, fill)
    return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, f"{label(node)} ({op}) neither absorbs nor "
                                                 "passes the map", specific=False)
