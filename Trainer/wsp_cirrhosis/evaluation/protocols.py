"""Frozen-probe features and the training-set subsets of the evaluation protocols.

- `frozen`: a patient's slice features averaged over the whole liver (mean pooling);
- `frozen_bands`: the slice features averaged within K bands of the slice position d in [0, 1]
  and concatenated (K x F): a feature that means something only at one liver height survives,
  where mean pooling averages it away;
- label efficiency: the probe trained on a stratified subset of n patients of the training folds
  (the test fold is untouched, so no patient is ever on both sides).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

FROZEN_PROTOCOLS = ("frozen", "frozen_bands")
DEFAULT_BANDS = 5


def slice_features(encoder: Any, patients: Sequence[Any], device: Any = "auto", batch_size: int = 32) -> list[np.ndarray]:
    """Encoder features of every slice: one (S, F) float64 array per patient, in patient order."""
    from ..models.features import slice_features as features_of

    return [features_of(encoder, p.slices, device, batch_size) for p in patients]


def band_pool(features: np.ndarray, positions: np.ndarray, bands: int = DEFAULT_BANDS) -> np.ndarray:
    """Slice features averaged within `bands` equal bands of d, concatenated: (bands * F,).

    A band without slices (a short liver, or d outside [0, 1]) gets the patient's mean over all
    slices, so it carries no positional information rather than a spurious zero.

    Args:
        features: (S, F) slice features of one patient.
        positions: (S,) slice position d in [0, 1] (values outside go to the end bands).
        bands: number of bands K >= 1.
    """
    import torch

    from ..models.patient_heads import band_index  # one band rule for this probe and the bands head

    feats = np.asarray(features, dtype=np.float64)
    d = np.clip(np.asarray(positions, dtype=np.float64), 0.0, 1.0)
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    band = band_index(torch.from_numpy(d), bands).numpy()  # d = 1 belongs to the last band
    mean = feats.mean(axis=0)
    return np.concatenate([feats[band == k].mean(axis=0) if np.any(band == k) else mean for k in range(bands)])


def patient_features(protocol: str, slice_feats: Sequence[np.ndarray], patients: Sequence[Any],
                     bands: int = DEFAULT_BANDS) -> np.ndarray:
    """(P, F') patient features of a frozen protocol from per-slice features.

    Raises:
        ValueError: a protocol that is not a frozen one.
    """
    if protocol == "frozen":
        return np.stack([f.mean(axis=0) for f in slice_feats])
    if protocol == "frozen_bands":
        return np.stack([band_pool(f, p.positions, bands) for f, p in zip(slice_feats, patients)])
    raise ValueError(f"{protocol!r} is not a frozen protocol ({', '.join(FROZEN_PROTOCOLS)})")


def label_subset(labels: np.ndarray, train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified subset of `n` training patients (all of them when n >= their number).

    The classes keep their share of the training fold, with at least one patient of each, so
    the probe can always be fitted; drawing only from `train` keeps the test fold untouched.

    Args:
        labels: (P,) 0/1 histology labels of the whole cohort.
        train: patient indices of the training folds.
        n: subset size.
        seed: seeds the draw.

    Returns:
        Sorted patient indices, a subset of `train`.
    """
    train = np.asarray(train)
    if n >= train.size:
        return np.sort(train)
    y = np.asarray(labels)[train]
    rng = np.random.default_rng(seed)
    pos, neg = train[y == 1], train[y == 0]
    n_pos = int(np.clip(round(n * pos.size / train.size), 1, min(pos.size, n - 1)))
    n_neg = min(n - n_pos, neg.size)
    chosen = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    return np.sort(chosen)
