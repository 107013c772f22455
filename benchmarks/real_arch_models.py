"""Real architectures for the BN-folding comparison: build, randomize BN statistics, export.

torchvision and timm build each network with random weights (nothing is downloaded); every
BatchNorm gets random running statistics and affine parameters so that a fold changes the
weights for real. Each network is exported twice, both keeping every BN: with bnfold's own
exporter (torch dynamo, ``optimize=False``) and with torch's TorchScript exporter
(``dynamo=False``, ``TrainingMode.PRESERVE`` in eval mode, no constant folding; its eval-mode
peephole, which fuses Conv+BN, runs only for ``TrainingMode.EVAL``). Exports are cached on
disk by model, export path, input size and seed. torch, torchvision and timm are imported
only inside the functions that need them.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

EXPORTS = ("dynamo", "torchscript")


@dataclass(frozen=True)
class Arch:
    """One network: where it comes from, how to build it, and the input it is exported at."""

    name: str
    source: str                       # "torchvision" | "torchvision.segmentation" | "timm"
    kwargs: tuple[tuple[str, Any], ...] = ()
    size: int = 64                    # square input side; some nets need more than 64
    note: str = ""


def _tv(name: str, size: int = 64, **kw: Any) -> Arch:
    return Arch(name, "torchvision", tuple(sorted({"weights": None, **kw}.items())), size)


def _timm(name: str, size: int = 64, note: str = "", **kw: Any) -> Arch:
    return Arch(name, "timm", tuple(sorted(kw.items())), size, note)


ARCHS: dict[str, Arch] = {a.name: a for a in [
    _tv("resnet18"), _tv("resnet50"), _tv("mobilenet_v2"), _tv("mobilenet_v3_small"),
    _tv("efficientnet_b0"), _tv("regnet_x_400mf"), _tv("shufflenet_v2_x0_5"), _tv("densenet121"),
    _tv("googlenet", aux_logits=False, init_weights=False),
    _tv("inception_v3", size=80, aux_logits=False, init_weights=False),
    _tv("mnasnet0_5"),
    Arch("deeplabv3_mobilenet_v3_large", "torchvision.segmentation",
         (("aux_loss", False), ("weights", None), ("weights_backbone", None)), 64),
    _timm("mixnet_s", note="channel Split/Concat between conv and BN"),
    _timm("repvgg_a2", note="parallel conv+BN branches summed (re-parameterizable)"),
    _timm("resnetv2_50", note="pre-activation: BN after Add and after the stem MaxPool"),
    _timm("rexnet_100"), _timm("ghostnet_100"), _timm("dla34"), _timm("hrnet_w18_small"),
    _timm("dpn68", note="BN on concatenated dual-path features"),
    _timm("res2net50_14w_8s"),
    _timm("tf_efficientnet_b0", note="TF 'same' padding (explicit Pad before conv)"),
    _timm("cspresnet50"), _timm("selecsls42b"), _timm("mobilevitv2_050"), _timm("regnety_002"),
    _timm("levit_128s", img_size=64, note="BN after Linear (MatMul) on tokens"),
    _timm("mobileone_s0", note="train-time over-parameterized branches with BN"),
]}
QUICK = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "mixnet_s", "regnety_002")
SKIPPED = {
    "convnext_tiny": "no BatchNormalization (LayerNorm)",
    "squeezenet1_0": "no BatchNormalization",
    "fcn_resnet50": "same backbone as resnet50 at 1.3x the size; deeplabv3_mobilenet_v3_large "
                    "stands for segmentation",
}


def build(arch: Arch) -> Any:
    """The network with random weights, in eval mode (torchvision/timm imported here)."""
    kw = dict(arch.kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arch.source == "timm":
            import timm

            model = timm.create_model(arch.name, pretrained=False, **kw)
        else:
            import torchvision

            ns = torchvision.models.segmentation if arch.source.endswith("segmentation") \
                else torchvision.models
            model = getattr(ns, arch.name)(**kw)
    return model.eval()


def tensor_output(model: Any) -> Any:
    """Wrap ``model`` so it returns a tensor (segmentation models return {"out": tensor})."""
    import torch

    class Unwrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return out["out"] if isinstance(out, dict) else out

    return Unwrap().eval()


def randomize_bn(model: Any, seed: int, negative_gamma: float = 0.0) -> int:
    """Random BN statistics and affine parameters, so that every fold changes weights.

    Per BN: running_mean ~ N(0, s) with s ~ U(0.1, 1), running_var ~ U(0.5, 2), gamma ~
    U(0.5, 1.5) (a ``negative_gamma`` fraction of channels negated), beta ~ N(0, 0.2).
    Returns the number of BatchNorm modules changed.
    """
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    rng = np.random.default_rng(seed)
    n = 0
    for m in model.modules():
        if not isinstance(m, _BatchNorm) or m.running_mean is None:
            continue
        c = m.num_features
        mean = rng.normal(0.0, rng.uniform(0.1, 1.0), c)
        var = rng.uniform(0.5, 2.0, c)
        gamma = rng.uniform(0.5, 1.5, c) * np.where(rng.random(c) < negative_gamma, -1.0, 1.0)
        beta = rng.normal(0.0, 0.2, c)
        with torch.no_grad():
            m.running_mean.copy_(torch.from_numpy(mean))
            m.running_var.copy_(torch.from_numpy(var))
            if m.affine:
                m.weight.copy_(torch.from_numpy(gamma))
                m.bias.copy_(torch.from_numpy(beta))
        n += 1
    return n


def example_input(arch: Arch, seed: int) -> np.ndarray:
    """The fixed random input (1x3xSxS, float32) used for export and for every comparison."""
    return np.random.default_rng(seed).standard_normal((1, 3, arch.size, arch.size)).astype(np.float32)


def _torchscript_export(model: Any, x: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=["input"], output_names=["output"])
    return buf.getvalue()


def _cache_key(arch: Arch, export: str, seed: int, negative_gamma: float) -> str:
    text = repr((arch, export, seed, negative_gamma, _versions_key()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _versions_key() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "torchvision", "timm"):
        try:
            out.append(version(pkg))
        except PackageNotFoundError:
            out.append("-")
    return "/".join(out)


def export_arch(arch: Arch, export: str, cache: str, seed: int = 0, negative_gamma: float = 0.0,
                log: Callable[[str], None] = print) -> tuple[str, dict[str, Any]]:
    """Build, randomize and export ``arch`` by ``export`` ("dynamo" | "torchscript").

    Returns the ONNX path (cached) and facts about the export (BN modules, export seconds).
    """
    import json
    import time

    os.makedirs(cache, exist_ok=True)
    stem = os.path.join(cache, f"{arch.name}.{export}.{_cache_key(arch, export, seed, negative_gamma)}")
    path, meta_path = stem + ".onnx", stem + ".json"
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as fh:
            return path, {**json.load(fh), "cached": True}
    import torch

    torch.manual_seed(seed)
    model = tensor_output(build(arch))
    bn_modules = randomize_bn(model, seed, negative_gamma)
    x = torch.from_numpy(example_input(arch, seed))
    log(f"  exporting {arch.name} ({export}, 1x3x{arch.size}x{arch.size}) ...")
    start = time.perf_counter()
    if export == "dynamo":
        import bnfold

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bnfold.export(model, x, dynamic_batch=False)
        data = res.model.SerializeToString()
        meta = {"bn_modules": bn_modules, "export_ok": res.ok, "export_max_abs": res.max_abs_error}
    elif export == "torchscript":
        data = _torchscript_export(model, x)
        meta = {"bn_modules": bn_modules}
    else:
        raise ValueError(f"unknown export {export!r}; expected one of {EXPORTS}")
    meta["export_s"] = time.perf_counter() - start
    with open(path + ".tmp", "wb") as fh:
        fh.write(data)
    os.replace(path + ".tmp", path)
    with open(meta_path, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    return path, {**meta, "cached": False}
