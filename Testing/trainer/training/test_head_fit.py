"""The warm start of a position-aware head on frozen features (LP-FT, ``training.head_fit``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from test_patient_head_finetune import _height_sign
from wsp_cirrhosis.config import TrainConfig
from wsp_cirrhosis.models.encoders import build_encoder
from wsp_cirrhosis.models.features import patient_probabilities
from wsp_cirrhosis.models.patient_heads import band_index, build_patient_head
from wsp_cirrhosis.training.finetune import fit_classifier
from wsp_cirrhosis.training.head_fit import fit_head


def test_the_bands_fit_is_the_frozen_probes_balanced_logistic_regression():
    """On fixed features the fitted bands head gives the logits of sklearn's class-balanced
    LogisticRegression (C = 1) on the band-pooled standardised features: the head starts where
    the frozen_bands probe ends."""
    rng = np.random.default_rng(0)
    in_dim, bands, n = 6, 3, 40
    labels = (np.arange(n) % 3 == 0).astype(int)  # 14 positives, 26 negatives: the balance matters
    features, positions = [], []
    for y in labels:
        s = int(rng.integers(6, 15))
        d = np.sort(rng.random(s))
        d[:bands] = (np.arange(bands) + 0.5) / bands  # every band holds a slice
        h = rng.standard_normal((s, in_dim)) + 0.8 * y * (np.abs(d - 0.5) < 1 / 6)[:, None]
        features.append(torch.from_numpy(h))
        positions.append(torch.from_numpy(d))
    head = build_patient_head("bands", in_dim, bands=bands).double()
    head.set_standardisation(torch.cat(features))
    fit_head(head, features, positions, labels, max_iter=500)
    with torch.no_grad():
        logits = np.array([float(head(h, d)[0]) for h, d in zip(features, positions)])
        pooled = np.stack([torch.stack([head.standardise(h)[band_index(d, bands) == k].mean(0) for k in range(bands)])
                           .flatten().numpy() for h, d in zip(features, positions)])
    probe = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-12, max_iter=10000).fit(pooled, labels)
    assert np.allclose(logits, probe.decision_function(pooled), atol=1e-3)  # L-BFGS's stopping tolerance
    assert logits.std() > 1.0  # a real fit, not the all-zero start


@pytest.mark.parametrize("head", ["bands", "attention"])
def test_the_warm_start_alone_reads_a_height_only_sign_that_a_fresh_head_does_not(head):
    """With the encoder frozen and a learning rate too small to move anything, what a head reads
    on new patients is its start: the warm start reads the sign; a fresh head is at chance."""
    train, test = _height_sign(40, seed=1), _height_sign(30, seed=2)
    y = [p.histo_label for p in test]
    still = TrainConfig(epochs=1, batch_size=40, lr=1e-12, device="cpu")
    aucs = {}
    for warm in (True, False):
        torch.manual_seed(0)
        model = fit_classifier(build_encoder("tinynet"), train, still, freeze=True, seed=0, patient_head=head,
                               bag_size=10, warm_start=warm)
        aucs[warm] = roc_auc_score(y, patient_probabilities(model, test, "cpu"))
    assert aucs[True] > 0.9 and aucs[False] < 0.75, aucs


def test_position_aware_bags_are_the_cached_slices_unless_asked_to_augment(monkeypatch):
    """The warm-started head was fitted on the cached slices, so fine-tuning feeds it those: a bag
    step without augmentation is the BCE of the model's read of the bag itself; the old recipe
    (augmented views) stays available as ``augment_bags=True``."""
    import torch.nn.functional as F

    from wsp_cirrhosis.models.patient_heads import PatientClassifier
    from wsp_cirrhosis.training import loop

    patients = _height_sign(4, seed=3)
    torch.manual_seed(0)
    model = PatientClassifier(build_encoder("tinynet"), build_patient_head("bands", 512)).eval()
    batch = {"images": torch.from_numpy(np.concatenate([p.slices for p in patients[:2]])).unsqueeze(1),
             "positions": torch.from_numpy(np.concatenate([p.positions for p in patients[:2]])),
             "histo_labels": torch.tensor([patients[0].histo_label] * 10 + [patients[1].histo_label] * 10)}
    loss = loop.bag_step(model, batch, torch.Generator().manual_seed(0), bag_size=10, augment=None)
    with torch.no_grad():
        logits = torch.stack([model.read(model.encoder(batch["images"][k * 10:(k + 1) * 10]),
                                         batch["positions"][k * 10:(k + 1) * 10])[0] for k in range(2)])
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0]))
    assert torch.allclose(loss, expected, atol=1e-6)
    augmented = loop.bag_step(model, batch, torch.Generator().manual_seed(0), bag_size=10)
    assert not torch.allclose(augmented, expected, atol=1e-4)

    calls = []
    real = loop.random_views
    monkeypatch.setattr(loop, "random_views", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = TrainConfig(epochs=1, batch_size=20, lr=1e-4, device="cpu")
    fit_classifier(build_encoder("tinynet"), patients, cfg, seed=0, patient_head="bands", bag_size=10)
    assert calls == []  # the default: the cached slices
    fit_classifier(build_encoder("tinynet"), patients, cfg, seed=0, patient_head="bands", bag_size=10,
                   augment_bags=True)
    assert len(calls) > 0
