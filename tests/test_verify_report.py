"""Report renderings: JSON fields, Markdown tables, the self-contained HTML and writing all three."""
from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bnfold.errors import OutputError
from bnfold.verification.compare import compare
from bnfold.verification.localize import Localization
from bnfold.verification.report import Accuracy, Case, OutputCheck, Report
from bnfold.verification.truth import TruthCheck


class _Tables(HTMLParser):
    """Collects every <table data-table=...> as rows of cell text, plus img/link/script sources."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.sources: list[str] = []
        self._key: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._key = a.get("data-table") or ""
            self.tables[self._key] = []
        elif tag == "tr" and self._key is not None:
            self.tables[self._key].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("img", "script", "link"):
            self.sources.append(a.get("src") or a.get("href") or "")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._key is not None:
            self.tables[self._key][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._key = None


def _report(fail: bool = False) -> Report:
    ref = np.array([[0.1, 0.9], [0.7, 0.3]], dtype=np.float32)
    got = ref + (np.float32(0.5) if fail else np.float32(1e-7))
    checks = [OutputCheck(case, "logits", "float32", "2x2", 1e-4, 1e-3,
                          compare(ref, got, 1e-4, 1e-3)) for case in ("cpu: b1", "cpu: b8")]
    checks.append(OutputCheck("cpu: b1", "feat", "float32", "2x2", 1e-4, 1e-3,
                              compare(ref, ref, 1e-4, 1e-3)))
    rep = Report(original="a.onnx", folded="b.onnx",
                 cases=[Case("cpu: b1", "cpu", "random seed=0 batch=1", {"x": "1x3"}),
                        Case("cpu: b8", "cpu", "random seed=0 batch=8", {"x": "8x3"})],
                 checks=checks, environment={"onnx": "1.x", "graph optimization level": "disabled"},
                 accuracy=Accuracy("logits", 2, 1.0, 0.5, 0.5),
                 fold={"bn_before": 2, "bn_after": 1, "records": [
                     {"bn": "bn1", "graph": "main", "folded": True, "target": "conv1",
                      "direction": "backward", "reason_text": None, "detail": ""},
                     {"bn": "bn2", "graph": "main", "folded": False, "target": None,
                      "direction": None, "reason_text": "training_mode=1", "detail": ""}]},
                 errors={"logits": np.abs(got - ref).ravel()})
    if fail:
        rep.localization = Localization("bn1_out", "conv1", "Conv", "bn1", "backward", 0.5, 0.55, 2,
                                        "'bn1_out' is the output of BN 'bn1'")
    return rep


def test_verdict_and_summary() -> None:
    ok, bad = _report(), _report(fail=True)
    assert ok.passed and ok.summary().startswith("PASS: 2 output(s) x 2 case(s)")
    assert not bad.passed
    assert bad.summary().startswith("FAIL: 2 of 3") and "BN 'bn1' (backward fold)" in bad.summary()
    assert "\n" not in bad.summary()


def test_empty_report_does_not_pass() -> None:
    assert not Report(original="a", folded="b").passed


def test_json_has_verdict_metrics_tolerances_and_fold() -> None:
    d = json.loads(_report(fail=True).to_json())
    assert d["passed"] is False
    assert d["tolerances"]["float32"] == {"atol": 1e-5, "rtol": 1e-4}
    assert d["checks"][0]["metrics"]["max_abs"] == pytest.approx(0.5)
    assert d["checks"][0]["passed"] is False
    assert d["localization"]["bn"] == "bn1"
    assert d["accuracy"]["folded"] == 0.5
    assert [r["bn"] for r in d["fold"]["records"]] == ["bn1", "bn2"]


def test_user_tolerance_is_stated_for_every_dtype() -> None:
    rep = _report()
    rep.user_tolerance = (0.5, None)
    tol = rep.tolerances()
    assert tol["float16"]["atol"] == 0.5 and tol["float16"]["rtol"] == pytest.approx(1e-2)


def test_markdown_has_a_table_per_output_and_the_fold_table() -> None:
    md = _report(fail=True).to_markdown()
    assert md.startswith("## bnfold verify: FAILED")
    for heading in ("### Output logits", "### Output feat", "### Localisation",
                    "### Accuracy on labelled data", "### BatchNormalization folds"):
        assert heading in md
    assert "| cpu: b8 | float32 | 2x2 |" in md
    assert "`b.onnx`\n\n### Output logits" in md  # headings need a blank line before them


def test_html_is_self_contained_with_its_tables() -> None:
    page = _report(fail=True).to_html()
    parser = _Tables()
    parser.feed(page)
    t = parser.tables
    assert {"environment", "cases", "tolerances", "output:logits", "output:feat",
            "localization", "accuracy", "fold"} <= set(t)
    logits = t["output:logits"]
    assert logits[0][0] == "case" and len(logits) == 3 and logits[1][-1] == "FAIL"
    assert [row[0] for row in t["fold"][1:]] == ["bn1", "bn2"]
    assert ["graph optimization level", "disabled"] in t["environment"]
    assert parser.sources and all(s.startswith("data:image/png;base64,") for s in parser.sources)
    assert "http://" not in page and "https://" not in page


def test_html_without_fold_step_has_no_fold_table() -> None:
    rep = _report()
    rep.fold = None
    parser = _Tables()
    parser.feed(rep.to_html())
    assert "fold" not in parser.tables and "output:logits" in parser.tables


def test_write_puts_three_files(tmp_path: Path) -> None:
    paths = _report().write(tmp_path / "out")
    assert sorted(p.name for p in paths) == ["report.html", "report.json", "report.md"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["passed"] is True


def test_write_to_unwritable_place_is_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        _report().write(blocker / "sub")


def test_fold_table_shows_each_folds_proof_error() -> None:
    rep = _report()
    rep.fold["records"][0].update(proof_max_abs=4.8e-6, proof_tol=1.2e-3,
                                  proof_engine="onnxruntime")
    parser = _Tables()
    parser.feed(rep.to_html())
    head, bn1, bn2 = parser.tables["fold"]
    cols = [head.index(h) for h in ("proof max abs", "proof tolerance", "proof engine")]
    assert [bn1[i] for i in cols] == ["4.8e-06", "0.0012", "onnxruntime"]
    assert [bn2[i] for i in cols] == ["-", "-", "-"]
    assert "| 4.8e-06 | 0.0012 | onnxruntime |" in rep.to_markdown()


def test_check_closer_to_float64_truth_passes_and_is_shown_in_the_tables() -> None:
    rep = _report(fail=True)
    rep.localization = None
    rep.checks = [dataclasses.replace(c, truth=TruthCheck("onnx.reference", 0.6, 0.1))
                  if not c.passed else c for c in rep.checks]
    rep.notes.append("output 'logits': closer to the float64 truth")
    assert rep.passed and "closer to the float64 truth than the original" in rep.summary()
    parser = _Tables()
    parser.feed(rep.to_html())
    assert parser.tables["output:logits"][1][-2:] == ["0.6 / 0.1", "pass (closer to float64 truth)"]
    assert parser.tables["notes"][1] == ["output 'logits': closer to the float64 truth"]
    assert json.loads(rep.to_json())["checks"][0]["truth"]["folded_closer"] is True


def test_nondeterministic_checks_leave_the_verdict_and_all_of_them_is_unverified() -> None:
    rep = _report(fail=True)
    rep.checks = [dataclasses.replace(c, nondeterministic=True) if not c.passed else c
                  for c in rep.checks]
    assert rep.passed and not rep.unverified and rep.nondeterministic == ["logits"]
    rep.checks = [dataclasses.replace(c, nondeterministic=True) for c in rep.checks]
    assert rep.passed and rep.unverified and rep.summary().startswith("PASS (UNVERIFIED)")


def test_crash_fails_the_report_whatever_the_checks() -> None:
    rep = _report()
    rep.crash = "onnxruntime crashed (SIGSEGV) on the folded model b.onnx"
    assert not rep.passed and rep.summary() == f"FAIL: {rep.crash}"
    assert "### Notes" in rep.to_markdown() and rep.to_dict()["crash"] == rep.crash


def test_cases_table_names_the_engine() -> None:
    rep = _report()
    rep.cases[0] = dataclasses.replace(rep.cases[0], engine="onnx.reference")
    parser = _Tables()
    parser.feed(rep.to_html())
    assert [row[-1] for row in parser.tables["cases"]] == ["engine", "onnx.reference",
                                                          "onnxruntime"]


def test_markdown_puts_verdict_outputs_fold_table_cases_then_environment() -> None:
    md = _report(fail=True).to_markdown()
    order = [md.index(h) for h in ("## bnfold verify: FAILED", "### Output logits",
                                   "### BatchNormalization folds", "### Cases", "### Environment")]
    assert order == sorted(order)


def test_html_puts_verdict_outputs_fold_table_cases_then_environment() -> None:
    page = _report(fail=True).to_html()
    order = [page.index(s) for s in ('class="verdict', 'data-table="output:logits"',
                                     'data-table="fold"', 'data-table="cases"',
                                     'data-table="environment"')]
    assert order == sorted(order)


def test_report_of_two_files_says_where_the_fold_table_is() -> None:
    rep = _report()
    rep.fold = None
    assert "bnfold fold --report" in rep.to_markdown()
    parser = _Tables()
    parser.feed(rep.to_html())
    assert "bnfold fold --report" in parser.tables["fold-note"][1][0]


def test_notes_say_how_symbolic_input_dims_were_sized() -> None:
    rep = _report()
    rep.input_size = "symbolic dims of input 'x' set to 32 (given)"
    assert "set to 32" in rep.summary() and "set to 32" in rep.to_markdown()
