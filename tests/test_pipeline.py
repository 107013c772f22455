"""``bnfold.fold_file``: file in, folded and verified file out, typed options, input protection."""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import onnx
import pytest
from modelgen import Builder, count_bn

import bnfold
from bnfold import pipeline
from bnfold.errors import BnfoldError, OutputError
from bnfold.pipeline import FoldFileResult, VerifyOptions, fold_file


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    y = b.node("Relu", [b.bn(b.conv(x, 3, 4), 4)])
    b.output(b.conv(b.bn(y, 4), 4, 2, pads=1))
    return _save(b.model(), tmp_path / "m.onnx")


@pytest.fixture()
def no_bn_path(tmp_path: Path) -> Path:
    b = Builder()
    b.output(b.node("Relu", [b.conv(b.input("x", [1, 3, 5, 5]), 3, 4)]))
    return _save(b.model(), tmp_path / "plain.onnx")


class _Failed:
    """A verification report that failed (what ``bnfold.verification.verify`` returns on a bad fold)."""

    passed, folded = False, None

    def summary(self) -> str:
        return "verification: FAIL"


def test_writes_the_default_output_and_verifies_it(model_path: Path) -> None:
    result = fold_file(model_path)
    out = model_path.with_name("m.folded.onnx")
    assert isinstance(result, FoldFileResult)
    assert result.output == out and result.written == [str(out)]
    assert result.fold.bn_before == 2 and result.fold.bn_after == 1
    assert count_bn(onnx.load(out)) == 1
    assert result.report is not None and result.report.passed and result.passed
    assert result.report.folded == str(out)


def test_without_keep_model_the_folded_proto_is_let_go_and_the_file_verified(
        model_path: Path, tmp_path: Path) -> None:
    kept = fold_file(model_path, tmp_path / "kept.onnx")
    let_go = fold_file(model_path, tmp_path / "o.onnx", keep_model=False)
    assert let_go.passed and let_go.report is not None and len(let_go.report.cases) == 3
    assert let_go.fold.model.ByteSize() == 0 and kept.fold.model.ByteSize() > 0
    assert let_go.fold.bn_after == kept.fold.bn_after == 1
    assert onnx.load(tmp_path / "o.onnx") == kept.fold.model


def test_verification_runs_in_the_folds_ort_child_and_leaves_it_empty(
        model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One ORT child for the probe, the proofs and the verification; no session is left in it."""
    from bnfold.verification import engines, shared_child

    started: list[engines.OrtProcess] = []
    real = engines.OrtProcess._start

    def start(self: engines.OrtProcess):  # noqa: ANN202 - as OrtProcess._start
        if self._proc is None:
            started.append(self)
        return real(self)
    monkeypatch.setattr(engines.OrtProcess, "_start", start)
    shared_child.shared_process().close()  # started afresh below
    for in_place in (False, True):
        result = fold_file(model_path, None if in_place else tmp_path / "o.onnx",
                           in_place=in_place, keep_model=False)
        assert result.passed and result.report is not None and result.report.cases
    shared = shared_child.shared_process()
    assert started == [shared] and shared._loaded == {}


def test_a_cpu_fold_and_verification_never_import_onnxruntime_here(model_path: Path,
                                                                   tmp_path: Path) -> None:
    """ORT runs in the child only: bnfold itself stays about 20 MB smaller (checked in a fresh
    interpreter: this one imported onnxruntime long ago)."""
    import subprocess
    import sys

    code = ("import sys; from bnfold.pipeline import fold_file; "
            f"r = fold_file({str(model_path)!r}, {str(tmp_path / 'o.onnx')!r}, keep_model=False); "
            "print(r.passed, 'onnxruntime' in sys.modules, r.report.environment['onnxruntime'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    passed, imported, version = out.stdout.split()
    import onnxruntime

    assert (passed, imported, version) == ("True", "False", onnxruntime.__version__)


def test_steps_are_told_in_order(model_path: Path, tmp_path: Path) -> None:
    said: list[str] = []
    fold_file(model_path, tmp_path / "o.onnx", say=said.append)
    assert [m.split()[0] for m in said] == ["loading", "wrote", "verifying"]


def test_in_place_replaces_the_input_after_it_verified(model_path: Path) -> None:
    result = fold_file(model_path, in_place=True)
    assert result.written == [str(model_path)] and result.passed
    assert count_bn(onnx.load(model_path)) == 1
    assert not model_path.with_name("m.folded.onnx").exists()


def test_in_place_keeps_the_input_when_verification_fails(model_path: Path, monkeypatch) -> None:
    import bnfold.verification

    before = {p.name: p.read_bytes() for p in model_path.parent.iterdir()}
    monkeypatch.setattr(bnfold.verification, "verify", lambda *a, **k: _Failed())
    result = fold_file(model_path, in_place=True)
    assert not result.passed and result.written == []
    assert any("left unchanged" in n for n in result.notes)
    assert {p.name: p.read_bytes() for p in model_path.parent.iterdir()} == before


def test_a_failed_verification_still_writes_a_separate_output(model_path: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    import bnfold.verification

    monkeypatch.setattr(bnfold.verification, "verify", lambda *a, **k: _Failed())
    result = fold_file(model_path, tmp_path / "o.onnx")
    assert not result.passed and result.written == [str(tmp_path / "o.onnx")]


def test_model_without_bn_writes_nothing_unless_an_output_is_named(no_bn_path: Path,
                                                                    tmp_path: Path) -> None:
    result = fold_file(no_bn_path, verify=None)
    assert result.output is None and result.written == [] and result.report is None
    assert result.notes == ["nothing written (give -o OUT to write a copy anyway)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx"]
    named = fold_file(no_bn_path, tmp_path / "copy.onnx", verify=None)
    assert named.written == [str(tmp_path / "copy.onnx")]


def test_output_on_the_input_is_refused_before_the_fold(model_path: Path) -> None:
    said: list[str] = []
    before = model_path.read_bytes()
    with pytest.raises(OutputError, match="--in-place"):
        fold_file(model_path, model_path, say=said.append)
    assert said == [] and model_path.read_bytes() == before


def test_in_place_with_an_output_is_refused(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(BnfoldError, match="not both"):
        fold_file(model_path, tmp_path / "o.onnx", in_place=True)


def test_unknown_provider_is_refused_before_anything_is_written(model_path: Path) -> None:
    with pytest.raises(BnfoldError, match="unknown provider"):
        fold_file(model_path, verify=VerifyOptions(providers=("npu",)))
    assert not model_path.with_name("m.folded.onnx").exists()


def test_verify_none_skips_verification(model_path: Path, tmp_path: Path) -> None:
    result = fold_file(model_path, tmp_path / "o.onnx", verify=None)
    assert result.report is None and result.passed and result.written


def test_report_dir_gets_the_reports(model_path: Path, tmp_path: Path) -> None:
    fold_file(model_path, tmp_path / "o.onnx", verify=VerifyOptions(report_dir=tmp_path / "r"))
    assert {"report.json", "report.md", "report.html"} <= {p.name for p in (tmp_path / "r").iterdir()}


def test_verify_options_are_typed_and_frozen() -> None:
    hints = typing.get_type_hints(VerifyOptions, vars(pipeline))
    assert hints["providers"] == tuple[str, ...] and hints["seed"] is int
    options = VerifyOptions(seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 4  # type: ignore[misc]
    assert options.verify_options()["seed"] == 3


def test_to_dict_is_the_fold_json(model_path: Path, tmp_path: Path) -> None:
    data = fold_file(model_path, tmp_path / "o.onnx").to_dict()
    assert data["input"] == str(model_path) and data["output"] == str(tmp_path / "o.onnx")
    assert data["bn_after"] == 1 and data["verification"]["passed"] is True


def test_the_package_exports_the_pipeline() -> None:
    assert bnfold.fold_file is fold_file and bnfold.VerifyOptions is VerifyOptions


def test_fold_file_parses_and_checks_the_input_a_pinned_number_of_times(
        model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Input parsed by onnx.load_model 3 times (5 before issue 15, 4 before the structure-only
    reads of single-file models, ``io/weights_in_file.py``), onnx.checker 4 runs (input twice,
    the folded model's full check, the folded file; 7, then 5 with the fold's separate
    structural check): a new re-read shows up here."""
    import onnx.checker

    parses: dict[str, int] = {}
    checks = []
    load, check = onnx.load_model, onnx.checker.check_model

    def counted_load(f, *args, **kwargs):  # noqa: ANN001, ANN202
        name = Path(str(f)).name
        parses[name] = parses.get(name, 0) + 1
        return load(f, *args, **kwargs)

    def counted_check(m, *args, **kwargs):  # noqa: ANN001, ANN202
        checks.append(m)
        return check(m, *args, **kwargs)

    monkeypatch.setattr(onnx, "load_model", counted_load)
    monkeypatch.setattr(onnx.checker, "check_model", counted_check)
    result = fold_file(model_path, tmp_path / "out.onnx")
    assert result.passed and result.fold.bn_after < result.fold.bn_before
    assert parses == {"m.onnx": 3, "out.onnx": 1}
    assert len(checks) == 4


def test_no_session_of_the_original_is_left_in_the_shared_child(model_path: Path,
                                                                 no_bn_path: Path,
                                                                 tmp_path: Path) -> None:
    """Verified, without BN (nothing written), or failing in the fold: the original's session
    that the probe loaded is gone from the long-lived child afterwards."""
    import numpy as np

    from bnfold.verification import shared_child
    from bnfold.verification.early import _KEY

    proc = shared_child.shared_process()

    def holds() -> bool:  # asked of the child: a run on a key it lacks is a KeyError there
        try:
            proc.send("check", "run", _KEY, {"x": np.zeros((1, 3, 5, 5), np.float32)}, None).get()
        except RuntimeError as exc:
            return str(exc) != repr(_KEY)
        return True

    def fail(*args: object, **kwargs: object) -> None:
        raise BnfoldError("the fold failed")

    assert fold_file(model_path, tmp_path / "o.onnx").passed
    assert not holds()
    assert fold_file(no_bn_path).output is None
    assert not holds()
    with pytest.MonkeyPatch.context() as mp:
        import bnfold.folding

        mp.setattr(bnfold.folding, "fold", fail)
        with pytest.raises(BnfoldError, match="the fold failed"):
            fold_file(model_path, tmp_path / "p.onnx")
    assert not holds()
