"""ONNX Runtime sessions for verification: opening one, running feeds (names: ``bnfold.ort``).

Graph optimisations are disabled by default so a comparison tests the fold, not ORT's own fusions
(ORT would otherwise fold BN itself in the original model). onnxruntime is imported lazily.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from bnfold.errors import BnfoldError, InputError, first_line
from bnfold.ort import OPT_LEVELS, PROVIDERS, check_opt_level, provider_chain, session_options

__all__ = ["OPT_LEVELS", "PROVIDERS", "check_opt_level", "make_session", "provider_chain", "run"]


def make_session(model: str | Path | onnx.ModelProto, provider: str, opt_level: str) -> Any:
    """An InferenceSession on ``provider`` at ``opt_level``. A path is loaded by ORT itself, so
    external data next to the model is found; a ModelProto is passed serialised."""
    import onnxruntime as ort

    chain = provider_chain(provider)
    so = session_options(opt_level)
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    label = str(model) if isinstance(model, (str, Path)) else "in-memory model"
    try:
        session = ort.InferenceSession(source, so, providers=list(chain))
    except Exception as exc:  # ORT raises its own exception types for invalid or unsupported models
        first = first_line(exc)
        raise InputError(f"onnxruntime cannot load {label}: {first}") from exc
    from bnfold.verification.engines import require_provider

    require_provider(chain, session.get_providers(), label)
    return session


def _ort_value(arr: np.ndarray) -> Any:
    """Numpy array as something ORT accepts; bfloat16 goes through an OrtValue of raw uint16."""
    if arr.dtype.name == "bfloat16":
        import onnxruntime as ort

        if not hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"):
            raise BnfoldError(f"feeding bfloat16 inputs needs onnxruntime >= 1.20 "
                              f"(installed: {ort.__version__})")
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            np.ascontiguousarray(arr).view(np.uint16), onnx.TensorProto.BFLOAT16)
    return arr


def run(session: Any, feed: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Run one feed; returns {output name: array}. Shape/dtype mismatches become InputError."""
    names = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
    feeds = {k: _ort_value(v) for k, v in feed.items()}  # outside the try: not ORT's failure
    try:
        values = session.run(names, feeds)
    except Exception as exc:  # ORT's InvalidArgument/Fail types are not importable portably
        first = first_line(exc)
        shapes = ", ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in feed.items())
        raise InputError(f"onnxruntime failed on inputs {shapes}: {first}") from exc
    return {n: np.asarray(v) for n, v in zip(names, values)}
