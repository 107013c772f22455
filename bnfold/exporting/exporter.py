"""Export a PyTorch model to ONNX with every BatchNormalization kept, checked against PyTorch.

Uses torch's dynamo exporter with ``optimize=False`` (its optimizer would fuse BN away; the
legacy TorchScript exporter also fuses Conv+BN and is deprecated), then tidies the graph with
``bnfold.exporting.cleanup``. The model runs in eval mode, so BN uses its running statistics;
BNs found in training mode are reported. torch is imported only inside these functions.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from bnfold.errors import BnfoldError, InputError, first_line
from bnfold.exporting.cleanup import clean_exported

if TYPE_CHECKING:
    import torch

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4


class BnTrainingModeWarning(UserWarning):
    """A BatchNorm module was in training mode; the export used eval mode instead."""


@dataclass
class ExportResult:
    """The exported model and the evidence that it keeps every BN and matches PyTorch."""

    model: onnx.ModelProto
    path: str | None
    opset: int
    bn_calls: int                 # BatchNorm module calls seen in one PyTorch forward pass
    bn_nodes: int                 # BatchNormalization nodes in the exported graph
    max_abs_error: float          # ONNX Runtime vs PyTorch, over every checked batch size
    tolerance: float              # atol + rtol * max |PyTorch output|
    batch_sizes: list[int] = field(default_factory=list)
    dynamic_batch: bool = True
    zero_biases_dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every BN survived and ONNX Runtime matches PyTorch within tolerance."""
        return self.bn_nodes == self.bn_calls and self.max_abs_error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("model")
        d["ok"] = self.ok
        return d


TORCH_INSTALL = ("pip install torch==2.13.0 && pip install 'bnfold[torch]' (pin torch as shown: an "
                 "unpinned torch pulls a multi-GB CUDA build)")


def require_torch() -> Any:
    """Import torch and the exporter's helpers, or say in one line what to install."""
    try:
        import torch
    except ImportError as exc:
        raise InputError(f"bnfold export needs PyTorch, which is not installed: {TORCH_INSTALL}"
                         ) from exc
    for name in ("onnxscript", "onnx_ir"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise InputError(f"bnfold export needs {name!r} (torch's ONNX exporter uses it), "
                             "which is not installed: pip install 'bnfold[torch]'") from exc
    return torch


def load_factory(spec: str, weights: str | None = None) -> torch.nn.Module:
    """Build the module named ``package.module:factory`` (cwd importable); load a state_dict."""
    torch = require_torch()

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"bad model spec {spec!r}: expected package.module:factory")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot load {spec!r}: {exc}") from exc
    model = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{spec!r} gave a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            raise InputError(f"cannot read weights {weights!r}: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise InputError(f"weights {weights!r} hold a {type(state).__name__}, not a "
                             "state_dict (save with torch.save(model.state_dict(), path))")
        mismatch = state_dict_mismatch(model, state)
        if mismatch:
            raise InputError(f"weights {weights!r} do not fit {spec!r}: {mismatch}")
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"weights {weights!r} do not fit {spec!r}: "
                             f"{' '.join(str(exc).split())}") from exc
    return model


def state_dict_mismatch(model: torch.nn.Module, state: dict[str, Any], shown: int = 5) -> str:
    """What keeps ``state`` from loading into ``model``: missing/unexpected keys and shapes."""
    own = model.state_dict()

    def listed(keys: list[str]) -> str:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(getattr(state[k], "shape", own[k].shape)) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listed(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (file vs model): {listed(shapes)}")
    return "; ".join(parts)


def batchnorm_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(qualified name, module) for every BatchNorm1d/2d/3d (and subclasses) in ``model``."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [(name or "<root>", m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def export(model: torch.nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor],
           path: str | os.PathLike[str] | None = None, *, opset: int | None = None,
           dynamic_batch: bool = True, input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None, overwrite: bool = True,
           atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> ExportResult:
    """Export ``model`` in eval mode keeping every BN; compare ONNX Runtime with PyTorch.

    With ``dynamic_batch`` the first axis of every input is symbolic and the check runs at
    two batch sizes. The model's train/eval flags are restored afterwards. Saves to ``path``
    when given (atomically, via ``bnfold.io.model_io.save_model``; ``overwrite=False`` refuses an
    existing file).
    """
    torch = require_torch()

    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise InputError("example_input must be a tensor or a sequence of tensors")
    names_in = list(input_names or (["input"] if len(inputs) == 1 else
                                    [f"input{i}" for i in range(len(inputs))]))
    bns = batchnorm_modules(model)
    no_stats = [name for name, m in bns if not m.track_running_stats]
    if no_stats:
        raise InputError(f"BatchNorm {', '.join(no_stats)} has track_running_stats=False: no "
                         "running statistics to export; enable them or replace the layer")
    messages = _training_mode_messages(bns)
    with eval_mode(model):
        references, bn_calls = torch_forward(model, inputs)
        names_out = list(output_names or (["output"] if len(references) == 1 else
                                          [f"output{i}" for i in range(len(references))]))
        proto = _dynamo_export(model, inputs, names_in, names_out, opset, dynamic_batch)
        proto, cleanup = clean_exported(proto)
        checks = [(inputs, references)]
        if dynamic_batch:
            other = _other_batch(inputs)
            checks.append((other, torch_forward(model, other)[0]))
    error, scale = 0.0, 0.0
    for feeds, refs in checks:
        arrays = {n: t.detach().cpu().numpy() for n, t in zip(names_in, feeds, strict=True)}
        got = run_onnx(proto, arrays)
        for ref, out in zip(refs, got, strict=True):
            if ref.shape != out.shape:
                raise BnfoldError(f"exported output shape {out.shape} differs from PyTorch "
                                  f"{ref.shape}")
            error = max(error, float(np.max(np.abs(ref.astype(np.float64) - out), initial=0.0)))
            scale = max(scale, float(np.max(np.abs(ref), initial=0.0)))
    bn_nodes = sum(1 for n in proto.graph.node if n.op_type == "BatchNormalization")
    result = ExportResult(
        model=proto, path=None if path is None else os.fspath(path), opset=_opset(proto),
        bn_calls=bn_calls, bn_nodes=bn_nodes, max_abs_error=error, tolerance=atol + rtol * scale,
        batch_sizes=[int(feeds[0].shape[0]) for feeds, _ in checks], dynamic_batch=dynamic_batch,
        zero_biases_dropped=cleanup.zero_biases_dropped, warnings=messages)
    if path is not None:
        from bnfold.io.model_io import save_model

        save_model(proto, path, overwrite=overwrite)
    return result


def _training_mode_messages(bns: list[tuple[str, torch.nn.Module]]) -> list[str]:
    """One warning (also raised as BnTrainingModeWarning) naming BNs left in training mode."""
    training = [name for name, m in bns if m.training]
    if not training:
        return []
    more = f" and {len(training) - 5} more" if len(training) > 5 else ""
    shown = ", ".join(training[:5]) + more
    msg = (f"{len(training)} BatchNorm module(s) were in training mode ({shown}); exported in "
           "eval mode with their running statistics (call model.eval() to silence this)")
    warnings.warn(msg, BnTrainingModeWarning, stacklevel=3)
    return [msg]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put every module in eval mode; restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def torch_forward(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]
                   ) -> tuple[list[np.ndarray], int]:
    """PyTorch outputs as numpy arrays, and how many BatchNorm calls the forward made."""
    import torch

    calls = 0

    def hook(*_: Any) -> None:
        nonlocal calls
        calls += 1

    handles = [m.register_forward_hook(hook) for _, m in batchnorm_modules(model)]
    try:
        with torch.no_grad():
            out = model(*inputs)
    except Exception as exc:  # a wrong --shape is the usual cause
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        first = first_line(exc)
        raise InputError(f"the model failed on input shape {shapes}: {first}") from exc
    finally:
        for h in handles:
            h.remove()
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise InputError("the model must return a tensor or a tuple/list of tensors")
    return [o.detach().cpu().numpy() for o in outs], calls


def _other_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Seeded random inputs with a different batch size, to check the symbolic batch axis."""
    import torch

    gen = torch.Generator().manual_seed(1)
    batch = inputs[0].shape[0] + 2
    return tuple(torch.randn((batch, *t.shape[1:]), generator=gen).to(t.dtype)
                 if t.is_floating_point() else t[:1].expand(batch, *t.shape[1:]).clone()
                 for t in inputs)


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence the exporter's deprecation warnings and torchvision-missing log lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _dynamo_export(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
                   names_in: list[str], names_out: list[str], opset: int | None,
                   dynamic_batch: bool) -> onnx.ModelProto:
    """torch.onnx.export(dynamo=True, optimize=False); batch-1 examples are traced at batch 2."""
    import torch

    traced = inputs
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specialises a size-1 dimension, so trace with a batch of at least 2.
        traced = tuple(t if t.shape[0] > 1 else torch.cat([t, t]) for t in inputs)
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    try:
        with _quiet_torch():
            program = torch.onnx.export(model, traced, dynamo=True, optimize=False, verbose=False,
                                        opset_version=opset, input_names=names_in,
                                        output_names=names_out, dynamic_shapes=dynamic_shapes,
                                        external_data=False)
    except Exception as exc:  # the exporter raises many types; surface one line
        first = first_line(exc)
        raise BnfoldError(f"torch.onnx.export failed: {first}") from exc
    if program is None:
        raise BnfoldError("torch.onnx.export returned no program")
    return program.model_proto


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` on ONNX Runtime (CPU, graph optimizations off) and return every output."""
    import onnxruntime as ort

    from bnfold.ort import session_options

    session = ort.InferenceSession(model.SerializeToString(), session_options("disabled"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
