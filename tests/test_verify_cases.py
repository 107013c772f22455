"""bnfold.verification.cases: one model in the ORT child at a time, same verdicts as side by side."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from modelgen import Builder
from onnx import numpy_helper

import bnfold
from bnfold.inputs import ShapeRequest, graph_inputs
from bnfold.verification import compare, engines, feeds, runner, verify

MODELS = ("original", "folded", "truth", "truth32")


def _classifier(dtype: type = np.float32) -> onnx.ModelProto:
    b = Builder(seed=3, dtype=dtype)
    y = b.node("Relu", [b.bn(b.conv(b.input("x", ["N", 2, 6, 6]), 2, 4), 4)])
    b.output(b.node("Flatten", [b.node("GlobalAveragePool", [b.bn(b.conv(y, 4, 3), 3)])]))
    return b.model()


def _corrupt(model: onnx.ModelProto, node_name: str, by: float = 1.0) -> onnx.ModelProto:
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    node = next(n for n in bad.graph.node if n.name == node_name)
    init = next(i for i in bad.graph.initializer if i.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += by
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    return bad


@pytest.fixture()
def most_loaded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The most of the original, folded and truth models loaded in an ORT child at once (one
    number per load, the largest last seen at ``max``)."""
    seen: list[int] = []
    real = engines.OrtProcess._ensure

    def ensure(self: engines.OrtProcess, key: str) -> None:
        real(self, key)
        seen.append(sum(1 for k in self._live if k.split(":")[0] in MODELS))
    monkeypatch.setattr(engines.OrtProcess, "_ensure", ensure)
    return seen


def test_a_passing_verification_holds_one_model_at_a_time(most_loaded: list[int]) -> None:
    m = _classifier()
    rep = verify(m, bnfold.fold(m).model)
    assert rep.passed and most_loaded and max(most_loaded) == 1


def test_a_failing_one_with_reruns_and_truth_holds_one_model_at_a_time(
        most_loaded: list[int]) -> None:
    m = _classifier()
    result = bnfold.fold(m)
    rep = verify(m, _corrupt(result.model, result.records[0].target), fold_result=result,
                 localize_failures=False)
    assert not rep.passed and all(c.truth is not None for c in rep.checks if not c.passed)
    assert max(most_loaded) == 1


def test_float16_precision_checks_load_the_float32_truth_alone(most_loaded: list[int]) -> None:
    m = _classifier(np.float16)
    rep = verify(m, bnfold.fold(m).model)
    assert rep.passed and all(c.precision is not None for c in rep.checks)
    assert max(most_loaded) == 1


@pytest.mark.parametrize("by", [0.0, 1e-4, 1.0])
def test_metrics_and_verdicts_are_those_of_both_models_side_by_side(by: float) -> None:
    """Each case's numbers equal a run of two ORT sessions held together on the same feeds."""
    m = _classifier()
    result = bnfold.fold(m)
    folded = _corrupt(result.model, result.records[0].target, by)
    rep = verify(m, folded, localize_failures=False)
    sets = feeds.input_sets(graph_inputs(m), seeds=[0, 1, 2], request=ShapeRequest(),
                            batch_sizes=None, data=None)
    sa, sb = (runner.make_session(x, "cpu", "disabled") for x in (m, folded))
    assert [c.source for c in rep.cases] == [s for s, _ in sets]
    for check, (_, chunks) in zip(rep.checks, sets):
        ref, got = (runner.run(s, chunks[0])[check.output] for s in (sa, sb))
        atol, rtol = compare.tolerance_for(ref.dtype, None, None)
        assert check.metrics == compare.compare(ref, got, atol, rtol)
    assert rep.passed == (by < 1e-3)


def test_the_original_the_size_probe_loaded_is_used_not_loaded_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from modelgen import sized_model

    loads: list[str] = []
    real = engines.OrtProcess.load

    def load(self: engines.OrtProcess, key: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        loads.append(key)
        real(self, key, *args, **kwargs)
    monkeypatch.setattr(engines.OrtProcess, "load", load)
    m = sized_model(8192)
    folded = bnfold.fold(m).model
    loads.clear()  # the fold's proofs
    rep = verify(m, folded, batch_sizes=[1])
    assert rep.passed and loads == ["original:cpu", "folded:cpu"]
