"""Choosing the size of symbolic input dims that the original model runs (bnfold.verification.sizes)."""
from __future__ import annotations

import pytest

from bnfold.errors import InputError
from bnfold.inputs import ShapeRequest
from bnfold.verification import engines
from bnfold.verification.sizes import SIZE_LADDER, SizeChoice, choose_size
from modelgen import Builder, sized_model


def _choose(model, shapes=None, dims=None, ladder=SIZE_LADDER):
    with engines.OrtProcess() as proc:
        return choose_size(proc, model, model, "m", request=ShapeRequest.of(shapes, dims), provider="cpu",
                           opt_level="disabled", seed=0, key="probe", ladder=ladder)


def test_first_size_the_original_runs_is_chosen():
    choice = _choose(sized_model(8192))  # 2*32*32 = 2048 is no multiple of 8192; 2*64*64 is
    assert (choice.size, choice.inputs, choice.tried) == (64, ("x",), (32, 64))
    assert "set to 64" in choice.note() and "none of 32" in choice.note()


def test_no_probe_when_only_the_batch_dim_is_symbolic():
    b = Builder()
    b.output(b.bn(b.conv(b.input("x", ["N", 1, 8, 8]), 1, 2), 2))
    assert _choose(b.model()) is None


def test_no_probe_when_shape_fixes_the_symbolic_dims():
    assert _choose(sized_model(2048), shapes={"x": (1, 1, 32, 32)}) is None


def test_no_probe_when_dim_fixes_the_symbolic_dims():
    b = Builder()
    b.output(b.bn(b.conv(b.input("x", ["N", 1, "S", "S"]), 1, 2), 2))
    assert _choose(b.model(), dims={"S": 8}) is None


def test_no_size_runs_points_at_shape():
    with pytest.raises(InputError, match=r"none of the sizes 32, 64.*--shape x:1x1xHxW"):
        _choose(sized_model(2062), ladder=(32, 64))


def test_given_size_is_said_as_given():
    assert "set to 96 (given" in SizeChoice(96, ("x",)).note()
