"""Measure the BatchNorm reference against independent implementations; print the deviations.

Each function returns {quantity: maximum absolute deviation}. The tests hold every figure
under a tolerance; ``python -m bnfold.reference.crosscheck`` prints them all. Checked against:
PyTorch autograd in float64, central finite differences, the ONNX specification's own
BatchNormalization test vectors, ``onnx.reference`` and ONNX Runtime.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bnfold.reference import batchnorm as bn

# (shape, channel axis): every rank the reference supports, and channels-last.
LAYOUTS: tuple[tuple[tuple[int, ...], int], ...] = (
    ((16, 4), 1), ((4, 3, 7), 1), ((2, 3, 4, 5), 1), ((2, 3, 3, 4, 5), 1), ((2, 4, 5, 3), -1))


def _dev(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _merge(into: dict[str, float], key: str, value: float) -> None:
    into[key] = max(into.get(key, 0.0), value)


def _params(rng: np.random.Generator, c: int, dtype: type = np.float64) -> list[np.ndarray]:
    """gamma, beta, running mean, running var (positive) for ``c`` channels."""
    return [rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype),
            rng.normal(size=c).astype(dtype), rng.uniform(0.5, 2.0, size=c).astype(dtype)]


def against_torch(seed: int = 0, steps: int = 5, eps: float = 1e-5) -> dict[str, float]:
    """Forward, dx/dgamma/dbeta and ``steps`` running-statistics updates vs PyTorch, float64."""
    import torch

    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for shape, axis in LAYOUTS:
        c = shape[axis]
        gamma, beta, run_mean, run_var = _params(rng, c)
        t_mean, t_var = torch.tensor(run_mean), torch.tensor(run_var)
        for _ in range(steps):
            x = rng.normal(3.0, 2.0, size=shape)
            dy = rng.normal(size=shape)
            fwd = bn.batch_norm_train(x, gamma, beta, eps, axis=axis)
            dx, dgamma, dbeta = bn.batch_norm_backward(dy, fwd.cache)
            run_mean, run_var = bn.running_stats_pytorch(run_mean, run_var, fwd.mean, fwd.var,
                                                         fwd.cache.count, momentum=0.1)
            tx = torch.tensor(np.moveaxis(x, axis, 1), requires_grad=True)
            tg = torch.tensor(gamma, requires_grad=True)
            tb = torch.tensor(beta, requires_grad=True)
            ty = torch.nn.functional.batch_norm(tx, t_mean, t_var, tg, tb, training=True,
                                                momentum=0.1, eps=eps)
            ty.backward(torch.tensor(np.moveaxis(dy, axis, 1)))
            for key, ours, theirs in (
                    ("y", fwd.y, np.moveaxis(ty.detach().numpy(), 1, axis)),
                    ("dx", dx, np.moveaxis(tx.grad.numpy(), 1, axis)),
                    ("dgamma", dgamma, tg.grad.numpy()), ("dbeta", dbeta, tb.grad.numpy()),
                    ("running_mean", run_mean, t_mean.numpy()),
                    ("running_var", run_var, t_var.numpy())):
                _merge(out, key, _dev(ours, theirs))
    return out


def finite_differences(seed: int = 0, h: float = 1e-6, eps: float = 1e-5) -> dict[str, float]:
    """Backward pass vs central differences of L = sum(dy * y) on small float64 tensors."""
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for shape, axis in (((5, 3), 1), ((2, 3, 2, 2), 1), ((2, 2, 3), -1)):
        c = shape[axis]
        x, dy = rng.normal(size=shape), rng.normal(size=shape)
        gamma, beta = rng.normal(size=c), rng.normal(size=c)
        grads = dict(zip(("x", "gamma", "beta"), bn.batch_norm_backward(
            dy, bn.batch_norm_train(x, gamma, beta, eps, axis=axis).cache), strict=True))
        args = {"x": x, "gamma": gamma, "beta": beta}
        for name, value in args.items():
            numeric = np.zeros_like(value)
            for i in np.ndindex(value.shape):
                losses = []
                for step in (h, -h):
                    moved = value.copy()
                    moved[i] += step
                    y = bn.batch_norm_train(**{**args, name: moved}, eps=eps, axis=axis).y
                    losses.append(float(np.sum(dy * y)))
                numeric[i] = (losses[0] - losses[1]) / (2 * h)
            _merge(out, f"d{name}", _dev(grads[name], numeric))
    return out


def spec_cases() -> Iterator[tuple[str, dict[str, np.ndarray | float], list[np.ndarray]]]:
    """The ONNX spec's BatchNormalization test vectors: (name, inputs and attributes, outputs).

    The installed onnx wheel does not ship data/node/*.pb, so the node cases
    (test_batchnorm_*, training mode included) are regenerated in memory by the spec's own
    generator, which seeds numpy itself. The wheel's pytorch-converted BatchNorm*_eval
    protobufs are read from disk.
    """
    import onnx
    from onnx import numpy_helper

    node_cases = importlib.import_module("onnx.backend.test.case.node")
    for module in ("batch_normalization", "batchnorm"):  # onnx >= 1.17, onnx 1.16
        if importlib.util.find_spec(f"onnx.backend.test.case.node.{module}") is not None:
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
            break
    models = [(c.name, c.model, *c.data_sets[0]) for c in node_cases._NodeTestCases
              if c.name.startswith("test_batchnorm")]
    data = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
    for case in sorted(data.glob("test_BatchNorm*")):
        model = onnx.load(case / "model.onnx")
        sets = case / "test_data_set_0"
        ins, outs = ([numpy_helper.to_array(onnx.load_tensor(p))
                      for p in sorted(sets.glob(f"{kind}_*.pb"))] for kind in ("input", "output"))
        models.append((case.name, model, ins, outs))
    for name, model, ins, outs in models:
        node = model.graph.node[0]
        # IR-3 models list initializers as inputs too: the .pb files feed the leading ones.
        values = dict(zip([i.name for i in model.graph.input], ins, strict=False))
        values.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        args: dict[str, np.ndarray | float] = {
            key: values[name] for key, name in
            zip(("x", "gamma", "beta", "mean", "var"), node.input, strict=True)}
        args["eps"] = attrs.get("epsilon", 1e-5)
        args["momentum"] = attrs.get("momentum", 0.9)
        args["training"] = float(attrs.get("training_mode", 0))
        yield name, args, list(outs)


def _run_reference(args: dict[str, np.ndarray | float]) -> list[np.ndarray]:
    """Our outputs for a BN node: [y] in eval mode, [y, running mean, running var] in training."""
    x, gamma, beta, mean, var = (args[k] for k in ("x", "gamma", "beta", "mean", "var"))
    if not args["training"]:
        return [bn.batch_norm_eval(x, gamma, beta, mean, var, args["eps"])]
    fwd = bn.batch_norm_train(x, gamma, beta, args["eps"])
    return [fwd.y, *bn.running_stats_onnx(mean, var, fwd.mean, fwd.var, args["momentum"])]


def against_spec_vectors() -> dict[str, float]:
    """Every output of every spec test vector, per case name."""
    return {name: max(_dev(o, e) for o, e in zip(_run_reference(args), outs, strict=True))
            for name, args, outs in spec_cases()}


def _bn_model(shape: tuple[int, ...], dtype: np.dtype, training: bool, eps: float,
              momentum: float):
    """A one-node opset-15 BatchNormalization model with every parameter a graph input."""
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    c = shape[1]
    inputs = [helper.make_tensor_value_info("x", elem, shape)] + [
        helper.make_tensor_value_info(n, elem, [c]) for n in ("gamma", "beta", "mean", "var")]
    outputs = [helper.make_tensor_value_info("y", elem, shape)]
    if training:
        outputs += [helper.make_tensor_value_info(n, elem, [c]) for n in ("new_mean", "new_var")]
    node = helper.make_node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"],
                            [o.name for o in outputs], epsilon=eps, momentum=momentum,
                            training_mode=int(training))
    graph = helper.make_graph([node], "bn", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def _runtime_cases(seed: int) -> Iterator[tuple[str, object, dict[str, np.ndarray], dict]]:
    """(label, model, feeds, reference args) for eval/training x float32/float64 x three ranks.

    eps and momentum are ONNX float32 attributes, so the reference gets their float32 values.
    """
    eps, momentum = float(np.float32(1e-3)), float(np.float32(0.8))
    rng = np.random.default_rng(seed)
    for dtype in (np.float32, np.float64):
        for training in (False, True):
            for shape in ((8, 3), (2, 3, 4, 5), (2, 3, 2, 3, 4)):
                x = rng.normal(1.0, 3.0, size=shape).astype(dtype)
                gamma, beta, mean, var = _params(rng, shape[1], dtype)
                feeds = {"x": x, "gamma": gamma, "beta": beta, "mean": mean, "var": var}
                args = {**feeds, "eps": eps, "momentum": momentum, "training": float(training)}
                key = f"{'training' if training else 'eval'} {np.dtype(dtype).name}"
                yield key, _bn_model(shape, dtype, training, eps, momentum), feeds, args


def against_onnx_reference(seed: int = 0) -> dict[str, float]:
    """Eval- and training-mode BN vs ``onnx.reference.ReferenceEvaluator``, float32 and float64."""
    from onnx.reference import ReferenceEvaluator

    out: dict[str, float] = {}
    for key, model, feeds, args in _runtime_cases(seed):
        got = ReferenceEvaluator(model).run(None, feeds)
        _merge(out, key, max(_dev(a, b) for a, b in zip(_run_reference(args), got, strict=True)))
    return out


def against_onnxruntime(seed: int = 0) -> dict[str, float]:
    """The same models on ONNX Runtime's CPU provider, graph optimizations disabled."""
    import onnxruntime as ort

    from bnfold.ort import session_options

    opts = session_options("disabled")
    out: dict[str, float] = {}
    for key, model, feeds, args in _runtime_cases(seed):
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)
        _merge(out, key, max(_dev(a, b) for a, b in zip(_run_reference(args), got, strict=True)))
    return out


CHECKS = {
    "PyTorch autograd (float64)": against_torch,
    "finite differences (float64)": finite_differences,
    "ONNX spec test vectors (float32)": against_spec_vectors,
    "onnx.reference": against_onnx_reference,
    "ONNX Runtime CPU": against_onnxruntime,
}


def main() -> None:
    """Print one line per quantity: the reference it is checked against and the max deviation."""
    for title, check in CHECKS.items():
        for key, value in check().items():
            print(f"{title:34s} {key:38s} max |diff| {value:.3g}")


if __name__ == "__main__":
    main()
