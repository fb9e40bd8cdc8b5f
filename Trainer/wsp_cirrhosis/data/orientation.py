"""Canonical orientation and mask-to-image geometry checks.

Canonical = LPS axes: array index k grows from inferior to superior, so slice order follows
physical z whatever the storage order of the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

CANONICAL = "LPS"


def orient_to_canonical(image: sitk.Image) -> sitk.Image:
    """Permute and flip axes (no interpolation) so the direction is closest to LPS identity."""
    return sitk.DICOMOrient(image, CANONICAL)


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when size, spacing, origin and direction agree (origin within tol x spacing)."""
    if a.GetSize() != b.GetSize():
        return False
    spacing = np.array(a.GetSpacing())
    return bool(
        np.allclose(spacing, b.GetSpacing(), rtol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * spacing.min() * 10)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) LPS corner of the volume's voxel-centre box."""
    size = np.array(image.GetSize()) - 1
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in idx])
        for idx in np.array(np.meshgrid(*[[0, s] for s in size])).T.reshape(-1, 3)
    ]
    pts = np.array(corners)
    return pts.min(0), pts.max(0)


def align_mask(mask: sitk.Image, image: sitk.Image, mask_path: str | Path = "mask") -> sitk.Image:
    """Return the mask on the image's grid.

    Identical grids pass through (the image's exact geometry is copied); a different grid
    covering the same body region is resampled with nearest neighbour.

    Raises:
        InputError: the mask does not overlap the image, or no liver voxel lands on the image grid.
    """
    if same_grid(mask, image):
        out = sitk.Image(mask)
        out.CopyInformation(image)
        return out
    lo_m, hi_m = physical_bounds(mask)
    lo_i, hi_i = physical_bounds(image)
    if np.any(hi_m < lo_i - 1e-3) or np.any(hi_i < lo_m - 1e-3):
        raise InputError(
            f"{mask_path}: mask does not overlap the image (mask spans {np.round(lo_m, 1)}..{np.round(hi_m, 1)} mm, "
            f"image {np.round(lo_i, 1)}..{np.round(hi_i, 1)} mm in LPS); is it the mask of another scan?"
        )
    out = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(out).any():
        raise InputError(f"{mask_path}: no liver voxel of the mask falls inside the image; is it the mask of another scan?")
    return out


def original_slice_index(original: sitk.Image, canonical: sitk.Image, k: np.ndarray) -> np.ndarray:
    """Index along the original image's slice axis of canonical slices `k` (same physical plane)."""
    direction = np.array(original.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[2])))  # the stored axis closest to physical z
    out = []
    for kk in np.asarray(k):
        point = canonical.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(kk)))
        out.append(int(round(original.TransformPhysicalPointToContinuousIndex(point)[axis])))
    return np.array(out, dtype=np.int64)
