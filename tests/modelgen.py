"""Tiny ONNX models built in code for the tests, and an ONNX Runtime equivalence check."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.float64): TensorProto.DOUBLE, np.dtype(np.int64): TensorProto.INT64}


class Builder:
    """Builds a graph step by step; each layer returns its output tensor name."""

    def __init__(self, opset: int = 17, dtype: type = np.float32, seed: int = 0,
                 ir_version: int | None = None, param_dtype: type | None = None) -> None:
        self.opset, self.dtype, self.ir_version = opset, np.dtype(dtype), ir_version
        self.param_dtype = np.dtype(param_dtype or dtype)
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value: np.ndarray, prefix: str = "w", dtype: np.dtype | None = None) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype or self.dtype), name))
        return name

    def input(self, name: str, shape: list, dtype: np.dtype | None = None) -> str:
        elem = NP_TO_ONNX[np.dtype(dtype or self.dtype)]
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, dtype: np.dtype | None = None) -> None:
        elem = NP_TO_ONNX[np.dtype(dtype or self.dtype)]
        self.outputs.append(helper.make_tensor_value_info(name, elem, None))

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str:
        outs = [self.name(op.lower() + "_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs[0]

    def weights(self, shape: tuple[int, ...], scale: float = 0.5) -> np.ndarray:
        return self.rng.normal(0, scale, shape)

    def conv(self, x: str, cin: int, cout: int, k: int = 3, *, group: int = 1, pads: int = 1,
             bias: bool = True, dims: int = 2, **attrs) -> str:
        w = self.const(self.weights((cout, cin // group) + (k,) * dims))
        ins = [x, w] + ([self.const(self.weights((cout,)), "b")] if bias else [])
        if pads:
            attrs["pads"] = [pads] * (2 * dims)
        return self.node("Conv", ins, group=group, **attrs)

    def conv_transpose(self, x: str, cin: int, cout: int, k: int = 3, *, group: int = 1,
                       bias: bool = True, dims: int = 2, **attrs) -> str:
        w = self.const(self.weights((cin, cout // group) + (k,) * dims))
        ins = [x, w] + ([self.const(self.weights((cout,)), "b")] if bias else [])
        return self.node("ConvTranspose", ins, group=group, **attrs)

    def bn_params(self, c: int, *, gamma_sign: float = 1.0, tiny_var: bool = False) -> list[str]:
        gamma = self.rng.uniform(0.5, 1.5, c) * gamma_sign
        beta = self.rng.normal(0, 0.5, c)
        mean = self.rng.normal(0, 0.5, c)
        var = self.rng.uniform(1e-6, 1e-5, c) if tiny_var else self.rng.uniform(0.5, 2.0, c)
        return [self.const(v, p, self.param_dtype) for v, p in
                zip((gamma, beta, mean, var), ("gamma", "beta", "mean", "var"))]

    def bn(self, x: str, c: int, *, epsilon: float = 1e-5, params: list[str] | None = None,
           **kw) -> str:
        return self.node("BatchNormalization", [x] + (params or self.bn_params(c, **kw)),
                         epsilon=epsilon)

    def model(self, graph_name: str = "g") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.inits)
        kw = {"ir_version": self.ir_version} if self.ir_version else {}
        if not kw and self.opset <= 8:
            kw["ir_version"] = 3
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], **kw)
        if "ir_version" not in kw:
            m.ir_version = min(m.ir_version, 10)
        probe = onnx.ModelProto()
        probe.CopyFrom(m)
        if probe.ir_version < 4:  # IR 3 inference only sees initializers listed as inputs
            listed = {i.name for i in probe.graph.input}
            probe.graph.input.extend(
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in probe.graph.initializer if t.name not in listed)
        inferred = onnx.shape_inference.infer_shapes(probe)
        known = {vi.name: vi for vi in inferred.graph.value_info}
        known.update({vi.name: vi for vi in inferred.graph.output})
        for out in m.graph.output:
            if out.name in known and known[out.name].type.tensor_type.HasField("shape"):
                out.type.CopyFrom(known[out.name].type)
        return m


def count_bn(model: onnx.ModelProto) -> int:
    total = 0

    def visit(graph: onnx.GraphProto) -> None:
        nonlocal total
        for n in graph.node:
            total += n.op_type == "BatchNormalization"
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)

    visit(model.graph)
    return total


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        np_type = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = rng.normal(0, 1, shape).astype(np_type)
    return feeds


def max_error(a: onnx.ModelProto, b: onnx.ModelProto, batches=(1, 8)) -> float:
    """Largest |a - b| over all outputs at the given batch sizes (ORT, optimizations off)."""
    worst = 0.0
    for batch in batches:
        feeds = random_feeds(a, batch, seed=batch)
        for x, y in zip(run(a, feeds), run(b, feeds)):
            assert x.shape == y.shape and x.dtype == y.dtype
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            same = (x64 == y64) | (np.isnan(x64) & np.isnan(y64))  # equal infinities, both NaN
            diff = np.where(same, 0.0, np.abs(x64 - y64))
            worst = max(worst, float(np.max(np.nan_to_num(diff, nan=np.inf), initial=0.0)))
    return worst


def tolerance(reference: onnx.ModelProto, rel: float = 1e-4) -> float:
    """An absolute tolerance scaled by the output magnitude of ``reference``."""
    feeds = random_feeds(reference, 8, seed=8)
    peak = max(float(np.max(np.abs(o.astype(np.float64)), initial=0.0))
               for o in run(reference, feeds))
    return rel * max(1.0, peak)


def bn9(empty_optional_outputs: bool) -> onnx.ModelProto:
    """Opset-9 BN on x (1, 3, 4, 4); with outputs ["y", "", "", "", ""] onnxruntime 1.32 segfaults
    running it (a valid model: empty names mark absent optional outputs)."""
    inits = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "m", "v")]
    outs = ["y", "", "", "", ""] if empty_optional_outputs else ["y"]
    g = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], outs, name="bn")],
        "bn9", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 8
    return m


def ort_crashes_on(path: object) -> bool:
    """Whether onnxruntime dies on a signal running the model at ``path`` on ones (in a child)."""
    import subprocess
    import sys

    probe = ("import sys, numpy as np, onnxruntime as ort; so = ort.SessionOptions(); "
             "so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL; "
             "s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider']); "
             "s.run(None, {i.name: np.ones(i.shape, np.float32) for i in s.get_inputs()})")
    return subprocess.run([sys.executable, "-c", probe, str(path)],
                          capture_output=True).returncode < 0


def sized_model(block: int) -> onnx.ModelProto:
    """Conv -> BN -> Reshape(0, -1, block) on an N x 1 x H x W input: runs only for the sizes
    where 2*H*W is a multiple of ``block`` (2048: H = W = 32, 64, ...; 8192: 64, 128, ...),
    like a detection model that needs multiples of 32."""
    b = Builder()
    x = b.input("x", ["N", 1, "H", "W"])
    y = b.bn(b.conv(x, 1, 2), 2)
    b.output(b.node("Reshape", [y, b.const(np.array([0, -1, block]), "shape", np.int64)]))
    return b.model()
