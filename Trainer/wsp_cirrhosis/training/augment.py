"""Random views of CT slices as batched torch ops on the model's device (method.md, "Batches").

One view = flips, a random resized crop, a translation and a rotation, each applied with its own
probability (composed into one affine map per slice, applied by a single ``affine_grid`` +
``grid_sample`` call for the whole batch), then an optional linear intensity jitter. Two
distributions are named: ``PAPER_AUGMENT`` (the paper's code: every transform with p = 0.5, crop
scale exactly 0.7, no intensity change) and ``DEFAULT_AUGMENT`` (this project's default; its
departures are listed in docs/method.md). The random parameters are drawn on the CPU from a
``torch.Generator`` for the *global* batch and each rank applies its own rows, so a run gives the
same views on any device and with any number of processes (the distributed test relies on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# uniform numbers per view: area, log-ratio, angle, tx, ty, flip x, flip y, gain, bias, crop?, shift?, rotate?
_N_DRAWS = 12


@dataclass(frozen=True)
class ViewParams:
    """Random parameters of a batch of views.

    Attributes:
        theta: (B, 2, 3) float32, affine map from output to input normalised coordinates
            (``torch.nn.functional.affine_grid`` convention, align_corners=False).
        gain: (B,) float32, intensity multiplier.
        bias: (B,) float32, intensity offset (image intensities are in [0, 1]).
    """

    theta: torch.Tensor
    gain: torch.Tensor
    bias: torch.Tensor

    def rows(self, start: int, stop: int) -> "ViewParams":
        """The parameters of views ``start:stop`` (a rank's part of the global batch)."""
        return ViewParams(self.theta[start:stop], self.gain[start:stop], self.bias[start:stop])


@dataclass(frozen=True)
class Augment:
    """Distribution of one random view of a square slice.

    Args:
        scale: (min, max) area fraction of the random resized crop (method.md: about 0.7 to 1).
        ratio: (min, max) aspect ratio of the crop, drawn log-uniformly.
        translate: largest shift along each axis, as a fraction of the image side (0.2 = 20%).
        rotate_deg: largest rotation angle in degrees (drawn in [-rotate_deg, rotate_deg]).
        flip_lr: probability of a left-right flip.
        flip_ud: probability of an up-down (anterior-posterior) flip.
        contrast: intensity gain drawn in [1 - contrast, 1 + contrast].
        brightness: intensity offset drawn in [-brightness, brightness].
        p_crop: probability that the random resized crop is applied (else the whole image).
        p_translate: probability that the translation is applied.
        p_rotate: probability that the rotation is applied.

    Raises:
        ValueError: a parameter outside its range (the message names it).
    """

    scale: tuple[float, float] = (0.7, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: float = 0.2
    rotate_deg: float = 30.0
    flip_lr: float = 0.5
    flip_ud: float = 0.5
    contrast: float = 0.1
    brightness: float = 0.05
    p_crop: float = 1.0
    p_translate: float = 1.0
    p_rotate: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("translate", "flip_lr", "flip_ud", "contrast", "p_crop", "p_translate", "p_rotate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.rotate_deg <= 180:
            raise ValueError(f"rotate_deg must be in [0, 180], got {self.rotate_deg}")
        if not self.brightness >= 0:
            raise ValueError(f"brightness must be >= 0, got {self.brightness}")

    def sample(self, n: int, generator: torch.Generator) -> ViewParams:
        """Draw the parameters of ``n`` views (on the CPU, float32).

        Args:
            n: number of views.
            generator: CPU generator; the only source of randomness.

        Returns:
            ViewParams with (n, 2, 3) ``theta`` and (n,) ``gain`` / ``bias``.
        """
        u = torch.rand(n, _N_DRAWS, generator=generator, dtype=torch.float64)
        lerp = lambda lo, hi, col: lo + (hi - lo) * u[:, col]  # noqa: E731
        crop, shift, turn = u[:, 9] < self.p_crop, u[:, 10] < self.p_translate, u[:, 11] < self.p_rotate
        area = torch.where(crop, lerp(self.scale[0], self.scale[1], 0), 1.0)
        ratio = torch.where(crop, torch.exp(lerp(math.log(self.ratio[0]), math.log(self.ratio[1]), 1)), 1.0)
        # Crop side as a fraction of the image side; a crop larger than the image is clipped.
        sx, sy = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
        sx = sx * torch.where(u[:, 5] < self.flip_lr, -1.0, 1.0)
        sy = sy * torch.where(u[:, 6] < self.flip_ud, -1.0, 1.0)
        angle = torch.where(turn, lerp(-self.rotate_deg, self.rotate_deg, 2), 0.0) * (math.pi / 180)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Normalised coordinates span 2 per side: a shift of `translate` sides is 2 * translate.
        tx = torch.where(shift, lerp(-2 * self.translate, 2 * self.translate, 3), 0.0)
        ty = torch.where(shift, lerp(-2 * self.translate, 2 * self.translate, 4), 0.0)
        theta = torch.stack([
            torch.stack([cos * sx, -sin * sy, tx], dim=1),
            torch.stack([sin * sx, cos * sy, ty], dim=1),
        ], dim=1)
        gain = lerp(1 - self.contrast, 1 + self.contrast, 7)
        bias = lerp(-self.brightness, self.brightness, 8)
        return ViewParams(theta.float(), gain.float(), bias.float())


# The paper's code (kornia; method.md "Batches, augmentations"): each transform with p = 0.5.
PAPER_AUGMENT = Augment(scale=(0.7, 0.7), translate=0.2, rotate_deg=30.0, flip_lr=0.5, flip_ud=0.5,
                        contrast=0.0, brightness=0.0, p_crop=0.5, p_translate=0.5, p_rotate=0.5)
# This project's default (docs/method.md, "Departures"): crop area uniform on (0.7, 1), every
# geometric transform always applied, a mild intensity jitter.
DEFAULT_AUGMENT = Augment()
AUGMENTS = {"paper": PAPER_AUGMENT, "default": DEFAULT_AUGMENT}


def apply_views(images: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """Warp and jitter a batch of slices (one affine_grid + grid_sample call).

    Args:
        images: (B, 1, H, W) float slices in [0, 1], on any device.
        params: B views' parameters (any device; moved to ``images``' device).

    Returns:
        (B, 1, H, W) tensor of ``images``' dtype and device; outside the field of view is 0.

    Raises:
        ValueError: ``images`` is not (B, 1, H, W) or ``params`` holds a different B.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (B, 1, H, W), got {tuple(images.shape)}")
    if params.theta.shape[0] != images.shape[0]:
        raise ValueError(f"{params.theta.shape[0]} view parameters for {images.shape[0]} images")
    device, dtype = images.device, images.dtype
    grid = F.affine_grid(params.theta.to(device, dtype), list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = params.gain.to(device, dtype).view(-1, 1, 1, 1)
    bias = params.bias.to(device, dtype).view(-1, 1, 1, 1)
    return warped * gain + bias


def random_views(images: torch.Tensor, generator: torch.Generator, augment: Augment = Augment(),
                 n_views: int = 2, offset: int = 0, total: int | None = None) -> list[torch.Tensor]:
    """``n_views`` independent random views of each slice of (a rank's part of) a global batch.

    Parameters are drawn for ``n_views * total`` views, view-major, and rows
    ``offset : offset + B`` of each view are applied, so rank r of a K-process run (offset
    r * B, total K * B) sees exactly the views that a single process would give those slices.

    Args:
        images: (B, 1, H, W) float slices in [0, 1], on the model's device.
        generator: CPU generator, e.g. seeded from (seed, global step).
        augment: the view distribution.
        n_views: number of views per slice (2 for contrastive pretraining, 1 for fine-tuning).
        offset: index of ``images[0]`` in the global batch.
        total: size of the global batch (default: B, a single process).

    Returns:
        ``n_views`` tensors of shape (B, 1, H, W), same dtype and device as ``images``.

    Raises:
        ValueError: ``offset + B`` exceeds ``total``.
    """
    n = images.shape[0]
    total = n if total is None else total
    if offset < 0 or offset + n > total:
        raise ValueError(f"rows {offset}:{offset + n} do not fit in a global batch of {total}")
    params = augment.sample(n_views * total, generator)
    parts = [params.rows(v * total + offset, v * total + offset + n) for v in range(n_views)]
    merged = ViewParams(*(torch.cat([getattr(p, k) for p in parts]) for k in ("theta", "gain", "bias")))
    views = apply_views(images.repeat(n_views, 1, 1, 1), merged)
    return list(views.split(n))
