"""bnfold.bench.plot: a PNG with one panel per config, from a hand-built result."""
from __future__ import annotations

from pathlib import Path

import pytest

from bnfold.bench.plot import plot_latencies
from bnfold.bench.result import BenchResult, build_config_result
from bnfold.bench.runner import RunConfig, VariantRun
from bnfold.errors import BnfoldError, OutputError


def _result(n_configs: int) -> BenchResult:
    configs = [build_config_result(RunConfig("cpu", lv, 1, 1),
                                   [VariantRun("original", 5.0, [2.0, 2.2, 2.1, 2.4]),
                                    VariantRun("folded", 4.0, [1.5, 1.6, 1.4, 1.7])],
                                   confidence=0.95, seed=0)
               for lv in ("disabled", "basic", "all", "extended")[:n_configs]]
    return BenchResult(models={"original": "a", "folded": "b"}, configs=configs, settings={},
                       machine={"cpu": "test"})


def test_plot_writes_png(tmp_path: Path) -> None:
    out = plot_latencies(_result(4), tmp_path / "lat.png")
    data = Path(out).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_without_configs_is_error(tmp_path: Path) -> None:
    with pytest.raises(BnfoldError, match="nothing to plot"):
        plot_latencies(_result(0), tmp_path / "lat.png")


def test_plot_unwritable_path_is_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot write plot"):
        plot_latencies(_result(1), tmp_path / "no" / "such" / "dir" / "lat.png")


def test_table_shows_speedup_from_known_samples() -> None:
    table = _result(1).table()
    # p50 original 2.15, folded 1.55 -> 1.387x
    assert "1.387x" in table and "2.150" in table and "1.550" in table
