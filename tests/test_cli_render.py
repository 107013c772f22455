"""The fold table: reasons are never cut; they wrap on a terminal and stay whole in a pipe."""
from __future__ import annotations

from click.testing import CliRunner

from bnfold.cli import main
from bnfold.cli.render import fold_table
from bnfold.folding.report import FoldRecord, FoldResult, Reason

LONG = "x" * 150 + " end-of-reason"


def _result(*records: FoldRecord) -> FoldResult:
    return FoldResult(model=None, records=list(records))  # type: ignore[arg-type]


def test_whole_reason_on_one_line_without_width() -> None:
    text = fold_table(_result(FoldRecord("bn", "main", reason=Reason.DYNAMIC_PARAMS, detail=LONG)))
    row = next(line for line in text.splitlines() if line.startswith("bn "))
    assert row.endswith("end-of-reason") and "…" not in text


def test_long_reason_wraps_under_its_column_with_width() -> None:
    text = fold_table(_result(FoldRecord("bn", "main", reason=Reason.DYNAMIC_PARAMS,
                                         detail="word " * 40 + "end-of-reason")), width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "end-of-reason" in text and "…" not in text
    column = lines[0].index("into / reason")
    continued = [line for line in lines[3:] if line.startswith(" ") and line.strip()]
    assert continued and all(line[:column].strip() == "" for line in continued)


def test_long_bn_names_are_not_cut() -> None:
    name = "encoder.stage4.block17.bottleneck.expand.batchnorm_after_depthwise"
    text = fold_table(_result(FoldRecord(name, "main", target="conv", direction="backward")))
    assert name in text


def test_no_bn_says_nothing_to_fold() -> None:
    assert fold_table(_result()) == "no BatchNormalization nodes: nothing to fold"


def test_inspect_names_the_neighbours_ops_in_a_pipe() -> None:
    res = CliRunner().invoke(main, ["inspect", "models/preact_digits.onnx"])
    assert res.exit_code == 0
    assert "producer is Add (block1/Add), consumer is Relu" in res.stdout
    assert "…" not in res.stdout
