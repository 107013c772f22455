"""The BatchNorm reference agrees with PyTorch, finite differences, the ONNX spec's vectors,
onnx.reference and ONNX Runtime; and the cross-checks notice a wrong implementation."""
from __future__ import annotations

import numpy as np
import pytest

from bnfold.reference import batchnorm as bn
from bnfold.reference import crosscheck


def test_matches_pytorch_autograd_in_float64() -> None:
    pytest.importorskip("torch")
    devs = crosscheck.against_torch()
    assert set(devs) == {"y", "dx", "dgamma", "dbeta", "running_mean", "running_var"}
    assert max(devs.values()) < 1e-12, devs


def test_backward_matches_central_finite_differences() -> None:
    devs = crosscheck.finite_differences()
    assert set(devs) == {"dx", "dgamma", "dbeta"}
    assert max(devs.values()) < 1e-7, devs


def test_matches_every_onnx_spec_test_vector() -> None:
    devs = crosscheck.against_spec_vectors()
    assert {"test_batchnorm_example", "test_batchnorm_epsilon",
            "test_batchnorm_example_training_mode", "test_batchnorm_epsilon_training_mode",
            "test_BatchNorm1d_3d_input_eval", "test_BatchNorm2d_eval",
            "test_BatchNorm3d_momentum_eval"} <= set(devs)
    assert max(devs.values()) < 1e-6, devs


@pytest.mark.parametrize("check", [crosscheck.against_onnx_reference,
                                   crosscheck.against_onnxruntime])
def test_matches_onnx_runtimes_in_eval_and_training_mode(check) -> None:
    devs = check()
    assert set(devs) == {"eval float32", "training float32", "eval float64", "training float64"}
    assert devs["eval float64"] < 1e-12 and devs["training float64"] < 1e-12, devs
    assert devs["eval float32"] < 1e-5 and devs["training float32"] < 1e-5, devs


def test_finite_differences_catch_a_backward_that_ignores_the_batch_statistics(monkeypatch) -> None:
    def naive_backward(dy, cache):
        return (dy * cache.gamma * cache.inv_std, (dy * cache.x_hat).sum(axis=cache.axes),
                dy.sum(axis=cache.axes))

    monkeypatch.setattr(bn, "batch_norm_backward", naive_backward)
    devs = crosscheck.finite_differences()
    assert devs["dx"] > 1e-2 and devs["dgamma"] < 1e-7


def test_torch_check_catches_the_biased_variance_in_pytorch_running_stats(monkeypatch) -> None:
    pytest.importorskip("torch")

    def biased(running_mean, running_var, batch_mean, batch_var, count, momentum=0.1):
        return bn.running_stats_onnx(running_mean, running_var, batch_mean, batch_var,
                                                1.0 - momentum)

    monkeypatch.setattr(crosscheck.bn, "running_stats_pytorch", biased)
    devs = crosscheck.against_torch(steps=2)
    assert devs["running_mean"] < 1e-12 and devs["running_var"] > 1e-3


def test_spec_vectors_catch_pytorch_running_stats_in_onnx_training_mode(monkeypatch) -> None:
    def pytorch_style(running_mean, running_var, batch_mean, batch_var, momentum=0.9):
        return bn.running_stats_pytorch(running_mean, running_var, batch_mean, batch_var,
                                        count=40, momentum=1.0 - momentum)

    monkeypatch.setattr(crosscheck.bn, "running_stats_onnx", pytorch_style)
    devs = crosscheck.against_spec_vectors()
    assert devs["test_batchnorm_example_training_mode"] > 1e-3
    assert np.isclose(devs["test_batchnorm_example"], 0.0, atol=1e-6)
