"""The zoo demo: stale BN statistics collapse accuracy; recalibrating on data restores it."""
from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from models.recalibrate_demo import stale_statistics_demo  # noqa: E402


def test_reset_statistics_recalibrated_on_training_data_recover_the_accuracy() -> None:
    acc = stale_statistics_demo()
    assert acc["reset"] < 0.5 * acc["original"]
    assert abs(acc["recalibrated"] - acc["original"]) <= 0.005
