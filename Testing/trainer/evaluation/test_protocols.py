"""Position-band probe, label-efficiency subsampling and repeated CV (protocols.py, crossval.py)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest_train import FakePatient, fake_patients
from wsp_cirrhosis.config import TrainConfig
from wsp_cirrhosis.evaluation.crossval import cv_plans, evaluate_repeated
from wsp_cirrhosis.evaluation.probes import frozen_fold_scores
from wsp_cirrhosis.evaluation.protocols import band_pool, label_subset, patient_features


def test_band_pool_averages_within_bands_and_fills_empty_bands_with_the_mean():
    feats = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 8.0]])
    d = np.array([0.05, 0.45, 0.55, 1.0])  # d = 1 belongs to the last band
    assert band_pool(feats, d, 2).tolist() == [2.0, 1.0, 6.0, 6.0]
    pooled = band_pool(feats[:2], np.array([0.01, 0.1]), 5)  # only band 0 has slices
    assert pooled.shape == (10,)
    assert pooled[:2].tolist() == [2.0, 1.0] and pooled[2:].tolist() == [2.0, 1.0] * 4
    assert band_pool(feats, d, 1).tolist() == feats.mean(0).tolist()
    with pytest.raises(ValueError):
        band_pool(feats, d, 0)


def _band_signal_patients(n: int = 40, seed: int = 0) -> tuple[list[FakePatient], list[np.ndarray], np.ndarray]:
    """Slice features whose mean over the liver is the same for both classes: the label only shows
    as +1 in band d < 0.2 and -1 in band 0.8 <= d (the positional phantom's situation)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    patients, feats = [], []
    for i, y in enumerate(labels):
        d = np.linspace(0, 1, 20)
        f = rng.normal(0, 0.3, (20, 3))
        f[d < 0.2, 0] += 1.0 * y
        f[d >= 0.8, 0] -= 1.0 * y
        patients.append(FakePatient(f"p{i}", np.zeros((20, 4, 4), np.float32), d, None, int(y)))
        feats.append(f)
    return patients, feats, labels


def test_band_probe_finds_a_feature_that_mean_pooling_averages_away():
    from sklearn.metrics import roc_auc_score

    patients, feats, labels = _band_signal_patients()
    aucs = {}
    for protocol in ("frozen", "frozen_bands"):
        x = patient_features(protocol, feats, patients, bands=5)
        assert x.shape == (len(patients), 3 if protocol == "frozen" else 15)
        scores = np.zeros(len(labels))
        for train, test in cv_plans(labels, 4, 1, seed=0)[0]:
            scores[test] = frozen_fold_scores(x, labels, train, test, seed=0)[1]
        aucs[protocol] = roc_auc_score(labels, scores)
    assert aucs["frozen_bands"] > 0.95 and aucs["frozen"] < 0.8
    with pytest.raises(ValueError):
        patient_features("finetune", feats, patients)


def test_label_subsets_are_stratified_and_drawn_from_the_training_fold_only():
    labels = np.array([1] * 12 + [0] * 28)
    for train, test in cv_plans(labels, 5, 2, seed=0)[1]:
        for n in (4, 10, 20):
            sub = label_subset(labels, train, n, seed=7)
            assert len(sub) == n and len(set(sub)) == n
            assert set(sub) <= set(train) and not set(sub) & set(test)
            share = labels[train].mean()
            assert abs(labels[sub].sum() - round(n * share)) <= 1 and 0 < labels[sub].sum() < n
        assert np.array_equal(label_subset(labels, train, 10, 3), label_subset(labels, train, 10, 3))
        assert label_subset(labels, train, 1000, 0).tolist() == sorted(train.tolist())


def test_repeated_cv_keeps_out_of_fold_scores_and_label_subsets_inside_the_training_folds():
    patients = fake_patients(n=16, size=32, seed=2)
    cfg = TrainConfig(epochs=1, batch_size=8, device="cpu")
    res = evaluate_repeated("none", patients, folds=2, repeats=2, protocols=["frozen", "frozen_bands"],
                            train_cfg=cfg, seed=0, label_sizes=[4])
    assert res["fold_seeds"] == [0, 1000] and res["labels"] == [int(p.histo_label) for p in patients]
    plans = cv_plans(np.array(res["labels"]), 2, 2, 0)
    assert [t.tolist() for _, t in plans[0]] != [t.tolist() for _, t in plans[1]]  # the repeats differ
    for name in ("frozen", "frozen_bands"):
        r = res["protocols"][name]
        assert len(r["fold_auc"]) == 4 and len(r["pooled_auc_per_repeat"]) == 2
        assert np.array(r["oof_probability"]).shape == (2, 16) and np.all(np.isfinite(r["oof_probability"]))
        eff = r["label_efficiency"]["4"]
        assert eff["n_train"] == [4, 4, 4, 4] and len(eff["fold_auc"]) == 4
