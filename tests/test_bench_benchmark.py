"""bnfold.benchmark / measure_variants: folding on the fly, result shape, validation."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from test_bench_runner import conv_bn_model

import bnfold
from bnfold.bench import check_provider, measure_variants
from bnfold.errors import BnfoldError, InputError


def test_benchmark_folds_in_memory_model_on_the_fly(tmp_path: Path) -> None:
    model = onnx.load(conv_bn_model(tmp_path / "m.onnx"))
    res = bnfold.benchmark(model, opt_levels=("disabled", "all"), batch_sizes=(2,), warmup=1,
                           runs=4, isolate=False)
    assert res.fold == {"bn_before": 1, "bn_after": 0}
    assert res.models == {"original": "<in-memory model>", "folded": "<folded in memory>"}
    assert [c.config.opt_level for c in res.configs] == ["disabled", "all"]
    for cr in res.configs:
        assert cr.config.batch == 2
        assert [v.name for v in cr.variants] == ["original", "folded"]
        assert all(v.stats.n == 4 for v in cr.variants)
        assert cr.speedup.ci_low <= cr.speedup.ratio <= cr.speedup.ci_high
    table = res.table()
    assert "original" in table and "folded" in table and table.count("x [") == 2
    d = json.loads(json.dumps(res.to_dict(samples=True)))
    assert len(d["configs"][0]["variants"][1]["samples_ms"]) == 4
    assert d["machine"]["cores"] >= 1 and d["settings"]["runs"] == 4


def test_measure_variants_three_files_speedups_vs_first(tmp_path: Path) -> None:
    p = conv_bn_model(tmp_path / "m.onnx")
    res = measure_variants([("a", p), ("b", p), ("c", p)], opt_levels=("basic",), threads=(1, 2),
                           warmup=0, runs=3, isolate=False)
    assert [(c.config.threads, c.config.batch) for c in res.configs] == [(1, 1), (2, 1)]
    assert set(res.configs[0].speedups) == {"b", "c"}


def test_rounds_split_over_fresh_process_sets(tmp_path: Path) -> None:
    p = conv_bn_model(tmp_path / "m.onnx")
    res = measure_variants([("a", p), ("b", p)], opt_levels=("disabled",), warmup=0, runs=5,
                           processes=2, isolate=False)
    assert [v.stats.n for v in res.configs[0].variants] == [5, 5]
    assert res.settings["processes"] == 2
    with pytest.raises(BnfoldError, match="processes"):
        measure_variants([("a", p), ("b", p)], runs=2, processes=3)


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    p = conv_bn_model(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="not found"):
        measure_variants([("a", p), ("b", str(tmp_path / "nope.onnx"))], runs=2)


@pytest.mark.parametrize("opts,msg", [({"runs": 1}, "at least 2"),
                                      ({"opt_levels": ("fast",)}, "unknown optimization level"),
                                      ({"threads": (-1,)}, ">= 0")])
def test_bad_options_are_bnfold_errors(tmp_path: Path, opts: dict, msg: str) -> None:
    p = conv_bn_model(tmp_path / "m.onnx")
    with pytest.raises(BnfoldError, match=msg):
        measure_variants([("a", p), ("b", p)], **opts)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA present")
def test_absent_cuda_provider_is_one_clear_error() -> None:
    with pytest.raises(BnfoldError, match="CUDAExecutionProvider is not available.*onnxruntime-gpu"):
        check_provider("cuda")
    with pytest.raises(BnfoldError, match="unknown provider"):
        check_provider("tpu")
