"""Probes on a trained encoder's outputs: the Youden threshold and the frozen logistic probe.

Shared by fine-tuning (threshold on the training patients), evaluation and the benchmark; no
training code here, so ``finetune`` and ``evaluate`` both import it without importing each other.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def youden_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Score threshold maximising Youden's J = sensitivity + specificity - 1 (predict 1 if score >= t).

    The best cut lies between two adjacent distinct scores; the threshold is their midpoint, not
    the lower score itself: on a training set the classifier separates (often at 0.99 vs 0.01),
    and a threshold at the edge of the gap would make the held-out patients look negative.
    Training-set predictions are the same either way.

    Args:
        labels: (n,) int in {0, 1}, both classes present.
        scores: (n,) float, higher = more likely positive.

    Returns:
        The threshold: finite (never the "nobody positive" point at +inf); ties between cuts go
        to the highest threshold; when the best cut keeps everybody positive, the lowest score.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(np.asarray(labels), np.asarray(scores, dtype=float), drop_intermediate=False)
    j = np.where(np.isfinite(thresholds), tpr - fpr, -np.inf)
    best = int(np.argmax(j))
    if best + 1 < len(thresholds):  # thresholds decrease: the next one is the next lower distinct score
        return float((thresholds[best] + thresholds[best + 1]) / 2.0)
    return float(thresholds[best])


def frozen_fold_scores(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit scaler + balanced logistic regression on the training patients' pooled features.

    Args:
        features: (P, F) float, one pooled representation per patient.
        labels: (P,) int histology labels.
        train, test: patient indices.

    Returns:
        (training-patient probabilities, test-patient probabilities).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000, random_state=seed))
    clf.fit(features[train], labels[train])
    return clf.predict_proba(features[train])[:, 1], clf.predict_proba(features[test])[:, 1]
