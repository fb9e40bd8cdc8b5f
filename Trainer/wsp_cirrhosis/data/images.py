"""Read CT volumes and liver masks (NIfTI, NRRD, MetaImage, DICOM series) with SimpleITK."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

log = logging.getLogger("wsp_cirrhosis")

FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# Below air (-1000 HU) with room for padding values; above dense metal.
CT_MIN_HU, CT_MAX_HU = -3100.0, 32767.0


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D image from a file or a DICOM series folder.

    Raises:
        InputError: missing or unreadable file, unsupported format, not a 3D scalar volume.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        name = path.name.lower()
        if not name.endswith(FILE_SUFFIXES) and not name.endswith(".dcm"):
            raise InputError(f"{path}: unsupported format; use NIfTI (.nii/.nii.gz), NRRD, MetaImage (.mha/.mhd) or a DICOM folder")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot read image ({_first_line(exc)})") from None
    _check_3d_scalar(image, path)
    return image


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot scan for DICOM files ({_first_line(exc)})") from None
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    files_per_series = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    sid = max(files_per_series, key=lambda s: len(files_per_series[s]))
    if len(series) > 1:
        log.warning("%s: %d DICOM series found; reading the largest (%s, %d files)",
                    folder, len(series), sid, len(files_per_series[sid]))
    reader.SetFileNames(files_per_series[sid])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read DICOM series ({_first_line(exc)})") from None


def _check_3d_scalar(image: sitk.Image, path: Path) -> None:
    dim = image.GetDimension()
    if dim != 3:
        raise InputError(f"{path}: {dim}D image; a 3D CT volume is required")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar CT volume is required")
    if min(image.GetSize()) < 2:
        raise InputError(f"{path}: a single slice (size {image.GetSize()}); a 3D CT volume is required")


def check_ct(image: sitk.Image, path: str | Path = "image") -> None:
    """Refuse volumes whose intensities do not look like CT in Hounsfield units.

    CT shows air near -1000 HU; MR, PET or unrescaled CT (0..4095) do not.
    """
    arr = sitk.GetArrayViewFromImage(image)
    sample = arr[::2, ::4, ::4] if arr.size > 4_000_000 else arr
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if not np.isfinite([lo, hi]).all():
        raise InputError(f"{path}: image holds NaN or infinite values")
    if lo > -300.0 or hi < -100.0 or sample.min() < CT_MIN_HU or hi > 4000.0:
        raise InputError(
            f"{path}: intensity range {lo:.0f}..{hi:.0f} (0.5-99.5th percentile) does not look like CT in "
            "Hounsfield units (air near -1000 HU expected); check it is a CT rescaled to HU"
        )


def read_mask(path: str | Path, liver_label: int | None = None) -> sitk.Image:
    """Read a liver mask and return it as binary uint8 (1 = liver).

    Args:
        path: mask file or DICOM folder.
        liver_label: value of the liver in a multi-label map; None accepts a single non-zero value.

    Raises:
        InputError: unreadable, empty, or multi-label without `liver_label`.
    """
    image = read_image(path)
    return binarize_mask(image, liver_label, path)


def binarize_mask(image: sitk.Image, liver_label: int | None, path: str | Path = "mask") -> sitk.Image:
    """Binary uint8 liver mask from a label image (see `read_mask`)."""
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f" and not np.all(np.mod(arr[arr != 0], 1) == 0):
        arr = (arr > 0.5).astype(np.uint8)  # a probability map: liver where p > 0.5
    labels = _labels_present(arr)
    if liver_label is not None:
        if liver_label not in labels:
            raise InputError(f"{path}: liver label {liver_label} not in mask (labels present: {_fmt(labels)})")
        binary = arr == liver_label
    else:
        if not labels:
            raise InputError(f"{path}: mask is empty (no non-zero voxel)")
        if len(labels) > 1:
            raise InputError(f"{path}: multi-label mask (labels {_fmt(labels)}); pass the liver's value with --liver-label")
        binary = arr != 0
    out = sitk.GetImageFromArray(binary.astype(np.uint8))
    out.CopyInformation(image)
    return out


def _labels_present(arr: np.ndarray) -> list[int]:
    if arr.dtype.kind in "ui" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 1:  # the common binary mask: no histogram (and no int64 copy) needed
            return [1] if hi == 1 else []
    if arr.dtype.kind in "ui" and arr.size and arr.min() >= 0 and arr.max() < 1 << 16:
        counts = np.bincount(arr.ravel().astype(np.int64, copy=False))
        return [int(v) for v in np.flatnonzero(counts) if v != 0]
    values = np.unique(arr)
    return [int(v) for v in values if v != 0]


def _fmt(labels: list[int]) -> str:
    return ", ".join(map(str, labels[:12])) + (" ..." if len(labels) > 12 else "") if labels else "none"


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = [ln for ln in lines if "ERROR" in ln.upper() or "exception" in ln.lower()]
    return (detail[-1] if detail else (lines[-1] if lines else type(exc).__name__))[:200]
