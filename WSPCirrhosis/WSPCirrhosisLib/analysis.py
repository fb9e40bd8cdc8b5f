"""One prediction in Slicer terms: CT and liver-mask nodes -> `predict_patient` -> result nodes.

The testable core of `WSPCirrhosisLogic.process`: no Qt, no `slicer.mrmlScene` (the scene is an
argument), so it runs on a bare slicer-core scene. The numbers come from the trainer's
`wsp_cirrhosis.inference`, the same code as `wsp-cirrhosis predict`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import nodes, outputs

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

# Bundled model: <module dir>/Resources/Models/default, written by `wsp-cirrhosis export`.
DEFAULT_MODEL_SUBDIR = ("Resources", "Models", "default")
TRAINER_HELP = (
    "the wsp_cirrhosis package (the WSPCirrhosis trainer) cannot be imported. The extension ships it "
    "beside this module; when running the module from a source checkout, install it into Slicer's "
    "Python once with: PythonSlicer -m pip install --no-deps -e <checkout>/Trainer"
)


class TrainerMissingError(RuntimeError):
    """The `wsp_cirrhosis` package is not importable in this Python."""


@dataclass
class AnalysisResult:
    """What `process` returns: the trainer's prediction and the nodes showing it."""

    prediction: object  # wsp_cirrhosis.inference.PatientPrediction
    outputs: outputs.OutputNodes

    def __getattr__(self, name: str):
        """The prediction's fields read through: probability, label, label_name, threshold, slices..."""
        if name in ("prediction", "outputs"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.prediction, name)

    @property
    def sliceTable(self):
        return self.outputs.sliceTable

    @property
    def summaryTable(self):
        return self.outputs.summaryTable

    @property
    def chart(self):
        return self.outputs.chart

    @property
    def scoreSeries(self):
        return self.outputs.scoreSeries


def moduleDir() -> Path:
    """The scripted module's folder (WSPCirrhosis/), which holds Resources/."""
    return Path(__file__).resolve().parent.parent


def defaultModelPath() -> Path:
    """Folder of the model bundle shipped with the extension."""
    return moduleDir().joinpath(*DEFAULT_MODEL_SUBDIR)


def importTrainer():
    """Import and return `wsp_cirrhosis.inference`.

    Raises:
        TrainerMissingError: the package is not installed in this Python (message says how).
    """
    try:
        import wsp_cirrhosis.inference as inference
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "wsp_cirrhosis":
            raise TrainerMissingError(TRAINER_HELP) from None
        raise
    return inference


def prepareInputs(volumeNode, liverNode, segmentId: str | None = None, liverLabel: int = 0):
    """(CT image, binary liver mask) as SimpleITK images in world LPS; reads MRML, so main thread only.

    Raises:
        InputError: see `nodes.volumeToImage` and `nodes.maskToImage`.
    """
    image = nodes.volumeToImage(volumeNode)
    mask = nodes.maskToImage(liverNode, segmentId=segmentId, liverLabel=liverLabel)
    return image, mask


def loadModel(model=None, device: str = "auto"):
    """The classifier of a bundle on a device, ready for several patients.

    Args:
        model: bundle folder, a loaded `ModelBundle`, or None for the bundled default model.
        device: "auto", "cpu", "cuda", "cuda:1"...

    Raises:
        BundleError: missing, corrupt or incompatible bundle.  ConfigError: device unavailable.
    """
    inference = importTrainer()
    if model is None or (isinstance(model, (str, os.PathLike)) and str(model) in ("", ".")):
        model = defaultModelPath()
    return inference.load_model(model, device)


def predict(loadedModel, image, mask, batchSize: int = 32,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None):
    """Score one CT with a loaded model; touches no MRML, so it may run in a worker thread.

    The mask is already binary (1 = liver), hence liver_label=1 whatever the bundle's default.
    """
    return loadedModel.predict(image, mask, batch_size=batchSize, liver_label=1, progress=progress, cancel=cancel)


def writeOutputs(scene, prediction, volumeNode, liverNode=None) -> AnalysisResult:
    """Result nodes for `prediction` (main thread only); nothing is left behind on failure."""
    extra = {"liver mask": liverNode.GetName()} if liverNode is not None else {}
    return AnalysisResult(prediction, outputs.createOutputNodes(scene, prediction, volumeNode, extra))


def process(scene, volumeNode, liverNode, *, segmentId: str | None = None, liverLabel: int = 0,
            device: str = "auto", model=None, batchSize: int = 32,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None,
            loadedModel=None) -> AnalysisResult:
    """Predict cirrhosis for one CT and add the slice table, chart and summary to `scene`.

    Args:
        scene: vtkMRMLScene holding the nodes.
        volumeNode: CT volume (vtkMRMLScalarVolumeNode, HU).
        liverNode: liver segmentation (vtkMRMLSegmentationNode) or labelmap volume.
        segmentId: liver segment of a segmentation; None picks the segment named "liver".
        liverLabel: liver value in a multi-label labelmap; 0 = the map's only label.
        device: "auto", "cpu" or "cuda".
        model: bundle folder or ModelBundle; None = the bundled default model.
        batchSize: slices per forward pass.
        progress: progress(fraction, message) after each stage and batch.
        cancel: polled between batches; True raises wsp_cirrhosis.errors.Cancelled.
        loadedModel: a `loadModel` result to reuse (then `model` and `device` are ignored).

    Returns:
        AnalysisResult; the scene is unchanged when anything raises.

    Raises:
        InputError, BundleError, ConfigError, Cancelled (all wsp_cirrhosis.inference.WSPError),
        TrainerMissingError.
    """
    image, mask = prepareInputs(volumeNode, liverNode, segmentId, liverLabel)
    if loadedModel is None:
        loadedModel = loadModel(model, device)
    prediction = predict(loadedModel, image, mask, batchSize, progress, cancel)
    logging.info("WSPCirrhosis: %s", outputs.resultText(prediction))
    return writeOutputs(scene, prediction, volumeNode, liverNode)
