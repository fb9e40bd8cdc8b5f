"""Probability calibration: Brier score, expected calibration error, reliability diagram, and
Platt / isotonic calibrators fitted on out-of-fold patient probabilities.

A calibrator is stored in bundle.json as plain JSON (no pickles), so a bundle stays loadable
with ``torch.load(weights_only=True)`` + ``json``:

    {"method": "platt", "a": float, "b": float, ...}          p' = sigmoid(a * logit(p) + b)
    {"method": "isotonic", "x": [...], "y": [...], ...}       p' = interp(p, x, y) (non-decreasing)

plus the fit's provenance: "n_patients", "n_positive", "source", and Brier/ECE of the
out-of-fold probabilities before and after (in-sample for "after": an optimistic figure).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError

METHODS = ("none", "platt", "isotonic")
_EPS = 1e-6


def brier_score(labels: Sequence[int], probs: Sequence[float]) -> float:
    """Mean squared difference between probability and 0/1 outcome (0 = perfect)."""
    y, p = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    return float(np.mean((p - y) ** 2))


def reliability_bins(labels: Sequence[int], probs: Sequence[float], n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins of [0, 1]: per non-empty bin its count, mean probability and observed rate."""
    y, p = np.asarray(labels, dtype=float), np.clip(np.asarray(probs, dtype=float), 0.0, 1.0)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            out.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(sel.sum()),
                        "mean_probability": float(p[sel].mean()), "observed_rate": float(y[sel].mean())})
    return out


def expected_calibration_error(labels: Sequence[int], probs: Sequence[float], n_bins: int = 10) -> float:
    """ECE: count-weighted mean |observed rate - mean probability| over equal-width bins."""
    bins = reliability_bins(labels, probs, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["observed_rate"] - b["mean_probability"]) for b in bins) / max(n, 1))


def calibration_metrics(labels: Sequence[int], probs: Sequence[float], n_bins: int = 10) -> dict[str, Any]:
    """{"brier", "ece", "n_bins", "bins"} of one set of probabilities."""
    return {"brier": brier_score(labels, probs), "ece": expected_calibration_error(labels, probs, n_bins),
            "n_bins": n_bins, "bins": reliability_bins(labels, probs, n_bins)}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def fit_calibrator(method: str, labels: Sequence[int], probs: Sequence[float], source: str = "") -> dict[str, Any]:
    """Fit a Platt (logistic on the logit) or isotonic calibrator on out-of-fold probabilities.

    Raises:
        InputError: unknown method, missing / non-finite probabilities, or a single class.
    """
    if method not in METHODS[1:]:
        raise InputError(f"--calibrate {method}: choose platt or isotonic")
    y, p = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    if y.size == 0 or y.shape != p.shape or not np.isfinite(p).all():
        raise InputError(f"--calibrate {method}: out-of-fold probabilities {source} are missing or incomplete")
    if len(set(y.tolist())) < 2:
        raise InputError(f"--calibrate {method}: out-of-fold labels {source} hold a single class; cannot calibrate")
    spec: dict[str, Any] = {"method": method}
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        # C large: an (almost) unpenalised 2-parameter fit, Platt's original recipe.
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(p)[:, None], y)
        spec.update(a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    else:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        spec.update(x=[float(v) for v in iso.X_thresholds_], y=[float(v) for v in iso.y_thresholds_])
    after = apply_calibration(spec, p)
    spec.update(n_patients=int(y.size), n_positive=int(y.sum()), source=source,
                brier_before=brier_score(y, p), ece_before=expected_calibration_error(y, p),
                brier_after_in_sample=brier_score(y, after), ece_after_in_sample=expected_calibration_error(y, after))
    return spec


def apply_calibration(spec: dict[str, Any] | None, probs: Any) -> np.ndarray:
    """Calibrated probabilities (float64 array of the input's shape); `spec` None = unchanged."""
    p = np.asarray(probs, dtype=float)
    if not spec:
        return p.copy()
    if spec["method"] == "platt":
        return 1.0 / (1.0 + np.exp(-(spec["a"] * _logit(p) + spec["b"])))
    if spec["method"] == "isotonic":
        return np.interp(p, np.asarray(spec["x"], float), np.asarray(spec["y"], float))
    raise InputError(f"unknown calibration method {spec.get('method')!r} in bundle.json")


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
