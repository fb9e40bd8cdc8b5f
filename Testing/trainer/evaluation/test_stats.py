"""Paired AUC difference of two methods on the same patients (stats.paired_auc_difference)."""

from __future__ import annotations

import numpy as np
import pytest

from wsp_cirrhosis.evaluation.stats import paired_auc_difference

LABELS = np.array([1, 1, 0, 0])


def test_point_estimate_matches_a_hand_computed_example():
    # Row 1: a ranks both positives above both negatives (AUC 1); b: positive 0.9 beats both
    # negatives, positive 0.1 beats none -> 2 of 4 pairs (AUC 0.5).
    # Row 2: a: 0.3 beats 0.1 only, 0.8 beats both -> 3/4; b: 0.5 ties 0.5 (1/2) and beats 0.1,
    # twice -> 3/4. Mean difference over the rows = (0.5 + 0) / 2 = 0.25.
    a = np.array([[0.9, 0.8, 0.1, 0.2], [0.3, 0.8, 0.5, 0.1]])
    b = np.array([[0.9, 0.1, 0.2, 0.3], [0.5, 0.5, 0.5, 0.1]])
    res = paired_auc_difference(LABELS, a, b, n_boot=500, seed=0)
    assert res["auc_a"] == pytest.approx(0.875) and res["auc_b"] == pytest.approx(0.625)
    assert res["difference"] == pytest.approx(0.25)
    assert res["replicates"] == 2 and res["lo"] <= 0.25 <= res["hi"]
    # one row: the difference of the two AUCs
    one = paired_auc_difference(LABELS, a[0], b[0], n_boot=500)
    assert one["difference"] == pytest.approx(0.5) and one["replicates"] == 1


def test_bootstrap_is_patient_level_and_symmetric():
    rng = np.random.default_rng(0)
    y = np.repeat([1, 0], 30)
    good = y + rng.normal(0, 0.6, y.size)  # AUC ~ 0.88
    noise = rng.normal(0, 1, y.size)  # AUC ~ 0.5
    res = paired_auc_difference(y, good, noise, n_boot=2000, seed=3)
    assert res["resolved"] and res["lo"] > 0 and res["p_value"] < 0.05
    swapped = paired_auc_difference(y, noise, good, n_boot=2000, seed=3)
    assert swapped["difference"] == pytest.approx(-res["difference"])
    assert (swapped["lo"], swapped["hi"]) == pytest.approx((-res["hi"], -res["lo"]))
    # the same scores twice: difference exactly 0, every resample 0, not resolved
    same = paired_auc_difference(y, good, good, n_boot=500)
    assert same["difference"] == 0 and same["lo"] == same["hi"] == 0 and not same["resolved"]
    assert same["p_value"] == 1.0
    # a small, noisy difference on few patients is not resolved
    few = paired_auc_difference(y[::6], good[::6], (good + rng.normal(0, 0.5, y.size))[::6], n_boot=1000)
    assert few["lo"] < 0 < few["hi"] and not few["resolved"]


def test_bootstrap_ci_matches_an_explicit_resampling_loop():
    # The win-matrix weighting must equal resampling patients (within each class) and recomputing the AUC.
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = np.repeat([1, 0], [7, 9])
    a, b = rng.random(y.size) + 0.3 * y, rng.random(y.size)
    res = paired_auc_difference(y, a, b, n_boot=400, seed=5)
    draw = np.random.default_rng(5)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    w_pos = draw.multinomial(pos.size, np.full(pos.size, 1 / pos.size), size=400)
    w_neg = draw.multinomial(neg.size, np.full(neg.size, 1 / neg.size), size=400)
    diffs = []
    for wp, wn in zip(w_pos, w_neg):
        idx = np.concatenate([np.repeat(pos, wp), np.repeat(neg, wn)])
        diffs.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    assert (res["lo"], res["hi"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))


@pytest.mark.parametrize("a,b,labels", [
    (np.zeros(4), np.zeros(5), LABELS),
    (np.zeros((2, 4)), np.zeros((3, 4)), LABELS),
    (np.zeros(4), np.zeros(4), np.ones(4)),
])
def test_bad_inputs_are_refused(a, b, labels):
    with pytest.raises(ValueError):
        paired_auc_difference(labels, a, b)
