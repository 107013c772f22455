"""model_io: every bad input is refused with one clear InputError; saves are atomic and lossless."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from modelgen import Builder, max_error
from onnx import external_data_helper as edh
from onnx import helper, numpy_helper

from bnfold.io import model_io
from bnfold.errors import InputError, OutputError
from bnfold.io.model_io import load_model, save_model


def small_model(opset: int = 17) -> onnx.ModelProto:
    b = Builder(opset=opset)
    x = b.input("x", ["N", 8, 5, 5])
    b.output(b.bn(b.conv(x, 8, 16), 16))
    return b.model()


def external_copy(tmp_path: Path, name: str = "m.onnx") -> Path:
    """The small model saved with its tensors in ``<name>.data``."""
    path = tmp_path / name
    save_model(small_model(), path, external_data=True)
    return path


def rewrite_locations(path: Path, location: str) -> None:
    """Point every external tensor of the model file at ``location`` (file left as is)."""
    model = onnx.load_model(str(path), load_external_data=False)
    for t in model_io._all_tensors(model):
        if edh.uses_external_data(t):
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
    path.write_bytes(model.SerializeToString())


def refused(path: Path, *words: str) -> str:
    with pytest.raises(InputError) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_missing_file_is_refused(tmp_path):
    refused(tmp_path / "nope.onnx", "no such file")


def test_directory_is_refused(tmp_path):
    refused(tmp_path, "is a directory")


def test_empty_file_is_refused(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    refused(p, "empty file")


def test_text_file_is_refused(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is not a model\n" * 20)
    refused(p, "not")


def test_truncated_protobuf_is_refused(tmp_path):
    data = small_model().SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    refused(p, "truncated")


def test_corrupted_protobuf_is_refused(tmp_path):
    data = bytearray(small_model().SerializeToString())
    data[2:40] = b"\xff" * 38
    p = tmp_path / "bad.onnx"
    p.write_bytes(bytes(data))
    refused(p)


def test_opset_newer_than_onnx_is_refused(tmp_path):
    model = small_model()
    model.opset_import[0].version = model_io.max_known_opset() + 5
    p = tmp_path / "future.onnx"
    p.write_bytes(model.SerializeToString())
    refused(p, "newer than the installed onnx", "upgrade onnx")


def test_opset_older_than_supported_is_refused(tmp_path):
    model = small_model()
    model.opset_import[0].version = 5
    p = tmp_path / "old.onnx"
    p.write_bytes(model.SerializeToString())
    refused(p, "older than 7")


def test_graph_failing_checker_is_refused(tmp_path):
    model = small_model()
    model.graph.node[0].op_type = "Frobnicate"
    p = tmp_path / "unknown_op.onnx"
    p.write_bytes(model.SerializeToString())
    refused(p, "onnx.checker", "Frobnicate")


def test_checker_can_be_skipped_for_callers_that_check_later(tmp_path):
    model = small_model()
    model.graph.node[0].op_type = "Frobnicate"
    p = tmp_path / "unknown_op.onnx"
    p.write_bytes(model.SerializeToString())
    assert load_model(p, check=False).graph.node[0].op_type == "Frobnicate"


def test_custom_domain_ops_pass_the_input_check(tmp_path):
    model = small_model()
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    p = tmp_path / "custom.onnx"
    p.write_bytes(model.SerializeToString())
    assert load_model(p).graph.node[0].domain == "com.example"


def test_external_data_round_trips(tmp_path):
    model = small_model()
    path = tmp_path / "m.onnx"
    written = save_model(model, path, external_data=True)
    assert written == [str(path), str(tmp_path / "m.onnx.data")]
    assert model_io.uses_external_data(onnx.load_model(str(path), load_external_data=False))
    back = load_model(path)
    assert not model_io.uses_external_data(back)
    assert max_error(model, back) == 0.0


def test_external_tensors_are_page_aligned(tmp_path):
    path = external_copy(tmp_path)
    skeleton = onnx.load_model(str(path), load_external_data=False)
    offsets = [edh.ExternalDataInfo(t).offset for t in model_io._all_tensors(skeleton)
               if edh.uses_external_data(t)]
    assert offsets and all(o % 4096 == 0 for o in offsets)


def test_missing_external_data_file_is_refused(tmp_path):
    path = external_copy(tmp_path)
    (tmp_path / "m.onnx.data").unlink()
    refused(path, "external data file", "missing")


def test_short_external_data_file_is_refused(tmp_path):
    path = external_copy(tmp_path)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:-10])
    refused(path, "shorter")


def test_absolute_external_location_is_refused(tmp_path):
    path = external_copy(tmp_path)
    rewrite_locations(path, str(tmp_path / "m.onnx.data"))
    refused(path, "absolute")


def test_parent_escaping_external_location_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = external_copy(inner)
    os.replace(inner / "m.onnx.data", tmp_path / "m.onnx.data")
    rewrite_locations(path, "../m.onnx.data")
    refused(path, "escapes the model's folder")


def test_symlink_escaping_external_location_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = external_copy(inner)
    os.replace(inner / "m.onnx.data", tmp_path / "secret.data")
    (inner / "m.onnx.data").symlink_to(tmp_path / "secret.data")
    refused(path, "escapes the model's folder")


def test_symlink_inside_the_folder_is_refused_with_its_own_message(tmp_path):
    path = external_copy(tmp_path)
    os.replace(tmp_path / "m.onnx.data", tmp_path / "real.data")
    (tmp_path / "m.onnx.data").symlink_to("real.data")
    refused(path, "symbolic link")


def test_save_does_not_change_the_model_in_memory(tmp_path):
    model = small_model()
    before = model.SerializeToString()
    save_model(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before


def test_typed_field_tensors_go_to_external_data_too(tmp_path):
    model = small_model()
    w = model.graph.initializer[0]
    value = numpy_helper.to_array(w)
    w.ClearField("raw_data")
    w.float_data.extend(value.ravel().tolist())
    path = tmp_path / "typed.onnx"
    save_model(model, path, external_data=True)
    skeleton = onnx.load_model(str(path), load_external_data=False)
    assert edh.uses_external_data(skeleton.graph.initializer[0])
    np.testing.assert_array_equal(numpy_helper.to_array(load_model(path).graph.initializer[0]),
                                  value)


def test_single_file_over_the_protobuf_limit_is_refused(tmp_path, monkeypatch):
    model = small_model()
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 1000)
    monkeypatch.setattr(model_io, "PROTO_HEADROOM", 0)
    with pytest.raises(OutputError, match="limited to 2 GiB.*external data"):
        save_model(model, tmp_path / "big.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == []


def test_over_the_protobuf_limit_defaults_to_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 1000)
    monkeypatch.setattr(model_io, "PROTO_HEADROOM", 0)
    written = save_model(small_model(), tmp_path / "big.onnx")
    assert written[1:] == [str(tmp_path / "big.onnx.data")]


def test_output_in_missing_folder_is_refused(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        save_model(small_model(), tmp_path / "nope" / "m.onnx")


def test_output_over_existing_file_needs_overwrite(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        save_model(small_model(), p, overwrite=False)
    assert p.read_bytes() == b"keep me"


@pytest.mark.parametrize("external", [False, True])
def test_failed_rename_leaves_the_old_file_byte_identical(tmp_path, monkeypatch, external):
    path = external_copy(tmp_path) if external else tmp_path / "m.onnx"
    if not external:
        save_model(small_model(), path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def fail_on_model(src, dst):
        if Path(dst) == path:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", fail_on_model)
    other = small_model(opset=13)
    with pytest.raises(OutputError, match="No space left"):
        save_model(other, path, external_data=external)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before}
    assert after == before
    assert not any(p.name.startswith(".bnfold-") for p in tmp_path.iterdir())
    assert max_error(small_model(), load_model(path)) == 0.0


def test_overwriting_a_model_keeps_its_data_file_until_the_model_is_replaced(tmp_path):
    path = external_copy(tmp_path)
    written = save_model(small_model(opset=13), path, external_data=True)
    assert written[1] == str(tmp_path / "m.onnx.1.data")
    assert load_model(path).opset_import[0].version == 13
    written = save_model(small_model(), path, external_data=True)
    assert written[1] == str(tmp_path / "m.onnx.data")


def write_raw(tmp_path: Path, model: onnx.ModelProto) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(model.SerializeToString())
    return p


def test_name_that_is_not_utf8_is_refused(tmp_path):
    data = small_model().SerializeToString()
    name = small_model().graph.node[0].name.encode()
    p = tmp_path / "m.onnx"
    p.write_bytes(data.replace(name, b"\xff" + name[1:]))
    refused(p, "not valid UTF-8")


def test_unknown_tensor_data_type_is_refused(tmp_path):
    model = small_model()
    model.graph.initializer[1].data_type = 99
    refused(write_raw(tmp_path, model), "unknown data type 99")


def test_raw_data_shorter_than_its_shape_is_refused(tmp_path):
    model = small_model()
    t = model.graph.initializer[1]
    t.raw_data = t.raw_data[:-4]
    refused(write_raw(tmp_path, model), repr(t.name), "corrupted")


def test_typed_data_count_not_matching_shape_is_refused(tmp_path):
    model = small_model()
    t = model.graph.initializer[1]
    values = numpy_helper.to_array(t).ravel().tolist()
    t.ClearField("raw_data")
    t.float_data.extend(values + [1.0])
    refused(write_raw(tmp_path, model), "values")


def test_external_length_not_matching_shape_is_refused(tmp_path):
    path = external_copy(tmp_path)
    model = onnx.load_model(str(path), load_external_data=False)
    t = next(t for t in model_io._all_tensors(model) if edh.uses_external_data(t))
    t.dims[0] -= 1
    path.write_bytes(model.SerializeToString())
    refused(path, "declares", "needs")


def test_unknown_external_data_key_does_not_print_a_warning(tmp_path, recwarn):
    path = external_copy(tmp_path)
    model = onnx.load_model(str(path), load_external_data=False)
    t = next(t for t in model_io._all_tensors(model) if edh.uses_external_data(t))
    entry = t.external_data.add()
    entry.key, entry.value = "colour", "blue"
    path.write_bytes(model.SerializeToString())
    load_model(path)
    assert not [w for w in recwarn if "external data key" in str(w.message)]


def two_conv_model() -> onnx.ModelProto:
    """Conv -> BN -> Conv: the second conv's weight (9 KB) is not touched by a fold."""
    b = Builder(seed=3)
    x = b.input("x", ["N", 8, 5, 5])
    b.output(b.conv(b.bn(b.conv(x, 8, 16), 16), 16, 16))
    return b.model()


def test_lazy_load_keeps_tensors_external_and_still_checks_them(tmp_path):
    path = tmp_path / "m.onnx"
    save_model(two_conv_model(), path, external_data=True)
    lazy = load_model(path, load_external_data=False)
    external = [t for t in model_io._all_tensors(lazy) if edh.uses_external_data(t)]
    assert external and not any(t.HasField("raw_data") for t in external)
    (tmp_path / "m.onnx.data").write_bytes((tmp_path / "m.onnx.data").read_bytes()[:100])
    with pytest.raises(InputError, match="shorter"):
        load_model(path, load_external_data=False)


def test_tensor_bytes_counts_data_still_on_disk(tmp_path):
    path = tmp_path / "m.onnx"
    save_model(two_conv_model(), path, external_data=True)
    assert (model_io.tensor_bytes(load_model(path, load_external_data=False))
            >= model_io.tensor_bytes(load_model(path)) - 1024)


@pytest.mark.parametrize("external", [True, False])
def test_save_copies_tensors_still_external_from_the_source_folder(tmp_path, external):
    src = tmp_path / "src"
    src.mkdir()
    save_model(two_conv_model(), src / "m.onnx", external_data=True)
    lazy = load_model(src / "m.onnx", load_external_data=False)
    out = tmp_path / "out.onnx"
    written = save_model(lazy, out, external_data=external, source_dir=src)
    assert len(written) == (2 if external else 1)
    back = load_model(out)
    want = {t.name: numpy_helper.to_array(t) for t in two_conv_model().graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in back.graph.initializer}
    assert want.keys() == got.keys()
    for name, value in want.items():
        assert np.array_equal(value, got[name]), name


def test_lazy_save_in_place_never_writes_over_the_data_it_copies(tmp_path):
    path = tmp_path / "m.onnx"
    save_model(two_conv_model(), path, external_data=True)
    old_data = (tmp_path / "m.onnx.data").read_bytes()
    lazy = load_model(path, load_external_data=False)
    written = save_model(lazy, path, external_data=True, source_dir=tmp_path)
    assert written[1] == str(tmp_path / "m.onnx.1.data")
    assert (tmp_path / "m.onnx.data").read_bytes() == old_data
    assert max_error(two_conv_model(), load_model(path)) == 0.0


def test_lazy_save_avoids_the_data_name_its_source_reads(tmp_path):
    """Saving to out.onnx must not replace out.onnx.data while another input reads it."""
    src = tmp_path / "m.onnx"
    save_model(two_conv_model(), src, external_data=True)
    rewrite_locations(src, "out.onnx.data")
    (tmp_path / "m.onnx.data").rename(tmp_path / "out.onnx.data")
    before = (tmp_path / "out.onnx.data").read_bytes()
    lazy = load_model(src, load_external_data=False)
    written = save_model(lazy, tmp_path / "out.onnx", external_data=True, source_dir=tmp_path)
    assert written[1] == str(tmp_path / "out.onnx.1.data")
    assert (tmp_path / "out.onnx.data").read_bytes() == before
    assert max_error(load_model(src), load_model(tmp_path / "out.onnx")) == 0.0


def test_failed_lazy_in_place_save_leaves_model_and_data_byte_identical(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    save_model(two_conv_model(), path, external_data=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def fail_on_model(src, dst):
        if Path(dst) == path:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", fail_on_model)
    lazy = load_model(path, load_external_data=False)
    with pytest.raises(OutputError, match="No space left"):
        save_model(lazy, path, external_data=True, source_dir=tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    assert max_error(two_conv_model(), load_model(path)) == 0.0


def test_a_bnfold_error_inside_the_check_is_not_reported_as_an_invalid_model(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    save_model(small_model(), path)

    def broken(*args, **kwargs):
        raise AttributeError("'FieldDescriptor' object has no attribute 'is_repeated'")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    with pytest.raises(AttributeError, match="is_repeated"):
        load_model(path)


def test_save_refuses_to_write_over_a_protected_file(tmp_path):
    path = external_copy(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OutputError, match="still reads"):
        save_model(small_model(), tmp_path / "m.onnx.data", protect=[path, tmp_path / "m.onnx.data"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_save_refuses_to_write_over_the_data_it_copies_from(tmp_path):
    """Defence in depth: even without ``protect``, the source data files are never outputs."""
    path = tmp_path / "m.onnx"
    save_model(two_conv_model(), path, external_data=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    lazy = load_model(path, load_external_data=False)
    with pytest.raises(OutputError, match="still reads"):
        save_model(lazy, tmp_path / "m.onnx.data", source_dir=tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_save_gives_the_data_file_a_name_no_protected_file_has(tmp_path):
    """The input's data, folded away from the model being saved, is still the input's."""
    src = tmp_path / "m.onnx"
    save_model(small_model(), src, external_data=True)
    os.link(tmp_path / "m.onnx.data", tmp_path / "out.onnx.data")
    before = (tmp_path / "m.onnx.data").read_bytes()
    written = save_model(small_model(opset=13), tmp_path / "out.onnx", external_data=True,
                         protect=model_io.input_files(src))
    assert written[1] == str(tmp_path / "out.onnx.1.data")
    assert (tmp_path / "out.onnx.data").read_bytes() == before
    assert os.path.samefile(tmp_path / "out.onnx.data", tmp_path / "m.onnx.data")


@pytest.mark.parametrize("spelling", ["./m.onnx.data", "sub/../m.onnx.data"])
def test_in_place_save_keeps_data_the_model_reads_under_another_spelling(tmp_path, monkeypatch,
                                                                          spelling):
    """The model being replaced reads ``./m.onnx.data``: the new data must not take that file
    before the model is switched (here the switch fails, so the old model must still load)."""
    (tmp_path / "sub").mkdir()
    path = tmp_path / "m.onnx"
    save_model(two_conv_model(), path, external_data=True)
    rewrite_locations(path, spelling)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    real_replace = os.replace

    def fail_on_model(src, dst):
        if Path(dst) == path:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", fail_on_model)
    with pytest.raises(OutputError, match="No space left"):
        save_model(small_model(), path, external_data=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    assert max_error(two_conv_model(), load_model(path)) == 0.0


def test_staged_model_is_complete_on_disk_and_nothing_is_in_place_before_commit(tmp_path):
    path = tmp_path / "m.onnx"
    save_model(two_conv_model(), path, external_data=True)
    lazy = load_model(path, load_external_data=False)
    out = tmp_path / "o.onnx"
    with model_io.stage_model(lazy, out, external_data=True, source_dir=tmp_path) as staged:
        assert staged.path.parent != tmp_path and not out.exists()
        assert max_error(two_conv_model(), load_model(staged.path)) == 0.0
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx",
                                                                              "m.onnx.data"]
    with model_io.stage_model(lazy, out, external_data=True, source_dir=tmp_path) as staged:
        assert staged.commit() == [str(out), str(tmp_path / "o.onnx.data")]
    assert max_error(two_conv_model(), load_model(out)) == 0.0
    assert not any(p.name.startswith(".bnfold-") for p in tmp_path.iterdir())


SLOW_SAVE = """
import sys, time
from bnfold.io import data_file
from bnfold.io.model_io import load_model, save_model

path = sys.argv[1]
copy = data_file.DataWriter._copy_external

def slow_copy(self, src):
    n = copy(self, src)
    print("writing", flush=True)  # the temporary files exist now
    time.sleep(30)
    return n

data_file.DataWriter._copy_external = slow_copy
lazy = load_model(path, load_external_data=False)
save_model(lazy, path, external_data=True, source_dir=sys.argv[2])
print("saved", flush=True)
"""


def save_in_child(tmp_path: Path, signum: int):
    """Save in place in a child process; send ``signum`` while its temporary files exist."""
    import subprocess
    import sys

    path = tmp_path / "m.onnx"
    save_model(two_conv_model(), path, external_data=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path), str(tmp_path)],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert child.stdout.readline().strip() == "writing"
        assert any(p.name.startswith(".bnfold-") for p in tmp_path.iterdir())
        child.send_signal(signum)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, out, before


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_termination_signal_mid_save_removes_temp_files_and_keeps_the_original(tmp_path, name):
    import signal

    code, out, before = save_in_child(tmp_path, getattr(signal, name))
    assert code == -getattr(signal, name) and "saved" not in out  # ended by the signal itself
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp folder left


def test_save_restores_the_signal_handlers_it_found(tmp_path):
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    save_model(small_model(), tmp_path / "m.onnx", external_data=True)
    assert {s: signal.getsignal(s) for s in before} == before


def test_in_memory_model_with_unread_external_data_is_refused(tmp_path, monkeypatch):
    import bnfold

    path = external_copy(tmp_path)
    lazy = onnx.load_model(str(path), load_external_data=False)
    monkeypatch.chdir(tmp_path)  # its data is even right here: still not read from the cwd
    with pytest.raises(InputError, match="external data"):
        bnfold.fold(lazy)


def test_a_data_file_is_resolved_once_and_every_tensor_still_checked_against_it(tmp_path,
                                                                                monkeypatch):
    path = tmp_path / "m.onnx"
    save_model(two_conv_model(), path, external_data=True)
    checked = []
    real = model_io._check_data_file

    def counting(tensor, base, shown, loc):  # noqa: ANN001, ANN202
        checked.append(loc)
        return real(tensor, base, shown, loc)

    monkeypatch.setattr(model_io, "_check_data_file", counting)
    model = load_model(path, load_external_data=False)
    external = [t for t in model_io._all_tensors(model) if edh.uses_external_data(t)]
    assert len(external) >= 2 and checked == ["m.onnx.data"]
    # the last tensor in the file ends past a shortened file: refused though the file is known
    data = tmp_path / "m.onnx.data"
    ends = {t.name: edh.ExternalDataInfo(t).offset + edh.ExternalDataInfo(t).length
            for t in external}
    data.write_bytes(data.read_bytes()[:max(ends.values()) - 1])
    msg = refused(path, "shorter", max(ends, key=ends.get))
    assert checked[-1] == "m.onnx.data" and checked.count("m.onnx.data") == 2, msg


def test_load_external_can_leave_exactly_the_main_initializers_on_disk(tmp_path):
    """``main_initializers=False`` (a streamed save copies those itself): every other tensor,
    subgraph initializers and tensor attributes included, is read in; no main one is."""
    from onnx import TensorProto

    def arr(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((16, 16)).astype(np.float32)

    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(arr(1), "cv")),
         helper.make_node("Add", ["c", "inner"], ["y_then"])], "then", [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [16, 16])],
        [numpy_helper.from_array(arr(2), "inner")])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
         helper.make_node("Add", ["y", "main"], ["z"])], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [16, 16])],
        [numpy_helper.from_array(arr(3), "main"), numpy_helper.from_array(arr(4), "main2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0,
              location="m.data", convert_attribute=True)
    lazy = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    every = list(model_io._all_tensors(lazy))
    assert len(every) == 6 and all(edh.uses_external_data(t) for t in every)
    model_io.load_external(lazy, tmp_path, main_initializers=False)
    main = {t.name for t in lazy.graph.initializer}
    for t in model_io._all_tensors(lazy):
        assert edh.uses_external_data(t) == (t.name in main), t.name
    model_io.load_external(lazy, tmp_path)
    assert not any(edh.uses_external_data(t) for t in model_io._all_tensors(lazy))


def test_save_without_reading_in_writes_the_same_file_and_keeps_the_pointers(tmp_path):
    b = Builder()
    x = b.input("x", ["N", 16, 6, 6])
    b.output(b.bn(b.conv(x, 16, 32), 32))
    onnx.save(b.model(), tmp_path / "m.onnx")
    lazy = load_model(tmp_path / "m.onnx", load_external_data=False, weights_in_file=True)
    assert any(edh.uses_external_data(t) for t in lazy.graph.initializer)
    save_model(lazy, tmp_path / "a.onnx", source_dir=tmp_path, read_in=False)
    assert any(edh.uses_external_data(t) for t in lazy.graph.initializer)  # not read in
    save_model(lazy, tmp_path / "b.onnx", source_dir=tmp_path)  # reads them in (documented)
    assert not any(edh.uses_external_data(t) for t in lazy.graph.initializer)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
