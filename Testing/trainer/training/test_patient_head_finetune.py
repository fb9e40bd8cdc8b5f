"""Fine-tuning with a patient head: bag sampling, a height-only sign on images, reads that add up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest_train import FakePatient
from wsp_cirrhosis.config import FinetuneConfig, TrainConfig
from wsp_cirrhosis.errors import ConfigError
from wsp_cirrhosis.models.encoders import build_encoder
from wsp_cirrhosis.models.ensemble import EnsembleClassifier
from wsp_cirrhosis.models.features import batched_outputs, patient_probabilities
from wsp_cirrhosis.models.heads import SliceClassifier
from wsp_cirrhosis.models.patient_heads import PatientClassifier, build_patient_head
from wsp_cirrhosis.models.patient_read import model_heads, read_patient, threshold_on_scale
from wsp_cirrhosis.training.finetune import fit_classifier
from wsp_cirrhosis.training.samplers import BagSampler


def test_bags_hold_one_slice_per_height_stratum_of_whole_patients():
    n_slices = [30, 8, 5, 17, 3, 12]
    sampler = BagSampler([0, 1, 0, 1, 0, 1], n_slices, batch_size=16, bag_size=8, seed=0)
    assert sampler.patients_per_step == 2 and sampler.steps_per_epoch == 3  # 2 x 3 patients, 2 per step
    for patients, slices in sampler.epoch(0):
        for bag_p, bag_s in zip(patients.reshape(-1, 8), slices.reshape(-1, 8)):
            assert len(set(bag_p.tolist())) == 1  # a bag is one patient
            n = n_slices[bag_p[0]]
            strata = np.floor(np.arange(9) * n / 8).astype(int)
            for k, s in enumerate(bag_s):  # slice k lies in stratum k of the z-ordered slices
                assert strata[k] <= s < max(strata[k + 1], strata[k] + 1) and s < n
            if n >= 8:
                assert len(set(bag_s.tolist())) == 8  # distinct slices when the patient has enough
    assert any((a[1] != b[1]).any() for a, b in zip(sampler.epoch(0), sampler.epoch(1)))


def test_bag_epochs_balance_histology_and_ranks_split_whole_bags():
    labels = [1] * 3 + [0] * 9
    one = BagSampler(labels, [10] * 12, batch_size=8, bag_size=2, seed=3)
    patients = np.concatenate([p for p, _ in one.epoch(0)]).reshape(-1, 2)[:, 0]
    assert one.steps_per_epoch == 5 and len(patients) == 20  # 18 bags, wrapped around to whole steps
    counts = np.bincount(np.asarray(labels)[patients[:18]], minlength=2)
    assert counts[0] == counts[1] == 9  # the 3 positives oversampled to the 9 negatives
    assert set(patients[:18][np.asarray(labels)[patients[:18]] == 0].tolist()) == set(range(3, 12))
    ranks = [BagSampler(labels, [10] * 12, batch_size=8, bag_size=2, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for (p, s), (p0, s0), (p1, s1) in zip(one.epoch(0), ranks[0].epoch(0), ranks[1].epoch(0)):
        assert (np.concatenate([p0, p1]) == p).all() and (np.concatenate([s0, s1]) == s).all()
        assert len(p0) % 2 == 0
    with pytest.raises(ConfigError, match="whole patient bags"):
        BagSampler(labels, [10] * 12, batch_size=8, bag_size=3, seed=0)
    with pytest.raises(ConfigError, match="--patient-head 'max'"):
        FinetuneConfig(manifest="m.csv", out="o", patient_head="max")


def _height_sign(n: int, seed: int, s: int = 10, size: int = 16) -> list[FakePatient]:
    """Every patient has two bright slices: at mid-liver (d 0.45, 0.55) when positive, at the ends
    or at d 0.25 / 0.75 when negative. Every class shows the same slices, so only height tells."""
    rng = np.random.default_rng(seed)
    d = ((np.arange(s) + 0.5) / s).astype(np.float32)
    out = []
    for i in range(n):
        y = i % 2
        img = (0.3 + 0.05 * rng.standard_normal((s, size, size))).astype(np.float32)
        where = [4, 5] if y else ([0, 9] if rng.random() < 0.5 else [2, 7])
        img[where, 4:12, 4:12] += 0.5
        out.append(FakePatient(f"p{i:02d}", np.clip(img, 0, 1), d, 0, y))
    return out


def _test_auc(head: str, freeze: bool, epochs: int) -> float:
    train, test = _height_sign(40, seed=1), _height_sign(30, seed=2)
    torch.manual_seed(0)
    model = fit_classifier(build_encoder("tinynet"), train, TrainConfig(epochs=epochs, batch_size=40, lr=3e-3,
                                                                        device="cpu"),
                           freeze=freeze, seed=0, patient_head=head, bag_size=10)
    assert isinstance(model, SliceClassifier if head == "mean" else PatientClassifier)
    return roc_auc_score([p.histo_label for p in test], patient_probabilities(model, test, "cpu"))


def test_a_height_only_sign_on_images_defeats_the_mean_read_and_not_the_attention_head():
    assert _test_auc("mean", freeze=False, epochs=3) < 0.7  # chance: the slices look alike in both classes
    assert _test_auc("attention", freeze=True, epochs=15) > 0.9
    assert _test_auc("bands", freeze=True, epochs=15) > 0.9


@pytest.mark.parametrize("name", ["mean", "bands", "attention"])
def test_slice_contributions_add_up_to_the_patient_score_for_every_head_and_ensembles(name):
    torch.manual_seed(0)
    patient = _height_sign(1, seed=4)[0]
    members = []
    for _ in range(2):
        encoder = build_encoder("tinynet")
        members.append(SliceClassifier(encoder) if name == "mean"
                       else PatientClassifier(encoder, build_patient_head(name, encoder.feature_dim)))
    for model in (members[0], EnsembleClassifier(members)):
        model.eval()
        read = read_patient(batched_outputs(model, patient.slices, "cpu"), patient.positions, model_heads(model))
        assert read.head == name and read.scale == ("probability" if name == "mean" else "logit")
        assert read.contributions.sum() == pytest.approx(read.score, abs=1e-12)
        assert read.reads.mean() == pytest.approx(read.score, abs=1e-12)
        p = read.score if name == "mean" else 1 / (1 + np.exp(-read.score))
        assert read.probability == pytest.approx(p, abs=1e-12)
        assert (read.probability >= 0.4) == (read.score >= threshold_on_scale(0.4, read.scale))
        n_members = len(getattr(model, "members", [model]))
        assert read.member_slice_scores.shape == (10, n_members) and read.member_probabilities.shape == (n_members,)
        assert (read.weights is not None) == (name == "attention")
        if name != "mean" and n_members == 2:  # an ensemble of logit heads averages the member logits
            singles = [read_patient(batched_outputs(m, patient.slices, "cpu"), patient.positions, [m.head])
                       for m in members]
            assert read.score == pytest.approx(np.mean([r.score for r in singles]), abs=1e-9)
