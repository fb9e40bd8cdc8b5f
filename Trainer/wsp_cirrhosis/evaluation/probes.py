"""Probes on a trained encoder's outputs: the Youden threshold and the frozen logistic probe.

Shared by fine-tuning (threshold on the training patients), evaluation and the benchmark; no
training code here, so ``finetune`` and ``evaluate`` both import it without importing each other.
"""

from __future__ import annotations

import numpy as np


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
