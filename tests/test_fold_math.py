"""The float64 fold formulas against direct, loop-by-loop definitions."""
from __future__ import annotations

import numpy as np
import pytest

from bnfold.folding import math as fm


def test_fold_params_reproduces_eval_batch_norm():
    rng = np.random.default_rng(0)
    gamma, beta, mean = rng.normal(size=(3, 5))
    var = rng.uniform(0.1, 2, 5)
    x = rng.normal(size=(4, 5))
    scale, shift = fm.fold_params(gamma, beta, mean, var, 1e-5)
    expected = gamma * (x - mean) / np.sqrt(var + 1e-5) + beta
    np.testing.assert_allclose(scale * x + shift, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("group", [1, 2, 3])
def test_conv_transpose_output_channel_scaling_matches_a_loop(group):
    rng = np.random.default_rng(group)
    cin, m_per_g = 3 * group, 2
    w = rng.normal(size=(cin, m_per_g, 3, 3))
    s = rng.normal(size=group * m_per_g)
    got = fm.scale_conv_transpose_out(w, s, group)
    want = w.copy()
    for c in range(cin):
        g = c // (cin // group)
        for j in range(m_per_g):
            want[c, j] *= s[g * m_per_g + j]
    np.testing.assert_allclose(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_input_channel_scaling_and_constant_response_match_loops(group):
    rng = np.random.default_rng(5)
    m, c_per_g = 4, 3
    w = rng.normal(size=(m, c_per_g, 2, 2))
    s, t = rng.normal(size=c_per_g * group), rng.normal(size=c_per_g * group)
    want_w, want_b = w.copy(), np.zeros(m)
    for o in range(m):
        g = o // (m // group)
        for i in range(c_per_g):
            want_w[o, i] *= s[g * c_per_g + i]
            want_b[o] += w[o, i].sum() * t[g * c_per_g + i]
    np.testing.assert_allclose(fm.scale_conv_in(w, s, group), want_w, rtol=1e-15)
    np.testing.assert_allclose(fm.conv_of_constant(w, t, group), want_b, rtol=1e-13)


def test_scale_conv_out_keeps_float64_precision_for_float32_weights():
    w = np.array([[[1.0000001]]], dtype=np.float32).reshape(1, 1, 1)
    out = fm.scale_conv_out(w, np.array([3.0]))
    assert out.dtype == np.float64 and out[0, 0, 0] == np.float64(np.float32(1.0000001)) * 3.0


def _hostile_weights(rng: np.random.Generator, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """Weights over the dtype's whole range: normal, tiny (subnormal when scaled), huge, zeros,
    negative zeros, and values whose products round half-way cases."""
    info = np.finfo(dtype)
    parts = [rng.normal(size=shape),
             rng.normal(size=shape) * float(info.tiny) * rng.uniform(0.01, 4, size=shape),
             rng.uniform(-1, 1, size=shape) * float(info.max),
             np.where(rng.random(shape) < 0.5, 0.0, -0.0)]
    pick = rng.integers(0, len(parts), size=shape)
    return np.choose(pick, parts).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_product_rounded_as_made_has_the_bits_of_the_float64_product_cast_once(dtype):
    rng = np.random.default_rng(7)
    w = _hostile_weights(rng, dtype, (64, 3, 3, 3))
    s = np.exp(rng.uniform(-40, 40, size=64)) * rng.choice([-1.0, 1.0], size=64)
    s[:4] = [0.0, -0.0, 1.0 / 3.0, np.nextafter(1.0, 2.0)]
    view = fm.channel_view(s, 4, 0)
    with np.errstate(all="ignore"):
        want = (w.astype(np.float64) * view).astype(dtype)
    got = fm.product(w, view, np.dtype(dtype))
    assert got.dtype == dtype and got.shape == w.shape
    assert np.array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))
    assert np.isinf(got).any() and (got == 0).any()  # the overflow and underflow cases ran


@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rounded_conv_scalings_equal_the_float64_scalings_cast_once(group, dtype):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(8, 4, 3, 3)).astype(dtype)
    s = rng.normal(size=8)
    s_in = rng.normal(size=4 * group)
    pairs = [(fm.scale_conv_out(w, s, np.dtype(dtype)), fm.scale_conv_out(w, s)),
             (fm.scale_conv_in(w, s_in, group, np.dtype(dtype)), fm.scale_conv_in(w, s_in, group)),
             (fm.scale_conv_transpose_out(w, np.resize(s, 4 * group), group, np.dtype(dtype)),
              fm.scale_conv_transpose_out(w, np.resize(s, 4 * group), group))]
    for rounded, wide in pairs:
        assert wide.dtype == np.float64 and rounded.dtype == dtype
        assert np.array_equal(rounded.view(f"u{rounded.itemsize}"),
                              wide.astype(dtype).view(f"u{rounded.itemsize}"))


def test_16_bit_results_keep_the_whole_float64_product():
    """float16 and bfloat16 are not rounded as made: cast_exact counts flush-to-zero against
    the float64 products, so ``product`` hands those back unchanged."""
    import ml_dtypes

    rng = np.random.default_rng(5)
    s = rng.normal(size=6)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        w = rng.normal(size=(6, 2, 3)).astype(dtype)
        got = fm.scale_conv_out(w, s, np.dtype(dtype))
        assert got.dtype == np.float64
        assert np.array_equal(got, w.astype(np.float64) * s[:, None, None])
