"""``bnfold verify`` exit codes and outputs: 0 pass, 1 verification failed, 2 bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from modelgen import Builder, bn9, ort_crashes_on
from onnx import numpy_helper

import bnfold
from bnfold.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """original.onnx, folded.onnx, corrupted.onnx (one folded weight changed), other.onnx."""
    d = tmp_path_factory.mktemp("verify_cli")
    b = Builder(seed=2)
    x = b.input("input", ["N", 2, 5, 5])
    y = b.node("Relu", [b.bn(b.conv(x, 2, 3), 3)])
    b.output(b.node("Flatten", [b.node("GlobalAveragePool", [y])]))
    original = b.model()
    result = bnfold.fold(original)
    bad = onnx.ModelProto()
    bad.CopyFrom(result.model)
    init = next(i for i in bad.graph.initializer if i.name == bad.graph.node[0].input[1])
    w = numpy_helper.to_array(init).copy()
    w.flat[3] -= 1.0
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    other = onnx.ModelProto()
    other.CopyFrom(original)
    other.graph.output[0].name = "renamed"
    other.graph.node[-1].output[0] = "renamed"
    paths = {"original": d / "original.onnx", "folded": d / "folded.onnx",
             "corrupted": d / "corrupted.onnx", "other": d / "other.onnx"}
    for key, model in (("original", original), ("folded", result.model), ("corrupted", bad),
                       ("other", other)):
        onnx.save(model, paths[key])
    paths["bn"] = Path(result.records[0].bn)
    return paths


def _run(*args: object) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["verify", *map(str, args)])
    return r.exit_code, r.stdout, r.stderr


def test_pass_exits_0_with_summary_on_stdout(models: dict[str, Path]) -> None:
    code, out, err = _run(models["original"], models["folded"])
    assert code == 0, err
    assert out.startswith("PASS: 1 output(s) x 3 case(s)")  # seeds 0, 1, 2 at batch 1, 2, 1
    assert "verifying" in err and "verifying" not in out


def test_corrupted_fold_exits_1_and_names_the_bn(models: dict[str, Path]) -> None:
    code, out, _ = _run(models["original"], models["corrupted"])
    assert code == 1
    assert out.startswith("FAIL") and f"BN '{models['bn']}'" in out


def test_json_output_is_the_report(models: dict[str, Path]) -> None:
    code, out, _ = _run(models["original"], models["corrupted"], "--json", "-q")
    d = json.loads(out)
    assert code == 1 and d["passed"] is False and d["localization"]["bn"] == str(models["bn"])


def test_report_dir_gets_three_files(models: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = _run(models["original"], models["folded"], "--report", tmp_path / "r")
    assert code == 0 and "report written" in err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "report.html", "report.json", "report.md"]


def test_data_and_labels_print_accuracy(models: dict[str, Path], tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", input=np.ones((4, 2, 5, 5), np.float32))
    np.save(tmp_path / "l.npy", np.zeros(4, np.int64))
    code, out, err = _run(models["original"], models["folded"], "--data", tmp_path / "d.npz",
                          "--labels", tmp_path / "l.npy")
    assert code == 0, err
    assert "accuracy on 4 samples" in out


@pytest.mark.parametrize("case", ["signature", "npz", "provider", "shape", "missing"])
def test_bad_input_exits_2_with_one_line(models: dict[str, Path], tmp_path: Path, case: str) -> None:
    (tmp_path / "junk.npz").write_bytes(b"junk")
    extra = {"signature": [models["other"]],
             "npz": [models["folded"], "--data", tmp_path / "junk.npz"],
             "provider": [models["folded"], "--provider", "cuda"],
             "shape": [models["folded"], "--shape", "input:1x9x5x5"],
             "missing": [tmp_path / "nope.onnx"]}[case]
    import onnxruntime as ort

    if case == "provider" and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    code, out, err = _run(models["original"], *extra, "-q")
    assert code == 2 and out == ""
    assert err.startswith("bnfold: error:") and err.count("\n") == 1


def test_help_has_examples() -> None:
    r = CliRunner().invoke(main, ["verify", "--help"])
    assert r.exit_code == 0 and "Examples:" in r.output and "--labels" in r.output


@pytest.fixture(scope="module")
def bn9_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(runs.onnx, crashes.onnx): the same opset-9 BN; ORT segfaults on the second."""
    d = tmp_path_factory.mktemp("bn9")
    runs, crashes = d / "runs.onnx", d / "crashes.onnx"
    onnx.save(bn9(empty_optional_outputs=False), runs)
    onnx.save(bn9(empty_optional_outputs=True), crashes)
    if not ort_crashes_on(crashes):
        pytest.skip("this onnxruntime no longer crashes on an opset-9 BN with empty output names")
    return runs, crashes


def test_ort_crash_on_the_original_exits_2_with_one_line(bn9_pair: tuple[Path, Path]) -> None:
    runs, crashes = bn9_pair
    code, out, err = _run(crashes, runs, "-q")
    assert code == 2 and out == ""
    assert err.startswith("bnfold: error: onnxruntime crashed (SIGSEGV) on the original model")
    assert str(crashes) in err and err.count("\n") == 1


def test_ort_crash_on_the_folded_model_exits_1_naming_it(bn9_pair: tuple[Path, Path]) -> None:
    runs, crashes = bn9_pair
    code, out, _ = _run(runs, crashes, "-q")
    assert code == 1
    assert out.startswith(f"FAIL: onnxruntime crashed (SIGSEGV) on the folded model {crashes}")
