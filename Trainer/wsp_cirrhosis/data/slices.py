"""Liver slices: extent, position d in [0, 1], crop, HU window, resize -> (S, H, W) float32.

`prepare_ct` is THE preprocessing: the cache, inference and the Slicer module all call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..config import PreprocessConfig
from ..errors import InputError
from .images import binarize_mask, check_ct, read_image, read_mask
from .orientation import align_mask, orient_to_canonical, original_slice_index


@dataclass
class LiverSlices:
    """The liver slices of one CT, ordered inferior -> superior.

    Attributes:
        slices: (S, H, W) float32 in [0, 1], HU windowed, cropped to the liver box, resized.
        positions: (S,) float64 d in [0, 1]; 0 = most inferior liver slice, 1 = most superior.
        z_mm: (S,) physical LPS z (superior coordinate) of each slice, in mm.
        slice_index: (S,) int index of each slice along the ORIGINAL image's slice axis.
        center_lps: (S, 3) physical LPS point at the liver box centre on each slice, in mm.
        crop_mm: side of the square crop, in mm.
    """

    slices: np.ndarray
    positions: np.ndarray
    z_mm: np.ndarray
    slice_index: np.ndarray
    center_lps: np.ndarray
    crop_mm: float

    def __len__(self) -> int:
        return len(self.slices)


def window_hu(arr: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Clip to the HU window and scale to [0, 1], float32."""
    lo, hi = cfg.window_min_hu, cfg.window_max_hu
    out = (arr.astype(np.float32) - lo) * (1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def square_crop(ci: float, cj: float, side_mm: float, spacing: tuple[float, float]) -> tuple[int, int, int, int]:
    """(i0, i1, j0, j1): voxel bounds of the square crop of side `side_mm` centred on index (ci, cj).

    The one rounding rule for the liver crop: preprocessing cuts with it and relevance maps are
    pasted back with it, so the two always agree to the voxel.
    """
    half_i, half_j = side_mm / (2 * spacing[0]), side_mm / (2 * spacing[1])
    return (int(np.floor(ci - half_i + 0.5)), int(np.floor(ci + half_i + 0.5)),
            int(np.floor(cj - half_j + 0.5)), int(np.floor(cj + half_j + 0.5)))


def extract_liver_slices(image: sitk.Image, mask: sitk.Image, cfg: PreprocessConfig) -> LiverSlices:
    """Cut the liver slices out of a canonical CT and its aligned binary mask.

    Args:
        image: CT in canonical orientation (see orientation.orient_to_canonical), HU.
        mask: binary liver mask on the same grid.
        cfg: window, output size and margin.
    """
    ct = sitk.GetArrayViewFromImage(image)  # (K, J, I) = (z, y, x)
    liver = sitk.GetArrayViewFromImage(mask).astype(bool, copy=False)
    ks = np.flatnonzero(liver.reshape(liver.shape[0], -1).any(axis=1))
    if ks.size == 0:
        raise InputError("liver mask is empty on the CT grid")
    footprint = liver[ks].any(axis=0)
    rows, cols = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
    sx, sy = image.GetSpacing()[:2]
    # A square crop in mm keeps the anatomy's aspect ratio whatever the in-plane spacing.
    ci, cj = (cols[0] + cols[-1]) / 2.0, (rows[0] + rows[-1]) / 2.0
    side_mm = max((cols[-1] - cols[0] + 1) * sx, (rows[-1] - rows[0] + 1) * sy) + 2 * cfg.margin_mm
    i0, i1, j0, j1 = square_crop(ci, cj, side_mm, (sx, sy))
    crop = np.full((ks.size, j1 - j0, i1 - i0), cfg.window_min_hu, dtype=np.float32)
    sj0, sj1, si0, si1 = max(j0, 0), min(j1, ct.shape[1]), max(i0, 0), min(i1, ct.shape[2])
    crop[:, sj0 - j0:sj1 - j0, si0 - i0:si1 - i0] = ct[ks, sj0:sj1, si0:si1]
    windowed = torch.from_numpy(window_hu(crop, cfg)).unsqueeze(1)
    size = cfg.image_size
    resized = F.interpolate(windowed, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    slices = resized.squeeze(1).clamp_(0.0, 1.0).numpy()

    centers = np.array([image.TransformContinuousIndexToPhysicalPoint((float(ci), float(cj), float(k))) for k in ks])
    z = centers[:, 2]
    extent = z.max() - z.min()
    positions = (z - z.min()) / extent if extent > 0 else np.full_like(z, 0.5)
    return LiverSlices(np.ascontiguousarray(slices, dtype=np.float32), positions, z, ks.astype(np.int64), centers, float(side_mm))


def prepare_ct(
    image: sitk.Image | str | Path,
    mask: sitk.Image | str | Path,
    cfg: PreprocessConfig,
    image_path: str | Path | None = None,
    mask_path: str | Path | None = None,
) -> LiverSlices:
    """Read (if paths), check, orient and cut a CT and its liver mask into model-ready slices.

    `slice_index` refers to the slice axis of the image as given (before orientation).
    """
    if not isinstance(image, sitk.Image):
        image_path, image = image, read_image(image)
    if not isinstance(mask, sitk.Image):
        mask_path, mask = mask, read_mask(mask, cfg.liver_label)
    else:
        mask = binarize_mask(mask, cfg.liver_label, mask_path or "mask")
    check_ct(image, image_path or "image")
    mask = align_mask(mask, image, mask_path or "mask")
    canonical = orient_to_canonical(image)
    liver = extract_liver_slices(canonical, orient_to_canonical(mask), cfg)
    liver.slice_index = original_slice_index(image, canonical, liver.slice_index)
    return liver
