"""contrastive_loss / weighted_info_nce against the naive reference, limit cases and invariances.

Inputs are fresh random draws on every run; the seed is printed (shown on failure) and can be
replayed with WSP_TEST_SEED=<seed>.
"""

import math
import os
import random

import pytest
import torch
import torch.nn.functional as F

from reference import reference_loss
from wsp_cirrhosis.training.losses import PRESETS, contrastive_loss, weighted_info_nce

METHODS = ["simclr", "supcon", "positional", "pcl", "wsp"]


@pytest.fixture
def gen() -> torch.Generator:
    seed = int(os.environ.get("WSP_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"random seed {seed}; replay with WSP_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


def make_batch(gen, n=6, dim=5, classes=3, dtype=torch.float64):
    z1 = torch.randn(n, dim, generator=gen, dtype=dtype)
    z2 = z1 + 0.5 * torch.randn(n, dim, generator=gen, dtype=dtype)
    labels = torch.randint(0, classes, (n,), generator=gen)
    positions = torch.rand(n, generator=gen, dtype=dtype)
    return z1, z2, labels, positions


def uniform(gen, low, high):
    return low + (high - low) * torch.rand((), generator=gen, dtype=torch.float64).item()


def test_presets_are_the_five_methods():
    assert sorted(PRESETS) == sorted(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_each_preset_matches_naive_reference(gen, method):
    n = int(torch.randint(2, 9, (), generator=gen))
    z1, z2, labels, positions = make_batch(gen, n=n)
    params = dict(sigma=uniform(gen, 0.1, 1.0), tau=uniform(gen, 0.05, 0.5), threshold=uniform(gen, 0.05, 0.5))
    got = contrastive_loss(z1, z2, labels, positions, method=method, **params)
    expected = reference_loss(z1.tolist(), z2.tolist(), labels.tolist(), positions.tolist(), method, **params)
    assert got.dtype == torch.float64
    assert abs(got.item() - expected) < 1e-10, (got.item(), expected, params)


def test_wsp_with_infinite_sigma_equals_supcon(gen):
    z1, z2, labels, positions = make_batch(gen)
    wsp = contrastive_loss(z1, z2, labels, positions, method="wsp", sigma=math.inf)
    supcon = contrastive_loss(z1, z2, labels, method="supcon")
    torch.testing.assert_close(wsp, supcon, rtol=0, atol=1e-12)


def test_wsp_with_one_class_equals_positional(gen):
    z1, z2, _, positions = make_batch(gen)
    one_class = torch.zeros(z1.shape[0], dtype=torch.long)
    wsp = contrastive_loss(z1, z2, one_class, positions, method="wsp", sigma=0.4)
    positional = contrastive_loss(z1, z2, positions=positions, method="positional", sigma=0.4)
    torch.testing.assert_close(wsp, positional, rtol=0, atol=1e-12)


def test_simclr_equals_nt_xent(gen):
    z1, z2, _, _ = make_batch(gen, n=7, dim=4)
    tau = uniform(gen, 0.05, 0.5)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    twin = (torch.arange(14) + 7) % 14
    nt_xent = F.cross_entropy(logits, twin)
    torch.testing.assert_close(contrastive_loss(z1, z2, method="simclr", tau=tau), nt_xent, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(gen, method):
    z1, z2, labels, positions = make_batch(gen, n=4, dim=3, classes=2)
    z1.requires_grad_(), z2.requires_grad_()

    def loss(a, b):
        return contrastive_loss(a, b, labels, positions, method=method, sigma=0.3, tau=0.2, threshold=0.3)

    assert torch.autograd.gradcheck(loss, (z1, z2))


@pytest.mark.parametrize("method", METHODS)
def test_permuting_batch_and_swapping_views_leave_loss_unchanged(gen, method):
    z1, z2, labels, positions = make_batch(gen, n=8)
    base = contrastive_loss(z1, z2, labels, positions, method=method)
    perm = torch.randperm(8, generator=gen)
    permuted = contrastive_loss(z1[perm], z2[perm], labels[perm], positions[perm], method=method)
    swapped = contrastive_loss(z2, z1, labels, positions, method=method)
    torch.testing.assert_close(permuted, base, rtol=0, atol=1e-12)
    torch.testing.assert_close(swapped, base, rtol=0, atol=1e-12)


def test_bf16_autocast_gives_finite_float32_loss_close_to_fp32(gen):
    x1, x2 = torch.randn(16, 32, generator=gen), torch.randn(16, 32, generator=gen)
    labels = torch.randint(0, 3, (16,), generator=gen)
    positions = torch.rand(16, generator=gen)
    head = torch.nn.Linear(32, 16)
    fp32 = contrastive_loss(head(x1), head(x2), labels, positions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = head(x1), head(x2)
        assert z1.dtype == torch.bfloat16
        mixed = contrastive_loss(z1, z2, labels, positions)
    mixed.backward()
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert torch.isfinite(head.weight.grad).all()
    torch.testing.assert_close(mixed, fp32, rtol=5e-3, atol=0)  # observed <= 1e-3


def test_weighted_info_nce_normalises_rows_and_ignores_zero_weight_self(gen):
    sim = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    sim[torch.arange(4), torch.arange(4)] = float("-inf")
    weights = torch.rand(4, 6, generator=gen, dtype=torch.float64)
    weights[torch.arange(4), torch.arange(4)] = 0.0
    weights[:, 5] = 0.0  # zero-weight candidates besides self
    sim.requires_grad_()
    loss = weighted_info_nce(sim, weights)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(sim.grad).all()
    scaled = weighted_info_nce(sim.detach(), weights * torch.rand(4, 1, generator=gen, dtype=torch.float64) * 10)
    torch.testing.assert_close(scaled, loss.detach(), rtol=0, atol=1e-12)


def _z(n=4):
    return torch.randn(n, 3), torch.randn(n, 3)


BAD_CALLS = [
    ("unknown_method", lambda: contrastive_loss(*_z(), method="simclear"), "choose one of simclr, supcon, positional, pcl, wsp. Did you mean 'simclr'"),
    ("far_method", lambda: contrastive_loss(*_z(), method="byol"), "Unknown method 'byol'"),
    ("supcon_no_labels", lambda: contrastive_loss(*_z(), method="supcon"), "needs the `labels` argument"),
    ("wsp_no_labels", lambda: contrastive_loss(*_z(), positions=torch.rand(4)), "needs the `labels` argument"),
    ("wsp_no_positions", lambda: contrastive_loss(*_z(), labels=torch.zeros(4, dtype=torch.long)), "needs the `positions` argument"),
    ("positional_no_positions", lambda: contrastive_loss(*_z(), method="positional"), "needs the `positions` argument"),
    ("pcl_no_positions", lambda: contrastive_loss(*_z(), method="pcl"), "needs the `positions` argument"),
    ("view_shapes", lambda: contrastive_loss(torch.randn(4, 3), torch.randn(5, 3), method="simclr"), r"got \(4, 3\) and \(5, 3\)"),
    ("label_shape", lambda: contrastive_loss(*_z(), labels=torch.zeros(3, dtype=torch.long), method="supcon"), r"`labels` must have shape \(4,\)"),
    ("tau_zero", lambda: contrastive_loss(*_z(), method="simclr", tau=0.0), "tau must be > 0"),
    ("sigma_negative", lambda: contrastive_loss(*_z(), method="positional", positions=torch.rand(4), sigma=-1.0), "sigma must be > 0"),
]


@pytest.mark.parametrize("call, fragment", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error_with_the_fix(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()
