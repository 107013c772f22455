"""Small PyTorch architectures with BatchNorm, one per folding situation bnfold handles.

Every factory takes no arguments and returns an untrained ``nn.Module`` so that
``bnfold export models.zoo:<name>`` can build it. ``SPECS`` says which input layout each
model reads (see ``models/digits_data.py``). Each architecture puts its BNs where a
different fold rule (or refusal) applies; models/README.md lists them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNetDigits(nn.Module):
    """ResNet-style CNN: stem conv-BN-ReLU, two residual blocks, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = ResBlock(16, 16, 1)
        self.block2 = ResBlock(16, 32, 2)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block2(self.block1(self.stem(x)))
        return self.head(y.mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.layers = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.use_residual else y


class MobileNetDigits(nn.Module):
    """MobileNetV2-style CNN with depthwise convolutions and inverted residuals."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1, 2),
                                    InvertedResidual(16, 24, 2, 3),
                                    InvertedResidual(24, 24, 1, 3))
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class PreActBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv twice, added to the input (He et al. 2016)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.relu(self.bn1(x)))
        y = self.conv2(torch.relu(self.bn2(y)))
        return x + y


class PreActDigits(nn.Module):
    """Pre-activation CNN: every BN feeds a ReLU, so none sits directly before a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.block1 = PreActBlock(16)
        self.block2 = PreActBlock(16)
        self.bn_out = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block2(self.block1(self.stem(x)))
        return self.head(torch.relu(self.bn_out(y)).mean(dim=(2, 3)))


class AutoencoderDigits(nn.Module):
    """Convolutional autoencoder: strided conv encoder, ConvTranspose decoder, BN after each."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 2, stride=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 2, stride=2), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class MLPDigits(nn.Module):
    """MLP on the 64 flattened pixels: Linear-BatchNorm1d-ReLU twice, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(),
            nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Conv1dDigits(nn.Module):
    """1-D conv sequence model: the 8 image rows are 8 time steps of 8 features each."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(8, 32, 3, padding=1, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 32, 3, padding=1, bias=False), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x).amax(dim=2))


def resnet_digits() -> nn.Module:
    """ResNet-style CNN for 1x8x8 digits."""
    return ResNetDigits()


def mobilenet_digits() -> nn.Module:
    """MobileNetV2-style CNN for 1x8x8 digits."""
    return MobileNetDigits()


def preact_digits() -> nn.Module:
    """Pre-activation CNN for 1x8x8 digits."""
    return PreActDigits()


def autoencoder_digits() -> nn.Module:
    """Conv/ConvTranspose autoencoder for 1x8x8 digits."""
    return AutoencoderDigits()


def mlp_digits() -> nn.Module:
    """MLP with BatchNorm1d for 64 flattened pixels."""
    return MLPDigits()


def conv1d_digits() -> nn.Module:
    """Conv1d sequence model for 8 rows x 8 pixels."""
    return Conv1dDigits()


@dataclass(frozen=True)
class ModelSpec:
    """How a zoo model is built, fed and scored."""

    factory: Callable[[], nn.Module]
    layout: str        # "image" (N,1,8,8), "flat" (N,64) or "seq" (N,8,8): see digits_data.py
    task: str          # "classify" (accuracy) or "reconstruct" (mean squared error)


SPECS: dict[str, ModelSpec] = {
    "resnet_digits": ModelSpec(resnet_digits, "image", "classify"),
    "mobilenet_digits": ModelSpec(mobilenet_digits, "image", "classify"),
    "preact_digits": ModelSpec(preact_digits, "image", "classify"),
    "autoencoder_digits": ModelSpec(autoencoder_digits, "image", "reconstruct"),
    "mlp_digits": ModelSpec(mlp_digits, "flat", "classify"),
    "conv1d_digits": ModelSpec(conv1d_digits, "seq", "classify"),
}
