"""Find CTs in nested folders (image files and DICOM series), choose one series per case, pair masks.

Rules (README "Building a manifest from folders" documents them for users):

Cases
- An image file (NIfTI, NRRD, MetaImage) is one case named by its stem (`p001.nii.gz` -> `p001`);
  when several CT files share a stem, each is named by its parent folder instead
  (`p001/ct.nii.gz` -> `p001`); names that still collide are listed as ambiguous.
- DICOM series belong to the case named by the first-level folder of `--images` that holds them
  (`images/p001/study/series/*.dcm` -> `p001`; series lying directly in `--images`: the folder's name).
- Files whose stem is a mask name (`liver`, `mask`, `seg`, `segmentation`, `label`, or ends with
  `_liver`, `_mask`, `_seg`, `_segmentation`, `_label`) are masks, not CTs.

Choosing one DICOM series per case (every choice and every skipped series is reported)
1. skip series whose Modality (0008,0060) is not CT;
2. skip series that are not axial: the slice normal from ImageOrientationPatient (0020,0037)
   must be within 25 degrees of the body axis;
3. skip series with fewer than `MIN_SLICES` slices (scouts, localisers, single reformats);
4. among the rest prefer a portal-venous SeriesDescription (0008,103e) ("portal", "venous",
   "PV", "PVP", "VEN"), then the most slices, then the thinnest SliceThickness (0018,0050),
   then the smallest series UID (a stable tie-break, reported as such).
A chosen series is referenced by its folder; when that folder also holds a larger series (which
`images.read_image` would read instead) the case is listed as ambiguous, not guessed.

Masks
- A mask pairs with a case when its stem equals the case name (TCGA-LIHC: also the file's stem),
  optionally followed by a mask suffix (`p001.nii.gz`, `p001_liver.nii.gz` in `--masks`;
  `p001_seg.nrrd` anywhere),
  or when it has a bare mask name (`liver.nii.gz`) and lies in the CT's folder, in the case's
  DICOM folder, or in a `--masks` sub-folder named after the case (TotalSegmentator's layout).
- No mask, or several candidate masks: listed, and the case is left out of the manifest.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .images import FILE_SUFFIXES

log = logging.getLogger("wsp_cirrhosis")

MIN_SLICES = 10
AXIAL_MAX_DEG = 25.0
MASK_WORDS = ("liver", "mask", "seg", "segmentation", "label")
_MASK_SUFFIX = re.compile(r"^(?P<base>.+?)[_.-](?:" + "|".join(MASK_WORDS) + r")$", re.IGNORECASE)
_PORTAL = re.compile(r"portal|venous|\bpvp?\b|\bven\b", re.IGNORECASE)
_SKIP_DIRS = {".wsp-cache", "__pycache__", ".git"}


@dataclass(frozen=True)
class Series:
    """One DICOM series found by GDCM, with the header fields the choice rules read."""

    folder: Path
    uid: str
    n_slices: int
    modality: str
    description: str
    thickness_mm: float
    axial: bool | None  # None: no ImageOrientationPatient


@dataclass
class Case:
    """One patient/scan: its CT path (file or DICOM folder) and, once paired, its mask."""

    case_id: str
    image: Path
    kind: str  # "file" or "dicom"
    folder: Path  # the CT file's folder, or the case's first-level DICOM folder
    stems: tuple[str, ...] = ()
    mask: Path | None = None


@dataclass
class ScanResult:
    """What a scan found: cases, loose masks, and every decision and problem in words."""

    cases: dict[str, Case] = field(default_factory=dict)
    masks: list[Path] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)  # one line per DICOM choice
    skipped: list[str] = field(default_factory=list)  # skipped series / files, with the reason
    problems: list[str] = field(default_factory=list)  # ambiguous or bad inputs (left out)


def file_stem(path: Path) -> str:
    """The name without its image suffix (`a.nii.gz` -> `a`)."""
    name = path.name
    for suffix in sorted(FILE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_image_file(path: Path) -> bool:
    """True for NIfTI, NRRD and MetaImage files (by name)."""
    name = path.name.lower()
    return name.endswith(FILE_SUFFIXES) and not name.endswith(".raw")


def is_mask_name(stem: str) -> bool:
    """True when a file stem names a mask (`liver`, `p001_seg`, ...)."""
    return stem.lower() in MASK_WORDS or _MASK_SUFFIX.match(stem) is not None


def _walk(root: Path, exclude: Path | None) -> list[tuple[Path, list[str]]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")
                             and (exclude is None or (here / d).resolve() != exclude))
        out.append((here, sorted(f for f in filenames if not f.startswith("."))))
    return out


def read_series(folder: Path) -> list[Series]:
    """Every DICOM series GDCM finds in `folder` (not recursive), with its header fields."""
    reader = sitk.ImageSeriesReader()
    try:
        uids = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        return []
    found = []
    for uid in uids:
        files = reader.GetGDCMSeriesFileNames(str(folder), uid)
        head = sitk.ImageFileReader()
        head.SetFileName(files[0])
        try:
            head.ReadImageInformation()
        except RuntimeError:
            continue
        tag = lambda key: head.GetMetaData(key).strip() if head.HasMetaDataKey(key) else ""  # noqa: E731
        found.append(Series(folder, uid, len(files), tag("0008|0060").upper(), tag("0008|103e"),
                            _float(tag("0018|0050")), _axial(tag("0020|0037"))))
    return found


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def _axial(orientation: str) -> bool | None:
    try:
        v = np.array([float(x) for x in orientation.split("\\")], dtype=float)
    except ValueError:
        return None
    if v.size != 6:
        return None
    normal = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(normal)
    return bool(norm > 0 and abs(normal[2]) / norm >= math.cos(math.radians(AXIAL_MAX_DEG)))


def choose_series(case_id: str, series: list[Series]) -> tuple[Series | None, str, list[str]]:
    """Apply the documented rules; return (chosen or None, why, one line per skipped series)."""
    skipped, kept = [], []
    for s in series:
        what = f"{case_id}: series {s.uid} in {s.folder} ({s.n_slices} slices, {s.description or 'no description'})"
        if s.modality and s.modality != "CT":
            skipped.append(f"{what}: modality {s.modality}, not CT")
        elif s.axial is False:
            skipped.append(f"{what}: not axial")
        elif s.n_slices < MIN_SLICES:
            skipped.append(f"{what}: fewer than {MIN_SLICES} slices (files; multi-frame series are not supported)")
        else:
            kept.append(s)
    if not kept:
        return None, "no axial CT series", skipped
    ranked = sorted(kept, key=lambda s: (not _PORTAL.search(s.description), -s.n_slices, s.thickness_mm, s.uid))
    best = ranked[0]
    why = _why(best, ranked[1:])
    for s in ranked[1:]:
        skipped.append(f"{case_id}: series {s.uid} in {s.folder} ({s.n_slices} slices, "
                       f"{s.description or 'no description'}): not chosen")
    notes = [] if best.modality else ["no Modality tag"]
    notes += [] if best.axial is not None else ["no ImageOrientationPatient"]
    return best, why + (f" ({', '.join(notes)})" if notes else ""), skipped


def _why(best: Series, others: list[Series]) -> str:
    if not others:
        return "the only axial CT series"
    second = others[0]
    if _PORTAL.search(best.description) and not _PORTAL.search(second.description):
        return f"portal-venous description {best.description!r}"
    if best.n_slices != second.n_slices:
        return f"most slices ({best.n_slices} vs {second.n_slices})"
    if best.thickness_mm != second.thickness_mm:
        return f"thinnest slices ({best.thickness_mm:g} vs {second.thickness_mm:g} mm)"
    return "tie on every rule: smallest series UID"


def scan_folder(images: str | Path, masks: str | Path | None = None) -> ScanResult:
    """Find the CT cases under `images` and the mask files under `masks` (and mask-named files).

    Raises:
        InputError: a folder is missing.
    """
    images = Path(images).resolve()
    masks_dir = Path(masks).resolve() if masks else None
    for flag, p in (("--images", images), ("--masks", masks_dir)):
        if p is not None and not p.is_dir():
            raise InputError(f"{flag} {p}: folder not found")
    result = ScanResult()
    ct_files: list[Path] = []
    dicom: dict[str, tuple[Path, list[Series]]] = {}
    for here, names in _walk(images, masks_dir):
        files = [here / n for n in names]
        for f in files:
            if is_image_file(f):
                (result.masks if is_mask_name(file_stem(f)) else ct_files).append(f)
        if any(not is_image_file(f) for f in files):
            series = read_series(here)
            if series:
                parts = here.relative_to(images).parts
                top, folder = (parts[0], images / parts[0]) if parts else (images.name, images)
                dicom.setdefault(top, (folder, []))[1].extend(series)
    if masks_dir is not None:
        result.masks += [here / n for here, names in _walk(masks_dir, None) for n in names if is_image_file(here / n)]
    _add_file_cases(result, ct_files)
    for top, (folder, series) in sorted(dicom.items()):
        _add_dicom_case(result, top, folder, series)
    return result


def _add_file_cases(result: ScanResult, ct_files: list[Path]) -> None:
    by_stem: dict[str, list[Path]] = {}
    for f in ct_files:
        by_stem.setdefault(file_stem(f), []).append(f)
    named: dict[str, list[Path]] = {}
    for stem, paths in by_stem.items():
        for p in paths:
            named.setdefault(stem if len(paths) == 1 else p.parent.name, []).append(p)
    for case_id, paths in sorted(named.items()):
        if len(paths) > 1:
            result.problems.append(f"{case_id}: several CT files share this name ({', '.join(map(str, paths))}); "
                                   "rename them or give each its own folder")
            continue
        p = paths[0]  # named by its stem, or by its folder when stems collide: masks pair on that name only
        result.cases[case_id] = Case(case_id, p, "file", p.parent, ())


def _add_dicom_case(result: ScanResult, case_id: str, folder: Path, series: list[Series]) -> None:
    chosen, why, skipped = choose_series(case_id, series)
    result.skipped += skipped
    if chosen is None:
        result.problems.append(f"{case_id}: {why} among {len(series)} DICOM series (see the skipped list)")
        return
    rivals = [s for s in series if s.folder == chosen.folder and s.uid != chosen.uid]
    if any(s.n_slices >= chosen.n_slices for s in rivals):
        result.problems.append(f"{case_id}: the chosen series {chosen.uid} shares {chosen.folder} with a series "
                               "at least as large, which a reader of the folder would take; move it to its own folder")
        return
    if case_id in result.cases:
        result.problems.append(f"{case_id}: both an image file ({result.cases.pop(case_id).image}) and DICOM "
                               f"series ({folder}) carry this name; keep one")
        return
    result.choices.append(f"{case_id}: series {chosen.uid} in {chosen.folder}: {why}")
    result.cases[case_id] = Case(case_id, chosen.folder, "dicom", folder, ())


def _mask_matches(case: Case, mask: Path, masks_dir: Path | None) -> bool:
    stem = file_stem(mask).lower()
    names = {case.case_id.lower(), *(s.lower() for s in case.stems)}
    m = _MASK_SUFFIX.match(stem)
    in_masks = masks_dir is not None and masks_dir in mask.parents
    if stem in names and in_masks:
        return True
    if m and m.group("base").lower() in names:
        return True
    if stem in MASK_WORDS:
        if in_masks and mask.parent.name.lower() == case.case_id.lower():
            return True
        if case.kind == "file":
            return mask.parent == case.folder and not in_masks
        return case.folder in mask.parents or mask.parent == case.folder
    return False


def pair_masks(result: ScanResult, masks_dir: str | Path | None) -> tuple[list[str], list[Path]]:
    """Set `case.mask` where exactly one mask matches; return (problems, masks matched by no case)."""
    masks_dir = Path(masks_dir).resolve() if masks_dir else None
    problems, used = [], set()
    # a bare-named mask beside a CT file pairs only when that folder holds that one CT
    per_folder: dict[Path, int] = {}
    for c in result.cases.values():
        per_folder[c.folder] = per_folder.get(c.folder, 0) + (c.kind == "file")
    for case in result.cases.values():
        found = [m for m in result.masks if _mask_matches(case, m, masks_dir)]
        if case.kind == "file" and per_folder[case.folder] > 1:
            found = [m for m in found if file_stem(m).lower() not in MASK_WORDS or mask_in(m, masks_dir)]
        used.update(found)
        if len(found) == 1:
            case.mask = found[0]
        elif len(found) > 1:
            problems.append(f"{case.case_id}: several masks match ({', '.join(map(str, found))}); keep one")
    unmatched = [m for m in result.masks if m not in used]
    return problems, unmatched


def mask_in(mask: Path, masks_dir: Path | None) -> bool:
    """True when `mask` lies under the `--masks` folder."""
    return masks_dir is not None and masks_dir in mask.parents
