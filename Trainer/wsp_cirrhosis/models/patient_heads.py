"""Patient heads: one patient's slice features and liver heights -> one patient logit.

Every head answers with the patient logit *and* each slice's contribution to it, on the same
(logit) scale: the contributions sum to the patient logit, so a per-slice curve and the patient
probability can be drawn on one scale with one threshold.

- ``mean``: the paper's read, position-blind. Slice logit l_s, patient logit mean(l_s);
  contribution l_s / S.
- ``bands``: features averaged within B equal bands of the liver height d (the frozen_bands
  probe's pooling), concatenated, one linear layer. A slice contributes its band's weights times
  its features over the band's slice count (plus an equal share of the bias). Empty bands pool to
  zero.
- ``attention``: gated attention multiple-instance pooling (Ilse, Tomczak & Welling, ICML 2018)
  whose attention sees a Fourier encoding of d, so it can attend to slices at the heights where
  the sign sits and ignore the same-looking decoy elsewhere. Contribution a_s * l_s.

Slice features come from any encoder (frozen or trained end to end); d is in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import PATIENT_HEADS
from ..errors import ConfigError
from .encoders import encoder_name_of


class PatientHead(nn.Module):
    """Interface: ``forward(h, d) -> (patient logit (), contributions (S,))`` for one patient.

    Every head first standardises the features with fixed per-feature ``shift`` and ``scale``
    buffers (0 and 1 until ``set_standardisation``; stored with the weights): fine-tuning sets them
    from the starting encoder's features of the training slices, as the frozen-feature fits do, so
    a fresh head starts on unit-scale inputs whatever the encoder.
    """

    name = "base"

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))

    def standardise(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.shift.to(h.dtype)) / self.scale.to(h.dtype)

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Fix ``shift`` / ``scale`` to the mean and std of (N, F) features. The std is floored at a
        tenth of the median std: a unit (nearly) constant on these slices, such as a dead ReLU,
        must not blow up on a slice where it fires."""
        with torch.no_grad():
            std = features.std(0)
            self.shift.copy_(features.mean(0))
            self.scale.copy_(std.clamp_min(float(0.1 * std.median()) + 1e-6))

    def slice_logits(self, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """(S,) logit of each slice read on its own (for the per-slice curve)."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def config(self) -> dict:
        """The constructor's arguments (stored in bundles to rebuild the head)."""
        return {"name": self.name}


class MeanHead(PatientHead):
    """The paper's position-blind read: the mean of the slice logits."""

    name = "mean"

    def __init__(self, in_dim: int = 512) -> None:
        super().__init__(in_dim)
        self.in_dim = in_dim
        self.linear = nn.Linear(in_dim, 1)

    def slice_logits(self, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardise(h)).squeeze(-1)

    def forward(self, h: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        contributions = self.slice_logits(h, d) / len(h)
        return contributions.sum(), contributions

    def config(self) -> dict:
        return {"name": self.name, "in_dim": self.in_dim}


def band_index(d: torch.Tensor, bands: int) -> torch.Tensor:
    """Band of each height d in [0, 1]: 0 .. bands - 1 (d = 1 falls in the last band)."""
    return torch.clamp((d * bands).long(), 0, bands - 1)


class BandsHead(PatientHead):
    """Features pooled within B bands of d, concatenated, one linear layer."""

    name = "bands"

    def __init__(self, in_dim: int = 512, bands: int = 5) -> None:
        if bands < 1:
            raise ConfigError(f"--bands must be at least 1 (got {bands})")
        super().__init__(in_dim)
        self.in_dim, self.bands = in_dim, bands
        self.weight = nn.Parameter(torch.zeros(bands, in_dim))
        self.bias = nn.Parameter(torch.zeros(()))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(in_dim * bands))

    def slice_logits(self, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        # a slice read by its band's weights as if it filled the band
        return (self.weight[band_index(d, self.bands)] * self.standardise(h)).sum(-1) + self.bias

    def forward(self, h: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.standardise(h)
        k = band_index(d, self.bands)
        counts = torch.bincount(k, minlength=self.bands).to(h.dtype)
        share = (self.weight[k] * h).sum(-1) / counts[k]  # band mean, split back over its slices
        contributions = share + self.bias / len(h)
        return contributions.sum(), contributions

    def config(self) -> dict:
        return {"name": self.name, "in_dim": self.in_dim, "bands": self.bands}


def fourier_height(d: torch.Tensor, frequencies: int) -> torch.Tensor:
    """(S,) heights -> (S, 1 + 2F) encoding [d, sin(pi k d), cos(pi k d) for k = 1..F]."""
    k = torch.arange(1, frequencies + 1, dtype=d.dtype, device=d.device)
    angles = math.pi * d[:, None] * k
    return torch.cat([d[:, None], torch.sin(angles), torch.cos(angles)], dim=1)


class AttentionHead(PatientHead):
    """Gated attention MIL pooling with the liver height given to the attention."""

    name = "attention"

    def __init__(self, in_dim: int = 512, hidden: int = 64, frequencies: int = 4) -> None:
        super().__init__(in_dim)
        self.in_dim, self.hidden, self.frequencies = in_dim, hidden, frequencies
        attn_in = in_dim + 1 + 2 * frequencies
        self.value = nn.Linear(attn_in, hidden)
        self.gate = nn.Linear(attn_in, hidden)
        self.score = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(in_dim, 1)

    def attention(self, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """(S,) attention weights, summing to 1 over the patient's slices."""
        # standardised features over sqrt(F): all F of them together weigh about as much as the
        # height code, else the height, which says where to look, drowns among 512 unit inputs
        x = torch.cat([self.standardise(h) / math.sqrt(self.in_dim), fourier_height(d.to(h.dtype), self.frequencies)],
                      dim=1)
        raw = self.score(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))).squeeze(-1)
        return torch.softmax(raw, dim=0)

    def slice_logits(self, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.standardise(h)).squeeze(-1)

    def forward(self, h: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        contributions = self.attention(h, d) * self.slice_logits(h, d)
        return contributions.sum(), contributions

    def config(self) -> dict:
        return {"name": self.name, "in_dim": self.in_dim, "hidden": self.hidden, "frequencies": self.frequencies}


def build_patient_head(name: str, in_dim: int = 512, **options) -> PatientHead:
    """A fresh patient head by name (``PATIENT_HEADS``); options go to its constructor.

    Raises:
        ConfigError: an unknown name.
    """
    heads = {"mean": MeanHead, "bands": BandsHead, "attention": AttentionHead}
    if name not in heads:
        raise ConfigError(f"unknown patient head {name!r}; choose one of: {', '.join(PATIENT_HEADS)}")
    return heads[name](in_dim, **options)


def head_from_config(config: dict) -> PatientHead:
    """Rebuild a head from ``PatientHead.config()`` (weights loaded separately)."""
    options = {k: v for k, v in config.items() if k != "name"}
    return build_patient_head(config["name"], **options)


class PatientClassifier(nn.Module):
    """Encoder + patient head, fine-tuned end to end on patient bags (``training.loop.bag_step``).

    ``forward(x)`` gives the encoder's (B, F) slice features; the head then reads one patient at
    a time: ``read(h, d)`` -> (patient logit, contributions). Kept apart so inference can run the
    encoder in batches and the head once per patient.

    Attributes:
        encoder_name: key of the encoder in ``ENCODERS``.
        threshold: decision threshold on the patient probability sigmoid(patient logit).
    """

    def __init__(self, encoder: nn.Module, head: PatientHead, encoder_name: str | None = None) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.encoder_name = encoder_name or encoder_name_of(encoder)
        self.threshold = 0.5

    @property
    def patient_head(self) -> str:
        return self.head.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (B, 1, H, W) slices in [0, 1]. Returns: (B, F) features."""
        return self.encoder(x)

    def read(self, h: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One patient's (S, F) features and (S,) heights -> (patient logit, (S,) contributions)."""
        return self.head(h, d)
