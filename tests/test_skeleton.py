"""skeleton: works on every supported protobuf; only onnx's verdict counts as a failed check."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from google.protobuf.message import Message
from modelgen import Builder

from bnfold.io.model_io import load_model, save_model
from bnfold.io.skeleton import CheckFailed, full_check, skeleton


def conv_bn() -> onnx.ModelProto:
    b = Builder(opset=17)
    x = b.input("x", ["N", 8, 5, 5])
    b.output(b.bn(b.conv(x, 8, 16), 16))  # a 4.6 KB weight: left out of the skeleton
    return b.model()


class _OldField:
    """A FieldDescriptor as protobuf 4.25 has it: ``label``, no ``is_repeated``."""

    LABEL_OPTIONAL, LABEL_REPEATED = 1, 3

    def __init__(self, field, value) -> None:  # noqa: ANN001
        self._field = field
        repeated = not isinstance(value, (Message, str, bytes, int, float, bool))
        self.label = self.LABEL_REPEATED if repeated else self.LABEL_OPTIONAL

    def __getattr__(self, name: str):  # noqa: ANN204
        if name == "is_repeated":
            raise AttributeError(f"'FieldDescriptor' object has no attribute {name!r}")
        return getattr(self._field, name)


def _message_classes(cls: type) -> list[type]:
    nested = [getattr(cls, d.name) for d in cls.DESCRIPTOR.nested_types]
    return [cls] + [c for n in nested for c in _message_classes(n)]


@pytest.fixture
def protobuf_425(monkeypatch):
    """Every onnx message lists its fields with protobuf-4.25-style descriptors."""
    roots = [v for v in vars(onnx).values() if isinstance(v, type) and issubclass(v, Message)]
    for cls in {c for root in roots for c in _message_classes(root)}:
        real = cls.ListFields
        monkeypatch.setattr(cls, "ListFields", lambda self, real=real: [
            (_OldField(f, v), v) for f, v in real(self)])


def test_skeleton_and_load_work_without_field_is_repeated(protobuf_425, tmp_path: Path) -> None:
    model = conv_bn()
    path = tmp_path / "m.onnx"
    save_model(model, path)
    loaded = load_model(path)
    sk = skeleton(loaded)
    assert list(sk.graph.node) == list(model.graph.node)
    assert [t.name for t in sk.graph.initializer] == [t.name for t in model.graph.initializer]


def test_an_invalid_model_fails_the_check_with_onnx_words() -> None:
    model = conv_bn()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(CheckFailed, match="NoSuchOp"):
        full_check(skeleton(model))


def test_an_error_inside_the_checker_call_is_not_a_failed_check(monkeypatch) -> None:
    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AttributeError("simulated onnx API mismatch")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    with pytest.raises(AttributeError, match="simulated"):
        full_check(skeleton(conv_bn()))


def test_a_tensor_of_unknown_data_type_is_kept_whole_for_the_checker_to_judge() -> None:
    model = conv_bn()
    model.graph.initializer[0].data_type = 999
    assert skeleton(model).graph.initializer[0] == model.graph.initializer[0]
