"""Trust campaign (issue 10): hostile graphs must never give a wrong model or a PASS on one.

Properties, for every generated case: ``bnfold.fold`` raises nothing but BnfoldError; every BN
(in every graph, subgraph and function) is folded or has a reason; the folded model has no
checker error the input lacks and no dangling training_info binding; it matches the original
on all paths (tests/hostile_oracle.py); a fold by path leaves every input file unchanged; with
fold_params corrupted, fold + verify (and ``bnfold fold``) never accept a wrong model.

CI runs a few examples per class; on demand:
``HYPOTHESIS_PROFILE=long BNFOLD_HOSTILE_EXAMPLES=10000 python -m pytest -q tests/test_fuzz_hostile.py``
The regressions at the end are minimal examples the campaign found.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import hostile_cases as hc
import numpy as np
import onnx
from hostile import Case
from hostile_oracle import (Unrunnable, checker_errors, count_all_bn, dangling_bindings, judge,
                            save_layout, snapshot)
from hypothesis import event, given, note, reject, settings
from hypothesis import strategies as st

import bnfold
from bnfold.errors import BnfoldError

EXAMPLES = int(os.environ.get("BNFOLD_HOSTILE_EXAMPLES", 6))
campaign = settings(max_examples=EXAMPLES)


def fold_case(case: Case) -> bnfold.FoldResult | None:
    """Fold in memory, or (external layouts) by path, proving the input files unchanged."""
    if case.layout is None:
        try:
            return bnfold.fold(case.model)
        except BnfoldError as exc:
            event(f"refused input: {type(exc).__name__}")
            return None
    with tempfile.TemporaryDirectory() as tmp:
        path = save_layout(case.model, Path(tmp), case.layout)
        before = snapshot(Path(tmp))
        try:
            result = bnfold.fold(path)
        except BnfoldError as exc:
            event(f"refused input: {type(exc).__name__}")
            return None
        assert snapshot(Path(tmp)) == before, "fold by path changed an input file"
        return result


def check_trust(case: Case) -> None:
    model = case.model
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        reject()
    note(onnx.printer.to_text(model))
    result = fold_case(case)
    if result is None:
        return
    note(f"records: {[r.to_dict() for r in result.records]}")
    assert result.bn_before == count_all_bn(model), \
        f"bn_before={result.bn_before}, the model has {count_all_bn(model)} BNs"
    assert all(r.folded or r.reason is not None for r in result.records)
    before, after = checker_errors(model), checker_errors(result.model)
    assert after is None or after == before, f"new checker error: {after} (input: {before})"
    assert not dangling_bindings(result.model), dangling_bindings(result.model)
    try:
        verdict = judge(case, result.model)
    except Unrunnable:
        reject()
    event(f"engine {verdict.engine}")
    if verdict.wrong:
        passed = verify_passes(model, result)
        raise AssertionError(f"wrong model: error {verdict.error:.3g} > tolerance "
                             f"{verdict.tolerance:.3g}; verify says "
                             f"{'PASS' if passed else 'FAIL'}; {verdict.detail[-3:]}")


def verify_passes(model: onnx.ModelProto, result: bnfold.FoldResult) -> bool | str:
    """bnfold.verify's verdict on a fold (an exception is a refusal, not a PASS)."""
    try:
        return bnfold.verify(model, result.model, fold_result=result).passed
    except BnfoldError as exc:
        return f"refused ({exc})"


# --- one property test per class ------------------------------------------------------------

@campaign
@given(hc.params_cases())
def test_computed_bn_parameters_fold_exactly(case):
    check_trust(case)


@campaign
@given(hc.chain_cases())
def test_long_parameter_chains_fold_without_recursion_error(case):
    check_trust(case)


@campaign
@given(hc.lie_cases())
def test_lying_value_info_never_gives_a_wrong_model(case):
    check_trust(case)


@campaign
@given(hc.branch_cases())
def test_folds_in_branches_and_before_argmax_are_right_on_all_paths(case):
    check_trust(case)


@campaign
@given(hc.dtype_cases())
def test_float16_bfloat16_float64_models_fold_exactly(case):
    check_trust(case)


@campaign
@given(hc.function_cases())
def test_bns_inside_functions_are_accounted_for(case):
    check_trust(case)


@campaign
@given(hc.training_cases())
def test_training_info_bindings_never_dangle(case):
    check_trust(case)


@campaign
@given(hc.external_cases())
def test_external_data_layouts_fold_by_path_without_touching_inputs(case):
    check_trust(case)


@campaign
@given(hc.random_op_cases())
def test_random_ops_never_make_verify_blame_an_exact_fold(case):
    check_trust(case)
    result = bnfold.fold(case.model)
    if not result.folded:
        return
    try:
        report = bnfold.verify(case.model, result.model, fold_result=result)
    except BnfoldError as exc:  # e.g. ORT has no kernel for the random op at this opset
        event(f"verify refused: {str(exc)[:80]}")
        return
    loc = report.localization
    assert loc is None or loc.bn is None, f"verify blames {loc.bn} for a nondeterministic output"


# --- corrupted folds: the pipeline must catch them or not make them ---------------------------

@contextmanager
def corrupted_fold_params(parity: int):
    """fold_params with channel 0's scale off by 30% for the BNs whose gamma hash has ``parity``."""
    from bnfold.fold import bn as bn_module
    from bnfold.fold import math as fold_math

    real = fold_math.fold_params

    def bad(gamma, beta, mean, var, eps):  # noqa: ANN001, ANN202
        scale, shift = real(gamma, beta, mean, var, eps)
        if hash(np.asarray(gamma, dtype=np.float64).tobytes()) % 2 == parity:
            scale = scale.copy()
            scale[0] *= 1.3
        return scale, shift

    with mock.patch.object(fold_math, "fold_params", bad), \
            mock.patch.object(bn_module, "fold_params", bad):
        yield


@campaign
@given(st.one_of(hc.branch_cases(), hc.params_cases()), st.integers(0, 1))
def test_fold_then_verify_never_accepts_a_corrupted_fold(case, parity):
    try:
        onnx.checker.check_model(case.model)
    except onnx.checker.ValidationError:
        reject()
    with corrupted_fold_params(parity):
        result = bnfold.fold(case.model)
        if not result.folded:
            return
        passed = verify_passes(case.model, result)
    if passed is not True:
        return
    try:
        verdict = judge(case, result.model)
    except Unrunnable:
        reject()
    assert not verdict.wrong, (f"fold + verify accepted a wrong model: error {verdict.error:.3g} > "
                               f"{verdict.tolerance:.3g}; {verdict.detail[-3:]}")


@settings(max_examples=max(2, EXAMPLES // 3))
@given(hc.branch_cases(), st.integers(0, 1))
def test_cli_fold_never_exits_0_with_a_corrupted_fold_written(case, parity):
    from click.testing import CliRunner

    from bnfold.cli import main

    try:
        onnx.checker.check_model(case.model)
    except onnx.checker.ValidationError:
        reject()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save_model(case.model, str(src))
        with corrupted_fold_params(parity):
            code = CliRunner().invoke(main, ["fold", str(src), "-o", str(out), "-q"]).exit_code
        if code != 0 or not out.exists():
            return
        folded = onnx.load_model(str(out))
    try:
        verdict = judge(case, folded)
    except Unrunnable:
        reject()
    assert not verdict.wrong, (f"bnfold fold exited 0 with a wrong model: error "
                               f"{verdict.error:.3g} > {verdict.tolerance:.3g}")
