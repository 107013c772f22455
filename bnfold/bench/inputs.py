"""Random benchmark inputs built from a model's declared graph inputs.

The leading symbolic dimension is the batch; other symbolic dimensions must be given
by name (``dims={"seq": 128}``) so a benchmark never guesses a shape silently.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from bnfold.errors import InputError


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, and dims (int, or str for a symbolic dim, or None)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]


def read_input_specs(path: str) -> list[InputSpec]:
    """Graph inputs of the model at ``path`` that are not initializers (weights not loaded)."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a bad file
        raise InputError(f"cannot read ONNX model {path!r}: {exc}") from exc
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            raise InputError(f"input {vi.name!r} of {path!r} is not a tensor; "
                             "bnfold bench only feeds tensor inputs")
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        specs.append(InputSpec(vi.name, dtype, tuple(dims)))
    return specs


def default_batch(specs: list[InputSpec]) -> int:
    """The batch to use when none is asked for: a fixed leading dim if there is one, else 1."""
    for s in specs:
        if s.dims and isinstance(s.dims[0], int):
            return s.dims[0]
    return 1


def resolve_shape(spec: InputSpec, batch: int, dims: Mapping[str, int]) -> tuple[int, ...]:
    """Concrete shape for ``spec`` at ``batch``: fixed dims kept, a leading symbol = batch."""
    shape: list[int] = []
    for axis, d in enumerate(spec.dims):
        if isinstance(d, int):
            shape.append(d)
        elif isinstance(d, str) and d in dims:
            shape.append(int(dims[d]))
        elif axis == 0:
            shape.append(batch)
        else:
            label = repr(d) if d else "(unnamed)"
            raise InputError(f"input {spec.name!r} dimension {axis} {label} is symbolic; "
                             f"give its size with --dim {d or 'NAME'}=N")
    return tuple(shape)


def make_inputs(specs: list[InputSpec], batch: int, dims: Mapping[str, int] | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs: standard normal for floats, zeros for integers and booleans."""
    fixed = default_batch(specs)
    if batch != fixed and not any(s.dims and not isinstance(s.dims[0], int) for s in specs):
        raise InputError(f"every input has a fixed leading dimension (batch {fixed}); cannot run "
                         f"batch {batch} (use --batch {fixed} or a dynamic-batch model)")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = resolve_shape(spec, batch, dims or {})
        if np.issubdtype(spec.dtype, np.floating) or spec.dtype.kind == "V":
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return out
