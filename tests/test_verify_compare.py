"""Metrics of bnfold.verification.compare on small arrays with answers worked out by hand."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from bnfold.verification import compare


def test_max_abs_mean_abs_and_mismatch_count() -> None:
    ref = np.array([1.0, -2.0, 4.0, 0.0], dtype=np.float32)
    got = np.array([1.5, -2.0, 3.0, 0.25], dtype=np.float32)
    m = compare.compare(ref, got, atol=0.3, rtol=0.0)
    assert m.max_abs == pytest.approx(1.0)
    assert m.mean_abs == pytest.approx((0.5 + 0 + 1.0 + 0.25) / 4)
    assert m.mismatched == 2          # 0.5 and 1.0 exceed 0.3; 0.25 does not
    assert m.size == 4


def test_relative_errors_elementwise_with_floor_and_to_peak() -> None:
    ref = np.array([2.0, 0.0, 10.0])
    got = np.array([2.2, 1e-6, 10.0])
    m = compare.compare(ref, got, atol=0.0, rtol=0.0)
    # elementwise: 0.2/2 = 0.1; 1e-6/max(0, 1e-6) = 1.0; 0
    assert m.max_rel == pytest.approx(1.0)
    assert m.peak_rel == pytest.approx(0.2 / 10.0)


def test_rtol_scales_with_the_output_peak_not_each_element() -> None:
    ref = np.array([100.0, 1.0, 0.001])
    got = np.array([100.5, 1.9, 1.2])
    m = compare.compare(ref, got, atol=0.0, rtol=0.01)  # allows 0.01 * 100 = 1.0 everywhere
    assert m.mismatched == 1       # only the 1.199 error on the last element
    assert compare.compare(ref, got, atol=0.2, rtol=0.01).mismatched == 0


def test_atol_alone_when_rtol_is_zero() -> None:
    m = compare.compare(np.array([0.0, 5.0]), np.array([0.05, 5.2]), atol=0.1, rtol=0.0)
    assert m.mismatched == 1


def test_cosine_similarity_known_angles() -> None:
    assert compare.cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert compare.cosine_similarity(np.array([1.0, 1.0]), np.array([3.0, 3.0])) == pytest.approx(1.0)
    assert compare.cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(
        1 / math.sqrt(2))
    assert compare.cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0
    assert compare.cosine_similarity(np.zeros(3), np.ones(3)) == 0.0


def test_top1_agreement_on_classifier_output() -> None:
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    got = np.array([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    m = compare.compare(ref, got, atol=1.0, rtol=0.0)
    assert m.top1_agreement == pytest.approx(0.75)


def test_top1_absent_for_non_classifier_shapes() -> None:
    assert compare.compare(np.ones((2, 3, 4)), np.ones((2, 3, 4)), 0, 0).top1_agreement is None
    assert compare.compare(np.ones((4, 1)), np.ones((4, 1)), 0, 0).top1_agreement is None
    assert not compare.is_classifier_like((4, 3), np.int64)


def test_nan_matching_nan_is_equal_but_nan_against_number_fails() -> None:
    ref = np.array([np.nan, 1.0, np.inf])
    assert compare.compare(ref, ref.copy(), 0.0, 0.0).mismatched == 0
    m = compare.compare(ref, np.array([0.0, 1.0, np.inf]), 1.0, 1.0)
    assert m.mismatched == 1 and math.isinf(m.max_abs)


def test_identical_arrays_are_exact() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = compare.compare(a, a.copy(), 0.0, 0.0)
    assert (m.max_abs, m.mean_abs, m.mismatched, m.cosine) == (0.0, 0.0, 0, 1.0)


def test_integer_and_bool_outputs_compare_exactly() -> None:
    assert compare.default_tolerance(np.int64) == (0.0, 0.0)
    m = compare.compare(np.array([True, False]), np.array([True, True]), 0.0, 0.0)
    assert m.mismatched == 1 and m.max_abs == 1.0


def test_default_tolerances_per_dtype_loosen_with_precision() -> None:
    f32 = compare.default_tolerance(np.float32)
    f16 = compare.default_tolerance(np.float16)
    bf16 = compare.default_tolerance(ml_dtypes.bfloat16)
    assert f32[0] < f16[0] < bf16[0]
    assert compare.dtype_name(ml_dtypes.bfloat16) == "bfloat16"


def test_user_tolerance_overrides_only_what_is_given() -> None:
    assert compare.tolerance_for(np.float32, 0.5, None) == (0.5, compare.TOLERANCES["float32"][1])


def test_bfloat16_arrays_are_compared_in_float64() -> None:
    ref = np.array([1.0, 2.0], dtype=ml_dtypes.bfloat16)
    got = np.array([1.0, 2.015625], dtype=ml_dtypes.bfloat16)  # one bf16 ulp at 2.0
    m = compare.compare(ref, got, *compare.default_tolerance(ref.dtype))
    assert m.max_abs == pytest.approx(0.015625) and m.mismatched == 0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        compare.compare(np.ones(3), np.ones(4), 0, 0)


def test_abs_errors_flattens_and_zeroes_matching_specials() -> None:
    err = compare.abs_errors(np.array([[1.0, np.nan]]), np.array([[1.5, np.nan]]))
    assert err.tolist() == [0.5, 0.0]


def test_scalar_outputs_compare_like_any_other() -> None:
    """A 0-d output (e.g. a ReduceSum to a scalar) once crashed the error histogram."""
    ref, cand = np.array(1.0, np.float32), np.array(1.5, np.float32)
    assert compare.abs_errors(ref, cand).tolist() == [0.5]
    assert compare.compare(ref, cand, 1e-5, 1e-4).max_abs == 0.5


def test_precision_checks_apply_to_float16_and_bfloat16_only() -> None:
    from bnfold.verification.compare import output_precision, region_precision

    x = np.ones((4,), np.float32)
    assert region_precision(x, x, x) is None and output_precision(x, x, x) is None
    h = np.ones((4,), np.float16)
    assert output_precision(h, h, np.zeros(4)) is None  # all-zero truth: nothing to scale by
    assert output_precision(h, h[:2], h) is None


def test_region_precision_sees_loss_on_small_values_that_the_peak_hides() -> None:
    from bnfold.verification.compare import output_precision, region_precision

    truth = np.array([-2000.0, 0.5, 3.0, 100.0])
    original = truth.astype(np.float16)            # one rounding each
    folded = (truth + [0.9, 0.9, -0.9, 0.9]).astype(np.float16)  # absolute error of ~1 everywhere
    assert output_precision(original, folded, truth).passed      # 1 in 2000 of the peak
    lost = region_precision(original, folded, truth)
    assert not lost.passed and lost.folded > 10 * lost.original
    assert "folded" in lost.describe()


def test_precision_allows_a_few_roundings_more_than_the_original() -> None:
    from bnfold.verification.compare import UNIT_ROUNDOFF, output_precision, region_precision

    rng = np.random.default_rng(0)
    truth = rng.normal(size=1000) * 10
    u = UNIT_ROUNDOFF["float16"]
    original = truth.astype(np.float16)
    folded = (truth * (1 + 3 * u * rng.uniform(-1, 1, truth.shape))).astype(np.float16)
    assert region_precision(original, folded, truth).passed
    assert output_precision(original, folded, truth).passed
