"""Against PyTorch: ``update_bn`` (momentum=None) and ``--cumulative`` agree where their
semantics coincide (BNs with no BN before them); a BN after another BN differs, as documented:
update_bn runs every BN in training mode (batch statistics), bnfold measures in inference mode."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bnfold  # noqa: E402
from bnfold.exporting.exporter import export  # noqa: E402


class TwoBranches(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.bn_a = torch.nn.BatchNorm2d(4)
        self.b = torch.nn.Conv2d(2, 4, 1)
        self.bn_b = torch.nn.BatchNorm2d(4)
        self.c = torch.nn.Conv2d(4, 4, 1)
        self.bn_c = torch.nn.BatchNorm2d(4)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.bn_c(self.c(torch.relu(self.bn_a(self.a(x))))) + self.bn_b(self.b(x))


def _stats(onnx_model, bn_name: str) -> tuple[np.ndarray, np.ndarray]:
    from onnx import numpy_helper

    node = next(n for n in onnx_model.graph.node
                if n.op_type == "BatchNormalization" and bn_name in n.name)
    inits = {t.name: t for t in onnx_model.graph.initializer}
    return (numpy_helper.to_array(inits[node.input[3]]).astype(np.float64),
            numpy_helper.to_array(inits[node.input[4]]).astype(np.float64))


def test_cumulative_matches_update_bn_where_the_semantics_coincide(tmp_path) -> None:
    torch.manual_seed(0)
    net = TwoBranches().eval()
    rng = np.random.default_rng(0)
    batches = [rng.normal(1.5, 2.0, (6, 2, 5, 5)).astype(np.float32) for _ in range(5)]
    exported = export(net, torch.from_numpy(batches[0]), tmp_path / "m.onnx").model
    result = bnfold.recalibrate(exported, [{"input": b} for b in batches], mode="cumulative")
    torch.optim.swa_utils.update_bn([torch.from_numpy(b) for b in batches], net)
    for name in ("bn_a", "bn_b"):  # no BN before them: same statistics
        mean, var = _stats(result.model, name)
        bn = getattr(net, name)
        np.testing.assert_allclose(mean, bn.running_mean.double().numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(var, bn.running_var.double().numpy(), rtol=1e-6)
    # bn_c reads bn_a's output: update_bn normalised it with batch statistics, bnfold with the
    # recalibrated running statistics, so the two differ (the documented difference)
    mean, _ = _stats(result.model, "bn_c")
    assert not np.allclose(mean, net.bn_c.running_mean.double().numpy(), rtol=1e-6, atol=1e-7)
