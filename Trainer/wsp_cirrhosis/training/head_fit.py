"""Fit a fresh patient head on the starting encoder's frozen features, before end-to-end fine-tuning.

Linear probing then fine-tuning (LP-FT; Kumar et al., ICLR 2022): a randomly initialised head
sends random gradients into the encoder for its first steps and, with a few hundred patients
read two per step, the encoder forgets what the frozen probe could already read. Fitted first,
the head starts where the frozen_bands probe ends (the same band pooling, standardised inputs,
class-balanced logistic loss with sklearn's default L2, C = 1), so fine-tuning starts from a
working read and only has to improve it.

The fit is full-batch L-BFGS on every slice of every training patient, through the head's own
``forward``, so it serves every head: for ``bands`` and ``mean`` it is a convex logistic
regression; for ``attention`` a local optimum from the head's initialisation.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.patient_heads import PatientHead


def frozen_slice_features(encoder: nn.Module, patients: Sequence[Any], device: torch.device,
                          batch_size: int = 256) -> list[torch.Tensor]:
    """(S_p, F) float64 features of every slice of each patient (encoder in eval mode, no augmentation)."""
    from ..models.features import slice_features

    training = encoder.training
    # one patient at a time: a cohort of full-size CTs does not fit in memory at once
    features = [torch.from_numpy(slice_features(encoder, p.slices, device, batch_size)) for p in patients]
    encoder.train(training)  # slice_features leaves it in eval mode
    return features


def fit_head(head: PatientHead, features: Sequence[torch.Tensor], positions: Sequence[torch.Tensor],
             labels: np.ndarray, max_iter: int = 100) -> float:
    """Fit ``head``'s parameters (in place) to the patients' labels on fixed features.

    Args:
        head: a patient head whose standardisation is already set.
        features: one (S_p, F) tensor per patient.
        positions: one (S_p,) tensor of liver heights d per patient.
        labels: (P,) 0/1 histology labels (both present).
        max_iter: L-BFGS iterations.

    Returns:
        The final penalised loss (class-balanced BCE + L2 / (2 P), sklearn's C = 1).
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    n_pos = float(y.sum())
    # class-balanced weights, as the balanced sampler of fine-tuning and the frozen probe's class_weight
    w = torch.where(y == 1, len(y) / (2 * n_pos), len(y) / (2 * (len(y) - n_pos)))
    dtype = head.shift.dtype
    head.double()
    params = [p for p in head.parameters() if p.requires_grad]
    penalised = [p for name, p in head.named_parameters() if p.requires_grad and "bias" not in name]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    d = [torch.as_tensor(t, dtype=torch.float64) for t in positions]

    def objective() -> torch.Tensor:
        logits = torch.stack([head(h, p)[0] for h, p in zip(features, d)])
        loss = (w * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).mean()
        return loss + sum((p ** 2).sum() for p in penalised) / (2 * len(y))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        final = float(objective())
    head.to(dtype)
    return final
