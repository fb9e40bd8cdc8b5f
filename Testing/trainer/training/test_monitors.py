"""monitors.py: each representation monitor on inputs with a known answer, and on real pretraining runs
(a cohort with a learnable weak-label signal vs the same cohort with shuffled labels)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest_train import FakePatient
from wsp_cirrhosis.config import PretrainConfig, TrainConfig
from wsp_cirrhosis.training.losses import contrastive_loss
from wsp_cirrhosis.training.monitors import (
    alignment,
    effective_rank,
    knn_balanced_accuracy,
    loss_excess,
    position_r2,
    split_monitor_patients,
    uniformity,
    weight_entropy,
)
from wsp_cirrhosis.training.pretrain import monitor_summary, pretrain


def test_monitor_split_is_by_patient_stratified_and_fixed():
    labels = np.repeat([0, 1, 2], [40, 30, 30])
    train, held = split_monitor_patients(labels, 0.2, seed=0)
    assert len(held) == 20 and not set(train) & set(held) and len(train) + len(held) == 100
    assert np.bincount(labels[held]).tolist() == [8, 6, 6]  # the classes keep their share
    assert np.array_equal(held, split_monitor_patients(labels, 0.2, seed=0)[1])
    assert len(split_monitor_patients(labels, 0.0)[1]) == 0


def test_alignment_uniformity_and_rank_of_collapsed_and_spread_embeddings():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(200, 128, generator=g, dtype=torch.float64)
    collapsed = torch.ones(200, 128, dtype=torch.float64)
    assert alignment(spread, spread) == 0.0 and alignment(spread, -spread) == pytest.approx(4.0)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)
    assert uniformity(spread) == pytest.approx(-4.0, abs=0.1)  # random directions: ||zi - zj||^2 ~ 2
    rank_one = np.outer(np.random.default_rng(0).standard_normal(100), np.ones(64))
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(spread.numpy()) > 100


def test_loss_excess_is_one_for_a_collapsed_embedding_and_entropy_matches_the_weights():
    n = 8
    labels, positions = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2]), torch.linspace(0, 1, n, dtype=torch.float64)
    z = torch.ones(n, 16, dtype=torch.float64)
    loss = float(contrastive_loss(z, z, labels, positions, method="supcon"))
    h = weight_entropy(labels, positions, "supcon", 0.85, 0.1)
    # supcon: each anchor spreads its weight evenly over its twin and its class's other 2(k-1) views
    expected = np.mean([math.log(2 * k - 1) for k in [2, 2, 3, 3, 3, 3, 3, 3]])
    assert h == pytest.approx(expected) and loss == pytest.approx(math.log(2 * n - 1))
    assert loss_excess(loss, h, n) == pytest.approx(1.0)
    assert weight_entropy(labels, positions, "simclr", 0.85, 0.1) == 0.0  # one positive: the twin


def test_knn_and_position_r2_on_features_with_and_without_the_signal():
    rng = np.random.default_rng(0)
    labels, positions = np.arange(300) % 3, rng.random(300)
    groups = np.arange(300) // 5
    informative = np.column_stack([np.eye(3)[labels] * 3, positions, rng.standard_normal((300, 20))])
    noise = rng.standard_normal((300, 24))
    assert knn_balanced_accuracy(informative[:200], labels[:200], informative[200:], labels[200:]) > 0.95
    assert abs(knn_balanced_accuracy(noise[:200], labels[:200], noise[200:], labels[200:]) - 1 / 3) < 0.15
    assert position_r2(informative, positions, groups) > 0.95 and position_r2(noise, positions, groups) < 0.1


def _stripes_cohort(shuffle: bool, n: int = 36, size: int = 24, seed: int = 0) -> list[FakePatient]:
    """Weak label = spatial frequency of noisy stripes (random angle and phase per slice); brightness ramps with d.

    With ``shuffle`` the weak labels are permuted across patients: nothing in the images predicts them.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    labels = np.arange(n) % 3
    shown = rng.permutation(labels) if shuffle else labels
    out = []
    for i in range(n):
        d = np.linspace(0, 1, 6)
        freq = (1.5, 3.75, 6.75)[labels[i]]
        slices = []
        for k in range(len(d)):
            angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            stripes = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
            slices.append(np.clip(0.4 + 0.3 * d[k] * yy + 0.15 * stripes + 0.1 * rng.standard_normal(xx.shape), 0, 1))
        out.append(FakePatient(f"p{i:02d}", np.asarray(slices, np.float32), d.astype(np.float32), int(shown[i]), i % 2))
    return out


@pytest.mark.parametrize("shuffle", [False, True], ids=["learnable", "shuffled-labels"])
def test_monitors_rise_with_a_learnable_signal_and_stay_at_chance_without(shuffle, tmp_path):
    # the stripes sign is on every slice, so the paper's wide kernel and uniform draw fit it; the
    # default narrow kernel (sigma 0.1, 4 position groups) learns it too, only more slowly in 40 steps
    cfg = PretrainConfig(manifest=Path("stripes.csv"), out=tmp_path / "run", method="wsp", monitor_fraction=0.25,
                         slices_per_epoch=120, monitor_every=4, sigma=0.85, position_groups=0,
                         train=TrainConfig(epochs=4, batch_size=12, lr=3e-3, device="cpu"))
    run = pretrain(cfg, _stripes_cohort(shuffle))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and lines[-1]["step"] == 40 and (run / "curves.png").stat().st_size > 0
    knn_first, knn_last = monitor_summary(run)["knn_bal_acc"]
    excess = lines[-1]["loss_excess"]
    if shuffle:
        # chance is 1/3, but on 9 held-out patients (3 per class) one kNN score moves in steps of 1/9
        # (SD about 0.16 at chance; 0.5 was measured on a fresh install): the loss is the sharper check
        assert knn_last < 0.6 and excess > 0.95  # the loss cannot leave the collapsed value
    else:
        assert knn_last > 0.65 and knn_last > knn_first + 0.1 and excess < 0.9


def test_weak_band_probe_reads_a_sign_that_sits_in_one_band_and_not_noise():
    from wsp_cirrhosis.training.monitors import MonitorSet, weak_band_auc

    rng = np.random.default_rng(0)
    n_patients, per = 60, 12
    weak = np.arange(n_patients) % 3
    patients = np.repeat(np.arange(n_patients), per)
    positions = np.tile(np.linspace(0, 1, per), n_patients)
    labels = weak[patients]
    held = MonitorSet(np.zeros((len(patients), 1, 1), np.float32), labels, positions, patients)
    noise = rng.standard_normal((len(patients), 8))
    sign = noise.copy()
    in_band = (positions >= 0.25) & (positions < 0.5)
    sign[:, 0] += 3.0 * (labels == 2) * in_band  # the sign: one feature, only on slices of one band
    assert weak_band_auc(sign, held) > 0.9
    assert abs(weak_band_auc(noise, held) - 0.5) < 0.2


def test_did_not_learn_rule_overrides_the_probe():
    from wsp_cirrhosis.benchmark.report import learned_verdict
    from wsp_cirrhosis.training.monitors import DID_NOT_LEARN_EXCESS, learned_objective

    assert DID_NOT_LEARN_EXCESS == 0.95
    assert learned_objective(0.97) is False and learned_objective(0.95) is False and learned_objective(0.7) is True
    assert learned_objective(None) is None and learned_objective(float("nan")) is None
    assert learned_verdict(False, 0.98, 0.2).startswith("no: loss excess")  # a probe gain does not save it
    assert learned_verdict(False, 0.6, 0.2) == "yes" and learned_verdict(False, 0.6, 0.01) == "no clear gain"
    assert learned_verdict(True, None, math.nan) == "(reference)"
