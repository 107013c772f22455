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
