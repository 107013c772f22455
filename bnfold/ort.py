"""ONNX Runtime names in one place: execution providers and graph optimization levels.

Every command (``fold``, ``verify``, ``bench``, ``recalibrate``) and every session bnfold opens
(verification child, benchmark workers, proofs, constant evaluation, export checks) take their
provider and level names from here, so ``--provider`` and ``--opt-level`` accept the same names
everywhere. A provider name maps to a fallback chain: an op the accelerator lacks runs on the
next provider (TensorRT, then CUDA, then CPU). onnxruntime itself is imported lazily.
"""
from __future__ import annotations

from typing import Any

from bnfold.errors import BnfoldError

PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
OPT_LEVELS: tuple[str, ...] = ("disabled", "basic", "extended", "all")
_ORT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def check_opt_level(level: str) -> str:
    """``level`` when it names an optimization level, else BnfoldError."""
    if level not in OPT_LEVELS:
        raise BnfoldError(f"unknown optimisation level {level!r}; choose from {', '.join(OPT_LEVELS)}")
    return level


def opt_level(level: str) -> Any:
    """The ``onnxruntime.GraphOptimizationLevel`` for one of OPT_LEVELS."""
    import onnxruntime as ort

    return getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[check_opt_level(level)])


def session_options(level: str = "disabled", *, threads: int | None = None) -> Any:
    """SessionOptions at ``level`` with ORT's warnings silenced (bnfold reports problems itself);
    ``threads`` sets the intra-op thread count (None: ORT's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = opt_level(level)
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
    return so


def provider_chain(name: str) -> tuple[str, ...]:
    """ORT execution providers for a short name (case-insensitive), those of its fallbacks this
    onnxruntime has; BnfoldError for an unknown name or when the provider itself is missing.
    "cpu" is in every onnxruntime build: answered without importing it (``bnfold fold`` then runs
    ORT only in its child process, about 20 MB less in bnfold itself)."""
    key = name.lower()
    if key not in PROVIDERS:
        raise BnfoldError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}")
    if key == "cpu":
        return PROVIDERS[key]
    import onnxruntime as ort

    wanted = PROVIDERS[key][0]
    available = ort.get_available_providers()
    if wanted not in available:
        raise BnfoldError(f"provider {key!r}: {wanted} is not available in this onnxruntime "
                          f"{ort.__version__} build (available: {', '.join(available)}); "
                          "install onnxruntime-gpu or use --provider cpu")
    return tuple(p for p in PROVIDERS[key] if p in available)
