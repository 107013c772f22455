"""A single-file model read as its structure: weights point into the .onnx, and everything
that reads them (load, fold, proofs, save, in place) gets the same bytes as a full parse."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper as edh
from onnx import numpy_helper

import bnfold
from bnfold.io.model_io import load_model, save_model
from bnfold.io.output_paths import input_files
from bnfold.io.weights_in_file import MIN_BYTES, structure_bytes
from modelgen import Builder, max_error, tolerance


def _model() -> onnx.ModelProto:
    b = Builder()
    y = b.input("x", ["N", 16, 6, 6])
    y = b.bn(b.conv(y, 16, 32), 32)  # a 32x16x3x3 weight: 18 KB, left in the file
    b.output(b.bn(b.conv(y, 32, 4, k=1, pads=0), 4))  # 512 B: small, parsed
    return b.model()


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_large_weights_point_into_the_file_at_their_raw_bytes(tmp_path: Path) -> None:
    path = _save(_model(), tmp_path / "m.onnx")
    lazy = onnx.ModelProto()
    lazy.ParseFromString(structure_bytes(path))
    kept_out = [edh.uses_external_data(t) for t in lazy.graph.initializer]
    assert any(kept_out)
    assert kept_out == [int(np.prod(t.dims)) * 4 >= MIN_BYTES for t in lazy.graph.initializer]
    full = onnx.load(str(path))
    edh.load_external_data_for_model(lazy, str(tmp_path))
    for t in lazy.graph.initializer:
        t.ClearField("data_location")
    assert lazy.SerializeToString() == full.SerializeToString()


def test_an_explicit_default_data_location_is_left_in_the_file_too(tmp_path: Path) -> None:
    """bnfold's save of a tensor read from a data file writes data_location DEFAULT explicitly;
    such a weight stays in the file like any other (else a folded ResNet-50's 8 MB Gemm weight
    was parsed into memory)."""
    model = _model()
    for t in model.graph.initializer:
        t.data_location = onnx.TensorProto.DEFAULT
    path = _save(model, tmp_path / "m.onnx")
    lazy = onnx.ModelProto()
    lazy.ParseFromString(structure_bytes(path))
    assert [edh.uses_external_data(t) for t in lazy.graph.initializer] == [
        int(np.prod(t.dims)) * 4 >= MIN_BYTES for t in lazy.graph.initializer]
    edh.load_external_data_for_model(lazy, str(tmp_path))
    for a, b in zip(lazy.graph.initializer, model.graph.initializer):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_a_file_with_only_small_weights_or_not_onnx_is_parsed_normally(tmp_path: Path) -> None:
    b = Builder()
    b.output(b.bn(b.conv(b.input("x", ["N", 2, 4, 4]), 2, 2), 2))
    assert structure_bytes(_save(b.model(), tmp_path / "small.onnx")) is None
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x0b\x0c not protobuf")  # a group start tag: refused, not misread
    assert structure_bytes(junk) is None


def test_load_model_weights_in_file_checks_the_references(tmp_path: Path) -> None:
    path = _save(_model(), tmp_path / "m.onnx")
    lazy = load_model(path, load_external_data=False, weights_in_file=True)
    assert any(edh.uses_external_data(t) for t in lazy.graph.initializer)
    assert input_files(path) == [path]  # its own weights are no data file of its own


def test_fold_by_path_equals_fold_in_memory(tmp_path: Path) -> None:
    model = _model()
    path = _save(model, tmp_path / "m.onnx")
    by_path, in_memory = bnfold.fold(path), bnfold.fold(model)
    assert [r.folded for r in by_path.records] == [True, True]
    assert by_path.external_base is None
    assert not any(edh.uses_external_data(t) for t in by_path.model.graph.initializer)
    for a, b in zip(by_path.model.graph.initializer, in_memory.model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert max_error(model, by_path.model) < tolerance(model)


def test_lazy_fold_saves_unchanged_weights_from_the_file_even_in_place(tmp_path: Path) -> None:
    model = _model()
    path = _save(model, tmp_path / "m.onnx")
    result = bnfold.fold(path, lazy_external=True)
    assert result.external_base == str(tmp_path)
    save_model(result.model, path, source_dir=result.external_base)  # over its own source
    written = onnx.load(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert max_error(model, written) < tolerance(model)


def test_proof_copies_large_original_weights_file_to_file(tmp_path: Path, monkeypatch) -> None:
    """A 256 KB weight left in the file reaches the ORT child without passing through Python."""
    from bnfold.verification.shared import SharedArrays

    b = Builder()
    y = b.input("x", ["N", 128, 4, 4])
    b.output(b.bn(b.conv(y, 128, 128, k=2, pads=0), 128))
    model = b.model()
    path = _save(model, tmp_path / "m.onnx")
    copied = []
    real = SharedArrays._copy_external

    def spy(self, name, tensor, *args):  # noqa: ANN001, ANN002, ANN202
        copied.append(name)
        return real(self, name, tensor, *args)

    monkeypatch.setattr(SharedArrays, "_copy_external", spy)
    result = bnfold.fold(path)
    assert result.records[0].folded and result.records[0].proof_engine == "onnxruntime"
    assert len(copied) == 1  # the original conv weight; the folded one is in the proto
    assert max_error(model, result.model) < tolerance(model)


def test_the_file_is_read_through_a_window_not_mapped(tmp_path: Path, monkeypatch) -> None:
    """pread through ``_FileView`` gives the bytes a whole-file buffer gives, with windows
    smaller than a record and a truncated file still refused (None: parsed normally)."""
    import mmap

    from bnfold.io import weights_in_file

    path = _save(_model(), tmp_path / "m.onnx")
    data = path.read_bytes()
    whole = weights_in_file._model(memoryview(data), len(data), path.name)
    monkeypatch.setattr(mmap, "mmap", None)  # mapping the file would fail now
    monkeypatch.setattr(weights_in_file._FileView, "WINDOW", 7)
    assert whole is not None and structure_bytes(path) == whole
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) - 100])
    assert structure_bytes(cut) is None


def test_read_raw_reads_weights_left_in_the_file_and_follows_a_replaced_file(
        tmp_path: Path) -> None:
    """``read_raw`` gives a left-in-file weight the bytes onnx's loader reads (one descriptor
    kept open per model file); after the file at the path is replaced, the new file's bytes.
    Other tensors (a separate data file, a path with a folder) are not its: None."""
    from bnfold.graph.values import tensor_value
    from bnfold.io.weights_in_file import parse_structure, read_raw

    path = _save(_model(), tmp_path / "m.onnx")
    lazy = parse_structure(path)
    left = [t for t in lazy.graph.initializer if edh.uses_external_data(t)]
    for t in left:
        assert read_raw(t, tmp_path) == edh._read_external_data_bytes(t, str(tmp_path))
        assert np.array_equal(tensor_value(t, str(tmp_path)), numpy_helper.to_array(t, str(tmp_path)))
    assert read_raw(left[0], None) is None
    other = onnx.TensorProto()
    other.CopyFrom(left[0])
    for entry in other.external_data:
        if entry.key == "location":
            entry.value = "sub/m.onnx"
    assert read_raw(other, tmp_path) is None
    model = onnx.load(str(path))
    for t in model.graph.initializer:  # the same structure, other weights
        t.raw_data = (numpy_helper.to_array(t) + 1).astype(np.float32).tobytes()
    (tmp_path / "new.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "new.onnx").replace(path)
    fresh = parse_structure(path)
    t = next(t for t in fresh.graph.initializer if edh.uses_external_data(t))
    want = numpy_helper.to_array(next(x for x in model.graph.initializer if x.name == t.name))
    assert np.array_equal(tensor_value(t, str(tmp_path)), want)


def test_a_fold_keeps_no_descriptor_of_its_model_file(tmp_path: Path) -> None:
    """``read_raw``'s descriptors are closed when ``fold`` returns: a model file replaced
    afterwards (an in-place fold replaces its input) is not kept allocated by an open fd."""
    import os

    from bnfold.io import weights_in_file

    path = _save(_model(), tmp_path / "m.onnx")
    opened: list[str] = []
    real = weights_in_file._descriptor

    def descriptor(p: str) -> int:
        opened.append(p)
        return real(p)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weights_in_file, "_descriptor", descriptor)
        assert bnfold.fold(path, lazy_external=True).bn_after == 0
    assert opened  # the fold read its weights through them
    fds = os.listdir("/proc/self/fd")
    assert not any(os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(path)
                   for fd in fds if os.path.exists(f"/proc/self/fd/{fd}"))
