"""The numpy MLP used to test BN's claims: exact gradients, exact folding, training that works."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from bnfold.errors import BnfoldError
from bnfold.reference import mlp

PARAMS = ("w", "b", "gamma", "beta")


def _loss(layers: list[mlp.Layer], x: np.ndarray, y: np.ndarray, activation: str) -> float:
    logits, _ = mlp.forward(copy.deepcopy(layers), x, activation, train=True)
    return mlp.softmax_xent(logits, y)[0]


@pytest.mark.parametrize("activation", mlp.ACTIVATIONS)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_sgd_step_moves_every_parameter_by_minus_lr_times_its_gradient(batch_norm,
                                                                         activation) -> None:
    rng = np.random.default_rng(1)
    layers = mlp.init_layers([4, 5, 5, 3], batch_norm, 1.0, rng)
    for layer in layers:                        # move off zero so ReLU kinks and ties are rare
        layer.b += rng.normal(0, 0.1, size=layer.b.shape)
    x, y = rng.normal(size=(7, 4)), rng.integers(0, 3, size=7)
    before = copy.deepcopy(layers)
    logits, tape = mlp.forward(layers, x, activation, train=True)
    mlp.sgd_step(layers, tape, mlp.softmax_xent(logits, y)[1], activation, lr=1.0)
    h, checked = 1e-6, 0
    for i, (old, new) in enumerate(zip(before, layers, strict=True)):
        for name in PARAMS:
            value = getattr(old, name)
            if value is None or (name == "b" and old.gamma is not None):
                continue                        # BN layers have no bias (beta replaces it)
            numeric = np.zeros_like(value)
            for idx in np.ndindex(value.shape):
                losses = []
                for step in (h, -h):
                    moved = copy.deepcopy(before)
                    getattr(moved[i], name)[idx] += step
                    losses.append(_loss(moved, x, y, activation))
                numeric[idx] = (losses[0] - losses[1]) / (2 * h)
            np.testing.assert_allclose(value - getattr(new, name), numeric, atol=1e-7)
            checked += 1
    assert checked == (8 if batch_norm else 6)


def test_folding_a_trained_bn_net_keeps_its_inference_logits() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 6)), rng.integers(0, 4, size=200)
    cfg = mlp.TrainConfig(batch_norm=True, lr=0.5, init_scale=3.0, hidden=(8, 8), steps=30,
                          batch=20, eval_every=10)
    layers, _ = mlp.train(cfg, x, y, x, y)
    assert not np.allclose(layers[0].running_mean, 0.0)
    unfolded, _ = mlp.forward(layers, x, "sigmoid", train=False)
    folded = mlp.fold(layers)
    assert all(layer.gamma is None for layer in folded)
    np.testing.assert_allclose(mlp.forward(folded, x, "sigmoid", train=False)[0], unfolded,
                               atol=1e-12)


CENTERS = np.random.default_rng(0).normal(size=(3, 10)) * 3


def _blobs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, size=n)
    return CENTERS[y] + rng.normal(size=(n, 10)), y


def test_a_bn_net_learns_separable_blobs_and_records_its_history() -> None:
    rng = np.random.default_rng(3)
    (x_tr, y_tr), (x_te, y_te) = _blobs(rng, 300), _blobs(rng, 100)
    cfg = mlp.TrainConfig(batch_norm=True, lr=0.3, init_scale=1.0, hidden=(16,), steps=200,
                          batch=30, eval_every=20)
    _, hist = mlp.train(cfg, x_tr, y_tr, x_te, y_te)
    assert hist.steps == list(range(20, 201, 20)) and not hist.diverged
    assert hist.test_acc[-1] > 0.9
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert hist.steps_to(0.9) is not None and hist.steps_to(1.01) is None


def test_a_run_whose_loss_overflows_stops_and_records_a_final_checkpoint() -> None:
    rng = np.random.default_rng(4)
    x, y = _blobs(rng, 120)
    cfg = mlp.TrainConfig(batch_norm=False, lr=0.1, init_scale=1.0, hidden=(), steps=50,
                          batch=30, eval_every=10)
    _, hist = mlp.train(cfg, x * 1e300, y, x, y)          # logits overflow within a step or two
    assert hist.diverged and np.isnan(hist.train_loss[-1])
    assert len(hist.steps) == len(hist.test_acc) == 1 and hist.steps[0] < cfg.eval_every


def test_unknown_activation_is_refused() -> None:
    with pytest.raises(BnfoldError, match="activation"):
        cfg = mlp.TrainConfig(batch_norm=False, lr=0.1, init_scale=1.0, activation="tanh")
        x, y = np.zeros((4, 2)), np.zeros(4, dtype=int)
        mlp.train(cfg, x, y, x, y)
