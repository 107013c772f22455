"""Localisation: a deliberately corrupted fold is traced to the BN whose fold produced it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from modelgen import Builder
from onnx import numpy_helper

import bnfold
from bnfold.verification import localize as loc
from bnfold.verification import verify
from bnfold.inputs import ShapeRequest, graph_inputs


def _cnn() -> onnx.ModelProto:
    """x -> conv-BN-relu -> conv-BN -> relu -> conv-BN -> y: three backward folds."""
    b = Builder(seed=3)
    x = b.input("x", ["N", 2, 6, 6])
    y = b.node("Relu", [b.bn(b.conv(x, 2, 4), 4)])
    y = b.node("Relu", [b.bn(b.conv(y, 4, 4), 4)])
    b.output(b.bn(b.conv(y, 4, 3), 3))
    return b.model()


def _bn_names(m: onnx.ModelProto) -> list[str]:
    return [n.name for n in m.graph.node if n.op_type == "BatchNormalization"]


def _perturb_weight_of(model: onnx.ModelProto, node_name: str, delta: float = 0.5) -> onnx.ModelProto:
    """A copy of ``model`` with one element of ``node_name``'s weight changed by ``delta``."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    node = next(n for n in bad.graph.node if n.name == node_name)
    init = next(i for i in bad.graph.initializer if i.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w.flat[w.size // 2] += delta
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    return bad


def _feed(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return ShapeRequest().feed(graph_inputs(m), 2, seed=0)


def test_shared_tensors_follow_folded_order_and_skip_removed_ones() -> None:
    m = _cnn()
    result = bnfold.fold(m)
    names = loc.shared_tensors(m, result.model)
    bn_outputs = [r.bn_output for r in result.records]
    assert [n for n in names if n in bn_outputs] == bn_outputs
    conv_outputs = {n.output[0] for n in m.graph.node if n.op_type == "Conv"}
    assert not conv_outputs & set(names)  # renamed away by the backward folds


def test_correct_fold_does_not_diverge() -> None:
    m = _cnn()
    result = bnfold.fold(m)
    assert loc.localize(m, result.model, _feed(m), provider="cpu", opt_level="disabled",
                        records=result.records) is None


def test_corrupted_fold_is_localised_to_its_bn_with_records() -> None:
    m = _cnn()
    result = bnfold.fold(m)
    second = result.records[1]
    bad = _perturb_weight_of(result.model, second.target)
    found = loc.localize(m, bad, _feed(m), provider="cpu", opt_level="disabled",
                         records=result.records)
    assert found is not None
    assert (found.bn, found.tensor, found.node, found.direction) == (
        second.bn, second.bn_output, second.target, "backward")
    assert found.max_abs > 1e-3


def test_corrupted_fold_is_localised_from_graphs_alone() -> None:
    m = _cnn()
    result = bnfold.fold(m)
    third = result.records[2]
    bad = _perturb_weight_of(result.model, third.target)
    found = loc.localize(m, bad, _feed(m), provider="cpu", opt_level="disabled")
    assert found is not None and found.bn == _bn_names(m)[2] == third.bn


def test_divergence_outside_any_fold_blames_no_bn() -> None:
    b = Builder(seed=1)
    x = b.input("x", ["N", 2, 4, 4])
    b.output(b.node("Relu", [b.conv(x, 2, 2)]))
    m = b.model()
    conv = next(n.name for n in m.graph.node if n.op_type == "Conv")
    found = loc.localize(m, _perturb_weight_of(m, conv), _feed(m), provider="cpu",
                         opt_level="disabled")
    assert found is not None and found.bn is None and found.node == conv


def test_forward_fold_is_blamed_through_its_target() -> None:
    m = _cnn()
    result = bnfold.fold(m)
    rec = bnfold.FoldRecord(bn="bnX", graph="main", target=result.records[0].target,
                            direction="forward", bn_output="not-a-tensor")
    tensor = next(n.output[0] for n in result.model.graph.node if n.name == rec.target)
    bn, direction, why = loc.blame(tensor, m, result.model, [rec])
    assert (bn, direction) == ("bnX", "forward") and "bnX" in why


def test_expose_adds_outputs_without_touching_the_input_model() -> None:
    m = _cnn()
    exposed = loc.expose(m, [m.graph.node[0].output[0]])
    assert len(exposed.graph.output) == len(m.graph.output) + 1
    assert len(m.graph.output) == 1


def _save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data",
              size_threshold=0)
    return path


def _corrupted_pair_on_disk(tmp_path: Path) -> tuple[Path, Path, bnfold.FoldResult]:
    m = _cnn()
    result = bnfold.fold(m)
    bad = _perturb_weight_of(result.model, result.records[1].target)
    return (_save_external(m, tmp_path / "a.onnx"), _save_external(bad, tmp_path / "b.onnx"),
            result)


def test_models_on_disk_are_localised_without_loading_their_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serialising a whole model (weights in memory) fails over 2 GiB: ORT must load by path."""
    a, b, result = _corrupted_pair_on_disk(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("external data was loaded into memory")

    from bnfold.verification.explain import GroundTruth

    monkeypatch.setattr(GroundTruth, "run", lambda self, chunks: None)  # the truth needs weights
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", refuse)
    rep = verify(a, b, fold_result=result, batch_sizes=[2])
    assert not rep.passed
    assert rep.localization is not None and rep.localization.bn == result.records[1].bn


def test_exposed_models_go_to_a_temp_folder_with_external_data_and_are_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    import bnfold.io.model_io

    a, b, result = _corrupted_pair_on_disk(tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    written: list[list[str]] = []
    save = bnfold.io.model_io.save_model

    def spy(*args: object, **kwargs: object) -> list[str]:
        written.append(save(*args, **kwargs))  # type: ignore[arg-type]
        return written[-1]

    monkeypatch.setattr(bnfold.io.model_io, "save_model", spy)
    rep = verify(a, b, fold_result=result, batch_sizes=[2])
    assert rep.localization is not None
    assert len(written) == 2 and all(len(paths) == 2 for paths in written)  # model + data file
    assert all(Path(p).is_relative_to(scratch) for paths in written for p in paths)
    assert list(scratch.iterdir()) == []


def test_tensors_that_differ_between_two_original_runs_are_skipped() -> None:
    """A random intermediate ahead of the broken fold must not be blamed instead of it."""
    b = Builder(seed=4)
    x = b.input("x", ["N", 2, 6, 6])
    b.output(b.bn(b.conv(x, 2, 3), 3))  # folded exactly: the random node moves up one place
    b.output(b.node("Relu", [b.node("RandomNormalLike", [x])]))
    b.output(b.bn(b.conv(x, 2, 3), 3))
    m = b.model()
    result = bnfold.fold(m)
    bad = _perturb_weight_of(result.model, result.records[1].target)
    found = loc.localize(m, bad, _feed(m), provider="cpu", opt_level="disabled",
                         records=result.records)
    assert found is not None and found.bn == result.records[1].bn


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("BNFOLD_BIG_TESTS"),
                    reason="writes a 2.3 GB model; set BNFOLD_BIG_TESTS=1 to run")
def test_failure_in_a_model_over_2_gib_is_localised(tmp_path: Path) -> None:
    """x @ W (24000 x 24000 float32, 2.3 GB of external data) -> BN, against a wrong 'fold'
    (an Add of the wrong bias). Serialising either model in memory raises EncodeError."""
    from onnx import TensorProto as T
    from onnx import helper as h

    k = 24000
    w = np.memmap(tmp_path / "w.data", dtype=np.float32, mode="w+", shape=(k, k))
    for i in range(0, k, 2000):
        w[i:i + 2000] = np.random.default_rng(i).standard_normal((2000, k), np.float32) * 0.01
    w.flush()
    del w

    def weight() -> onnx.TensorProto:
        t = onnx.TensorProto(name="W", data_type=T.FLOAT, dims=[k, k],
                             data_location=T.EXTERNAL)
        for key, value in (("location", "w.data"), ("offset", "0"), ("length", str(k * k * 4))):
            t.external_data.add(key=key, value=value)
        return t

    ones = np.ones(k, np.float32)
    io = ([h.make_tensor_value_info("x", T.FLOAT, [1, k])],
          [h.make_tensor_value_info("y", T.FLOAT, [1, k])])
    matmul = h.make_node("MatMul", ["x", "W"], ["mm"], name="matmul")
    graphs = {
        "a.onnx": h.make_graph(
            [matmul, h.make_node("BatchNormalization", ["mm", "s", "b", "m", "v"], ["y"],
                                 name="bn")], "big", *io,
            [weight()] + [numpy_helper.from_array(v, n) for v, n in
                          ((2 * ones, "s"), (0 * ones, "b"), (0 * ones, "m"), (ones, "v"))]),
        "b.onnx": h.make_graph([matmul, h.make_node("Add", ["mm", "bias"], ["y"], name="add")],
                               "big", *io, [weight(), numpy_helper.from_array(ones / 2, "bias")]),
    }
    for name, g in graphs.items():
        onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9),
                  tmp_path / name)
    rep = verify(tmp_path / "a.onnx", tmp_path / "b.onnx", seeds=[0])
    assert not rep.passed
    assert rep.localization is not None and (rep.localization.tensor, rep.localization.bn) == (
        "y", "bn")


def _output_named_y(m: onnx.ModelProto) -> onnx.ModelProto:
    out = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = ["y" if o == out else o for o in node.output]
    m.graph.output[0].name = "y"
    return m


def _unrelated() -> onnx.ModelProto:
    """Same input and output as ``_cnn`` (x -> y), different layers: a depthwise-separable net."""
    b = Builder(seed=4)
    x = b.input("x", ["N", 2, 6, 6])
    y = b.node("Relu", [b.bn(b.conv(x, 2, 4), 4)])
    y = b.node("Relu", [b.bn(b.conv(y, 4, 4, group=4), 4)])
    y = b.node("Relu", [b.bn(b.conv(y, 4, 4, k=1, pads=0), 4)])
    b.output(b.bn(b.conv(y, 4, 3, k=1, pads=0), 3))
    return _output_named_y(b.model())


def test_a_fold_is_recognised_as_a_fold_of_its_original() -> None:
    m = _cnn()
    assert loc.not_a_fold(m, bnfold.fold(m).model) is None


def test_models_with_other_layers_are_not_a_fold_of_each_other() -> None:
    assert "Conv 3 vs 4" in loc.not_a_fold(_cnn(), _unrelated())


def test_models_with_renamed_layers_are_not_a_fold_of_each_other() -> None:
    m, other = _cnn(), _cnn()
    other.graph.node[0].name = "elsewhere"
    assert "not in the folded model" in loc.not_a_fold(m, other)


def test_verifying_unrelated_models_blames_no_fold() -> None:
    report = verify(_output_named_y(_cnn()), _unrelated())
    assert not report.passed
    assert report.localization is None
    assert "not a fold of each other" in report.localization_note
    assert "no fold is blamed" in report.localization_note
