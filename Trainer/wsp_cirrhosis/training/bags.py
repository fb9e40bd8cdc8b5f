"""Training a patient head on bags of frozen slice features (one bag = one patient's slices).

End-to-end training through the encoder uses the same heads; this is the frozen-feature path
(the analogue of the frozen probes), small enough to run in a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models.patient_heads import PatientHead


@dataclass
class Bag:
    """One patient: (S, F) slice features and (S,) liver heights d in [0, 1]."""

    features: torch.Tensor
    heights: torch.Tensor


def sample_bag(bag: Bag, size: int, bands: int, gen: torch.Generator) -> Bag:
    """A position-stratified sample of ``size`` slices: about size / bands from every band of d.

    Keeps every band present in a small bag, so a head that reads by height sees each height in
    every step. Returns the whole bag when it has at most ``size`` slices.
    """
    s = len(bag.heights)
    if size <= 0 or s <= size:
        return bag
    order = torch.argsort(bag.heights)
    picks = [part[torch.randperm(len(part), generator=gen)[: max(1, size // bands)]]
             for part in torch.tensor_split(order, bands) if len(part)]
    keep = torch.cat(picks)[:size]
    return Bag(bag.features[keep], bag.heights[keep])


def patient_logits(head: PatientHead, bags: Sequence[Bag]) -> np.ndarray:
    """(P,) patient logits of ``head`` in eval mode, without gradients."""
    head.eval()
    with torch.no_grad():
        return np.array([float(head(b.features, b.heights)[0]) for b in bags])


def fit_patient_head(head: PatientHead, bags: Sequence[Bag], labels: Sequence[int], epochs: int = 100,
                     lr: float = 1e-2, batch_patients: int = 16, bag_size: int = 0, bands: int = 5,
                     weight_decay: float = 1e-4, seed: int = 0) -> PatientHead:
    """Fit ``head`` with Adam on the binary cross-entropy of the patient logit.

    Args:
        head: a fresh patient head (``models.patient_heads.build_patient_head``).
        bags: one per patient.
        labels: 0 / 1 per patient (histology).
        epochs: passes over the patients.
        lr: Adam learning rate.
        batch_patients: patients per optimiser step (their losses are averaged).
        bag_size: slices drawn per bag and step, position-stratified (0 = the whole bag).
        bands: strata of the draw.
        weight_decay: Adam's L2 penalty.
        seed: seeds the patient order and the draws.

    Returns:
        ``head``, trained, in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(bags), generator=gen)
        for start in range(0, len(order), batch_patients):
            idx = order[start:start + batch_patients].tolist()
            drawn = [sample_bag(bags[i], bag_size, bands, gen) for i in idx]
            logits = torch.stack([head(b.features, b.heights)[0] for b in drawn])
            loss = loss_fn(logits.float(), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    return head
