"""The error histogram embedded in the HTML report."""
from __future__ import annotations

import numpy as np

from bnfold.verification.plot import error_histogram_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_histogram_is_a_png() -> None:
    errors = {"logits": np.array([0.0, 1e-7, 3e-7, 2e-6]), "feat": np.array([1e-3, np.inf])}
    png = error_histogram_png(errors)
    assert png is not None and png.startswith(PNG_MAGIC) and len(png) > 1000


def test_no_errors_no_plot() -> None:
    assert error_histogram_png({}) is None


def test_all_exact_still_plots_the_count() -> None:
    png = error_histogram_png({"y": np.zeros(10)})
    assert png is not None and png.startswith(PNG_MAGIC)
