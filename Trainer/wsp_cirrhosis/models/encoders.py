"""Encoders (TinyNet, ResNet-18 with one input channel), projection and classifier heads.

Plain torch, no torchvision: every encoder maps a batch of CT slices (B, 1, H, W) to pooled
(B, 512) features and exposes ``feature_dim``. Architectures follow method.md ("Batches,
augmentations, models").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError


class TinyNet(nn.Module):
    """Five 5x5 conv + ReLU layers (16, 32, 64, 128, 512 channels), 2x2 max-pooling after the first
    four, global average pooling. Works at any input size >= 16 x 16 (64 and 224 in practice).

    Each conv is followed by a GroupNorm: without any normalisation the non-negative CT input,
    ReLUs and average pooling give nearly identical features for every slice at initialisation
    (cosine > 0.99999) and contrastive training collapses (loss stuck at log(2N - 1)). GroupNorm
    is per sample, so multi-process training and gradient caching stay exact (BatchNorm would not).
    """

    feature_dim = 512

    def __init__(self) -> None:
        super().__init__()
        widths = [1, 16, 32, 64, 128, 512]
        layers: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=5, padding=2), nn.GroupNorm(min(8, c_out // 2), c_out),
                       nn.ReLU(inplace=True)]
            if index < 4:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (B, 1, H, W) float slices. Returns: (B, 512) pooled features."""
        return self.pool(self.features(x)).flatten(1)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers and an identity (or 1x1 projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) with a 1-channel stem: 7x7 stride-2 conv, 3x3 stride-2 max-pool,
    BasicBlocks [2, 2, 2, 2] at 64/128/256/512 channels, global average pooling; no fc layer.
    """

    feature_dim = 512

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages, c_in = [], 64
        for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (B, 1, H, W) float slices. Returns: (B, 512) pooled features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)


ENCODERS: dict[str, type[nn.Module]] = {"tinynet": TinyNet, "resnet18": ResNet18}


def encoder_name_of(encoder: nn.Module) -> str:
    """The ``ENCODERS`` key of an encoder instance (ConfigError for an unregistered class)."""
    for name, cls in ENCODERS.items():
        if type(encoder) is cls:
            return name
    raise ConfigError(f"encoder class {type(encoder).__name__} is not in ENCODERS ({', '.join(ENCODERS)})")


def build_encoder(name: str) -> nn.Module:
    """Instantiate the encoder registered as ``name`` in ``ENCODERS`` (freshly initialised).

    Raises:
        ConfigError: unknown name; the message lists the valid names.
    """
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODERS)}")
    return ENCODERS[name]()


def encoder_flops(name: str, image_size: int) -> int:
    """Forward FLOPs of encoder ``name`` for one (1, 1, image_size, image_size) slice.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs;
    convolutions and matrix products only).
    """
    model = build_encoder(name).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 1, image_size, image_size))
    return int(counter.get_total_flops())
