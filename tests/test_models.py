"""The committed zoo: loads, keeps its BNs, scores as its card says, and folds with the same
predictions; the test-split files match the seeded split; training is seeded and learns."""
from __future__ import annotations

import json

import numpy as np
import pytest

import bnfold
from bnfold.exporting.exporter import run_onnx
from bnfold.io.model_io import load_model

pytest.importorskip("torch")  # models.zoo defines the architectures in torch; bnfold needs no torch

from models import cards, digits_data  # noqa: E402
from models.zoo import SPECS  # noqa: E402

CARDS = json.loads(cards.CARDS_JSON.read_text())
MAX_BYTES = 2 * 1024 * 1024


def _path(name: str):  # noqa: ANN202
    return digits_data.MODELS_DIR / f"{name}.onnx"


def test_every_zoo_model_is_committed_with_a_card() -> None:
    assert set(CARDS) == set(SPECS)
    total = 0
    for name in SPECS:
        assert (digits_data.MODELS_DIR / f"{name}.md").is_file()
        size = _path(name).stat().st_size
        assert size == CARDS[name]["file_bytes"] and size < MAX_BYTES
        total += size
    assert total < 4 * MAX_BYTES


@pytest.mark.parametrize("name", list(SPECS))
def test_committed_model_folds_and_keeps_its_score(name: str) -> None:
    spec, card = SPECS[name], CARDS[name]
    model = load_model(_path(name))
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == card["bn_count"]
    x, labels = digits_data.load_test(spec.layout)
    assert [i.name for i in model.graph.input] == ["input"]
    before = run_onnx(model, {"input": x})[0]
    metric = digits_data.score(before, x, labels, spec.task)
    assert metric == pytest.approx(card["metric_onnx"], abs=1e-9)
    result = bnfold.fold(model)
    assert result.bn_before == card["bn_count"] and result.bn_after == card["bn_after_fold"]
    assert result.bn_after < result.bn_before
    after = run_onnx(result.model, {"input": x})[0]
    if spec.task == "classify":
        assert metric > 0.9
        np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
    else:
        assert metric < 0.01
    assert digits_data.score(after, x, labels, spec.task) == pytest.approx(metric, rel=1e-4)
    np.testing.assert_allclose(after, before, atol=1e-4, rtol=1e-4)


def test_committed_models_run_at_batch_1_and_8() -> None:
    x, _ = digits_data.load_test("image")
    model = load_model(_path("resnet_digits"))
    full = run_onnx(model, {"input": x[:8]})[0]
    one = run_onnx(model, {"input": x[:1]})[0]
    np.testing.assert_allclose(one, full[:1], atol=1e-5)


def test_test_files_match_the_seeded_split() -> None:
    _, _, x_te, y_te = digits_data.split()
    labels = np.load(digits_data.LABELS_FILE)
    np.testing.assert_array_equal(labels, y_te)
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    for layout in digits_data.TEST_FILES:
        x, _ = digits_data.load_test(layout)
        assert x.dtype == np.float32 and len(x) == len(labels)
        np.testing.assert_array_equal(x, digits_data.to_layout(x_te, layout))


def test_layouts_hold_the_same_pixels() -> None:
    images, _ = digits_data.load_test("image")
    seq, _ = digits_data.load_test("seq")
    flat, _ = digits_data.load_test("flat")
    np.testing.assert_array_equal(flat[5].reshape(8, 8), images[5, 0])
    np.testing.assert_array_equal(seq[5][:, 2], images[5, 0, 2])  # row 2 = time step 2


def test_training_is_seeded_and_learns() -> None:
    torch = pytest.importorskip("torch")
    from models.train_digits import TrainConfig, evaluate, train

    spec = SPECS["mlp_digits"]
    x_tr, y_tr, x_te, y_te = digits_data.split()
    cfg = TrainConfig(epochs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = train(spec, x_tr, y_tr, cfg), train(spec, x_tr, y_tr, cfg)
    finally:
        torch.set_num_threads(threads)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert evaluate(a, spec, x_te, y_te) > 0.8
    assert not a.training


def test_bn_sites_describe_neighbours() -> None:
    sites = cards.bn_sites(load_model(_path("preact_digits")))
    assert sites == {"Add -> BN -> Relu": 2, "Conv -> BN -> Relu": 3}


@pytest.mark.parametrize("name", list(SPECS))
def test_committed_weights_reproduce_the_onnx_model(name: str) -> None:
    torch = pytest.importorskip("torch")
    from bnfold.exporting.exporter import load_factory

    spec = SPECS[name]
    model = load_factory(f"models.zoo:{name}", str(digits_data.MODELS_DIR / f"{name}.pt")).eval()
    x, labels = digits_data.load_test(spec.layout)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = run_onnx(load_model(_path(name)), {"input": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert digits_data.score(expected, x, labels, spec.task) == pytest.approx(
        CARDS[name]["metric_torch"], abs=1e-9)
