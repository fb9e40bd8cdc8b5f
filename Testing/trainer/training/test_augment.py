"""augment.py: reproducible batched views, exact geometry of the affine map, rank slicing."""

from __future__ import annotations

import pytest
import torch

from wsp_cirrhosis.training.augment import Augment, ViewParams, apply_views, random_views

IDENTITY = Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0), translate=0.0, rotate_deg=0.0, flip_lr=0.0,
                   flip_ud=0.0, contrast=0.0, brightness=0.0)


def _images(b: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_generator_seed_gives_identical_views_and_another_seed_does_not():
    x = _images()
    a1, a2 = random_views(x, _gen(3))
    b1, b2 = random_views(x, _gen(3))
    c1, _ = random_views(x, _gen(4))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, c1)
    assert not torch.equal(a1, a2)  # the two views of a slice differ


def test_views_keep_shape_dtype_and_device():
    x = _images().double()
    views = random_views(x, _gen(), n_views=3)
    assert len(views) == 3
    for v in views:
        assert v.shape == x.shape and v.dtype == x.dtype and v.device == x.device


def test_identity_distribution_returns_the_input():
    x = _images()
    (v,) = random_views(x, _gen(), IDENTITY, n_views=1)
    torch.testing.assert_close(v, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("flip,dims", [("flip_lr", [3]), ("flip_ud", [2])])
def test_certain_flip_is_the_array_flip(flip, dims):
    x = _images()
    aug = Augment(**{**IDENTITY.__dict__, flip: 1.0})
    (v,) = random_views(x, _gen(), aug, n_views=1)
    torch.testing.assert_close(v, torch.flip(x, dims), rtol=0, atol=1e-5)


def test_theta_of_a_quarter_turn_rotates_the_image_by_90_degrees():
    x = _images(2, 16)
    theta = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]).expand(2, 2, 3)
    v = apply_views(x, ViewParams(theta, torch.ones(2), torch.zeros(2)))
    # output (row i, col j) samples input at x_in = -y_out, y_in = x_out
    torch.testing.assert_close(v, torch.rot90(x, 1, dims=(2, 3)), rtol=0, atol=1e-5)


def test_sampled_parameters_stay_in_their_ranges():
    aug = Augment()
    p = aug.sample(4000, _gen())
    linear = p.theta[:, :, :2]
    det = torch.linalg.det(linear.double()).abs()  # area fraction of the crop
    assert det.min() >= 0.7 * 0.999 and det.max() <= 1.0 + 1e-6
    assert p.theta[:, :, 2].abs().max() <= 0.4 + 1e-6  # 20% of the side = 0.4 normalised units
    assert ((p.gain >= 0.9) & (p.gain <= 1.1)).all() and p.bias.abs().max() <= 0.05 + 1e-7
    # both flips happen about half of the time: sign of each column's determinant contribution
    flips = (torch.linalg.det(linear.double()) < 0).double().mean()
    assert 0.4 < flips < 0.6
    # rotation angle within +-30 degrees (a flip of one axis mirrors, so read the angle of column 0)
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0]).abs()
    flipped_x = linear[:, 0, 0] < 0
    angle = torch.where(flipped_x, torch.pi - angle, angle)
    assert angle.max() <= torch.deg2rad(torch.tensor(30.0)) + 1e-5


def test_rank_parts_of_a_global_batch_equal_the_single_process_views():
    x = _images(8)
    whole = random_views(x, _gen(7))
    parts = [random_views(x[r * 4:(r + 1) * 4], _gen(7), offset=r * 4, total=8) for r in range(2)]
    for v in range(2):
        torch.testing.assert_close(torch.cat([parts[0][v], parts[1][v]]), whole[v], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"scale": (0.0, 1.0)}, "scale"),
    ({"scale": (0.9, 0.7)}, "scale"),
    ({"ratio": (2.0, 1.0)}, "ratio"),
    ({"translate": 1.5}, "translate"),
    ({"flip_lr": -0.1}, "flip_lr"),
    ({"rotate_deg": 270.0}, "rotate_deg"),
    ({"brightness": -1.0}, "brightness"),
])
def test_bad_distribution_parameters_name_the_field(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Augment(**kwargs)


def test_bad_shapes_and_rows_are_refused():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        random_views(torch.rand(4, 16, 16), _gen())
    with pytest.raises(ValueError, match="global batch"):
        random_views(_images(4), _gen(), offset=2, total=4)
