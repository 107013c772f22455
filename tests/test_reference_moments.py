"""Statistics for the reference norms: two-pass variance, and the dtype they are computed in."""
from __future__ import annotations

import numpy as np
import pytest

from bnfold.errors import BnfoldError
from bnfold.reference.moments import check_eps, compute_dtype, moments


def test_variance_survives_a_mean_far_larger_than_the_spread() -> None:
    rng = np.random.default_rng(0)
    spread = rng.normal(0.0, 1e-3, size=(1000, 1))
    x = 1e6 + spread
    exact = spread.var(axis=0)
    naive = (x * x).mean(axis=0) - x.mean(axis=0) ** 2
    stats = moments(x, (0,))
    assert abs(naive[0] - exact[0]) > exact[0]          # E[x^2] - E[x]^2 loses everything
    np.testing.assert_allclose(stats.var.reshape(-1), exact, rtol=1e-6)
    np.testing.assert_allclose(stats.centered, x - stats.mean, rtol=0, atol=0)
    assert stats.mean.shape == (1, 1)


@pytest.mark.parametrize(("dtype", "expected"), [(np.float64, np.float64),
                                                 (np.float32, np.float32),
                                                 (np.float16, np.float32)])
def test_compute_dtype(dtype, expected) -> None:
    assert compute_dtype(np.zeros(2, dtype=dtype)) == np.dtype(expected)


@pytest.mark.parametrize("bad", [np.zeros(2, dtype=np.int32), np.zeros(2, dtype=np.complex128)])
def test_non_float_input_is_refused(bad) -> None:
    with pytest.raises(BnfoldError, match="astype"):
        compute_dtype(bad)


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf")])
def test_bad_eps_is_refused(eps) -> None:
    with pytest.raises(BnfoldError, match="eps"):
        check_eps(eps)
