"""LayerNorm reference: against PyTorch and onnx.reference, and how it differs from BatchNorm."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from bnfold.errors import BnfoldError
from bnfold.reference import batch_norm_train, layer_norm

RNG = np.random.default_rng(3)


def test_matches_torch_layer_norm_over_c_h_w_in_float64() -> None:
    torch = pytest.importorskip("torch")
    x = RNG.normal(2.0, 3.0, size=(4, 3, 5, 6))
    gamma, beta = RNG.normal(size=(3, 5, 6)), RNG.normal(size=(3, 5, 6))
    ref = torch.nn.functional.layer_norm(torch.tensor(x), (3, 5, 6), torch.tensor(gamma),
                                         torch.tensor(beta), eps=1e-5).numpy()
    np.testing.assert_allclose(layer_norm(x, gamma, beta, 1e-5), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("dtype", "atol"), [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("axis", [1, -1])
def test_matches_onnx_reference_layer_normalization(dtype, atol, axis) -> None:
    from onnx.reference import ReferenceEvaluator

    x = RNG.normal(size=(2, 3, 4)).astype(dtype)
    norm_shape = x.shape[axis % 3:]
    gamma, beta = (RNG.normal(size=norm_shape).astype(dtype) for _ in range(2))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=axis, epsilon=0.25)
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", elem, x.shape),
                                             helper.make_tensor_value_info("g", elem, norm_shape),
                                             helper.make_tensor_value_info("b", elem, norm_shape)],
                              [helper.make_tensor_value_info("y", elem, x.shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    (ref,) = ReferenceEvaluator(model).run(None, {"x": x, "g": gamma, "b": beta})
    np.testing.assert_allclose(layer_norm(x, gamma, beta, 0.25, axis=axis), ref, rtol=0, atol=atol)


def test_layer_norm_normalizes_samples_where_batch_norm_normalizes_channels() -> None:
    x = RNG.normal(4.0, 2.0, size=(6, 3, 4, 4))
    ln, bn = layer_norm(x, eps=0.0), batch_norm_train(x, np.ones(3), np.zeros(3), eps=0.0).y
    np.testing.assert_allclose(ln.mean(axis=(1, 2, 3)), 0.0, atol=1e-12)   # per sample
    np.testing.assert_allclose(ln.var(axis=(1, 2, 3)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(bn.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)   # per channel
    np.testing.assert_allclose(bn.var(axis=(0, 2, 3)), 1.0, rtol=1e-12)


def test_a_sample_depends_on_the_rest_of_the_batch_only_under_batch_norm() -> None:
    x = RNG.normal(size=(5, 3, 2))
    other = x.copy()
    other[1:] += 10.0                                     # change every sample but the first
    assert np.allclose(layer_norm(x)[0], layer_norm(other)[0], rtol=0, atol=1e-12)
    ones, zeros = np.ones(3), np.zeros(3)
    assert not np.allclose(batch_norm_train(x, ones, zeros).y[0],
                           batch_norm_train(other, ones, zeros).y[0], atol=1e-3)


def test_affine_parameters_must_have_the_normalized_shape() -> None:
    with pytest.raises(BnfoldError, match=r"normalized shape \(3, 4\)"):
        layer_norm(np.ones((2, 3, 4)), gamma=np.ones(3))
