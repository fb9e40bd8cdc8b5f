"""data.py: one slice per patient, class balance, determinism from (seed, epoch), rank parts, loading."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest_train import fake_patients
from wsp_cirrhosis.training.samplers import PatientSampler, SliceSampler, load_batch, prefetch
from wsp_cirrhosis.errors import ConfigError


def _sampler(labels, n_slices=None, batch_size=6, seed=0, **kw):
    n_slices = n_slices if n_slices is not None else [5] * len(labels)
    return PatientSampler(labels, n_slices, batch_size, seed, **kw)


def test_patient_batches_hold_distinct_patients_and_valid_slices():
    n_slices = [3, 7, 1, 9, 4, 4, 2, 8, 5, 6]
    s = _sampler([0, 1] * 5, n_slices, batch_size=4)
    batches = s.epoch(0)
    assert len(batches) == s.steps_per_epoch == 3  # ceil(10 / 4)
    for patients, slices in batches:
        assert len(set(patients.tolist())) == 4
        assert ((slices >= 0) & (slices < np.array(n_slices)[patients])).all()


def test_patient_epoch_length_can_be_set_in_steps_whatever_the_cohort_size():
    s = _sampler([0, 1] * 5, batch_size=4, steps_per_epoch=25)
    assert s.steps_per_epoch == 25 and len(s.epoch(0)) == 25 and s.state_dict()["steps_per_epoch"] == 25


def test_position_groups_give_each_group_one_relative_slice_position():
    n_slices = [5, 9, 13, 17] * 4
    s = _sampler([0, 1, 2, 3] * 4, n_slices, batch_size=8, position_groups=2)
    for patients, slices in s.epoch(0):
        rel = slices / (np.array(n_slices)[patients] - 1)
        first, second = rel[:4], rel[4:]
        assert first.max() - first.min() <= 1 / 4 and second.max() - second.min() <= 1 / 4  # rounding: 1 / (2 * 4) each
        assert first.max() <= 0.5 + 1 / 8 and second.min() >= 0.5 - 1 / 8  # stratified halves of [0, 1]


def test_patient_batches_are_a_function_of_seed_and_epoch():
    def draw(seed, epoch):
        return [np.stack(b).tolist() for b in _sampler([0, 1, 2] * 4, seed=seed).epoch(epoch)]

    assert draw(1, 3) == draw(1, 3)
    assert draw(1, 3) != draw(1, 4)
    assert draw(1, 3) != draw(2, 3)


def test_patient_batches_are_class_balanced_on_the_weak_label():
    labels = [0] * 20 + [1] * 6 + [2] * 4
    s = _sampler(labels, batch_size=3)
    drawn = np.concatenate([p for e in range(300) for p, _ in s.epoch(e)])
    share = np.bincount(np.array(labels)[drawn], minlength=3) / drawn.size
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.04)


@pytest.mark.parametrize("sampler_cls", [PatientSampler, SliceSampler])
def test_rank_parts_tile_the_global_batch_without_overlap(sampler_cls):
    labels, n_slices = [0, 1] * 6, [4] * 12
    single = sampler_cls(labels, n_slices, 6, 5).epoch(2)
    parts = [sampler_cls(labels, n_slices, 6, 5, rank=r, world_size=3).epoch(2) for r in range(3)]
    for step, (patients, slices) in enumerate(single):
        assert np.concatenate([p[step][0] for p in parts]).tolist() == patients.tolist()
        assert np.concatenate([p[step][1] for p in parts]).tolist() == slices.tolist()
        assert all(len(p[step][0]) == 2 for p in parts)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"batch_size": 13}, "exceeds the 12 patients"),
    ({"batch_size": 6, "world_size": 4, "rank": 1}, "multiple of the number of processes"),
])
def test_impossible_patient_batches_are_config_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PatientSampler([0, 1] * 6, [3] * 12, seed=0, **kwargs)


def test_slice_epoch_covers_every_slice_and_balances_histology():
    labels, n_slices = [1, 0, 0, 0], [3, 4, 2, 5]  # 3 positive slices, 11 negative
    s = SliceSampler(labels, n_slices, batch_size=4, seed=0)
    pairs = np.concatenate([np.stack(b, 1) for b in s.epoch(0)])
    assert s.steps_per_epoch == 6 and len(pairs) == 24  # 2 * 11 slices, padded to whole batches
    negatives = {(p, k) for p in (1, 2, 3) for k in range(n_slices[p])}
    assert negatives <= {tuple(x) for x in pairs.tolist()}
    assert {tuple(x) for x in pairs.tolist() if x[0] == 0} == {(0, 0), (0, 1), (0, 2)}
    positive_share = np.mean(np.array(labels)[pairs[:, 0]])
    assert abs(positive_share - 0.5) <= 2 / 24  # only the wrap-around padding is unbalanced


def test_slices_per_patient_limits_each_patient_per_epoch():
    s = SliceSampler([0, 1, 0, 1], [10, 10, 3, 10], batch_size=2, seed=0, slices_per_patient=4, balance=False)
    pairs = np.concatenate([np.stack(b, 1) for b in s.epoch(1)])
    distinct = np.unique(pairs, axis=0)  # 15 slices, padded to 16 by wrapping around
    assert np.bincount(distinct[:, 0], minlength=4).tolist() == [4, 4, 3, 4]
    assert len(pairs) == 16 and s.steps_per_epoch == 8


def test_load_batch_copies_the_chosen_slices_positions_and_labels():
    patients = fake_patients(5, size=16)
    p_idx, s_idx = np.array([3, 0, 4]), np.array([1, 2, 0])
    b = load_batch(patients, p_idx, s_idx)
    for row, (p, s) in enumerate(zip(p_idx, s_idx)):
        np.testing.assert_array_equal(b.images[row], patients[p].slices[s])
        assert b.positions[row] == patients[p].positions[s]
        assert b.labels[row] == patients[p].weak_label and b.histo_labels[row] == patients[p].histo_label
    assert b.images.dtype == np.float32 and b.images.flags.writeable


def test_prefetch_keeps_order_and_reraises_errors():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise KeyError("bad slice")

    with pytest.raises(KeyError, match="bad slice"):
        list(prefetch(broken()))


def test_leaving_prefetch_early_stops_its_thread():
    before = threading.active_count()
    for item in prefetch(iter(range(1000)), depth=2):
        if item == 3:
            break
    time.sleep(0.3)
    assert threading.active_count() == before


def _close_partners(labels, n_slices, batches, window=0.05):
    """Mean, over anchors, of the same-label slices of other patients within `window` of the anchor's relative d."""
    counts = []
    for patients, slices in batches:
        rel = slices / (np.asarray(n_slices)[patients] - 1)
        y = np.asarray(labels)[patients]
        close = (np.abs(rel[:, None] - rel[None, :]) < window) & (y[:, None] == y[None, :])
        counts.extend(close.sum(1) - 1)  # minus the anchor itself
    return float(np.mean(counts))


def test_position_groups_multiply_same_label_partners_at_the_anchors_height():
    rng = np.random.default_rng(0)
    labels, n_slices = np.arange(300) % 3, rng.integers(40, 90, 300)
    uniform = _sampler(labels, n_slices, batch_size=64, steps_per_epoch=20).epoch(0)
    grouped = _sampler(labels, n_slices, batch_size=64, steps_per_epoch=20, position_groups=4).epoch(0)
    # uniform d: P(|du| < 0.05) ~ 0.1, so ~ 63 / 3 * 0.1 ~ 2 partners; grouped: the 16 rows of a group
    # share d (to rounding), ~ 15 / 3 = 5 of them with the anchor's label
    base, stratified = _close_partners(labels, n_slices, uniform), _close_partners(labels, n_slices, grouped)
    assert 1.0 < base < 3.0 and stratified > 4.0 and stratified > 2 * base
