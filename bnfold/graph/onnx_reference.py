"""onnx.reference's evaluator with the fixes bnfold needs to trust it as a second engine.

onnx.reference (checked with onnx 1.16-1.23) runs every BatchNormalization of opset 9 to 13 in
training mode: the schema's default ``momentum`` is filled in, and its implementation takes a
momentum as the sign of training, so an inference BN normalises with the batch's statistics.
Here a BN runs in training mode only when it asks for it (``training_mode=1``, or extra
outputs in opsets before 14); otherwise it is the inference affine map, as ONNX Runtime
computes it. onnx.reference's grouped ConvTranspose is wrong too (it splits the weight by output
channels, gives every group the whole bias, keeps one output channel per group): here each
group runs as its own ungrouped ConvTranspose. Both fixes reach every subgraph and function.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

import onnx


def default_opset(model: onnx.ModelProto | onnx.FunctionProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return onnx.defs.onnx_opset_version()


def _batch_norm(version: int) -> type:
    """A BatchNormalization implementation for ``version`` that honours inference mode."""
    from onnx.reference.ops import load_op
    from onnx.reference.ops.op_batch_normalization import _batchnorm_test_mode

    base = load_op("", "BatchNormalization", version)
    accepted = set(inspect.signature(base._run).parameters)

    class BatchNormalization(base):  # type: ignore[misc, valid-type]
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, **attrs):  # noqa: ANN001, ANN003, ANN202
            extra = sum(1 for o in self.onnx_node.output[1:] if o)
            if attrs.get("training_mode") or extra or attrs.get("spatial", 1) == 0:
                return super()._run(x, scale, bias, mean, var,
                                    **{k: v for k, v in attrs.items() if k in accepted})
            eps = attrs.get("epsilon")
            return (_batchnorm_test_mode(x, scale, bias, mean, var,
                                         epsilon=1e-5 if eps is None else eps),)

    return BatchNormalization


def _conv_transpose(version: int) -> type:
    """A ConvTranspose implementation for ``version`` that computes groups correctly."""
    import numpy as np
    from onnx.reference.ops import load_op

    base = load_op("", "ConvTranspose", version)

    class ConvTranspose(base):  # type: ignore[misc, valid-type]
        op_domain = ""

        def _run(self, x, w, b=None, group=None, **attrs):  # noqa: ANN001, ANN003, ANN202
            if not group or group == 1:
                return super()._run(x, w, b, group=group, **attrs)
            cin, cout = x.shape[1] // group, w.shape[1]
            parts = [super(ConvTranspose, self)._run(
                x[:, g * cin:(g + 1) * cin], w[g * cin:(g + 1) * cin],
                None if b is None else b[g * cout:(g + 1) * cout], group=1, **attrs)[0]
                for g in range(group)]
            return (np.concatenate(parts, axis=1).astype(x.dtype),)

    return ConvTranspose


def evaluator(model: onnx.ModelProto, **kwargs: Any) -> Any:
    """``onnx.reference.ReferenceEvaluator`` for ``model`` with inference-mode BatchNormalization
    and correct grouped ConvTranspose in every graph, subgraph and model-local function."""
    return _evaluator_class()(model, **kwargs)


@functools.lru_cache(maxsize=None)
def _evaluator_class() -> type:
    """A ReferenceEvaluator whose every instance gets the fixed ops of its own opset.

    onnx.reference hands ``new_ops`` on to subgraph evaluators but builds each function body's
    evaluator with ``self.__class__(function)`` alone: the fix must ride on the class.
    """
    from onnx.reference import ReferenceEvaluator

    class Evaluator(ReferenceEvaluator):  # type: ignore[misc, valid-type]
        def __init__(self, proto: Any, *args: Any, new_ops: list | None = None,
                     **kwargs: Any) -> None:
            version = default_opset(proto) \
                if isinstance(proto, (onnx.ModelProto, onnx.FunctionProto)) else None
            fixed = [] if version is None else [_batch_norm(version), _conv_transpose(version)]
            super().__init__(proto, *args, new_ops=fixed + list(new_ops or []), **kwargs)

    return Evaluator
