"""calibration.py: Brier, ECE, reliability bins, Platt and isotonic calibrators, the diagram."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from wsp_cirrhosis.models.calibration import (
    apply_calibration,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    fit_calibrator,
    reliability_bins,
)
from wsp_cirrhosis.evaluation.reliability import plot_reliability
from wsp_cirrhosis.errors import InputError


def _distorted(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, true probabilities, over-confident probabilities sigmoid(2 logit(p) - 1))."""
    rng = np.random.default_rng(seed)
    p_true = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < p_true).astype(int)
    logit = np.log(p_true / (1 - p_true))
    return y, p_true, 1 / (1 + np.exp(-(2 * logit - 1)))


def test_brier_matches_scikit_learn():
    y, _, p = _distorted(300)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))


def test_ece_is_the_count_weighted_gap_of_the_bins():
    y, _, p = _distorted(500)
    bins = reliability_bins(y, p, 10)
    assert sum(b["count"] for b in bins) == 500
    for b in bins:  # every bin's statistics from its own members
        sel = (p >= b["lo"]) & ((p < b["hi"]) | (b["hi"] == 1.0))
        assert b["count"] == sel.sum() and b["observed_rate"] == pytest.approx(y[sel].mean())
    gaps = [b["count"] * abs(b["observed_rate"] - b["mean_probability"]) for b in bins]
    assert expected_calibration_error(y, p) == pytest.approx(sum(gaps) / 500)


def test_true_probabilities_are_better_calibrated_than_distorted_ones():
    y, p_true, p_bad = _distorted()
    assert expected_calibration_error(y, p_true) < 0.5 * expected_calibration_error(y, p_bad)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibrators_undo_the_distortion_on_held_out_patients(method):
    y, _, p = _distorted(2000, seed=1)
    spec = fit_calibrator(method, y[:1000], p[:1000], source="test")
    json.dumps(spec)  # plain JSON for bundle.json
    held_y, held_p = y[1000:], p[1000:]
    calibrated = apply_calibration(spec, held_p)
    assert expected_calibration_error(held_y, calibrated) < 0.6 * expected_calibration_error(held_y, held_p)
    assert brier_score(held_y, calibrated) < brier_score(held_y, held_p)
    order = np.argsort(held_p)
    assert (np.diff(calibrated[order]) >= -1e-12).all(), "a calibrator must keep the order of probabilities"
    assert spec["n_patients"] == 1000 and spec["brier_before"] == pytest.approx(brier_score(y[:1000], p[:1000]))
    if method == "platt":  # p = sigmoid(2 logit - 1) is undone by a = 1/2, b = 1/2
        assert spec["a"] == pytest.approx(0.5, abs=0.1) and spec["b"] == pytest.approx(0.5, abs=0.15)


def test_no_calibrator_is_the_identity_and_bad_input_is_an_error():
    p = np.array([0.1, 0.5, 0.9])
    assert (apply_calibration(None, p) == p).all()
    with pytest.raises(InputError, match="single class"):
        fit_calibrator("platt", [1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(InputError, match="missing or incomplete"):
        fit_calibrator("isotonic", [0, 1, 1], [0.2, float("nan"), 0.9])
    with pytest.raises(InputError, match="choose platt or isotonic"):
        fit_calibrator("beta", [0, 1], [0.2, 0.9])


def test_reliability_diagram_is_a_png(tmp_path):
    y, p_true, p_bad = _distorted(400)
    path = plot_reliability({"true": (y, p_true), "distorted": (y, p_bad)}, tmp_path / "r.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    m = calibration_metrics(y, p_bad)
    assert set(m) == {"brier", "ece", "n_bins", "bins"}
