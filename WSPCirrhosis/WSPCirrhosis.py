"""WSPCirrhosis: cirrhosis probability of a liver CT, per slice along z and for the patient.

Thin Slicer layer over the trainer package `wsp_cirrhosis`: the Logic converts nodes, calls
`wsp_cirrhosis.inference` (the same code as `wsp-cirrhosis predict`) and writes result nodes.
The work lives in WSPCirrhosisLib/; torch and the trainer are imported only when Apply runs.
"""

import logging
import os
import pathlib
import traceback
from typing import Annotated, Union

import vtk

import slicer
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLPlotChartNode, vtkMRMLPlotSeriesNode,
                    vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))


class WSPCirrhosis(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("WSP Cirrhosis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["WSPCirrhosis contributors"]
        self.parent.helpText = _(
            "Estimates the probability of liver cirrhosis from a CT and a liver segmentation with a "
            "2D encoder trained by weakly-supervised positional contrastive learning. Produces a "
            "per-slice score table, a score-versus-z chart (click a point to jump to that slice) and a "
            "patient summary. Research use only, not for diagnosis. See the "
            '<a href="https://github.com/wspcirrhosis/SlicerWSPCirrhosis#readme">documentation</a>.')
        self.parent.acknowledgementText = _(
            "Method: Sarfati et al., Weakly-supervised positional contrastive learning: application "
            "to cirrhosis classification, MICCAI 2023. Module structure follows the 3D Slicer "
            "scripted-module template.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """List Slicer's built-in CTLiver sample (a liver CT) under a WSPCirrhosis category."""
    import SampleData

    source = SampleData.SampleDataLogic().sourceForSampleName("CTLiver")
    if source is None:
        return
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory("WSPCirrhosis", title=_("WSP Cirrhosis"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="WSPCirrhosis", sampleName="CTLiver", uris=source.uris, fileNames=source.fileNames,
        nodeNames=source.nodeNames, checksums=source.checksums, thumbnailFileName=source.thumbnailFileName,
        loadFileTypes=source.loadFileTypes)


@parameterNodeWrapper
class WSPCirrhosisParameterNode:
    """Inputs, options and the last result of the module (saved with the scene).

    inputVolume: CT in Hounsfield units. liverMask: liver segmentation or labelmap.
    liverSegmentId: segment of liverMask ("" = the one named liver). liverLabel: labelmap value
    (0 = its only label). device, batchSize: where and how the model runs. useCustomModel,
    modelPath: a bundle folder instead of the bundled model. resultText, sliceTable, chart,
    scoreSeries: the last result.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    liverMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]  # None: the wrapper's default
    liverSegmentId: str = ""
    liverLabel: Annotated[int, WithinRange(0, 65535)] = 0
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    batchSize: Annotated[int, WithinRange(1, 1024)] = 32
    useCustomModel: bool = False
    modelPath: pathlib.Path
    resultText: str = ""
    sliceTable: vtkMRMLTableNode
    chart: vtkMRMLPlotChartNode
    scoreSeries: vtkMRMLPlotSeriesNode


class WSPCirrhosisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: binds the .ui to the parameter node, runs the Logic in the background, shows results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        from WSPCirrhosisLib import display, runner

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WSPCirrhosis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = WSPCirrhosisLogic()
        self.run = runner.RunControls(self.ui.applyButton, self.ui.progressBar, self.ui.statusLog)
        self.jumper = display.PlotClickJumper()
        self.segmentPicker = display.SegmentPicker(self.ui.segmentSelector, self._onSegmentSelected)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showPlotButton.connect("clicked(bool)", self.onShowPlotButton)
        self.ui.liverMaskSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateMaskControls)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.run.running:
            self.run.job.requestCancel()
        self.jumper.disconnect()
        self.segmentPicker.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self.run.running:
            self.run.cancel()
        self.jumper.disconnect()
        self.segmentPicker.setSegmentationNode(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                    self._parameterNode.inputVolume = volume
                    break
        if not self._parameterNode.liverMask:
            self._parameterNode.liverMask = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._updateMaskControls()
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.run.running:
            return  # the button is Cancel while a job runs
        p = self._parameterNode
        ready = bool(p and p.inputVolume and p.liverMask)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Compute the cirrhosis score of every liver slice and of the patient") if ready \
            else _("Select a CT volume and a liver segmentation (or labelmap)")
        self.ui.showPlotButton.enabled = bool(p and p.chart)
        self.ui.modelPathLineEdit.enabled = bool(p and p.useCustomModel)

    def _updateMaskControls(self, node=None) -> None:
        """Segment list for a segmentation, label value for a labelmap."""
        p = self._parameterNode
        mask = self.ui.liverMaskSelector.currentNode()  # the parameter node may not be updated yet
        isSegmentation = bool(mask and mask.IsA("vtkMRMLSegmentationNode"))
        for widget in (self.ui.segmentLabel, self.ui.segmentSelector):
            widget.visible = isSegmentation
        for widget in (self.ui.liverLabelLabel, self.ui.liverLabelSpinBox):
            widget.visible = bool(mask) and not isSegmentation
        self.segmentPicker.setSegmentationNode(mask if isSegmentation else None, p.liverSegmentId if p else "")

    def _onSegmentSelected(self, segmentId: str) -> None:
        p = self._parameterNode
        mask = self.ui.liverMaskSelector.currentNode()
        if p and mask and mask.IsA("vtkMRMLSegmentationNode") and p.liverSegmentId != segmentId:
            p.liverSegmentId = segmentId

    def onApplyButton(self) -> None:
        """Apply starts a background prediction; while it runs the same button cancels it."""
        if self.run.running:
            self.run.cancel()
            return
        from WSPCirrhosisLib import dependencies

        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot start the prediction."), waitCursor=True):
            try:
                self.logic.ensureDependencies(askConfirmation=True)
            except dependencies.DependencyError as exc:
                if exc.restartRequired and slicer.util.confirmOkCancelDisplay(f"{exc}\n\nRestart Slicer now?"):
                    slicer.util.restart()
                raise
            self.ui.statusLog.clear()
            job = self.logic.processInBackground(
                p.inputVolume, p.liverMask, segmentId=p.liverSegmentId or None, liverLabel=p.liverLabel,
                device=p.device, model=p.modelPath if p.useCustomModel else None, batchSize=p.batchSize,
                onProgress=self.run.onProgress, onFinished=self._onFinished)
            self.run.start(job)

    def _onFinished(self, result, error) -> None:
        from wsp_cirrhosis.errors import Cancelled, WSPError
        from WSPCirrhosisLib import display, outputs

        if error is None:
            p = self._parameterNode
            if p:
                p.resultText = outputs.resultText(result.prediction)
                p.sliceTable, p.chart, p.scoreSeries = result.sliceTable, result.chart, result.scoreSeries
            self.run.finish(outputs.resultText(result.prediction), completed=True)
            display.showResult(p.inputVolume if p else None, result.chart)
            self.jumper.connect(result.sliceTable, result.scoreSeries)
        elif isinstance(error, Cancelled):
            self.run.finish(_("Cancelled: no result was written"))
        else:
            self.run.finish(_("Failed: {error}").format(error=error))
            detail = None if isinstance(error, WSPError) else "".join(
                traceback.format_exception(type(error), error, error.__traceback__))
            slicer.util.errorDisplay(_("Prediction failed: {error}").format(error=error), detailedText=detail)
        self._checkCanApply()

    def onShowPlotButton(self) -> None:
        from WSPCirrhosisLib import display

        p = self._parameterNode
        if p and p.chart:
            display.showResult(p.inputVolume, p.chart)
            if p.sliceTable and p.scoreSeries:
                self.jumper.connect(p.sliceTable, p.scoreSeries)


class WSPCirrhosisLogic(ScriptedLoadableModuleLogic):
    """Computation without GUI: `process(volumeNode, liverNode, device="cpu")` works from the console."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._modelKey = None
        self._loadedModel = None

    def getParameterNode(self):
        return WSPCirrhosisParameterNode(super().getParameterNode())

    @staticmethod
    def resourcePath(relativePath: str) -> str:
        return os.path.join(MODULE_DIR, "Resources", relativePath)

    def ensureDependencies(self, askConfirmation: bool = True) -> None:
        """Check the shipped trainer, then install PyTorch (PyTorch extension) and
        Resources/requirements.txt after confirmation."""
        from WSPCirrhosisLib import analysis, dependencies

        analysis.importTrainer()  # raises TrainerMissingError with the fix for source checkouts
        dependencies.ensureAll(self.resourcePath("requirements.txt"), askConfirmation=askConfirmation)

    def loadModel(self, model=None, device: str = "auto"):
        """The model of a bundle folder (None = bundled default) on `device`; reused while unchanged."""
        from WSPCirrhosisLib import analysis

        if model is not None and not isinstance(model, (str, os.PathLike)):
            return analysis.loadModel(model, device)  # an already loaded ModelBundle
        path = model if model is not None and str(model) not in ("", ".") else analysis.defaultModelPath()
        key = (str(path), device, os.stat(path).st_mtime if os.path.exists(path) else None)
        if key != self._modelKey:
            self._loadedModel = analysis.loadModel(path, device)
            self._modelKey = key
        return self._loadedModel

    def process(self, volumeNode, liverNode, segmentId=None, liverLabel: int = 0, device: str = "auto",
                model=None, batchSize: int = 32, progress=None, cancel=None, scene=None):
        """Predict cirrhosis for `volumeNode` (CT, HU) with the liver from `liverNode`, synchronously.

        Args:
            liverNode: vtkMRMLSegmentationNode (segment `segmentId`, default: the one named liver)
                or vtkMRMLLabelMapVolumeNode (value `liverLabel`, 0 = its only label).
            device: "auto", "cpu" or "cuda". model: bundle folder, None = bundled default.
            progress: progress(fraction, message). cancel: returns True to stop between batches.
            scene: the MRML scene receiving the result nodes (default: slicer.mrmlScene).

        Returns:
            WSPCirrhosisLib.analysis.AnalysisResult: .prediction, .probability, .sliceTable,
            .summaryTable, .chart, .scoreSeries.

        Raises:
            wsp_cirrhosis.errors.WSPError (InputError, BundleError, ConfigError, Cancelled); the
            scene is left unchanged.
        """
        from WSPCirrhosisLib import analysis

        image, mask = analysis.prepareInputs(volumeNode, liverNode, segmentId, liverLabel)  # inputs first
        prediction = analysis.predict(self.loadModel(model, device), image, mask, batchSize, progress, cancel)
        return analysis.writeOutputs(scene or slicer.mrmlScene, prediction, volumeNode, liverNode)

    def processInBackground(self, volumeNode, liverNode, *, segmentId=None, liverLabel: int = 0,
                            device: str = "auto", model=None, batchSize: int = 32,
                            onProgress=None, onFinished=None):
        """Like `process`, but the model runs in a worker thread; returns the not yet started job.

        Inputs are read and the model loaded here (errors raise at once); the result nodes are
        written on the main thread, then onFinished(AnalysisResult or None, error or None) is called.
        """
        from WSPCirrhosisLib import analysis, runner

        image, mask = analysis.prepareInputs(volumeNode, liverNode, segmentId, liverLabel)
        loadedModel = self.loadModel(model, device)

        def work(progress, cancel):
            return analysis.predict(loadedModel, image, mask, batchSize, progress, cancel)

        def done(prediction, error):
            result = None
            if error is None and not slicer.mrmlScene.IsNodePresent(volumeNode):
                error = RuntimeError("the CT volume left the scene during the prediction; nothing was written")
            if error is None:
                try:
                    result = analysis.writeOutputs(slicer.mrmlScene, prediction, volumeNode, liverNode)
                except Exception as exc:
                    error = exc
            if onFinished is not None:
                onFinished(result, error)
            elif error is not None:
                logging.error("WSPCirrhosis: %s", error)

        return runner.BackgroundJob(work, onProgress=onProgress, onDone=done)


class WSPCirrhosisTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test. The model run needs PyTorch and the bundled model; without them it is
    skipped (the factory machines never install packages)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MissingInputsRaise()
        self.setUp()
        self.test_CTLiverEndToEnd()

    def test_MissingInputsRaise(self):
        from wsp_cirrhosis.errors import InputError
        from WSPCirrhosisLib import analysis

        import numpy as np

        self.delayDisplay("Missing inputs give InputError and create no node")
        with self.assertRaises(InputError):
            analysis.prepareInputs(None, None)
        volume = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), "int16"))
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputError):
            analysis.prepareInputs(volume, None)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)

    def test_CTLiverEndToEnd(self):
        import importlib.util

        from WSPCirrhosisLib import analysis

        if importlib.util.find_spec("torch") is None or not os.path.isdir(analysis.defaultModelPath()):
            self.delayDisplay("PyTorch or the bundled model is missing: model test skipped")
            return
        import numpy as np
        import SampleData

        volume = SampleData.downloadSample("CTLiver")
        self.delayDisplay("Loaded CTLiver; building a rough liver box mask")
        ct = slicer.util.arrayFromVolume(volume)
        box = np.zeros(ct.shape, dtype=np.uint8)
        k, j, i = ct.shape
        box[k // 4:3 * k // 4, j // 3:2 * j // 3, i // 5:i // 2] = 1
        box[ct < -200] = 0
        mask = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "rough liver")
        mask.CopyOrientation(volume)
        slicer.util.updateVolumeFromArray(mask, box)
        result = WSPCirrhosisLogic().process(volume, mask, device="cpu")
        self.assertGreater(result.sliceTable.GetNumberOfRows(), 0)
        self.assertTrue(0.0 <= result.probability <= 1.0)
        self.assertEqual(result.chart.GetNumberOfPlotSeriesNodes(), 2)
        self.delayDisplay("Test passed")
