"""Patient-level statistics: AUC with a bootstrap 95% CI, cross-validated AUC of a feature set.

Generic helpers (no knowledge of cohorts or models), used by the shortcut audit and the
evaluation reports. Every function takes plain arrays, one entry per patient.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def has_both_classes(labels: np.ndarray) -> bool:
    """True when `labels` holds at least one 0 and one 1 (an AUC is defined)."""
    labels = np.asarray(labels)
    return labels.size > 0 and bool(np.any(labels == 1)) and bool(np.any(labels == 0))


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(AUC, lo, hi): ROC AUC with a percentile bootstrap 95% CI over patients.

    Patients are resampled within each class (stratified), so every resample has both classes
    and the class balance of the cohort.

    Raises:
        ValueError: labels and scores differ in length, or one class is missing.
    """
    y, s = np.asarray(labels).astype(int), np.asarray(scores, float)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if not has_both_classes(y):
        raise ValueError("an AUC needs both classes")
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    s_pos, s_neg = s[y == 1], s[y == 0]
    # pairwise win matrix once; each resample is then a weighting of its rows and columns
    wins = (s_pos[:, None] > s_neg[None, :]) + 0.5 * (s_pos[:, None] == s_neg[None, :])
    w_pos = rng.multinomial(s_pos.size, np.full(s_pos.size, 1.0 / s_pos.size), size=n_boot)
    w_neg = rng.multinomial(s_neg.size, np.full(s_neg.size, 1.0 / s_neg.size), size=n_boot)
    boots = np.einsum("bi,ij,bj->b", w_pos, wins, w_neg) / (s_pos.size * s_neg.size)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return auc, float(lo), float(hi)


def n_folds(labels: np.ndarray, folds: int) -> int:
    """The number of stratified folds that fits: at most the size of the smaller class."""
    y = np.asarray(labels).astype(int)
    return int(min(folds, np.sum(y == 1), np.sum(y == 0)))


def cv_scores(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0, c: float = 1.0) -> np.ndarray:
    """Out-of-fold probabilities of a standardised logistic regression, one per patient.

    The direction of each feature is learned inside the training folds, never on the test
    patient, so a 1-D cue is scored without peeking (unlike max(AUC, 1 - AUC)).

    Args:
        features: (N,) or (N, F) per-patient features; non-finite values are replaced by the
            training-fold median.
        labels: (N,) 0/1.
        folds: stratified folds (reduced to the size of the smaller class).

    Raises:
        ValueError: one class only, or fewer than 2 patients in the smaller class.
    """
    x = np.asarray(features, float)
    x = x[:, None] if x.ndim == 1 else x
    y = np.asarray(labels).astype(int)
    k = n_folds(y, folds)
    if not has_both_classes(y) or k < 2:
        raise ValueError("a cross-validated AUC needs at least 2 patients in each class")
    out = np.empty(len(y))
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
        med = np.nanmedian(np.where(np.isfinite(x[train]), x[train], np.nan), axis=0)
        med = np.where(np.isfinite(med), med, 0.0)
        fill = lambda a: np.where(np.isfinite(a), a, med)  # noqa: E731 - fold-local imputation
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000))
        model.fit(fill(x[train]), y[train])
        out[test] = model.predict_proba(fill(x[test]))[:, 1]
    return out


def cv_auc(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0, n_boot: int = 2000,
           c: float = 1.0) -> tuple[float, float, float]:
    """(AUC, lo, hi) of `cv_scores`: cross-validated patient-level AUC with a bootstrap 95% CI.

    Raises:
        ValueError: as `cv_scores`.
    """
    y = np.asarray(labels).astype(int)
    return bootstrap_auc(y, cv_scores(features, y, folds, seed, c), n_boot, seed)


# ---------------------------------------------------------------- paired comparison of two methods

def _win_matrix(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(n_pos, n_neg) Mann-Whitney kernel: 1 where the positive outscores the negative, 0.5 on a tie."""
    s_pos, s_neg = scores[labels == 1], scores[labels == 0]
    return (s_pos[:, None] > s_neg[None, :]) + 0.5 * (s_pos[:, None] == s_neg[None, :])


def paired_auc_difference(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_boot: int = 2000,
                          seed: int = 0) -> dict[str, float | bool]:
    """AUC(a) - AUC(b) on the same patients, with a patient-level paired bootstrap 95% CI and p-value.

    Both methods are scored on the same patients, in the same order, possibly several times
    (pretraining seeds x cross-validation repeats: one row each). The statistic is the mean
    over rows of AUC_a - AUC_b. A bootstrap resample draws patients with replacement within
    each class (stratified, as `bootstrap_auc`) and applies the same draw to every row of both
    methods, so the pairing and the between-row correlation are kept.

    The test is the bootstrap's own: two-sided p = 2 x the smaller share of resampled
    differences on either side of 0 (with the +1 correction), capped at 1. It agrees with the
    percentile CI (p < 0.05 when the CI excludes 0, up to resamples tied at 0); "resolved" is
    defined by the CI alone.

    Args:
        labels: (N,) 0/1, both classes present.
        scores_a, scores_b: (N,) or (R, N) scores of methods a and b; rows are paired replicates.
        n_boot: bootstrap resamples.
        seed: seeds the resampling.

    Returns:
        {"difference", "lo", "hi", "p_value", "resolved", "auc_a", "auc_b", "replicates", "n_boot"}.

    Raises:
        ValueError: shapes that do not match, or one class missing.
    """
    y = np.asarray(labels).astype(int)
    a = np.atleast_2d(np.asarray(scores_a, float))
    b = np.atleast_2d(np.asarray(scores_b, float))
    if a.shape != b.shape or a.shape[1] != y.size:
        raise ValueError(f"scores {a.shape} and {b.shape} must both be (R, {y.size}) for {y.size} labels")
    if not has_both_classes(y):
        raise ValueError("an AUC difference needs both classes")
    # The AUC is linear in the win matrix, so the mean difference over rows is one matrix.
    wins_a = np.mean([_win_matrix(y, row) for row in a], axis=0)
    wins_b = np.mean([_win_matrix(y, row) for row in b], axis=0)
    diff = wins_a - wins_b
    n_pos, n_neg = diff.shape
    rng = np.random.default_rng(seed)
    w_pos = rng.multinomial(n_pos, np.full(n_pos, 1.0 / n_pos), size=n_boot)
    w_neg = rng.multinomial(n_neg, np.full(n_neg, 1.0 / n_neg), size=n_boot)
    boots = np.einsum("bi,ij,bj->b", w_pos, diff, w_neg) / (n_pos * n_neg)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    below, above = (np.sum(boots <= 0) + 1) / (n_boot + 1), (np.sum(boots >= 0) + 1) / (n_boot + 1)
    return {
        "difference": float(diff.mean()), "lo": float(lo), "hi": float(hi),
        "p_value": float(min(1.0, 2 * min(below, above))), "resolved": bool(lo > 0 or hi < 0),
        "auc_a": float(wins_a.mean()), "auc_b": float(wins_b.mean()), "replicates": int(a.shape[0]),
        "n_boot": int(n_boot),
    }
