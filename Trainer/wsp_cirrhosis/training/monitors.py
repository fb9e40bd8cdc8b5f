"""Representation monitors: is contrastive pretraining learning anything? (docs/training.md)

For label-weighted losses the loss alone is no progress signal: with misread weak labels the
lowest reachable loss on a batch sits only ~0.2 nats below the collapsed value log(2N - 1).
These monitors measure the representation directly, on a fixed held-out part of the weak set:

- ``knn_bal_acc``: balanced accuracy of the weak label of held-out patients' slices, predicted
  by a k = 10 cosine k-nearest-neighbour vote among the *training* patients' slices (the
  reference set). Chance = 1 / number of classes (0.33 for the three weak classes).
- ``position_r2``: cross-validated R^2 (folds grouped by patient) of a ridge regression of the
  slice position d from the features, on reference + held-out slices.
- ``alignment`` / ``uniformity`` (Wang and Isola 2020) of the L2-normalised projections of two
  random views of the held-out slices: alignment = E ||z1 - z2||^2 (lower = views agree),
  uniformity = log E exp(-2 ||z_i - z_j||^2) (lower = spread on the sphere; 0 = collapsed).
- ``effective_rank`` of the centred held-out features (Roy and Vetterli 2007): exp of the entropy
  of the normalised singular values (1 = a line, 512 = isotropic).
- ``weak_band_auc``: patient-level, position-aware: cross-validated AUC (5 stratified folds over the
  held-out patients) of a logistic probe of the weak reading "cirrhosis" (class 2 vs the rest) from
  the features averaged within ``BANDS`` bands of d and concatenated. Where the label shows on a few
  slices at given liver heights (the positional phantom) the slice-level kNN stays near chance even
  for an encoder that represents the sign; this probe does not.
- ``loss_excess`` = (L - H) / (log(2N - 1) - H), H = mean entropy of the batch's row-normalised
  loss weights: 0 = the lowest loss reachable on those batches, 1 = a collapsed embedding.
  Computed from the training batches themselves (``weight_entropy``).

Monitor slices are a fixed, evenly spaced subset of each patient's slices, so values at
different steps are comparable and the cost is bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .augment import Augment, random_views
from .losses import PRESETS

MONITOR_KEYS = ("knn_bal_acc", "weak_band_auc", "position_r2", "alignment", "uniformity", "effective_rank",
                "loss_excess")
BANDS = 4  # position bands of the weak band-probe (12 monitor slices per patient: 3 per band)
CIRRHOSIS_READING = 2  # the weak class the band-probe predicts (vs the rest)
DID_NOT_LEARN_EXCESS = 0.95  # a run whose last loss excess is at or above this did not learn its objective


def learned_objective(last_loss_excess: float | None) -> bool | None:
    """False when the loss excess ends >= ``DID_NOT_LEARN_EXCESS`` (the embedding stayed near the
    collapsed value, whatever a probe says); None when unknown."""
    if last_loss_excess is None or not math.isfinite(last_loss_excess):
        return None
    return bool(last_loss_excess < DID_NOT_LEARN_EXCESS)


def split_monitor_patients(labels: Sequence[int], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patient-level split of the weak set into (training, held-out monitor) indices.

    Stratified on the weak label (scikit-learn ``train_test_split``), a function of ``seed``.
    ``fraction`` 0 gives no held-out patients. At least one held-out patient per class when
    ``fraction`` > 0 and a class has two or more patients.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    index = np.arange(len(labels))
    if fraction <= 0:
        return index, index[:0]
    n_classes = len(np.unique(labels))
    n_test = max(n_classes, int(round(fraction * len(labels))))
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 and n_test < len(labels) - n_classes + 1 else None
    train, test = train_test_split(index, test_size=n_test, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


@dataclass(frozen=True)
class MonitorSet:
    """Slices the monitors look at: (n, H, W) images with their weak label, position and patient."""

    images: np.ndarray
    labels: np.ndarray
    positions: np.ndarray
    patients: np.ndarray

    @classmethod
    def from_patients(cls, patients: Sequence[Any], per_patient: int = 8) -> "MonitorSet":
        """Up to ``per_patient`` evenly spaced slices of each patient (CachedPatient-like objects)."""
        images, labels, positions, owners = [], [], [], []
        for p_index, p in enumerate(patients):
            n = len(p.slices)
            rows = np.unique(np.linspace(0, n - 1, min(per_patient, n)).round().astype(int))
            images.append(np.asarray(p.slices[rows], dtype=np.float32))
            positions.append(np.asarray(p.positions, dtype=np.float64)[rows])
            labels.append(np.full(len(rows), -1 if p.weak_label is None else int(p.weak_label)))
            owners.append(np.full(len(rows), p_index))
        return cls(np.concatenate(images), np.concatenate(labels), np.concatenate(positions), np.concatenate(owners))


def _forward(net: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device, batch: int = 256) -> np.ndarray:
    """(n, H, W) slices -> (n, D) float64 outputs of ``net`` in eval mode, no gradient."""
    out = []
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.as_tensor(np.asarray(images[start:start + batch]) if not isinstance(images, torch.Tensor)
                                else images[start:start + batch])
            x = x.to(device, dtype)
            out.append(net(x.unsqueeze(1) if x.ndim == 3 else x).double().cpu())
    return torch.cat(out).numpy()


def knn_balanced_accuracy(ref_features: np.ndarray, ref_labels: np.ndarray, test_features: np.ndarray,
                          test_labels: np.ndarray, k: int = 10) -> float:
    """Balanced accuracy of a k-nearest-neighbour (cosine) vote of the reference labels on the test slices."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(ref_labels)), metric="cosine")
    knn.fit(ref_features, ref_labels)
    return float(balanced_accuracy_score(test_labels, knn.predict(test_features)))


def position_r2(features: np.ndarray, positions: np.ndarray, groups: np.ndarray, folds: int = 5) -> float:
    """Cross-validated R^2 of a ridge regression (alpha chosen by inner CV) of d from the features.

    Folds are grouped by patient (``GroupKFold``): no patient's slices are both fitted and scored.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, len(np.unique(groups)))
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    predicted = cross_val_predict(model, features, positions, groups=groups, cv=GroupKFold(folds))
    return float(r2_score(positions, predicted))


def band_pooled(features: np.ndarray, positions: np.ndarray, patients: np.ndarray,
                bands: int = BANDS) -> tuple[np.ndarray, np.ndarray]:
    """(patients' ids (P,), (P, bands * F) features averaged within equal bands of d, concatenated).

    An empty band (a patient with fewer slices than bands) takes the patient's mean feature.
    """
    ids = np.unique(patients)
    band = np.minimum((np.asarray(positions) * bands).astype(int), bands - 1)
    out = np.empty((len(ids), bands * features.shape[1]))
    for row, pid in enumerate(ids):
        mine = patients == pid
        mean = features[mine].mean(0)
        for b in range(bands):
            sel = mine & (band == b)
            out[row, b * features.shape[1]:(b + 1) * features.shape[1]] = features[sel].mean(0) if sel.any() else mean
    return ids, out


def weak_band_scores(features: np.ndarray, held_out: "MonitorSet", bands: int = BANDS,
                     folds: int = 5) -> tuple[np.ndarray, np.ndarray] | None:
    """(weak "cirrhosis" labels, out-of-fold probe scores), one per held-out patient, of the weak
    band-probe (None when a class has fewer than 2 patients). The folds are fixed (seed 0), so two
    encoders scored on the same patients are paired."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ids, x = band_pooled(features, held_out.positions, held_out.patients, bands)
    first = np.array([np.flatnonzero(held_out.patients == pid)[0] for pid in ids])
    y = (held_out.labels[first] == CIRRHOSIS_READING).astype(int)
    folds = min(folds, int(np.bincount(y, minlength=2).min()))
    if folds < 2:
        return None
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    return y, cross_val_predict(probe, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=0),
                                method="decision_function")


def weak_band_auc(features: np.ndarray, held_out: "MonitorSet", bands: int = BANDS, folds: int = 5) -> float:
    """Cross-validated AUC of the weak reading "cirrhosis" from band-pooled features of the held-out
    patients (NaN when a class has fewer than 2 patients)."""
    from sklearn.metrics import roc_auc_score

    scored = weak_band_scores(features, held_out, bands, folds)
    return float("nan") if scored is None else float(roc_auc_score(*scored))


def alignment(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """Wang and Isola's alignment E ||z1 - z2||^2 of L2-normalised positive pairs (0 = identical views)."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    return float((z1 - z2).pow(2).sum(1).mean())


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """Wang and Isola's uniformity log E exp(-t ||z_i - z_j||^2) over distinct pairs (0 = collapsed)."""
    z = F.normalize(z, dim=1)
    return float(torch.pdist(z).pow(2).mul(-t).exp().mean().log())


def effective_rank(features: np.ndarray) -> float:
    """Roy and Vetterli's effective rank of the centred (n, F) features: exp(entropy of the singular
    values normalised to sum 1)."""
    features = np.asarray(features, dtype=np.float64)
    # Centred: ReLU features are non-negative, so their mean direction alone would dominate.
    s = np.linalg.svd(features - features.mean(0), compute_uv=False)
    p = s / max(s.sum(), np.finfo(float).tiny)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def weight_entropy(labels: torch.Tensor | None, positions: torch.Tensor | None, method: str, sigma: float,
                   threshold: float) -> float:
    """Mean entropy H of the row-normalised loss weights of the global batch (the lowest reachable loss).

    Each anchor's loss is a cross-entropy between its normalised weights q and the softmax p; it is
    smallest, equal to the entropy of q, when p = q. In a process group the labels and positions
    of every rank are gathered (no gradient), so every rank returns the global value.
    """
    n_local = (labels if labels is not None else positions).shape[0]
    pairs: dict[str, Any] = {"ids": None, "labels": None, "positions": None}
    for name, value in (("labels", labels), ("positions", positions)):
        if value is not None:
            value = distributed.all_gather_no_grad(value.double() if name == "positions" else value)
            pairs[name] = (value, value)
    m = n_local * distributed.get_world_size()
    ids = torch.arange(m, device=(labels if labels is not None else positions).device)
    pairs["ids"] = (ids, ids)
    w = PRESETS[method](**pairs, p={"sigma": sigma, "threshold": threshold}).double().repeat(2, 2)
    w.fill_diagonal_(0.0)
    q = w / w.sum(1, keepdim=True).clamp_min(1e-300)
    entropy = -(torch.where(q > 0, q * q.clamp_min(1e-300).log(), 0.0)).sum(1)
    return float(entropy.mean())


def loss_excess(loss: float, entropy: float, batch_size: int) -> float:
    """(L - H) / (log(2N - 1) - H): 0 = best reachable on the batch, 1 = collapsed embedding."""
    collapsed = math.log(2 * batch_size - 1)
    return float((loss - entropy) / max(collapsed - entropy, 1e-12))


def representation_monitors(encoder: nn.Module, head: nn.Module, reference: MonitorSet, held_out: MonitorSet,
                            device: torch.device, seed: int = 0, k: int = 10,
                            augment: Augment = Augment()) -> dict[str, float]:
    """kNN balanced accuracy, position R^2, alignment, uniformity and effective rank (see the module text).

    Args:
        encoder, head: the pretraining encoder and projection head (put in eval mode here; the
            caller restores training mode).
        reference: training-patient slices (the kNN's labelled neighbours).
        held_out: slices of the held-out monitor patients.
        device: where the forward passes run.
        seed: seed of the two views used for alignment / uniformity (fixed: comparable over steps).
        k: neighbours of the kNN vote.
        augment: view distribution of the alignment pair (the run's own).

    Returns:
        {"knn_bal_acc", "weak_band_auc", "position_r2", "alignment", "uniformity", "effective_rank"}.
    """
    encoder.eval()
    head.eval()
    ref_f = _forward(encoder, reference.images, device)
    test_f = _forward(encoder, held_out.images, device)
    images = torch.from_numpy(held_out.images).unsqueeze(1)
    v1, v2 = random_views(images, torch.Generator().manual_seed(seed), augment, 2)
    projector = nn.Sequential(encoder, head)
    z1, z2 = (torch.from_numpy(_forward(projector, v, device)) for v in (v1, v2))
    groups = np.concatenate([reference.patients, held_out.patients + reference.patients.max() + 1])
    labelled = (reference.labels >= 0).all() and (held_out.labels >= 0).all()
    return {
        # no weak labels (simclr, positional, pcl on an unlabelled set): no kNN label accuracy
        "knn_bal_acc": knn_balanced_accuracy(ref_f, reference.labels, test_f, held_out.labels, k) if labelled
        else float("nan"),
        "weak_band_auc": weak_band_auc(test_f, held_out) if labelled else float("nan"),
        "position_r2": position_r2(np.concatenate([ref_f, test_f]), np.concatenate([reference.positions,
                                                                                    held_out.positions]), groups),
        "alignment": alignment(z1, z2),
        "uniformity": uniformity(torch.cat([z1, z2])),
        "effective_rank": effective_rank(test_f),
    }
