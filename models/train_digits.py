"""Train the zoo on scikit-learn's digits, export each model keeping BN, and write its card.

Run from the repository root: ``python -m models.train_digits`` (all models) or
``python -m models.train_digits resnet_digits mlp_digits``. Seeded and deterministic on one
machine; each model trains in a few seconds on 2 CPU cores. Writes models/<name>.onnx,
models/<name>.pt (the PyTorch state_dict), models/<name>.md, the test-split files and models/README.md's table (see models/cards.py).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models import cards, digits_data
from models.zoo import SPECS, ModelSpec

EPOCHS = 30
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4


@dataclass
class TrainConfig:
    """Hyper-parameters, recorded in each card."""

    epochs: int = EPOCHS
    batch: int = BATCH
    lr: float = LR
    weight_decay: float = WEIGHT_DECAY
    seed: int = digits_data.SEED


def train(spec: ModelSpec, x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> nn.Module:
    """Adam with a cosine schedule; cross-entropy for classifiers, MSE for the autoencoder."""
    torch.manual_seed(cfg.seed)
    model = spec.factory()
    inputs = torch.from_numpy(digits_data.to_layout(x, spec.layout))
    targets = torch.from_numpy(x if spec.task == "reconstruct" else y)
    loss_fn: nn.Module = nn.MSELoss() if spec.task == "reconstruct" else nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(inputs) + cfg.batch - 1) // cfg.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(inputs), generator=gen)
        for start in range(0, len(inputs), cfg.batch):
            idx = order[start:start + cfg.batch]
            if len(idx) < 2:  # BatchNorm needs more than one sample per channel
                continue
            opt.zero_grad()
            loss = loss_fn(model(inputs[idx]), targets[idx])
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def evaluate(model: nn.Module, spec: ModelSpec, x: np.ndarray, y: np.ndarray) -> float:
    """The test metric of the PyTorch model (accuracy or reconstruction MSE)."""
    inputs = digits_data.to_layout(x, spec.layout)
    with torch.no_grad():
        out = model(torch.from_numpy(inputs)).numpy()
    return digits_data.score(out, inputs, y, spec.task)


def build(name: str, cfg: TrainConfig) -> cards.CardFacts:
    """Train, score, export and fold one model; return the facts its card shows."""
    from bnfold.exporting.exporter import export

    spec = SPECS[name]
    x_tr, y_tr, x_te, y_te = digits_data.split()
    start = time.perf_counter()
    model = train(spec, x_tr, y_tr, cfg)
    seconds = time.perf_counter() - start
    torch_metric = evaluate(model, spec, x_te, y_te)
    example = torch.from_numpy(digits_data.to_layout(x_te[:8], spec.layout))
    torch.save(model.state_dict(), digits_data.MODELS_DIR / f"{name}.pt")
    path = digits_data.MODELS_DIR / f"{name}.onnx"
    result = export(model, example, path, overwrite=True)
    if not result.ok:
        raise SystemExit(f"{name}: export check failed: {result.to_dict()}")
    return cards.measure(name, spec, result, torch_metric, seconds, cfg.__dict__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"models to build (default: all of {', '.join(SPECS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(SPECS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # tiny batches: one thread is faster, and the same on every machine
    digits_data.write_test_files()
    for name in args.names or list(SPECS):
        facts = build(name, TrainConfig())
        cards.write_card(facts)
        print(cards.summary_line(facts), flush=True)
    cards.write_index()


if __name__ == "__main__":
    main()
