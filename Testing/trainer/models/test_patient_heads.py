"""Patient heads: shapes, contributions on the patient's scale, permutation invariance, config round trip."""

from __future__ import annotations

import pytest
import torch

from wsp_cirrhosis.errors import ConfigError
from wsp_cirrhosis.models.patient_heads import (
    PATIENT_HEADS,
    band_index,
    build_patient_head,
    fourier_height,
    head_from_config,
)


def _patient(s: int = 13, f: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s, f, generator=g), torch.rand(s, generator=g)


@pytest.mark.parametrize("name", PATIENT_HEADS)
def test_each_head_gives_a_scalar_logit_and_slice_contributions_that_sum_to_it(name):
    torch.manual_seed(0)
    head = build_patient_head(name, in_dim=8)
    h, d = _patient()
    logit, contributions = head(h, d)
    assert logit.shape == () and contributions.shape == (13,) and head.slice_logits(h, d).shape == (13,)
    assert torch.allclose(contributions.sum(), logit)
    logit.backward()  # differentiable end to end, into every parameter
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    one, _ = head(h[:1], d[:1])  # a bag of one slice
    assert torch.isfinite(one)


@pytest.mark.parametrize("name", PATIENT_HEADS)
def test_reordering_the_slices_with_their_heights_changes_nothing(name):
    torch.manual_seed(1)
    head = build_patient_head(name, in_dim=8).double()
    h, d = _patient(seed=2)
    h, d = h.double(), d.double()
    perm = torch.randperm(len(d))
    logit, contributions = head(h, d)
    logit_p, contributions_p = head(h[perm], d[perm])
    assert torch.allclose(logit, logit_p) and torch.allclose(contributions[perm], contributions_p)


def test_bands_head_is_blind_to_which_slice_of_a_band_carries_what_but_not_to_the_band():
    torch.manual_seed(0)
    head = build_patient_head("bands", in_dim=4, bands=5).double()
    d = torch.tensor([0.05, 0.1, 0.15, 0.5, 0.55, 0.9], dtype=torch.float64)
    h = torch.randn(6, 4, dtype=torch.float64)
    swapped = h.clone()
    swapped[[0, 2]] = h[[2, 0]]  # two slices of band 0 trade features, heights kept
    assert torch.allclose(head(h, d)[0], head(swapped, d)[0])
    moved = h.clone()
    moved[[0, 3]] = h[[3, 0]]  # a slice of band 0 trades with one of band 2
    assert not torch.allclose(head(h, d)[0], head(moved, d)[0])
    assert band_index(torch.tensor([0.0, 0.199, 0.2, 0.999, 1.0]), 5).tolist() == [0, 0, 1, 4, 4]


def test_mean_head_is_the_mean_of_slice_logits_and_blind_to_height():
    head = build_patient_head("mean", in_dim=8)
    h, d = _patient()
    assert torch.allclose(head(h, d)[0], head.slice_logits(h, d).mean())
    assert torch.allclose(head(h, d)[0], head(h, torch.rand(13))[0])


def test_attention_weights_sum_to_one_and_see_the_height():
    torch.manual_seed(0)
    head = build_patient_head("attention", in_dim=8)
    h, d = _patient()
    a = head.attention(h, d)
    assert torch.all(a > 0) and torch.allclose(a.sum(), torch.tensor(1.0))
    assert not torch.allclose(a, head.attention(h, 1 - d))
    enc = fourier_height(torch.tensor([0.0, 0.5, 1.0]), 4)
    assert enc.shape == (3, 9) and torch.allclose(enc[:, 0], torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("name", PATIENT_HEADS)
def test_config_rebuilds_the_same_head(name):
    torch.manual_seed(0)
    head = build_patient_head(name, in_dim=8)
    again = head_from_config(head.config())
    again.load_state_dict(head.state_dict())
    h, d = _patient()
    assert type(again) is type(head) and torch.allclose(again(h, d)[0], head(h, d)[0])


def test_unknown_head_and_bad_band_count_are_config_errors():
    with pytest.raises(ConfigError, match="unknown patient head 'max'.*mean, bands, attention"):
        build_patient_head("max")
    with pytest.raises(ConfigError, match="--bands"):
        build_patient_head("bands", bands=0)
