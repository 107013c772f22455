"""A small numpy MLP trained by plain SGD, with or without BatchNorm after each hidden layer.

The experiment behind ``models/bn_claims.py``: BN here is ``batch_norm_train`` and
``batch_norm_backward`` from this package, inference uses the PyTorch-convention running
statistics, and ``fold`` turns a trained BN network into a plain one with ``fold_params``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from bnfold.errors import BnfoldError
from bnfold.folding.math import fold_params
from bnfold.reference.batchnorm import (
    batch_norm_backward,
    batch_norm_eval,
    batch_norm_train,
    running_stats_pytorch,
)

ACTIVATIONS = ("sigmoid", "relu")
EPS = 1e-5


@dataclass
class Layer:
    """One affine layer; ``gamma`` is None when no BN follows it."""

    w: np.ndarray
    b: np.ndarray
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``init_scale`` multiplies the LeCun std 1/sqrt(fan_in) of hidden layers."""

    batch_norm: bool
    lr: float
    init_scale: float
    seed: int = 0
    hidden: tuple[int, ...] = (100, 100, 100)
    activation: str = "sigmoid"
    steps: int = 1000
    batch: int = 60
    eval_every: int = 25


@dataclass
class History:
    """Per checkpoint: step, mean mini-batch loss since the last one, test accuracy."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    diverged: bool = False

    def steps_to(self, target: float) -> int | None:
        """First checkpoint step whose test accuracy reaches ``target``, or None."""
        return next((s for s, a in zip(self.steps, self.test_acc, strict=True) if a >= target),
                    None)


def _act(z: np.ndarray, kind: str) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * z) if kind == "sigmoid" else np.maximum(z, 0.0)


def _act_grad(z: np.ndarray, a: np.ndarray, kind: str) -> np.ndarray:
    return a * (1.0 - a) if kind == "sigmoid" else (z > 0).astype(z.dtype)


def init_layers(sizes: list[int], batch_norm: bool, init_scale: float,
                rng: np.random.Generator) -> list[Layer]:
    """Gaussian weights; hidden layers scaled by ``init_scale``, the output layer LeCun-initialized.

    A hidden layer followed by BN has no bias: BN's beta takes its place.
    """
    layers = []
    for i, (fan_in, fan_out) in enumerate(pairwise(sizes)):
        hidden = i < len(sizes) - 2
        std = (init_scale if hidden else 1.0) / np.sqrt(fan_in)
        layer = Layer(w=rng.normal(0.0, std, size=(fan_in, fan_out)), b=np.zeros(fan_out))
        if hidden and batch_norm:
            layer.gamma, layer.beta = np.ones(fan_out), np.zeros(fan_out)
            layer.running_mean, layer.running_var = np.zeros(fan_out), np.ones(fan_out)
        layers.append(layer)
    return layers


def forward(layers: list[Layer], x: np.ndarray, activation: str,
            train: bool) -> tuple[np.ndarray, list]:
    """Logits and the tape ``sgd_step`` needs; in training, BN also updates running stats."""
    tape = []
    h = x
    for layer in layers[:-1]:
        z = h @ layer.w + layer.b
        bn_cache = None
        if layer.gamma is not None and train:
            out = batch_norm_train(z, layer.gamma, layer.beta, EPS)
            layer.running_mean, layer.running_var = running_stats_pytorch(
                layer.running_mean, layer.running_var, out.mean, out.var, out.cache.count)
            z, bn_cache = out.y, out.cache
        elif layer.gamma is not None:
            z = batch_norm_eval(z, layer.gamma, layer.beta, layer.running_mean,
                                layer.running_var, EPS)
        a = _act(z, activation)
        tape.append((h, z, a, bn_cache))
        h = a
    tape.append((h, None, None, None))
    return h @ layers[-1].w + layers[-1].b, tape


def softmax_xent(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(labels)
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1.0
    return float(-log_p[np.arange(n), labels].mean()), grad / n


def sgd_step(layers: list[Layer], tape: list, dlogits: np.ndarray, activation: str,
             lr: float) -> None:
    """Backpropagate ``dlogits`` through the network and take one SGD step in place."""
    grad = dlogits
    for layer, (h, z, a, bn_cache) in zip(reversed(layers), reversed(tape), strict=True):
        if z is not None:                       # hidden layer: through activation and BN
            grad = grad * _act_grad(z, a, activation)
            if bn_cache is not None:
                grad, dgamma, dbeta = batch_norm_backward(grad, bn_cache)
                layer.gamma -= lr * dgamma
                layer.beta -= lr * dbeta
        dw, db = h.T @ grad, grad.sum(axis=0)
        grad = grad @ layer.w.T
        layer.w -= lr * dw
        if layer.gamma is None:
            layer.b -= lr * db


def fold(layers: list[Layer]) -> list[Layer]:
    """The same inference function without BN: each BN folded into its layer with fold_params."""
    folded = []
    for layer in layers:
        if layer.gamma is None:
            folded.append(Layer(w=layer.w.copy(), b=layer.b.copy()))
            continue
        scale, shift = fold_params(layer.gamma, layer.beta, layer.running_mean,
                                   layer.running_var, EPS)
        folded.append(Layer(w=layer.w * scale, b=layer.b * scale + shift))
    return folded


def accuracy(layers: list[Layer], x: np.ndarray, y: np.ndarray, activation: str) -> float:
    """Test accuracy in inference mode (BN with running statistics)."""
    logits, _ = forward(layers, x, activation, train=False)
    return float((logits.argmax(axis=1) == y).mean())


def train(cfg: TrainConfig, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
          y_test: np.ndarray) -> tuple[list[Layer], History]:
    """Train one network by SGD on shuffled mini-batches; stop once the loss is not finite."""
    if cfg.activation not in ACTIVATIONS:
        raise BnfoldError(f"activation must be one of {ACTIVATIONS}, got {cfg.activation!r}")
    rng = np.random.default_rng(cfg.seed)
    sizes = [x_train.shape[1], *cfg.hidden, int(y_train.max()) + 1]
    layers = init_layers(sizes, cfg.batch_norm, cfg.init_scale, rng)
    hist, losses, order = History(), [], np.empty(0, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, cfg.steps + 1):
            if len(order) < cfg.batch:
                order = rng.permutation(len(x_train))
            idx, order = order[:cfg.batch], order[cfg.batch:]
            logits, tape = forward(layers, x_train[idx], cfg.activation, train=True)
            loss, dlogits = softmax_xent(logits, y_train[idx])
            if not np.isfinite(loss):             # record the blow-up as a final checkpoint
                hist.diverged = True
                hist.steps.append(step)
                hist.train_loss.append(float("nan"))
                hist.test_acc.append(accuracy(layers, x_test, y_test, cfg.activation))
                break
            losses.append(loss)
            sgd_step(layers, tape, dlogits, cfg.activation, cfg.lr)
            if step % cfg.eval_every == 0:
                hist.steps.append(step)
                hist.train_loss.append(float(np.mean(losses)))
                hist.test_acc.append(accuracy(layers, x_test, y_test, cfg.activation))
                losses = []
    return layers, hist
