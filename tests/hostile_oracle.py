"""The oracle of the trust campaign: does a folded model compute what the original computes?

ONNX Runtime (graph optimizations off) runs the ORIGINAL model; where ORT has no kernel (float64
Conv, bfloat16) ``onnx.reference`` runs it instead, and the folded model runs on the same engine.
Every boolean input is tried both ways, tensors read by ArgMax/TopK are exposed as outputs, each
feed runs twice so outputs that differ run to run (random ops) are left out, and the tolerance
is relative to the output peak (float16/bfloat16: against the float32 model, as tests/test_fuzz).
"""
from __future__ import annotations

import hashlib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from hostile import F32, Case, convert

LOW = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
REL = {F32: 1e-4, TensorProto.DOUBLE: 1e-9, TensorProto.FLOAT16: 5e-2, TensorProto.BFLOAT16: 2e-1}


class Unrunnable(Exception):
    """Neither ORT nor onnx.reference can run the original: not a case the oracle can judge."""


@dataclass
class Verdict:
    error: float = 0.0
    tolerance: float = 0.0
    engine: str = ""
    detail: list[str] = field(default_factory=list)
    nondeterministic: set[str] = field(default_factory=set)

    @property
    def wrong(self) -> bool:
        return not self.error <= self.tolerance


class Engine:
    """One model on ORT or onnx.reference; ``run`` returns {output name: float64 or int array}."""

    def __init__(self, model: onnx.ModelProto, kind: str) -> None:
        self.kind = kind
        if kind == "ort":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.log_severity_level = 4
            self.sess = ort.InferenceSession(model.SerializeToString(), so,
                                             providers=["CPUExecutionProvider"])
            self.names = [o.name for o in self.sess.get_outputs()]
        else:
            from bnfold.onnx_reference import evaluator

            self.sess = evaluator(model)
            self.names = list(self.sess.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.sess.run(None, feeds)
        return {n: np.asarray(o) for n, o in zip(self.names, outs)}


def open_engine(model: onnx.ModelProto, kind: str | None = None) -> Engine:
    """ORT if it loads the model, else onnx.reference (or exactly ``kind``)."""
    if kind is not None:
        return Engine(model, kind)
    try:
        return Engine(model, "ort")
    except Exception:
        return Engine(model, "reference")


def with_outputs(model: onnx.ModelProto, names: list[str], elem: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(n, elem, None)
                            for n in names if n not in have)
    return out


def feeds_for(model: onnx.ModelProto, batch: int, seed: int,
              conds: dict[str, bool]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if tt.elem_type == TensorProto.BOOL:
            feeds[vi.name] = np.array(conds.get(vi.name, True))
            continue
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        feeds[vi.name] = rng.normal(0, 1, shape).astype(helper.tensor_dtype_to_np_dtype(
            tt.elem_type))
    return feeds


def judge(case: Case, folded: onnx.ModelProto) -> Verdict:
    """Largest |folded - original| over all paths vs a tolerance; raises Unrunnable."""
    original = with_outputs(case.model, case.probes, case.dtype)
    folded = with_outputs(folded, case.probes, case.dtype)
    reference = retype_to_f32(original, case.dtype) if case.dtype in LOW else original
    try:
        ref_engine = open_engine(reference)
        # the low-precision original on ORT where it has the kernels (bfloat16 BN and Gemm it
        # lacks), else on onnx.reference; the float32 truth stays on its own engine
        orig_engine = open_engine(original) if reference is not original else ref_engine
    except Exception as exc:
        raise Unrunnable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    v = Verdict(engine=ref_engine.kind)
    try:
        fold_engine = Engine(folded, orig_engine.kind)
    except Exception as exc:
        v.error, v.tolerance = float("inf"), 0.0
        v.detail.append(f"folded model does not load on {orig_engine.kind}: {str(exc)[:300]}")
        return v
    peak, base = 1.0, 0.0
    for values in itertools.product([True, False], repeat=len(case.conds)):
        conds = dict(zip(case.conds, values))
        for batch, seed in ((1, 1), (3, 2)):
            feeds = feeds_for(case.model, batch, seed, conds)
            try:
                ref_a, ref_b = ref_engine.run(_f32(feeds, case.dtype)), ref_engine.run(
                    _f32(feeds, case.dtype))
                orig = orig_engine.run(feeds) if orig_engine is not ref_engine else ref_a
            except Exception as exc:
                raise Unrunnable(f"original fails to run: {str(exc)[:200]}") from exc
            try:
                got = fold_engine.run(feeds)
            except Exception as exc:
                v.error = float("inf")
                v.detail.append(f"folded model fails to run ({conds}): {str(exc)[:300]}")
                return v
            for name, r in ref_a.items():
                if not _same(r, ref_b[name]):
                    v.nondeterministic.add(name)
                    continue
                if r.dtype.kind not in "f" and str(r.dtype) != "bfloat16":
                    continue  # ArgMax/TopK indices: judged through the exposed probes
                if name not in got:
                    v.error = float("inf")
                    v.detail.append(f"output {name} missing in the folded model")
                    continue
                r64, g64 = r.astype(np.float64), got[name].astype(np.float64)
                if name in orig and orig[name].shape != r64.shape:
                    raise Unrunnable(f"engines disagree on the original's {name} shape: "
                                     f"{orig[name].shape} on {orig_engine.kind} vs {r64.shape} "
                                     f"on {ref_engine.kind} (ConvTranspose auto_pad, say)")
                if r64.shape != g64.shape:
                    v.error = float("inf")
                    v.detail.append(f"{name}: shape {r64.shape} vs {g64.shape} ({conds})")
                    continue
                ok = np.isfinite(r64)
                if case.dtype in LOW and not (ok.all() and np.abs(r64).max(initial=0) < 6e4):
                    continue  # the low-precision original overflows too: nothing to compare
                if not ok.any():
                    continue
                peak = max(peak, float(np.abs(r64[ok]).max()))
                diff = np.where(np.isfinite(g64[ok]), np.abs(g64[ok] - r64[ok]), np.inf)
                err = float(diff.max())
                if err > v.error:
                    v.error = err
                    v.detail.append(f"{name}: max error {err:.3g} at {conds} batch {batch}")
                if case.dtype in LOW:
                    o64 = orig[name].astype(np.float64)[ok]
                    base = max(base, float(np.nan_to_num(np.abs(o64 - r64[ok]), nan=np.inf).max()))
    v.tolerance = max(4 * base, REL[case.dtype] * peak) if case.dtype in LOW \
        else REL[case.dtype] * peak
    return v


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a.astype(np.float64)) &
                                                            np.isnan(b.astype(np.float64)))))


def _f32(feeds: dict[str, np.ndarray], elem: int) -> dict[str, np.ndarray]:
    if elem not in LOW:
        return feeds
    return {k: v.astype(np.float32) if v.dtype.kind == "f" or str(v.dtype) == "bfloat16" else v
            for k, v in feeds.items()}


def retype_to_f32(model: onnx.ModelProto, elem: int) -> onnx.ModelProto:
    """The low-precision model computing in float32 (the truth it approximates)."""
    return convert(model, elem, F32)


# --- accounting and validity -------------------------------------------------------------------

def count_all_bn(model: onnx.ModelProto) -> int:
    """BatchNormalization nodes in every graph, subgraph and model-local function."""
    def nodes(ns) -> int:  # noqa: ANN001
        total = 0
        for n in ns:
            total += n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    total += nodes(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    total += sum(nodes(g.node) for g in a.graphs)
        return total

    return nodes(model.graph.node) + sum(nodes(f.node) for f in model.functions)


def checker_errors(model: onnx.ModelProto) -> frozenset[str] | None:
    """The full checker's complaints, one per line with node names left out (None when clean):
    a fold may remove an error of the input, never add one."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # checker and inference errors alike
        text = re.sub(r"\(op_type:[^)]*\)", "(node)", f"{type(exc).__name__}: {exc}")
        text = text.replace("Inference error(s): ", "\n")
        return frozenset(line.strip() for line in text.splitlines() if line.strip())
    return None


def dangling_bindings(model: onnx.ModelProto) -> list[str]:
    """training_info binding keys, and algorithm reads, that name no main-graph initializer."""
    inits = {t.name for t in model.graph.initializer}
    bad = []
    for info in model.training_info:
        for b in list(info.update_binding) + list(info.initialization_binding):
            if b.key not in inits:
                bad.append(f"binding key {b.key}")
        produced = {o for n in info.algorithm.node for o in n.output}
        produced |= {t.name for t in info.algorithm.initializer}
        for n in info.algorithm.node:
            bad += [f"algorithm reads {i}" for i in n.input
                    if i and i not in produced and i not in inits]
    return bad


# --- external data layouts ----------------------------------------------------------------------

def save_layout(model: onnx.ModelProto, folder: Path, layout: str) -> Path:
    """Save ``model`` under ``folder`` with its tensors stored externally as ``layout`` says."""
    from onnx.external_data_helper import convert_model_to_external_data

    m = onnx.ModelProto()
    m.CopyFrom(model)
    path = folder / "model.onnx"
    location = {"one_file": "weights.bin", "subfolder": "data/weights.bin",
                "constants_too": "weights.bin", "shared_file": "shared.bin",
                "named_like_output": "out.onnx.data",
                "named_like_model": "model.onnx.data"}.get(layout)  # the name --in-place picks
    if layout == "subfolder":
        (folder / "data").mkdir()
    convert_model_to_external_data(m, all_tensors_to_one_file=layout != "per_tensor",
                                   location=location, size_threshold=0,
                                   convert_attribute=layout == "constants_too")
    onnx.save_model(m, str(path))
    if layout == "shared_file":  # a second model shares the data file: its bytes must stay
        other = folder / "other.onnx"
        onnx.save_model(m, str(other))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (to prove the inputs were not touched)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
