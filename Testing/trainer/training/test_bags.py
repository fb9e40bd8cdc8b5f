"""Patient heads trained on bags of frozen features: a sign that only its height makes meaningful.

Every patient has the same number of "bright" slices (feature 0 raised). In positive patients they
sit at mid-liver (d in [0.4, 0.6)); in negative ones, at the top or the bottom (the decoy). The
mean of any feature is the same in both classes, so the position-blind mean cannot read it; a
head that knows d can.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from wsp_cirrhosis.models.patient_heads import build_patient_head
from wsp_cirrhosis.training.bags import Bag, fit_patient_head, patient_logits, sample_bag


def _cohort(n: int, seed: int, slices: int = 20, dim: int = 6) -> tuple[list[Bag], np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    labels = np.arange(n) % 2
    d = (torch.arange(slices) + 0.5) / slices
    bags = []
    for y in labels:
        h = torch.randn(slices, dim, generator=g)
        if y:
            where = (d >= 0.4) & (d < 0.6)
        else:
            ends = (d < 0.1) | (d >= 0.9)
            where = ends if torch.rand(1, generator=g) < 0.5 else ((d >= 0.2) & (d < 0.3)) | ((d >= 0.7) & (d < 0.8))
        h[where, 0] += 2.5
        bags.append(Bag(h, d.clone()))
    return bags, labels


def _auc(name: str, **fit) -> float:
    torch.manual_seed(0)
    train, y_train = _cohort(80, seed=1)
    test, y_test = _cohort(60, seed=2)
    head = fit_patient_head(build_patient_head(name, in_dim=6), train, y_train, seed=0, **fit)
    return roc_auc_score(y_test, patient_logits(head, test))


def test_a_height_only_sign_defeats_the_mean_and_not_the_position_aware_heads():
    assert abs(_auc("mean", epochs=15) - 0.5) < 0.2
    assert _auc("bands", epochs=15) > 0.9
    assert _auc("attention", epochs=15) > 0.85


def test_attention_learns_on_position_stratified_sub_bags_too():
    assert _auc("attention", epochs=15, bag_size=10) > 0.85


def test_sub_bags_keep_every_band_and_return_small_bags_whole():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(50, generator=g)
    bag = Bag(torch.randn(50, 3, generator=g), d)
    sub = sample_bag(bag, 10, 5, g)
    assert len(sub.heights) == 10 and len(set(sub.heights.tolist())) == 10
    quintiles = torch.quantile(d, torch.tensor([0.2, 0.4, 0.6, 0.8]))
    assert sorted(set(torch.bucketize(sub.heights, quintiles).tolist())) == [0, 1, 2, 3, 4]
    assert sample_bag(bag, 60, 5, g) is bag and sample_bag(bag, 0, 5, g) is bag
