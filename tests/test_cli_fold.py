"""`bnfold fold` / `bnfold inspect`: outputs, exit codes, stdout vs stderr, input protection."""
from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from bnfold.cli import main
from modelgen import Builder, count_bn


@pytest.fixture()
def model_path(tmp_path):
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    y = b.node("Relu", [b.bn(b.conv(x, 3, 4), 4)])
    b.output(b.conv(b.bn(y, 4), 4, 2, pads=1))
    path = tmp_path / "m.onnx"
    onnx.save(b.model(), path)
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_fold_writes_default_output_and_prints_table(model_path):
    res = invoke("fold", model_path)
    assert res.exit_code == 0, res.output
    out = model_path.with_name("m.folded.onnx")
    assert count_bn(onnx.load(out)) == 1
    assert "folded <- backward" in res.stdout and "padded_consumer" in res.stdout
    assert "2 before -> 1 after" in res.stdout
    assert "wrote" in res.stderr and "wrote" not in res.stdout


def test_fold_json_is_machine_readable(model_path, tmp_path):
    res = invoke("fold", model_path, "-o", tmp_path / "o.onnx", "--json", "-q")
    data = json.loads(res.stdout)
    assert data["bn_before"] == 2 and data["bn_after"] == 1
    assert {r["reason"] for r in data["records"]} == {None, "padded_consumer"}


def test_fold_never_overwrites_input_without_in_place(model_path):
    before = model_path.read_bytes()
    res = invoke("fold", model_path, "-o", model_path)
    assert res.exit_code == 2 and "--in-place" in res.stderr
    assert model_path.read_bytes() == before


def test_in_place_rewrites_input(model_path):
    res = invoke("fold", model_path, "--in-place")
    assert res.exit_code == 0
    assert count_bn(onnx.load(model_path)) == 1


def test_inspect_writes_nothing(model_path):
    res = invoke("inspect", model_path, "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["folded"] == 1
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all \x00\xff", None])
def test_bad_input_is_one_line_exit_2(tmp_path, content):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    res = invoke("fold", path, "-q")
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("bnfold: error:")
    assert not (tmp_path / "bad.folded.onnx").exists()
    assert "Traceback" not in res.output


def test_help_shows_examples():
    res = invoke("fold", "--help")
    assert res.exit_code == 0 and "Examples:" in res.stdout


def test_external_data_model_folds_verifies_and_keeps_external_data(tmp_path):
    from bnfold.io.model_io import save_model

    b = Builder()
    x = b.input("x", ["N", 8, 5, 5])
    b.output(b.bn(b.conv(x, 8, 16), 16))
    src = tmp_path / "big.onnx"
    save_model(b.model(), src, external_data=True)
    res = invoke("fold", src, "-o", tmp_path / "out.onnx", "--report", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out.onnx.data").exists() and "PASS" in res.stdout
    assert {p.name for p in (tmp_path / "rep").iterdir()} >= {"report.json", "report.html"}


def test_unavailable_provider_fails_before_writing(model_path):
    res = invoke("fold", model_path, "--provider", "cuda", "-q")
    assert res.exit_code == 2 and "not available" in res.stderr
    assert not model_path.with_name("m.folded.onnx").exists()


@pytest.fixture()
def external_model(tmp_path):
    """Conv -> BN -> Conv with its weights in m.onnx.data; the second conv is not folded."""
    from bnfold.io.model_io import save_model

    b = Builder(seed=11)
    x = b.input("x", ["N", 8, 5, 5])
    b.output(b.conv(b.bn(b.conv(x, 8, 16), 16), 16, 16))
    model = b.model()
    path = tmp_path / "m.onnx"
    save_model(model, path, external_data=True)
    return model, path


@pytest.mark.parametrize("verify", ["--verify", "--no-verify"])
def test_in_place_on_external_data_writes_a_new_data_file_and_a_correct_model(external_model,
                                                                               verify):
    from modelgen import max_error, tolerance

    from bnfold.io.model_io import load_model

    model, path = external_model
    old_data = path.with_name("m.onnx.data").read_bytes()
    res = invoke("fold", path, "--in-place", verify, "-q")
    assert res.exit_code == 0, res.output
    assert path.with_name("m.onnx.1.data").exists()
    assert path.with_name("m.onnx.data").read_bytes() == old_data  # copied from, never written
    back = load_model(path)
    assert count_bn(back) == 0 and max_error(model, back) <= tolerance(model)


def test_failed_in_place_write_on_external_data_keeps_the_original(external_model,
                                                                     monkeypatch):
    import os
    from pathlib import Path

    from bnfold.io import model_io

    _, path = external_model
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    real_replace = os.replace

    def fail_on_model(src, dst):
        if Path(dst) == path:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", fail_on_model)
    res = invoke("fold", path, "--in-place", "--no-verify", "-q")
    assert res.exit_code == 2 and "No space left" in res.stderr
    assert {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name in before} == before


def test_verify_options_reach_the_report(model_path, tmp_path):
    res = invoke("fold", model_path, "-o", tmp_path / "o.onnx", "--json", "-q",
                 "--opt-level", "all", "--seed", "3", "--batch-size", "2")
    assert res.exit_code == 0, res.output
    verification = json.loads(res.stdout)["verification"]
    text = json.dumps(verification)
    assert '"all"' in text and "seed=3" in text and "batch=2" in text


def test_fold_table_and_json_show_each_folds_proof_error(model_path, tmp_path):
    res = invoke("fold", model_path, "-o", tmp_path / "o.onnx", "--no-verify")
    line = next(x for x in res.stdout.splitlines() if "folded <- backward" in x)
    assert "(proof " in line and " <= " in line
    res = invoke("fold", model_path, "-o", tmp_path / "o.onnx", "--json", "-q", "--no-verify")
    folded = [r for r in json.loads(res.stdout)["records"] if r["folded"]]
    assert folded and all(0 <= r["proof_max_abs"] <= r["proof_tol"] for r in folded)


def test_in_place_verifies_the_staged_files_by_path_never_an_in_memory_copy(external_model,
                                                                              monkeypatch):
    """Over 2 GiB a model cannot be serialized in memory: --in-place must verify from disk."""
    from pathlib import Path

    import bnfold.verification
    from modelgen import max_error, tolerance

    from bnfold.io import model_io
    from bnfold.io.model_io import load_model

    model, path = external_model
    real_verify, seen = bnfold.verification.verify, []

    def verify_from_disk(original, folded, **kwargs):
        seen.append(folded)
        assert isinstance(folded, str) and Path(folded).is_file() and Path(folded) != path
        return real_verify(original, folded, **kwargs)

    def no_loading(*args, **kwargs):
        raise AssertionError("external data loaded into the proto")

    monkeypatch.setattr(bnfold.verification, "verify", verify_from_disk)
    monkeypatch.setattr(model_io, "load_external", no_loading)
    res = invoke("fold", path, "--in-place", "-q")
    assert res.exit_code == 0 and "PASS" in res.stdout, res.output
    assert len(seen) == 1 and not Path(seen[0]).exists()  # the staged copy went into place
    assert max_error(model, load_model(path)) <= tolerance(model)


def test_in_place_keeps_the_input_when_verification_fails(external_model, monkeypatch):
    import bnfold.verification

    class Failed:
        passed, folded = False, None

        def summary(self) -> str:
            return "verification: FAIL"

    _, path = external_model
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    monkeypatch.setattr(bnfold.verification, "verify", lambda *a, **k: Failed())
    res = invoke("fold", path, "--in-place")
    assert res.exit_code == 1 and "left unchanged" in res.stderr
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before


def test_constant_node_data_is_read_from_the_model_folder_not_the_cwd(tmp_path, monkeypatch):
    """A weights.bin in the current directory must not be folded in place of the model's."""
    import numpy as np
    from onnx import external_data_helper as edh
    from onnx import helper, numpy_helper

    from modelgen import max_error, tolerance

    from bnfold.io.model_io import load_model

    (tmp_path / "model").mkdir()
    (tmp_path / "cwd").mkdir()
    b = Builder(seed=5)
    x = b.input("x", ["N", 8, 5, 5])
    scale = numpy_helper.from_array(np.linspace(0.5, 2.0, 16).astype(np.float32), "scale")
    (tmp_path / "model" / "weights.bin").write_bytes(scale.raw_data)
    (tmp_path / "cwd" / "weights.bin").write_bytes(np.full(16, 9.0, np.float32).tobytes())
    edh.set_external_data(scale, "weights.bin", offset=0, length=64)
    scale.ClearField("raw_data")
    scale.data_location = onnx.TensorProto.EXTERNAL
    b.nodes.append(helper.make_node("Constant", [], ["s"], value=scale))
    b.output(b.bn(b.conv(x, 8, 16), 16, params=["s"] + b.bn_params(16)[1:]))
    path = tmp_path / "model" / "m.onnx"
    path.write_bytes(b.model().SerializeToString())
    monkeypatch.chdir(tmp_path / "cwd")
    res = invoke("fold", path, "-o", tmp_path / "out.onnx", "-q")
    assert res.exit_code == 0 and "PASS" in res.stdout, res.output
    original, folded = load_model(path), load_model(tmp_path / "out.onnx")
    assert count_bn(folded) == 0 and max_error(original, folded) <= tolerance(original)


def test_fold_verifies_at_a_size_the_original_runs_and_says_which(tmp_path):
    from modelgen import sized_model

    src = tmp_path / "det.onnx"
    onnx.save(sized_model(2048), src)  # runs at 32x32, not at 16x16
    res = invoke("fold", src, "-o", tmp_path / "o.onnx")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[-1].startswith("PASS")
    assert "symbolic dims of input 'x' set to 32" in res.stdout


def test_fold_refuses_a_model_no_size_fits_before_writing_and_names_shape(tmp_path):
    from modelgen import sized_model

    src, out = tmp_path / "det.onnx", tmp_path / "o.onnx"
    onnx.save(sized_model(2062), src)  # no size of the ladder fits
    res = invoke("fold", src, "-o", out)
    assert res.exit_code == 2
    assert "--shape x:1x1xHxW" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture()
def no_bn_path(tmp_path):
    b = Builder()
    b.output(b.node("Relu", [b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4)]))
    path = tmp_path / "plain.onnx"
    onnx.save(b.model(), path)
    return path


def test_no_bn_says_nothing_to_fold_and_writes_no_copy(no_bn_path):
    res = invoke("fold", no_bn_path)
    assert res.exit_code == 0, res.output
    assert "no BatchNormalization nodes: nothing to fold" in res.stdout
    assert "nothing written" in res.stderr
    assert sorted(p.name for p in no_bn_path.parent.iterdir()) == ["plain.onnx"]


def test_no_bn_with_explicit_output_writes_the_copy(no_bn_path, tmp_path):
    res = invoke("fold", no_bn_path, "-o", tmp_path / "copy.onnx")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "copy.onnx").exists()
    assert "nothing to fold" in res.stdout


def test_no_bn_in_place_leaves_the_input_file_alone(no_bn_path):
    before = no_bn_path.stat()
    res = invoke("fold", no_bn_path, "--in-place")
    assert res.exit_code == 0, res.output
    after = no_bn_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_no_progress_lines_when_stderr_is_not_a_terminal(model_path, tmp_path):
    res = invoke("fold", model_path, "-o", tmp_path / "o.onnx")
    assert res.exit_code == 0, res.output
    assert "folding BN" not in res.stderr and "verifying case" not in res.stderr
    assert "\r" not in res.stderr


def test_an_original_onnxruntime_cannot_load_is_refused_before_anything_is_written(tmp_path):
    """With every tensor external (tiny shape tensors included) ORT refuses the original itself;
    with verification on, nothing is folded or written; --no-verify still folds."""
    import onnx
    from onnx import external_data_helper as edh

    model = onnx.load("models/resnet_digits.onnx")
    edh.convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.bin",
                                       size_threshold=0)
    onnx.save(model, tmp_path / "m.onnx")
    res = invoke("fold", tmp_path / "m.onnx", "-q")
    assert res.exit_code == 2 and "cannot load the original model" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "w.bin"]
    res = invoke("fold", tmp_path / "m.onnx", "-q", "--no-verify")
    assert res.exit_code == 0 and (tmp_path / "m.folded.onnx").exists()


def test_fold_starts_the_ort_child_before_the_fold_engine_is_imported(model_path, tmp_path):
    """Its ORT import overlaps the parent's imports and parse (fresh interpreter: nothing of
    bnfold's engine imported before the command runs)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from bnfold.verification import engines\n"
        "real, seen = engines.OrtProcess._start, []\n"
        "def start(self):\n"
        "    seen.append('bnfold.folding' in sys.modules or 'onnx' in sys.modules)\n"
        "    return real(self)\n"
        "engines.OrtProcess._start = start\n"
        "from bnfold.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "finally:\n"
        "    print('first start after the engine:', seen[0], file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", probe, "fold", str(model_path), "-o",
                          str(tmp_path / "f.onnx"), "-q"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "first start after the engine: False" in out.stderr
