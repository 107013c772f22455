"""ARCHITECTURE.md stays true: the files it names exist, the dependencies point one way."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_named_in_architecture_md_exists() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`((?:bnfold/|tests/)?[\w/]+\.(?:py|md))`", text))
    assert len(named) > 20
    missing = [n for n in sorted(named) if not any(
        (ROOT / base / n).exists() for base in ("", "bnfold", "bnfold/folding", "bnfold/verification",
                                                "bnfold/cli", "tests"))]
    assert missing == []


def test_the_fold_core_imports_neither_the_cli_nor_the_pipeline() -> None:
    for path in (ROOT / "bnfold" / "folding").rglob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(from|import) bnfold\.(cli|pipeline)\b", source, re.MULTILINE), path


def _imported_after(code: str) -> set[str]:
    """The top-level modules (and bnfold's packages) a fresh interpreter has after ``code``."""
    import subprocess
    import sys

    probe = (f"{code}\nimport sys\n"
             "print(' '.join(sorted(m for m in sys.modules if '.' not in m "
             "or m.startswith('bnfold.'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_cli_and_the_ort_childs_start_import_no_onnx_numpy_or_fold_engine() -> None:
    """``bnfold fold`` starts ORT's child before it imports them (the child's ORT import then
    overlaps theirs), and ``bnfold --help`` does not pay for them."""
    heavy = {"onnx", "numpy", "onnxruntime", "bnfold.folding", "bnfold.verification.api"}
    assert not heavy & _imported_after("import bnfold.cli")
    started = ("from bnfold.verification.shared_child import shared_process\n"
               "shared_process().start().close()")
    assert not heavy & _imported_after(started)


def test_the_public_api_is_there_when_asked_for() -> None:
    import bnfold

    for name in bnfold.__all__:
        assert getattr(bnfold, name) is not None, name
    from bnfold import FoldResult, fold, fold_file  # noqa: F401 - imported through __getattr__
