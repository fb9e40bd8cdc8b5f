"""Liver masks made automatically with TotalSegmentator (optional: `--auto-mask` of `predict` and
`manifest`), and the guidance shown when a CT comes without a mask.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk

from ..errors import InputError
from .scan import Case

if TYPE_CHECKING:
    import torch

log = logging.getLogger("wsp_cirrhosis")

TOTALSEG_INSTALL = "pip install TotalSegmentator"


def auto_masks(cases: list[Case], folder: Path, device: str) -> list[str]:
    """Segment the liver of each case with TotalSegmentator into `folder`/<id>.nii.gz; return failures.

    Raises:
        InputError: TotalSegmentator is not installed (with the one command that installs it).
    """
    if not cases:
        return []
    if not totalsegmentator_available():
        raise InputError(f"--auto-mask: TotalSegmentator is not installed; install it with `{TOTALSEG_INSTALL}` "
                         "(or give --masks)")
    import SimpleITK as sitk

    from ..distributed import resolve_device
    from ..progress import track
    from .images import read_image

    dev, failures = resolve_device(device), []
    folder.mkdir(parents=True, exist_ok=True)
    for case in track(cases, desc="auto-mask"):
        try:
            mask = segment_liver(read_image(case.image), dev)
            target = folder / f"{case.case_id}.nii.gz"
            sitk.WriteImage(mask, str(target), True)
            case.mask = target
        except InputError as exc:
            failures.append(f"{case.case_id}: {exc}")
    return failures


MASK_GUIDANCE = (
    "a liver mask is required: on the command line pass --liver-mask FILE (a label map of the liver "
    "on the same scan: NIfTI, NRRD, MetaImage or DICOM folder; --liver-label N for a multi-label map); "
    "in 3D Slicer segment the liver with the Segment Editor or the TotalSegmentator extension and "
    "select that segment"
)


def totalsegmentator_available() -> bool:
    """True when the optional `totalsegmentator` package can be imported (it is never required)."""
    return importlib.util.find_spec("totalsegmentator") is not None


def check_mask_source(auto_mask: bool) -> None:
    """Raise the guidance for a missing mask unless TotalSegmentator is requested and installed."""
    if not auto_mask:
        hint = "; or pass --auto-mask to segment it with TotalSegmentator" if totalsegmentator_available() else ""
        raise InputError(f"no liver mask given: {MASK_GUIDANCE}{hint}")
    if not totalsegmentator_available():
        raise InputError("--auto-mask: TotalSegmentator is not installed (pip install TotalSegmentator); "
                         f"otherwise {MASK_GUIDANCE}")


def segment_liver(image: sitk.Image, device: "torch.device") -> sitk.Image:  # pragma: no cover - optional
    """Liver mask from TotalSegmentator (optional dependency; its own licence and weights).

    Raises:
        InputError: TotalSegmentator missing or failing.
    """
    from .images import read_mask

    try:
        from totalsegmentator.python_api import totalsegmentator
    except ImportError as exc:
        raise InputError(f"--auto-mask: cannot import TotalSegmentator ({exc}); {MASK_GUIDANCE}") from None
    log.info("segmenting the liver with TotalSegmentator (first use downloads its weights)")
    with tempfile.TemporaryDirectory(prefix="wsp-totalseg-") as tmp:
        src, out = Path(tmp) / "ct.nii.gz", Path(tmp) / "seg"
        sitk.WriteImage(image, str(src))
        try:
            totalsegmentator(str(src), str(out), roi_subset=["liver"],
                             device="gpu" if device.type == "cuda" else "cpu", quiet=True)
        except Exception as exc:  # a third-party failure becomes one clear line
            raise InputError(f"--auto-mask: TotalSegmentator failed ({exc}); {MASK_GUIDANCE}") from None
        return read_mask(out / "liver.nii.gz")  # 0/1 on the CT grid; prepare_ct aligns it anyway
