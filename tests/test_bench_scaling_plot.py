"""benchmarks/scaling_plot.py: the fitted exponent, reading sweep points, the PNG of a sweep."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import scaling_plot


def _point(sweep: str, x: float, per: float, mem: float) -> dict:
    """A fake sweep point whose times grow as ``per`` * x (CLI: plus 1 s of start)."""
    key = "bn" if sweep == "bn" else "mb"
    return {"sweep": sweep, "bn": int(x) if key == "bn" else 4, "mb": x if key == "mb" else 0.5,
            "external": x > 1000,
            "fold": {"prove": {"s": per * x, "peak_mb": mem * x},
                     "no_prove": {"s": per * x / 2, "peak_mb": 1.0}},
            "cli": {"no_verify": {"wall_s": 1 + per * x, "peak_tree_mb": 150 + 2 * x},
                    "verify": {"error": "exit 1: boom"}}}


def test_slope_is_one_for_linear_two_for_quadratic() -> None:
    xs = [10.0, 100.0, 1000.0, 10000.0]
    assert scaling_plot.loglog_slope(xs, [3 * x for x in xs]) == pytest.approx(1.0)
    assert scaling_plot.loglog_slope(xs, [x * x for x in xs]) == pytest.approx(2.0)
    # a fixed cost flattens the small points; the larger half still shows the linear term
    assert scaling_plot.loglog_slope(xs, [50 + x for x in xs]) == pytest.approx(1.0, abs=0.1)
    assert scaling_plot.loglog_slope([5.0, 5.0], [1.0, 2.0]) is None
    assert scaling_plot.loglog_slope([], []) is None


def test_series_skip_missing_and_failed_measurements() -> None:
    points = [_point("mb", 100, 1e-3, 2.0), _point("mb", 10, 1e-3, 2.0)]
    del points[0]["fold"]["no_prove"]
    assert scaling_plot.series(points, "mb", ("fold", "prove", "s")) == ([10.0, 100.0], [0.01, 0.1])
    assert scaling_plot.series(points, "mb", ("fold", "no_prove", "s")) == ([10.0], [0.005])
    assert scaling_plot.series(points, "mb", ("cli", "verify", "wall_s")) == ([], [])
    fits = scaling_plot.slopes(points, "mb")
    assert fits["fold, proofs (in process)"] == pytest.approx(1.0) and "CLI, verifying" not in fits


@pytest.mark.parametrize("sweep", ["bn", "mb"])
def test_plot_writes_a_png(tmp_path: Path, sweep: str) -> None:
    points = [_point(sweep, x, 1e-3, 2.0) for x in (10, 100, 1000, 3000)]
    out = scaling_plot.plot_sweep(points, sweep, str(tmp_path / "s.png"), "test")
    data = Path(out).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
    assert sorted(os.listdir(tmp_path)) == ["s.png"]  # no temporary left behind


def test_plot_without_points_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no points"):
        scaling_plot.plot_sweep([], "bn", str(tmp_path / "s.png"), "test")
