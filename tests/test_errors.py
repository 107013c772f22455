"""``bnfold.errors.first_line``: one line out of a long or empty exception message."""
from __future__ import annotations

from bnfold.errors import first_line


def test_first_line_of_a_multi_line_message() -> None:
    assert first_line(RuntimeError("\n  [ONNXRuntimeError] bad model  \ncontext\nmore")) == (
        "[ONNXRuntimeError] bad model")


def test_an_empty_message_gives_the_type_name() -> None:
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("  \n ")) == "ValueError"


def test_an_empty_message_can_give_a_chosen_default() -> None:
    assert first_line(OSError(), empty="") == ""
