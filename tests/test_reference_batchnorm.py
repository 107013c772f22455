"""BatchNorm reference: what training mode computes, eval mode, running statistics, errors."""
from __future__ import annotations

import numpy as np
import pytest

from bnfold.errors import BnfoldError
from bnfold.reference import (
    batch_norm_backward,
    batch_norm_eval,
    batch_norm_train,
    fold_params,
    running_stats_onnx,
    running_stats_pytorch,
)

RNG = np.random.default_rng(7)


def _params(c: int) -> tuple[np.ndarray, np.ndarray]:
    return RNG.normal(size=c), RNG.normal(size=c)


@pytest.mark.parametrize("shape", [(32, 4), (8, 4, 9), (4, 4, 5, 6), (2, 4, 3, 4, 5)])
def test_training_output_has_per_channel_mean_beta_and_std_gamma(shape) -> None:
    x = RNG.normal(5.0, 3.0, size=shape)
    gamma, beta = _params(4)
    out = batch_norm_train(x, gamma, beta, eps=0.0)
    axes = tuple(a for a in range(len(shape)) if a != 1)
    np.testing.assert_allclose(out.y.mean(axis=axes), beta, atol=1e-12)
    np.testing.assert_allclose(out.y.std(axis=axes), np.abs(gamma), rtol=1e-12)
    np.testing.assert_allclose(out.mean, x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(out.var, x.var(axis=axes), rtol=1e-12)
    assert out.cache.count == x.size // 4


def test_channels_last_equals_channels_first_moved() -> None:
    x = RNG.normal(size=(3, 5, 6, 4))
    gamma, beta = _params(4)
    dy = RNG.normal(size=x.shape)
    last = batch_norm_train(x, gamma, beta, axis=-1)
    first = batch_norm_train(np.moveaxis(x, -1, 1), gamma, beta, axis=1)
    np.testing.assert_allclose(last.y, np.moveaxis(first.y, 1, -1), atol=1e-14)
    dx_last, dg_last, db_last = batch_norm_backward(dy, last.cache)
    dx_first, dg_first, db_first = batch_norm_backward(np.moveaxis(dy, -1, 1), first.cache)
    np.testing.assert_allclose(dx_last, np.moveaxis(dx_first, 1, -1), atol=1e-14)
    np.testing.assert_allclose(dg_last, dg_first, atol=1e-12)
    np.testing.assert_allclose(db_last, db_first, atol=1e-12)


def test_gradients_of_a_normalized_batch_sum_to_zero_per_channel() -> None:
    x, dy = RNG.normal(size=(6, 3, 4)), RNG.normal(size=(6, 3, 4))
    dx, _, _ = batch_norm_backward(dy, batch_norm_train(x, *_params(3)).cache)
    np.testing.assert_allclose(dx.sum(axis=(0, 2)), 0.0, atol=1e-12)


def test_float32_path_stays_float32_and_close_to_float64() -> None:
    x = RNG.normal(100.0, 0.5, size=(8, 3, 5, 5))
    gamma, beta = _params(3)
    y64 = batch_norm_train(x, gamma, beta).y
    out32 = batch_norm_train(x.astype(np.float32), gamma, beta)
    dx32, dg32, _ = batch_norm_backward(np.ones_like(out32.y), out32.cache)
    assert out32.y.dtype == np.float32 and out32.mean.dtype == np.float32
    assert dx32.dtype == np.float32 and dg32.dtype == np.float32
    np.testing.assert_allclose(out32.y, y64, atol=1e-4)


def test_float16_input_is_computed_in_float32_and_returned_in_float16() -> None:
    x = RNG.normal(size=(16, 2, 3)).astype(np.float16)
    out = batch_norm_train(x, np.ones(2), np.zeros(2))
    assert out.y.dtype == np.float16 and out.mean.dtype == np.float32
    ref = batch_norm_train(x.astype(np.float64), np.ones(2), np.zeros(2)).y
    np.testing.assert_allclose(out.y.astype(np.float64), ref, atol=4e-3)


def test_eval_is_the_affine_map_fold_params_describes() -> None:
    x = RNG.normal(size=(4, 5, 3, 3))
    gamma, beta = _params(5)
    mean, var = RNG.normal(size=5), RNG.uniform(0.1, 3.0, size=5)
    scale, shift = fold_params(gamma, beta, mean, var, 1e-3)
    y = batch_norm_eval(x, gamma, beta, mean, var, 1e-3)
    np.testing.assert_allclose(y, scale[None, :, None, None] * x + shift[None, :, None, None],
                               atol=1e-13)


def test_eval_with_the_batch_statistics_reproduces_training_output() -> None:
    x = RNG.normal(size=(10, 4, 3))
    gamma, beta = _params(3)
    out = batch_norm_train(x, gamma, beta, eps=1e-2, axis=-1)
    y = batch_norm_eval(x, gamma, beta, out.mean, out.var, eps=1e-2, axis=-1)
    np.testing.assert_allclose(y, out.y, atol=1e-13)


def test_the_two_running_stat_conventions_differ_only_by_bessels_correction() -> None:
    old_mean, old_var = RNG.normal(size=3), RNG.uniform(1, 2, size=3)
    out = batch_norm_train(RNG.normal(size=(5, 3, 2)), np.ones(3), np.zeros(3))
    n = out.cache.count
    torch_mean, torch_var = running_stats_pytorch(old_mean, old_var, out.mean, out.var, n, 0.1)
    onnx_mean, onnx_var = running_stats_onnx(old_mean, old_var, out.mean, out.var, 0.9)
    np.testing.assert_allclose(torch_mean, 0.9 * old_mean + 0.1 * out.mean, rtol=1e-14)
    np.testing.assert_allclose(onnx_mean, torch_mean, rtol=1e-14)
    np.testing.assert_allclose(onnx_var, 0.9 * old_var + 0.1 * out.var, rtol=1e-14)
    np.testing.assert_allclose(torch_var - onnx_var, 0.1 * out.var / (n - 1), rtol=1e-12)


@pytest.mark.parametrize("call", [
    lambda: batch_norm_train(np.ones(4), np.ones(4), np.zeros(4)),
    lambda: batch_norm_train(np.ones((2, 3)), np.ones(2), np.zeros(3)),
    lambda: batch_norm_train(np.ones((2, 3)), np.ones(3), np.zeros(3), axis=2),
    lambda: batch_norm_train(np.ones((2, 3)), np.ones(3), np.zeros(3), eps=-1.0),
    lambda: batch_norm_train(np.ones((2, 3), dtype=np.int64), np.ones(3), np.zeros(3)),
    lambda: batch_norm_backward(np.ones((2, 4)),
                                batch_norm_train(np.ones((2, 3)), np.ones(3), np.zeros(3)).cache),
    lambda: batch_norm_eval(np.ones((2, 3)), np.ones(3), np.zeros(3), np.zeros(3), -np.ones(3)),
    lambda: running_stats_pytorch(np.zeros(3), np.ones(3), np.zeros(3), np.ones(3), count=1),
    lambda: running_stats_onnx(np.zeros(3), np.ones(3), np.zeros(3), np.ones(3), momentum=1.5),
])
def test_bad_arguments_raise_one_actionable_bnfold_error(call) -> None:
    with pytest.raises(BnfoldError):
        call()
