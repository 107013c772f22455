"""output_paths: which files an input reads, file identity, and the output checks made before work."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from modelgen import Builder
from onnx import TensorProto, helper

from bnfold.errors import OutputError
from bnfold.io.model_io import save_model
from bnfold.io.output_paths import check_output_paths, free_data_name, input_files, same_file


def external(name: str, location: str, n: int = 4) -> TensorProto:
    """A float tensor stub whose data is said to be in ``location``."""
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[n])
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * n))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    t.data_location = TensorProto.EXTERNAL
    return t


def everywhere_model() -> onnx.ModelProto:
    """External data referenced from each place a tensor can live."""
    branch = helper.make_graph([helper.make_node("Identity", ["bw"], ["by"])], "branch", [],
                               [helper.make_tensor_value_info("by", TensorProto.FLOAT, [4])],
                               [external("bw", "sub/branch.bin")])
    sparse = helper.make_sparse_tensor(external("sv", "sparse.bin", 2),
                                       helper.make_tensor("si", TensorProto.INT64, [2], [0, 1]),
                                       [4])
    fn = helper.make_function("local", "F", [], ["fy"],
                              [helper.make_node("Constant", [], ["fy"], value=external("fc", "fn.bin"))],
                              [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Constant", [], ["c"], value=external("c", "c.bin")),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
             helper.make_node("F", [], ["f"], domain="local")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [external("w", "m.onnx.data")], sparse_initializer=[sparse])
    return helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("local", 1)])


def test_input_files_lists_data_of_initializers_constants_subgraphs_functions_and_sparse(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(everywhere_model().SerializeToString())
    files = input_files(path)
    assert files[0] == path
    assert set(files[1:]) == {tmp_path / n for n in ("m.onnx.data", "c.bin", "sub/branch.bin",
                                                     "fn.bin", "sparse.bin")}


def test_input_files_of_an_unparsable_file_is_the_file_alone(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\xff\xff not onnx")
    assert input_files(path) == [path]


def test_same_file_sees_through_symlinks_hard_links_and_spellings(tmp_path):
    real = tmp_path / "w.bin"
    real.write_bytes(b"w")
    (tmp_path / "sub").mkdir()
    os.link(real, tmp_path / "hard.bin")
    (tmp_path / "soft.bin").symlink_to(real)
    (tmp_path / "dir").symlink_to(tmp_path, target_is_directory=True)
    for alias in ("hard.bin", "soft.bin", "sub/../w.bin", "dir/w.bin", "./w.bin"):
        assert same_file(tmp_path / alias, real), alias
    (tmp_path / "copy.bin").write_bytes(b"w")
    assert not same_file(tmp_path / "copy.bin", real)
    assert not same_file(tmp_path / "new.bin", real)  # a file that does not exist yet


def external_model_file(folder: Path) -> Path:
    b = Builder()
    x = b.input("x", ["N", 8, 5, 5])
    b.output(b.bn(b.conv(x, 8, 16), 16))
    save_model(b.model(), folder / "m.onnx", external_data=True)
    return folder / "m.onnx"


@pytest.mark.parametrize("out, words", [
    ("m.onnx.data", "is external data the input model reads"),
    ("sub/../m.onnx.data", "is external data the input model reads"),
    ("hard.onnx", "is external data the input model reads"),  # a hard link to m.onnx.data
    ("m.onnx", "is the input model"),
    ("sub/../m.onnx", "is the input model"),
    ("o", "its data file"),  # o.data: a hard link to m.onnx.data
])
def test_outputs_on_the_inputs_files_are_refused(tmp_path, out, words):
    src = external_model_file(tmp_path)
    (tmp_path / "sub").mkdir()
    os.link(tmp_path / "m.onnx.data", tmp_path / "hard.onnx")
    os.link(tmp_path / "m.onnx.data", tmp_path / "o.data")
    with pytest.raises(OutputError, match=words):
        check_output_paths(src, tmp_path / out)


def test_in_place_may_replace_the_model_but_not_its_data(tmp_path):
    src = external_model_file(tmp_path)
    assert check_output_paths(src, src, in_place=True) == [src, tmp_path / "m.onnx.data"]
    with pytest.raises(OutputError, match="is external data"):
        check_output_paths(src, tmp_path / "m.onnx.data", in_place=True)


def test_single_file_output_may_share_the_data_name(tmp_path):
    src = external_model_file(tmp_path)
    (tmp_path / "o.onnx.data").symlink_to(tmp_path / "m.onnx.data")
    with pytest.raises(OutputError, match="its data file"):
        check_output_paths(src, tmp_path / "o.onnx")
    check_output_paths(src, tmp_path / "o.onnx", external_data=False)  # writes no data file


@pytest.mark.parametrize("case, words", [("missing", "does not exist"),
                                         ("directory", "is a directory"),
                                         ("data directory", "its data file")])
def test_destination_problems_are_refused(tmp_path, case, words):
    src = external_model_file(tmp_path)
    out = tmp_path / {"missing": "no/o.onnx", "directory": "d", "data directory": "o.onnx"}[case]
    if case == "directory":
        out.mkdir()
    if case == "data directory":
        (tmp_path / "o.onnx.data").mkdir()
    with pytest.raises(OutputError, match=words):
        check_output_paths(src, out)


def test_unwritable_folder_is_found_by_trying(tmp_path):
    src = external_model_file(tmp_path)
    folder = Path("/proc") if os.geteuid() == 0 else tmp_path / "ro"
    if folder != Path("/proc"):
        folder.mkdir()
        folder.chmod(0o500)
    with pytest.raises(OutputError):
        check_output_paths(src, folder / "o.onnx")
    assert not any(p.name.startswith(".bnfold-") for p in tmp_path.iterdir())


def test_free_data_name_skips_every_kept_file_however_spelled(tmp_path):
    kept = tmp_path / "w.bin"
    kept.write_bytes(b"w")
    (tmp_path / "o.onnx.data").symlink_to(kept)
    os.link(kept, tmp_path / "o.onnx.1.data")
    assert free_data_name(tmp_path / "o.onnx", tmp_path, [kept]) == "o.onnx.2.data"
    assert free_data_name(tmp_path / "o.onnx", tmp_path, []) == "o.onnx.data"
    (tmp_path / "p.onnx.data").mkdir()
    assert free_data_name(tmp_path / "p.onnx", tmp_path, []) == "p.onnx.1.data"
