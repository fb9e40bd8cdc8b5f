"""Per-patient shortcut cues of a cohort: geometry, scanner, liver intensity, texture and shape.

The CT slices come from the slice cache (windowed to [0, 1], cropped to the liver box, resized:
exactly what a model sees), so HU values are those inside the preprocessing window. The liver
mask is cut with the same function and geometry (slices.extract_liver_slices on the mask), so
each cached slice gets its own liver pixels without a second copy of the CT. Geometry (volume,
extent, spacing) and scanner tags come from the files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..config import PreprocessConfig
from ..data.cache import CachedPatient
from ..data.images import read_image, read_mask
from ..data.manifest import PatientRecord
from ..data.orientation import align_mask, orient_to_canonical
from ..data.slices import extract_liver_slices

N_BANDS = 5
# cues measured on every liver slice: whole-patient value = mean over slices, band value = mean in band
SLICE_CUES = {
    "liver_fraction": "liver share of the model's square crop",
    "hu_mean": "mean liver HU (inside the preprocessing window)",
    "hu_std": "standard deviation of liver HU",
    "texture": "high-pass texture energy in the liver (HU, std of image minus its 1-pixel Gaussian blur)",
    "contour": "liver contour irregularity: perimeter / sqrt(area) (3.5 for a disc; nodules raise it)",
    "solidity": "liver area / area of its convex hull (bulges and notches lower it)",
}
VOLUME_CUES = {
    "volume_ml": "liver volume (mL)",
    "extent_mm": "liver extent along z (mm)",
    "liver_slices": "number of liver slices",
    "slice_thickness_mm": "slice spacing along z (mm)",
    "pixel_mm": "in-plane pixel spacing (mm)",
}
DICOM_TAGS = {"manufacturer": "0008|0070", "model": "0008|1090"}


def band_of(positions: np.ndarray) -> np.ndarray:
    """Position band 0..N_BANDS-1 of each d in [0, 1] (band b covers [b/5, (b+1)/5), d = 1 in the last)."""
    return np.minimum((np.asarray(positions) * N_BANDS).astype(int), N_BANDS - 1)


def scanner_tags(path: Path) -> dict[str, str]:
    """Manufacturer and model from a DICOM header (first file of a series folder); {} otherwise."""
    first = None
    if path.is_dir():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
        first = files[0] if files else None
    elif path.name.lower().endswith(".dcm"):
        first = str(path)
    if first is None:
        return {}
    reader = sitk.ImageFileReader()
    reader.SetFileName(first)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {k: reader.GetMetaData(tag).strip() for k, tag in DICOM_TAGS.items() if reader.HasMetaDataKey(tag)}


def _slice_shape(mask: np.ndarray) -> tuple[float, float]:
    """(contour, solidity) of one binary slice; nan when the liver covers under 4 pixels."""
    area = int(mask.sum())
    if area < 4:
        return float("nan"), float("nan")
    padded = np.pad(mask, 1)
    # perimeter: pixel edges between liver and background
    edges = np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1])
    rows, cols = np.nonzero(mask)
    corners = np.concatenate([np.c_[rows + dr, cols + dc] for dr in (0, 1) for dc in (0, 1)]).astype(float)
    try:
        from scipy.spatial import ConvexHull

        hull = ConvexHull(corners).volume  # 2D: the area
    except Exception:  # collinear pixels: a degenerate hull
        hull = float(area)
    return edges / np.sqrt(area), area / hull


def patient_cues(record: PatientRecord, cached: CachedPatient, cfg: PreprocessConfig) -> dict:
    """All cues of one patient: whole-patient values and, for slice cues, one value per band."""
    image = read_image(record.image)
    mask = align_mask(read_mask(record.liver_mask, cfg.liver_label), image, record.liver_mask)
    canonical = orient_to_canonical(mask)
    arr = sitk.GetArrayViewFromImage(canonical)
    spacing = canonical.GetSpacing()
    ks = np.flatnonzero(arr.reshape(arr.shape[0], -1).any(axis=1))
    row: dict = {
        "patient_id": record.patient_id, "weak_label": record.weak_label, "histo_label": record.histo_label,
        "volume_ml": float(arr.sum() * np.prod(spacing) / 1000.0),
        "extent_mm": float((ks[-1] - ks[0] + 1) * spacing[2]) if ks.size else 0.0,
        "liver_slices": int(ks.size), "slice_thickness_mm": float(spacing[2]), "pixel_mm": float(np.mean(spacing[:2])),
        **{k: "" for k in DICOM_TAGS}, **scanner_tags(Path(record.image)),
    }
    # the mask cut like the CT: window 0..1 keeps it binary before the (antialiased) resize
    mask_cfg = dataclasses.replace(cfg, window_min_hu=0.0, window_max_hu=1.0)
    crops = extract_liver_slices(sitk.Cast(canonical, sitk.sitkFloat32), canonical, mask_cfg).slices > 0.5
    ct = np.asarray(cached.slices, np.float32)
    if len(crops) != len(ct):  # stale cache against this mask: not expected, the cache key covers the mask
        raise ValueError(f"{record.patient_id}: {len(ct)} cached slices but {len(crops)} mask slices")
    hu = cfg.window_min_hu + ct * (cfg.window_max_hu - cfg.window_min_hu)
    high = hu - ndimage.gaussian_filter(hu, sigma=(0, 1, 1))
    inner = ndimage.binary_erosion(crops, structure=np.ones((1, 3, 3), bool))  # away from the blurred border
    per_slice = {k: np.full(len(ct), np.nan) for k in SLICE_CUES}
    for i in range(len(ct)):
        per_slice["liver_fraction"][i] = crops[i].mean()
        if inner[i].sum() >= 4:
            vals = hu[i][inner[i]]
            per_slice["hu_mean"][i], per_slice["hu_std"][i] = vals.mean(), vals.std()
            per_slice["texture"][i] = high[i][inner[i]].std()
        per_slice["contour"][i], per_slice["solidity"][i] = _slice_shape(crops[i])
    bands = band_of(cached.positions)
    for name, values in per_slice.items():
        row[name] = _nanmean(values)
        for b in range(N_BANDS):
            row[f"{name}@d{b}"] = _nanmean(values[bands == b])
    return row


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def band_label(b: int) -> str:
    """'d 0.4-0.6' for band 2."""
    return f"d {b / N_BANDS:.1f}-{(b + 1) / N_BANDS:.1f}"
