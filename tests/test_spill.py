"""``bnfold.io.spill``: folded weights in a scratch file, read back wherever a weight is read,
and a fold with a spill writing exactly the bytes of one without."""
from __future__ import annotations

import os
import traceback
from pathlib import Path

import numpy as np
import onnx
import pytest
from modelgen import Builder
from onnx import numpy_helper
from test_fold_reparam import repvgg

import bnfold
from bnfold.graph.values import tensor_value
from bnfold.io import spill
from bnfold.io.model_io import load_model, save_model
from bnfold.io.spill import Spill
from bnfold.pipeline import fold_file


def _tensor(shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    value = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(value, "w")


def test_put_points_the_tensor_at_the_scratch_file_and_inline_reads_it_back(tmp_path: Path):
    t = _tensor((64, 64, 3, 3))
    want = numpy_helper.to_array(t).copy()
    with Spill(tmp_path) as s:
        assert s.put(t, want * 2)
        assert spill.is_spilled(t) and not t.HasField("raw_data")
        assert t.data_location == onnx.TensorProto.EXTERNAL
        np.testing.assert_array_equal(tensor_value(t, None), want * 2)  # no folder needed
        spill.inline(t)
        assert not spill.is_spilled(t) and not t.HasField("data_location")
        np.testing.assert_array_equal(numpy_helper.to_array(t), want * 2)


def test_small_weights_stay_in_the_proto(tmp_path: Path):
    t = _tensor((8, 8))
    with Spill(tmp_path) as s:
        assert not s.put(t, numpy_helper.to_array(t))
        assert t.HasField("raw_data") and s.nbytes == 0


def test_close_removes_the_file_and_forgets_its_location(tmp_path: Path):
    s = Spill(tmp_path)
    t = _tensor((64, 64, 3, 3))
    s.put(t, numpy_helper.to_array(t))
    assert os.path.exists(s.path) and spill.resolve(None, s.location) == s.path
    s.close()
    assert not os.path.exists(s.folder) and not spill.is_spilled(t)
    with pytest.raises(ValueError, match="no folder"):
        spill.resolve(None, s.location)
    assert spill.resolve("/m", "w.bin") == os.path.join("/m", "w.bin")


def _wide_model(tmp_path: Path) -> Path:
    """Conv -> BN twice with 147 KB weights (spilled) and a small Conv -> BN (kept inline)."""
    b = Builder()
    x = b.input("x", ["N", 4, 6, 6])
    y = b.node("Relu", [b.bn(b.conv(x, 4, 64), 64)])
    y = b.node("Relu", [b.bn(b.conv(y, 64, 64), 64)])
    b.output(b.bn(b.conv(y, 64, 2), 2))
    path = tmp_path / "wide.onnx"
    onnx.save(b.model(), path)
    return path


@pytest.mark.parametrize("make", [_wide_model, lambda d: _saved(repvgg(c=48), d)],
                         ids=["conv-bn", "repvgg"])
def test_a_fold_with_a_spill_saves_the_bytes_of_one_without(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    plain = bnfold.fold(path, lazy_external=True)
    with Spill(tmp_path) as s:
        spilled = bnfold.fold(path, lazy_external=True, spill=s)
        assert s.nbytes > 0
        held = [t.name for t in spilled.model.graph.initializer if spill.is_spilled(t)]
        assert held  # the large folded weights are not in the proto
        assert all(r.proof_max_abs is not None for r in spilled.records if r.folded)  # proven
        assert [r.to_dict() for r in spilled.records] == [r.to_dict() for r in plain.records]
        # external data first: copied from the scratch file (a single-file save reads it in)
        save_model(spilled.model, tmp_path / "ext.onnx", source_dir=spilled.external_base,
                   external_data=True)
        assert all(spill.is_spilled(t) for t in spilled.model.graph.initializer if t.name in held)
        save_model(spilled.model, tmp_path / "a.onnx", source_dir=spilled.external_base)
    save_model(plain.model, tmp_path / "b.onnx", source_dir=plain.external_base)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    ext = load_model(tmp_path / "ext.onnx")  # the spill is gone: its data was copied
    ref = onnx.load(tmp_path / "b.onnx")
    assert [numpy_helper.to_array(t).tobytes() for t in ext.graph.initializer] == \
        [numpy_helper.to_array(t).tobytes() for t in ref.graph.initializer]


def _saved(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "block.onnx"
    onnx.save(model, path)
    return path


def test_fold_with_a_spill_but_not_lazy_returns_every_weight_in_the_proto(tmp_path: Path):
    path = _wide_model(tmp_path)
    with Spill(tmp_path) as s:
        result = bnfold.fold(path, spill=s)
    assert not any(onnx.external_data_helper.uses_external_data(t)
                   for t in result.model.graph.initializer)
    assert result.model.SerializeToString() == bnfold.fold(path).model.SerializeToString()


@pytest.mark.parametrize("in_place", [False, True])
def test_fold_file_without_keep_model_spills_and_leaves_nothing_behind(tmp_path: Path,
                                                                       in_place: bool,
                                                                       monkeypatch) -> None:
    path = _wide_model(tmp_path)
    fold_file(path, tmp_path / "kept.onnx", verify=None)
    out = None if in_place else tmp_path / "out.onnx"
    made: list[Spill] = []
    real = Spill.beside

    def beside(dest):
        made.append(real(dest))
        return made[-1]

    monkeypatch.setattr(Spill, "beside", staticmethod(beside))
    read_in: list[str] = []  # weights the save read into the proto: none (they stream)
    load = onnx.external_data_helper.load_external_data_for_tensor

    def recorded(t: onnx.TensorProto, base: str) -> None:
        if any(f.name == "stage_model" for f in traceback.extract_stack()):
            read_in.append(t.name)
        load(t, base)

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_tensor", recorded)
    result = fold_file(path, out, in_place=in_place, keep_model=False)
    assert read_in == []
    assert result.passed and made and made[0].nbytes > 0
    assert Path(made[0].folder).parent == tmp_path  # beside the output, on its disk
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".bnfold")]
    written = path if in_place else tmp_path / "out.onnx"
    assert written.read_bytes() == (tmp_path / "kept.onnx").read_bytes()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_termination_signal_mid_fold_removes_the_scratch_file(tmp_path: Path, name: str):
    import signal
    import subprocess
    import sys

    path = _wide_model(tmp_path)
    code = "\n".join([
        "import os, signal, sys",
        "from bnfold.io.spill import Spill",
        "from bnfold.pipeline import fold_file",
        "put = Spill.put",
        "def put_then_die(self, tensor, value):",
        "    done = put(self, tensor, value)",
        f"    os.kill(os.getpid(), signal.{name})",
        "    return done",
        "Spill.put = put_then_die",
        f"fold_file({str(path)!r}, {str(tmp_path / 'o.onnx')!r}, verify=None, keep_model=False)",
        "print('finished')",
    ])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=120)
    assert child.returncode == -getattr(signal, name), child.stderr
    assert "finished" not in child.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.onnx"]


def test_a_scratch_file_that_cannot_be_written_is_a_clean_output_error(tmp_path: Path):
    from bnfold.errors import OutputError

    t = _tensor((64, 64, 3, 3))
    with Spill(tmp_path) as s:
        s._file.close()
        s._file = open("/dev/full", "wb")  # noqa: SIM115 - every write: ENOSPC
        with pytest.raises(OutputError, match="scratch file"):
            s.put(t, numpy_helper.to_array(t))
