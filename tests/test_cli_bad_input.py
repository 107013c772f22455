"""CLI on bad and hostile input: one stderr line, exit 2, no traceback, nothing written."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from modelgen import Builder
from onnx import external_data_helper as edh

from bnfold import model_io
from bnfold.cli import main
from bnfold.model_io import save_model


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

    def half_write(path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(model_io, "_write_file", half_write)
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
