"""Heads on an encoder's (B, 512) features: the projection head of pretraining, the slice
classifier of fine-tuning, and the modules that join an encoder to either.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import HEAD_NORMS
from ..errors import ConfigError
from .encoders import encoder_name_of


class ProjectionHead(nn.Module):
    """Contrastive projection head (Linear, [BatchNorm,] ReLU, Linear), dropped after pretraining.

    ``norm="batch"`` puts a BatchNorm1d after the first Linear, as SimCLR's head does: it keeps
    the projections of a batch spread out, which lets the label-weighted losses leave the
    collapsed start (docs/training.md). It couples the rows of a batch, so training computes the
    head in one pass over the whole (global) batch (``training.loop.contrastive_step``). ``norm="none"``
    is the paper's head.
    """

    def __init__(self, in_dim: int = 512, hidden: int = 256, out: int = 128, norm: str = "none") -> None:
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ConfigError(f"unknown projection head norm {norm!r}; choose one of: {', '.join(HEAD_NORMS)}")
        middle: list[nn.Module] = [nn.BatchNorm1d(hidden)] if norm == "batch" else []
        # No bias before a BatchNorm: it would be removed by the batch mean (a zero gradient whose
        # rounding noise Adam would turn into full-size steps).
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=norm != "batch"), *middle, nn.ReLU(inplace=True), nn.Linear(hidden, out)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Args: h: (B, in_dim) features. Returns: (B, out) projections z (not normalised)."""
        return self.net(h)


class ClassifierHead(nn.Module):
    """Binary cirrhosis classifier on pooled features: one logit per slice."""

    def __init__(self, in_dim: int = 512) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Args: h: (B, in_dim) features. Returns: (B,) logits of P(strong label = 1)."""
        return self.linear(h).squeeze(-1)


CLASS_NAMES = ["no cirrhosis", "cirrhosis"]


class SliceClassifier(nn.Module):
    """Encoder + ClassifierHead: (B, 1, H, W) slices -> (B,) logits of P(cirrhosis).

    Attributes:
        encoder_name: key of the encoder in ``ENCODERS``.
        threshold: decision threshold on the patient probability (Youden on the training
            patients after ``finetune.run_finetune``; 0.5 otherwise). Not part of the state dict.
    """

    def __init__(self, encoder: nn.Module, encoder_name: str | None = None, head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else ClassifierHead(encoder.feature_dim)
        self.encoder_name = encoder_name or encoder_name_of(encoder)
        self.threshold = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (B, 1, H, W) float slices in [0, 1]. Returns: (B,) logits."""
        return self.head(self.encoder(x))


class Projector(nn.Module):
    """Encoder + ProjectionHead for pretraining: (B, 1, H, W) -> (B, 128) projections z."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
