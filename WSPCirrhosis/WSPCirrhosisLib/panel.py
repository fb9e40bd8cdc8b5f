"""Decisions of the module panel that need no Qt: can Apply run, which CT to preselect, how to
show an error. The widget applies them; tests call them on a slicer-core scene."""

from __future__ import annotations

import os
from pathlib import Path

APPLY_TOOLTIP = "Compute the cirrhosis score of every liver slice and of the patient"
BUNDLE_FILE = "bundle.json"  # what makes a folder a model bundle (wsp_cirrhosis.bundle)


def applyState(inputVolume, liverMask, useCustomModel: bool = False, modelPath=None) -> tuple[bool, str]:
    """(Apply enabled, its tooltip) for the current inputs.

    "Use another model bundle" with no folder chosen gives "." from the path widget; running
    then would silently use the bundled demo model, so Apply waits for a real bundle folder.
    """
    if not inputVolume or not liverMask:
        return False, "Select a CT volume and a liver segmentation (or labelmap)"
    if useCustomModel:
        text = str(modelPath or "").strip()
        if text in ("", "."):
            return False, ("'Use another model bundle' is ticked but no bundle folder is selected: choose one "
                           "under Advanced, or untick it to use the bundled model")
        if not (Path(text) / BUNDLE_FILE).is_file():
            return False, f"'{text}' is not a model bundle folder (it has no {BUNDLE_FILE}); choose the folder " \
                          "written by 'wsp-cirrhosis export'"
    return True, APPLY_TOOLTIP


def resultText(prediction) -> str:
    """One line for the module panel: 'P = 0.62 (0.48-0.71 across 5 models) -> cirrhosis
    (threshold 0.50, attention head, 40 slices, cpu)'; a single model gives 'P = 0.62 -> ...'."""
    extra = getattr(prediction, "extra", None) or {}
    text = f"P = {prediction.probability:.2f}"
    if extra.get("n_members", 1) > 1:
        text += (f" ({extra['probability_min']:.2f}-{extra['probability_max']:.2f} "
                 f"across {extra['n_members']} models)")
    calibrated = ", calibrated" if extra.get("calibration") else ""
    head = getattr(prediction, "patient_head", "mean")
    return (f"{text} -> {prediction.label_name} (threshold {prediction.threshold:.2f}{calibrated}, "
            f"{head} head, {len(prediction.slices)} slices, {prediction.device})")


def defaultInputVolume(scene):
    """The first plain scalar volume of `scene` (a CT candidate), or None.

    Exactly vtkMRMLScalarVolumeNode: its subclasses (labelmap, vector, tensor, diffusion-weighted
    volumes) are not CTs and the input selector does not list them.
    """
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if node.GetClassName() == "vtkMRMLScalarVolumeNode":
            return node
    return None


def errorDisplayArguments(message: str, detail: str | None = None) -> tuple[tuple, dict]:
    """(args, kwargs) for slicer.util.errorDisplay: detailedText only when there is a detail
    (Slicer's message box shows detailedText=None as the word "None" under Details)."""
    kwargs = {"detailedText": detail} if detail and detail.strip() else {}
    return (message,), kwargs


def temporaryWorkDir(base: str | os.PathLike) -> Path:
    """A new, empty folder under `base` for one run's input and output files."""
    import tempfile

    Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="WSPCirrhosis-", dir=base))
