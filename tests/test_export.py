"""bnfold.export, its graph cleanup, and `bnfold export`: every BN kept, outputs match PyTorch."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.cli import main
from bnfold.errors import InputError
from bnfold.exporting.cleanup import (
    clean_exported,
    drop_zero_conv_bias,
    name_nodes_by_module,
    remove_dead_nodes,
)

torch = pytest.importorskip("torch")
nn = torch.nn

from bnfold.exporting.exporter import BnTrainingModeWarning, export, load_factory, run_onnx  # noqa: E402
from models.zoo import SPECS  # noqa: E402

SHAPES = {"image": (1, 1, 8, 8), "flat": (1, 64), "seq": (1, 8, 8)}


def _conv_with_bias_from(bias_nodes: list[onnx.NodeProto], bias: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    nodes = [*bias_nodes, helper.make_node("Conv", ["x", "w", bias], ["y"], name="conv")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))


def _with_random_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so a dropped or wrong BN shows."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def _bn_count(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_computed_zero_bias_is_dropped() -> None:
    model = _conv_with_bias_from([
        _const("zero", np.array(0.0, np.float32)), _const("shape", np.array([2], np.int64)),
        helper.make_node("CastLike", ["zero", "x"], ["zero_f"]),
        helper.make_node("Expand", ["zero_f", "shape"], ["bias"])], "bias")
    assert drop_zero_conv_bias(model) == ["conv"]
    remove_dead_nodes(model)
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert list(model.graph.node[0].input) == ["x", "w"]


def test_nonzero_bias_is_kept() -> None:
    model = _conv_with_bias_from([_const("bias", np.array([0.0, 0.5], np.float32))], "bias")
    assert drop_zero_conv_bias(model) == []
    assert list(model.graph.node[-1].input) == ["x", "w", "bias"]


def test_cleanup_output_is_valid_and_equal() -> None:
    model = _conv_with_bias_from([
        _const("zero", np.zeros(2, np.float32)), helper.make_node("Identity", ["zero"], ["bias"])],
        "bias")
    x = np.random.default_rng(0).standard_normal((3, 1, 2, 2)).astype(np.float32)
    before = run_onnx(model, {"x": x})[0]
    cleaned, report = clean_exported(model)
    assert report.zero_biases_dropped == ["conv"] and report.nodes_after == 1
    np.testing.assert_array_equal(run_onnx(cleaned, {"x": x})[0], before)


def test_nodes_named_after_their_module() -> None:
    model = _conv_with_bias_from([], "")
    scopes = helper.make_node("Relu", ["y"], ["z"], name="node_relu")
    model.graph.node.append(scopes)
    for node, value in zip(model.graph.node, ["['', 'stem', 'stem.0', 'conv2d']",
                                              "['', 'block1', 'relu']"], strict=True):
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.name_scopes", value
    name_nodes_by_module(model)
    assert [n.name for n in model.graph.node] == ["stem.0", "block1"]
    assert not any(n.metadata_props for n in model.graph.node)


@pytest.mark.parametrize("name", list(SPECS))
def test_zoo_export_keeps_every_bn_and_matches_torch(name: str, tmp_path) -> None:
    spec = SPECS[name]
    torch.manual_seed(0)
    model = _with_random_stats(spec.factory())
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", BnTrainingModeWarning)  # eval-mode model: no warning
        result = export(model, torch.randn(SHAPES[spec.layout]), path)
    assert result.bn_calls > 0 and result.bn_nodes == result.bn_calls == _bn_count(result.model)
    assert result.ok and result.max_abs_error < 1e-4 and result.warnings == []
    assert result.batch_sizes == [1, 3]
    saved = onnx.load(str(path))
    for batch in (1, 8):  # the saved file runs at any batch size
        x = torch.randn(batch, *SHAPES[spec.layout][1:])
        got = run_onnx(saved, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


def test_conv3d_and_conv_transpose3d_export_cleanly_with_static_batch() -> None:
    """torch's computed zero bias for a bias-free Conv3d has a wrong shape; cleanup removes it."""
    model = _with_random_stats(nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1, bias=False), nn.BatchNorm3d(4),
        nn.ConvTranspose3d(4, 3, 2, stride=2, bias=False), nn.BatchNorm3d(3)))
    result = export(model, torch.randn(2, 2, 4, 4, 4), dynamic_batch=False)
    assert result.ok and result.bn_nodes == 2 and len(result.zero_biases_dropped) == 1
    assert [n.op_type for n in result.model.graph.node] == [
        "Conv", "BatchNormalization", "ConvTranspose", "BatchNormalization"]
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert result.batch_sizes == [2]


def test_training_mode_bn_warns_exports_eval_and_restores_mode() -> None:
    model = _with_random_stats(SPECS["mlp_digits"].factory()).train()
    x = torch.randn(4, 64)
    with pytest.warns(BnTrainingModeWarning, match="2 BatchNorm module"):
        result = bnfold.export(model, x)  # the function, whatever bnfold.exporting imported
    assert model.training and model.layers[1].training
    assert result.warnings and result.ok
    got = run_onnx(result.model, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model.eval()(x).detach().numpy(), atol=1e-5)


def test_bn_without_running_stats_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    with pytest.raises(InputError, match="track_running_stats=False"):
        export(model, torch.randn(2, 4))


def test_load_factory_with_weights(tmp_path) -> None:
    trained = _with_random_stats(SPECS["mlp_digits"].factory())
    weights = tmp_path / "mlp.pt"
    torch.save(trained.state_dict(), weights)
    loaded = load_factory("models.zoo:mlp_digits", str(weights))
    assert torch.equal(loaded.layers[1].running_var, trained.layers[1].running_var)


@pytest.mark.parametrize("spec,match", [("models.zoo", "expected package.module:factory"),
                                        ("models.zoo:nope", "cannot load"),
                                        ("no_such_pkg.mod:f", "cannot load")])
def test_load_factory_errors(spec: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_factory(spec)


def test_wrong_weights_are_refused(tmp_path) -> None:
    weights = tmp_path / "other.pt"
    torch.save(SPECS["conv1d_digits"].factory().state_dict(), weights)
    with pytest.raises(InputError, match="do not fit"):
        load_factory("models.zoo:mlp_digits", str(weights))


def test_cli_export_fold_json(tmp_path) -> None:
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["export", "models.zoo:mlp_digits", "-o", str(out),
                                    "--shape", "1x64", "--fold", "--json", "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["export"]["bn_nodes"] == 2 and data["fold"]["bn_after"] == 0
    assert data["verify"]["passed"] and data["ok"]
    assert data["torch_fusion"]["bn_after"] == 0
    assert data["bnfold_max_abs_error_vs_torch"] < 1e-4
    assert out.exists() and (tmp_path / "m.folded.onnx").exists()
    assert "training mode" not in res.stderr  # the CLI puts the module in eval mode itself


def test_cli_export_says_which_bns_it_put_in_eval_mode_only_with_verbose(tmp_path) -> None:
    args = ["export", "models.zoo:mlp_digits", "-o", str(tmp_path / "m.onnx"), "--shape", "1x64"]
    quiet = CliRunner().invoke(main, args)
    loud = CliRunner().invoke(main, args + ["-v"])
    assert quiet.exit_code == loud.exit_code == 0, quiet.output + loud.output
    assert "eval mode" not in quiet.stderr and "model.eval()" not in quiet.stderr
    assert "put 2 BatchNorm module(s) in eval mode" in loud.stderr


def test_state_dict_mismatch_names_missing_unexpected_and_shapes(tmp_path) -> None:
    weights = tmp_path / "other.pt"
    state = SPECS["mlp_digits"].factory().state_dict()
    first = next(iter(state))
    state["extra.weight"] = torch.zeros(3)
    state[first] = torch.zeros(7, 7)
    del state[list(state)[1]]
    torch.save(state, weights)
    with pytest.raises(InputError) as err:
        load_factory("models.zoo:mlp_digits", str(weights))
    text = str(err.value)
    assert "1 missing key(s)" in text and "1 unexpected key(s): extra.weight" in text
    assert f"{first} (7, 7) vs" in text and "\n" not in text


def test_export_without_torch_says_what_to_install(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):  # noqa: ANN001, ANN202
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    res = CliRunner().invoke(main, ["export", "models.zoo:mlp_digits", "-o", "/tmp/x.onnx",
                                    "--shape", "1x64"])
    assert res.exit_code == 2
    assert "pip install torch==2.13.0" in res.stderr and "Traceback" not in res.output


def test_cli_wrong_input_shape_is_a_usage_error_and_old_spelling_still_works(tmp_path) -> None:
    res = CliRunner().invoke(main, ["export", "models.zoo:mlp_digits", "-o",
                                    str(tmp_path / "m.onnx"), "--input-shape", "1x8"])
    assert res.exit_code == 2
    assert "failed on input shape 1x8" in res.stderr
    assert not (tmp_path / "m.onnx").exists()
