"""bnfold.verification.early: the original's size probe and runs, begun before the fold."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from modelgen import Builder, sized_model

import bnfold
from bnfold.errors import InputError
from bnfold.verification import verify
from bnfold.verification.api import LoadedModel
from bnfold.verification.early import OriginalRuns, start_original
from bnfold.verification.engines import OrtProcess


def _classifier(batch: str | int = "N") -> onnx.ModelProto:
    """x (batch, 2, 6, 6) -> conv-BN-relu -> conv-BN -> global pool -> flatten -> (batch, 3)."""
    b = Builder(seed=5)
    x = b.input("x", [batch, 2, 6, 6])
    y = b.node("Relu", [b.bn(b.conv(x, 2, 4), 4)])
    y = b.bn(b.conv(y, 4, 3), 3)
    b.output(b.node("Flatten", [b.node("GlobalAveragePool", [y])]))
    return b.model()


def _saved(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _commands(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(command, label) of every command sent to an ORT child from now on; "reply" when read."""
    sent: list[tuple[str, str]] = []
    real_submit, real_collect = OrtProcess.submit, OrtProcess.collect

    def submit(self: OrtProcess, label: str, *msg: object) -> None:
        real_submit(self, label, *msg)  # reads a deferred reply first
        sent.append((str(msg[0]), label))

    def collect(self: OrtProcess, label: str) -> object:
        sent.append(("reply", label))
        return real_collect(self, label)

    monkeypatch.setattr(OrtProcess, "submit", submit)
    monkeypatch.setattr(OrtProcess, "collect", collect)
    return sent


def _ran(path: Path, proc: OrtProcess, **options: object) -> OriginalRuns | None:
    ahead = start_original(LoadedModel.of(path), proc, **options)  # type: ignore[arg-type]
    assert ahead.checked() is None
    ahead.send_runs()
    return ahead.runs()


def test_the_probe_and_the_runs_are_one_command_each_not_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reply is read when asked for, or before the next command is sent."""
    path = _saved(tmp_path, _classifier())
    sent = _commands(monkeypatch)
    with OrtProcess() as proc:
        ahead = start_original(LoadedModel.of(path), proc)
        assert [c for c, _ in sent] == ["load"]  # the probe: the session is kept
        assert proc.info()[0] and [c for c, _ in sent] == ["load", "reply", "info", "reply"]
        assert ahead.checked() is None and not proc.has("probe")
        ahead.send_runs()
        assert [c for c, _ in sent][4:] == ["once"]  # the runs on that session, sent
        runs = ahead.runs()
        assert [c for c, _ in sent][4:] == ["once", "reply"]
        ahead.release()
        assert [c for c, _ in sent][4:] == ["once", "reply"]  # the runs dropped it
    assert runs is not None
    assert [source for source, _ in runs.sets] == [
        "random seed=0 batch=1", "random seed=1 batch=2", "random seed=2 batch=1"]


def test_its_outputs_are_the_originals_on_the_inputs_verify_makes(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = _saved(tmp_path, _classifier())
    with OrtProcess() as proc:
        runs = _ran(path, proc, seed=7, batch_sizes=[3])
    assert runs is not None and len(runs.sets) == 3
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as verify runs it
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for (_, chunks), outputs in zip(runs.sets, runs.outputs):
        assert chunks[0]["x"].shape == (3, 2, 6, 6)
        want = session.run(None, chunks[0])[0]
        np.testing.assert_array_equal(next(iter(outputs.values())), want)


def test_verify_runs_only_the_folded_model_with_them(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    m = _classifier()
    path, folded = _saved(tmp_path, m), _saved(tmp_path, bnfold.fold(m).model, "f.onnx")
    with OrtProcess() as proc:
        original = LoadedModel.of(path)
        runs = _ran(path, proc)
        sent = _commands(monkeypatch)
        report = verify(original, folded, proc=proc, original_runs=runs)
        first = list(sent)
        plain = verify(original, folded, proc=proc)
    assert report.passed and plain.passed
    assert [c for c, label in first if "folded" in label].count("run") == 3
    assert not any("original" in label for _, label in first)  # not loaded, not run
    assert any("original" in label for _, label in sent[len(first):])
    assert [c.metrics.max_abs for c in report.checks] == [c.metrics.max_abs for c in plain.checks]


def test_outputs_of_other_inputs_are_not_used(tmp_path: Path) -> None:
    """Another seed, batch size or provider: the original runs again (``outputs_for`` None)."""
    m = _classifier()
    path, folded = _saved(tmp_path, m), _saved(tmp_path, bnfold.fold(m).model, "f.onnx")
    with OrtProcess() as proc:
        runs, other = _ran(path, proc), _ran(path, proc, seed=1)
        assert runs is not None and other is not None
        wrong = OriginalRuns(runs.provider, runs.opt_level, runs.sets,
                             [{k: v + 1.0 for k, v in out.items()} for out in runs.outputs])
        assert wrong.outputs_for("cpu", "disabled", other.sets) is None
        assert wrong.outputs_for("cpu", "basic", runs.sets) is None
        assert wrong.outputs_for("cuda", "disabled", runs.sets) is None
        assert wrong.outputs_for("cpu", "disabled", runs.sets) is wrong.outputs
        # verify at another seed makes other inputs: the (wrong) outputs are not judged
        report = verify(LoadedModel.of(path), folded, proc=proc, seed=1, original_runs=wrong)
    assert report.passed


def test_outputs_over_the_held_limit_are_left_to_verify(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from bnfold.verification import early

    monkeypatch.setattr(early, "HELD_OUTPUT_BYTES", 20)  # 3 float32 logits per sample: 12 bytes
    with OrtProcess() as proc:
        assert _ran(_saved(tmp_path, _classifier()), proc) is None


def test_a_model_ort_cannot_load_is_refused_when_checked(tmp_path: Path) -> None:
    from onnx import external_data_helper as edh

    model = onnx.load("models/resnet_digits.onnx")  # every tensor external: ORT refuses it
    edh.convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.bin",
                                       size_threshold=0)
    path = _saved(tmp_path, model)
    with OrtProcess() as proc:
        ahead = start_original(LoadedModel.of(path), proc)
        with pytest.raises(InputError, match="onnxruntime cannot load the original model"):
            ahead.checked()
        assert proc.info()[0]  # the child still answers


def test_a_model_that_loads_but_fails_a_run_leaves_the_runs_to_verify(tmp_path: Path) -> None:
    """Batch 1 runs, batch 2 does not (Reshape to 4 values): no error here, no runs; verify
    then reports the failure as it does without them."""
    b = Builder()
    x = b.input("x", ["N", 4])
    b.output(b.node("Reshape", [x, b.const(np.array([4]), "shape", np.int64)]))
    path = _saved(tmp_path, b.model())
    with OrtProcess() as proc:
        runs = _ran(path, proc)
        assert runs is None
        with pytest.raises(InputError, match="onnxruntime failed on the original model"):
            verify(LoadedModel.of(path), path, proc=proc, original_runs=runs)


def test_a_model_with_dims_to_size_is_probed_at_once_and_runs_in_verify(tmp_path: Path) -> None:
    path = _saved(tmp_path, sized_model(8192))  # runs at 64x64, not at 32x32
    with OrtProcess() as proc:
        ahead = start_original(LoadedModel.of(path), proc)
        assert not proc._in_flight
        size = ahead.checked()
        ahead.send_runs()
        assert not proc._in_flight and ahead.runs() is None
    assert size is not None and size.size == 64 and ahead.size is size


def _holds_the_original(proc: OrtProcess) -> bool:
    """Whether the child still holds the original's session (asked of the child itself)."""
    x = np.zeros((1, 2, 6, 6), np.float32)
    try:
        proc.send("check", "run", "bnfold-original-ahead", {"x": x}, None).get()
    except RuntimeError:  # KeyError in the child: no such session
        return False
    return True


def test_a_probe_whose_runs_are_never_sent_leaves_no_session_in_the_child(tmp_path: Path) -> None:
    """A fold that fails, or a model without BN: ``release`` drops the original's session
    (a long-lived child would hold its weights otherwise), read or not."""
    path = _saved(tmp_path, _classifier())
    with OrtProcess() as proc:
        ahead = start_original(LoadedModel.of(path), proc)
        assert ahead.checked() is None
        assert _holds_the_original(proc)
        ahead.release()
        assert not _holds_the_original(proc)
        unread = start_original(LoadedModel.of(path), proc)
        unread.release()  # its probe never read
        assert not _holds_the_original(proc)


def test_a_child_restarted_after_the_probe_leaves_the_runs_to_verify(tmp_path: Path) -> None:
    """A crash in a proof restarts the child without the original's session: the runs fail
    quietly and ``verify`` runs the original itself."""
    import os
    import signal

    path = _saved(tmp_path, _classifier())
    with OrtProcess() as proc:
        ahead = start_original(LoadedModel.of(path), proc)
        assert ahead.checked() is None
        os.kill(proc._start().pid, signal.SIGKILL)
        with pytest.raises(Exception):
            proc.info()  # the crash, seen by whatever command came next
        ahead.send_runs()
        assert ahead.runs() is None
        assert proc.info()[0]
