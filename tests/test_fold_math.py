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
