"""Estimators of running statistics: exact merges, PyTorch's cumulative average, momentum."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bnfold.errors import BnfoldError
from bnfold.recalibration.stats import ChannelMoments, Estimator
from bnfold.reference.batchnorm import running_stats_pytorch


@given(st.lists(st.integers(1, 7), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_chan_merge_equals_the_moments_of_all_the_data(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [rng.normal(1e4, 3.0, (n, 3, 2, 2)) for n in sizes]  # big mean: cancellation test
    merged = ChannelMoments(0, np.zeros(3), np.zeros(3))
    for p in parts:
        merged = merged.merge(ChannelMoments.of_batch(p))
    whole = np.concatenate(parts)
    assert merged.count == whole.shape[0] * 4
    np.testing.assert_allclose(merged.mean, whole.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(merged.var(unbiased=False), whole.var(axis=(0, 2, 3)), rtol=1e-9)


def test_pooled_unbiased_and_biased_variances() -> None:
    x = np.random.default_rng(0).normal(size=(10, 4, 3))
    for convention, ddof in (("pytorch", 1), ("onnx", 0)):
        est = Estimator("pooled", convention, np.zeros(4), np.ones(4))
        est.add(ChannelMoments.of_batch(x[:3]))
        est.add(ChannelMoments.of_batch(x[3:]))
        mean, var = est.result()
        flat = x.transpose(1, 0, 2).reshape(4, -1)
        np.testing.assert_allclose(mean, flat.mean(axis=1), rtol=1e-13)
        np.testing.assert_allclose(var, flat.var(axis=1, ddof=ddof), rtol=1e-12)


def test_cumulative_is_the_equal_weight_average_of_batch_statistics() -> None:
    batches = [np.random.default_rng(i).normal(i, 1 + i, size=(5, 2)) for i in range(3)]
    est = Estimator("cumulative", "pytorch", np.zeros(2), np.ones(2))
    for b in batches:
        est.add(ChannelMoments.of_batch(b))
    mean, var = est.result()
    np.testing.assert_allclose(mean, np.mean([b.mean(axis=0) for b in batches], axis=0))
    np.testing.assert_allclose(var, np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0))


def test_momentum_follows_the_reference_update_from_the_old_statistics() -> None:
    old_mean, old_var = np.array([0.5, -1.0]), np.array([2.0, 0.5])
    batches = [np.random.default_rng(i).normal(size=(6, 2)) for i in range(4)]
    est = Estimator("momentum", "pytorch", old_mean, old_var, momentum=0.3)
    want = (old_mean, old_var)
    for b in batches:
        est.add(ChannelMoments.of_batch(b))
        want = running_stats_pytorch(*want, b.mean(axis=0), b.var(axis=0), 6, 0.3)
    np.testing.assert_allclose(est.result()[0], want[0])
    np.testing.assert_allclose(est.result()[1], want[1])


@pytest.mark.parametrize("args", [("nope", "pytorch"), ("pooled", "tf"), ("momentum", "onnx")])
def test_bad_settings_are_refused(args: tuple[str, str]) -> None:
    with pytest.raises(BnfoldError):
        Estimator(*args, np.zeros(1), np.ones(1))


def test_no_batch_is_an_error() -> None:
    with pytest.raises(BnfoldError, match="no batch"):
        Estimator("pooled", "pytorch", np.zeros(1), np.ones(1)).result()
