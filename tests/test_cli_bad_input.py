"""CLI on bad and hostile input: one stderr line, exit 2, no traceback, nothing written."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from modelgen import Builder
from onnx import external_data_helper as edh

from bnfold.io import model_io
from bnfold.cli import main
from bnfold.io.model_io import save_model


def small_model() -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", ["N", 8, 5, 5])
    b.output(b.bn(b.conv(x, 8, 16), 16))
    return b.model()


def write(path: Path, model: onnx.ModelProto | None = None, external: bool = False) -> Path:
    save_model(model or small_model(), path, external_data=external)
    return path


def relocate(path: Path, location: str) -> None:
    model = onnx.load_model(str(path), load_external_data=False)
    for t in model_io._all_tensors(model):
        if edh.uses_external_data(t):
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
    path.write_bytes(model.SerializeToString())


def not_onnx(d: Path) -> Path:
    (d / "m.onnx").write_text("name,value\na,1\n")
    return d / "m.onnx"


def truncated(d: Path) -> Path:
    data = small_model().SerializeToString()
    (d / "m.onnx").write_bytes(data[: len(data) * 2 // 3])
    return d / "m.onnx"


def corrupted(d: Path) -> Path:
    data = bytearray(small_model().SerializeToString())
    for i in range(0, len(data), 7):
        data[i] ^= 0xA5
    (d / "m.onnx").write_bytes(bytes(data))
    return d / "m.onnx"


def empty(d: Path) -> Path:
    (d / "m.onnx").write_bytes(b"")
    return d / "m.onnx"


def directory(d: Path) -> Path:
    (d / "m.onnx").mkdir()
    return d / "m.onnx"


def missing(d: Path) -> Path:
    return d / "m.onnx"


def data_missing(d: Path) -> Path:
    p = write(d / "m.onnx", external=True)
    (d / "m.onnx.data").unlink()
    return p


def data_short(d: Path) -> Path:
    p = write(d / "m.onnx", external=True)
    data = d / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    return p


def data_absolute(d: Path) -> Path:
    p = write(d / "m.onnx", external=True)
    relocate(p, str((d / "m.onnx.data").resolve()))
    return p


def data_parent(d: Path) -> Path:
    (d / "in").mkdir()
    p = write(d / "in" / "m.onnx", external=True)
    os.replace(d / "in" / "m.onnx.data", d / "m.onnx.data")
    relocate(p, "../m.onnx.data")
    return p


def data_symlink_out(d: Path) -> Path:
    (d / "in").mkdir()
    p = write(d / "in" / "m.onnx", external=True)
    os.replace(d / "in" / "m.onnx.data", d / "outside.data")
    (d / "in" / "m.onnx.data").symlink_to(d / "outside.data")
    return p


def opset_newer(d: Path) -> Path:
    model = small_model()
    model.opset_import[0].version = model_io.max_known_opset() + 1
    (d / "m.onnx").write_bytes(model.SerializeToString())
    return d / "m.onnx"


def checker_fails(d: Path) -> Path:
    model = small_model()
    nodes = list(model.graph.node)[::-1]  # BN before the Conv that feeds it: not topological
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    (d / "m.onnx").write_bytes(model.SerializeToString())
    return d / "m.onnx"


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "not ONNX": (not_onnx, "not a readable ONNX model"),
    "truncated protobuf": (truncated, "m.onnx: not"),
    "corrupted protobuf": (corrupted, "m.onnx: not"),
    "empty file": (empty, "empty file"),
    "directory": (directory, "is a directory"),
    "missing file": (missing, "no such file"),
    "external data missing": (data_missing, "is missing"),
    "external data short": (data_short, "is shorter"),
    "external location absolute": (data_absolute, "is absolute"),
    "external location ../": (data_parent, "escapes the model's folder"),
    "external location symlink out": (data_symlink_out, "escapes the model's folder"),
    "opset newer than onnx": (opset_newer, "newer than the installed onnx"),
    "graph fails onnx.checker": (checker_fails, "onnx.checker"),
}


def snapshot(d: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(d.rglob("*"))}


def invoke(args: list[str]):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def assert_clean_error(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnfold: error: "), result.stderr
    assert "Traceback" not in result.output and "BNFOLD_DEBUG" not in result.stderr
    assert result.stdout == ""
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("command", ["fold", "inspect"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case, command):
    make, words = BAD_INPUTS[case]
    model = make(tmp_path)
    before = snapshot(tmp_path)
    extra = ["-q", "-o", tmp_path / "out.onnx"] if command == "fold" else []
    assert_clean_error(invoke([command, model, *extra]), words)
    assert snapshot(tmp_path) == before


def test_output_in_missing_folder(tmp_path):
    model = write(tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    assert_clean_error(invoke(["fold", "-q", model, "-o", tmp_path / "no" / "out.onnx"]),
                       "does not exist")
    assert snapshot(tmp_path) == before


def test_output_in_unwritable_folder(tmp_path):
    model = write(tmp_path / "m.onnx")
    if os.geteuid() == 0:
        folder = Path("/proc")  # root may write anywhere a file system allows: /proc refuses
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
    before = snapshot(tmp_path)
    assert_clean_error(invoke(["fold", "-q", model, "-o", folder / "out.onnx"]))
    assert snapshot(tmp_path) == before
    assert not (folder / "out.onnx").exists()


def test_output_equal_to_input_needs_in_place(tmp_path):
    model = write(tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    assert_clean_error(invoke(["fold", "-q", model, "-o", model]), "--in-place")
    assert_clean_error(invoke(["fold", "-q", model, "-o", tmp_path / "." / "m.onnx"]),
                       "--in-place")
    assert snapshot(tmp_path) == before


def test_in_place_and_output_together_are_refused(tmp_path):
    model = write(tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    assert_clean_error(invoke(["fold", "-q", model, "--in-place", "-o", tmp_path / "o.onnx"]))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("external", [False, True])
def test_in_place_failing_at_the_rename_leaves_the_original_byte_identical(
        tmp_path, monkeypatch, external):
    model = write(tmp_path / "m.onnx", external=external)
    before = snapshot(tmp_path)
    real_replace = os.replace

    def fail_on_model(src, dst):
        if Path(dst) == model:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", fail_on_model)
    assert_clean_error(invoke(["fold", "-q", model, "--in-place"]), "No space left")
    now = snapshot(tmp_path)
    assert {k: v for k, v in now.items() if k in before} == before


def test_in_place_failing_mid_write_leaves_the_original_byte_identical(tmp_path, monkeypatch):
    model = write(tmp_path / "m.onnx")
    before = snapshot(tmp_path)

    def half_write(path: str, model: onnx.ModelProto, *source: object) -> None:
        data = model.SerializeToString()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(model_io, "_write_streamed", half_write)
    assert_clean_error(invoke(["fold", "-q", model, "--in-place"]), "Input/output error")
    assert snapshot(tmp_path) == before


def test_in_place_success_changes_the_file(tmp_path):
    model = write(tmp_path / "m.onnx")
    before = model.read_bytes()
    result = invoke(["fold", "-q", model, "--in-place"])
    assert result.exit_code == 0, result.stderr
    assert model.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_single_file_output_too_big_says_use_external_data(tmp_path, monkeypatch):
    model = write(tmp_path / "m.onnx")
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 2000)
    monkeypatch.setattr(model_io, "PROTO_HEADROOM", 0)
    before = snapshot(tmp_path)
    assert_clean_error(invoke(["fold", "-q", model, "--no-external-data", "-o",
                               tmp_path / "o.onnx"]), "2 GiB", "--external-data")
    assert snapshot(tmp_path) == before


def test_a_bug_is_one_line_exit_3_saying_internal_error(tmp_path, monkeypatch):
    path = write(tmp_path / "m.onnx")

    def broken(*args, **kwargs):
        raise AttributeError("simulated bug")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    monkeypatch.delenv("BNFOLD_DEBUG", raising=False)
    result = invoke(["inspect", path])
    assert result.exit_code == 3, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnfold: internal error: AttributeError: simulated bug")
    assert "please report" in lines[0] and "not a valid ONNX model" not in lines[0]


# --- outputs that would land on a file the input reads: refused before any fold work ---------

def conv_bn_external(d: Path, location: str = "m.onnx.data") -> Path:
    """m.onnx whose tensors (all folded away by a fold) live in ``location``."""
    p = write(d / "m.onnx", external=True)
    if location != "m.onnx.data":
        (d / location).parent.mkdir(parents=True, exist_ok=True)
        os.replace(d / "m.onnx.data", d / location)
        relocate(p, location)
    return p


def out_is_data(d: Path) -> tuple[Path, Path]:
    return conv_bn_external(d), d / "m.onnx.data"


def data_name_collision(d: Path) -> tuple[Path, Path]:
    return conv_bn_external(d, "out.onnx.data"), d / "out.onnx"


def out_in_data_subfolder(d: Path) -> tuple[Path, Path]:
    return conv_bn_external(d, "sub/x.onnx.data"), d / "sub" / "x.onnx"


def hard_link_to_input(d: Path) -> tuple[Path, Path]:
    p = conv_bn_external(d)
    os.link(p, d / "hl.onnx")
    return p, d / "hl.onnx"


def symlink_to_data(d: Path) -> tuple[Path, Path]:
    p = conv_bn_external(d)
    (d / "link.onnx").symlink_to(d / "m.onnx.data")
    return p, d / "link.onnx"


def hard_link_to_data(d: Path) -> tuple[Path, Path]:
    p = conv_bn_external(d)
    os.link(d / "m.onnx.data", d / "hd.onnx")
    return p, d / "hd.onnx"


def symlinked_folder(d: Path) -> tuple[Path, Path]:
    p = conv_bn_external(d)
    (d / "alias").symlink_to(d, target_is_directory=True)
    return p, d / "alias" / "m.onnx.data"


def dotdot_spelling(d: Path) -> tuple[Path, Path]:
    p = conv_bn_external(d)
    (d / "sub").mkdir()
    return p, d / "sub" / ".." / "m.onnx.data"


def data_name_is_the_input_model(d: Path) -> tuple[Path, Path]:
    p = write(d / "w.onnx.data")  # a model file whose name is the output's data name
    return p, d / "w.onnx"


def constant_node_data(d: Path) -> tuple[Path, Path]:
    """The input's only external data is a Constant node's tensor (BN scale)."""
    from onnx import external_data_helper as edh
    from onnx import helper, numpy_helper

    b = Builder()
    x = b.input("x", ["N", 8, 5, 5])
    scale = numpy_helper.from_array(np.full(16, 1.5, np.float32), "scale")
    (d / "c.bin").write_bytes(scale.raw_data)
    edh.set_external_data(scale, "c.bin", offset=0, length=64)
    scale.ClearField("raw_data")
    scale.data_location = onnx.TensorProto.EXTERNAL
    params = b.bn_params(16)
    b.nodes.append(helper.make_node("Constant", [], ["s"], value=scale))
    b.output(b.bn(b.conv(x, 8, 16), 16, params=["s"] + params[1:]))
    (d / "m.onnx").write_bytes(b.model().SerializeToString())
    return d / "m.onnx", d / "c.bin"


def out_is_input_via_symlinked_folder(d: Path) -> tuple[Path, Path]:
    p = conv_bn_external(d)
    (d / "alias").symlink_to(d, target_is_directory=True)
    return p, d / "alias" / "m.onnx"


DESTROYING_OUTPUTS: dict[str, tuple[Callable[[Path], tuple[Path, Path]], str]] = {
    "output is the input's data file": (out_is_data, "is external data the input model reads"),
    "output's data name is the input's data": (data_name_collision, "its data file"),
    "output in the input's data subfolder": (out_in_data_subfolder, "its data file"),
    "hard link to the input": (hard_link_to_input, "is the input model"),
    "symlink to the input's data": (symlink_to_data, "is external data the input model reads"),
    "hard link to the input's data": (hard_link_to_data, "is external data the input model reads"),
    "data reached through a symlinked folder": (symlinked_folder, "is external data"),
    "data spelled with ../": (dotdot_spelling, "is external data"),
    "output's data name is the input model": (data_name_is_the_input_model, "its data file"),
    "Constant node's data file": (constant_node_data, "is external data"),
    "input through a symlinked folder": (out_is_input_via_symlinked_folder, "is the input model"),
}


def fold_must_not_run(monkeypatch) -> None:
    import bnfold

    def no_fold(*args, **kwargs):
        raise AssertionError("bnfold.fold ran before the output paths were checked")

    monkeypatch.setattr(bnfold, "fold", no_fold)


def hashes(d: Path) -> dict[str, str | None]:
    import hashlib

    return {k: (hashlib.sha256(v).hexdigest() if v is not None else None)
            for k, v in snapshot(d).items()}


@pytest.mark.parametrize("case", list(DESTROYING_OUTPUTS))
def test_output_on_a_file_the_input_reads_is_refused_before_folding(tmp_path, monkeypatch, case):
    make, words = DESTROYING_OUTPUTS[case]
    model, out = make(tmp_path)
    before = hashes(tmp_path)
    fold_must_not_run(monkeypatch)
    assert_clean_error(invoke(["fold", "-q", model, "-o", out]), words)
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("case", ["missing folder", "directory", "unwritable folder"])
def test_bad_output_path_is_refused_before_folding(tmp_path, monkeypatch, case):
    model = write(tmp_path / "m.onnx")
    out = {"missing folder": tmp_path / "no" / "o.onnx", "directory": tmp_path / "d",
           "unwritable folder": (Path("/proc") if os.geteuid() == 0 else tmp_path / "ro") / "o.onnx"
           }[case]
    if case == "directory":
        out.mkdir()
    if case == "unwritable folder" and os.geteuid() != 0:
        out.parent.mkdir()
        out.parent.chmod(0o500)
    before = hashes(tmp_path)
    fold_must_not_run(monkeypatch)
    assert_clean_error(invoke(["fold", "-q", model, "-o", out]))
    assert hashes(tmp_path) == before


def test_in_place_never_gives_new_data_a_name_the_input_reads(tmp_path, monkeypatch):
    """The input reads ./m.onnx.data; the model switch fails: the input must still be whole."""
    model = conv_bn_external(tmp_path, "./m.onnx.data")
    before = hashes(tmp_path)
    real_replace = os.replace

    def fail_on_model(src, dst):
        if Path(dst) == model:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", fail_on_model)
    assert_clean_error(invoke(["fold", "-q", model, "--in-place", "--no-verify"]), "No space left")
    now = hashes(tmp_path)
    assert {k: v for k, v in now.items() if k in before} == before
