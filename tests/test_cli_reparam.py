"""`bnfold fold` on a RepVGG block: the merge in the table and JSON, and --no-reparam."""
from __future__ import annotations

import json

import onnx
from click.testing import CliRunner

from bnfold.cli import main
from modelgen import count_bn
from test_fold_reparam import repvgg


def _fold(tmp_path, *flags):
    src = tmp_path / "block.onnx"
    onnx.save(repvgg(), src)
    out = tmp_path / "out.onnx"
    res = CliRunner().invoke(main, ["fold", str(src), "-o", str(out), "-q", *flags])
    assert res.exit_code == 0, res.output
    return res, onnx.load(out)


def test_fold_merges_the_block_and_says_which_convs(tmp_path):
    res, model = _fold(tmp_path)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]
    assert res.stdout.count("folded <> reparam") == 3
    assert "(merged " in res.stdout and "3 before -> 0 after" in res.stdout


def test_fold_json_records_the_merge(tmp_path):
    res, _ = _fold(tmp_path, "--json")
    records = json.loads(res.stdout)["records"]
    assert {r["direction"] for r in records} == {"reparam"}
    assert all(len(r["merged"]) == 2 and r["proof_max_abs"] is not None for r in records)


def test_no_reparam_keeps_the_branches_and_the_identity_bn(tmp_path):
    res, model = _fold(tmp_path, "--no-reparam")
    assert count_bn(model) == 1 and [n.op_type for n in model.graph.node].count("Conv") == 2
    assert "reparam" not in res.stdout and "3 before -> 1 after" in res.stdout
