"""WSPCirrhosis: cirrhosis probability of a liver CT, per slice along z and for the patient.

Thin Slicer layer over the trainer package `wsp_cirrhosis`. Apply runs the trainer's own command,
`PythonSlicer -m wsp_cirrhosis predict ... --progress jsonl`, in a child process and reads its
result files back into table, chart and summary nodes; `WSPCirrhosisLogic.process` computes the
same in this process, synchronously (console, tests). The work lives in WSPCirrhosisLib/; torch
is imported only by the child or by `process`.
"""

import os
import pathlib
import traceback
from typing import Annotated, Union

import vtk

import slicer
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLPlotChartNode, vtkMRMLPlotSeriesNode,
                    vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode)
from slicer.i18n import tr as _, translate
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
        self.parent.contributors = ["WSPCirrhosis maintainers (WSPCirrhosis project)"]
        self.parent.helpText = _(
            "Estimates the probability of liver cirrhosis from a CT and a liver segmentation with a "
            "2D encoder trained by weakly-supervised positional contrastive learning. Produces a "
            "per-slice score table, a score-versus-z chart (click a point to jump to that slice), a patient "
            "summary and optionally a relevance map. Research use only, not for diagnosis. See the "
            '<a href="https://github.com/wspcirrhosis/SlicerWSPCirrhosis#readme">documentation</a>.')
        self.parent.acknowledgementText = _(
            "Method: Sarfati et al., Weakly-supervised positional contrastive learning: application "
            "to cirrhosis classification, MICCAI 2023. Module structure follows the 3D Slicer "
            "scripted-module template.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """List Slicer's built-in CTLiver sample (a liver CT) under a WSPCirrhosis category."""
    from WSPCirrhosisLib import display

    display.registerSampleData(_("WSP Cirrhosis"))


@parameterNodeWrapper
class WSPCirrhosisParameterNode:
    """Inputs, options and the last result of the module (saved with the scene).

    inputVolume: CT in HU. liverMask: liver segmentation or labelmap. liverSegmentId: segment of
    liverMask ("" = the one named liver). liverLabel: labelmap value (0 = its only label). device,
    batchSize: where and how the model runs. useCustomModel, modelPath: a bundle folder instead of
    the bundled model. resultText, sliceTable, chart, scoreSeries: the last result.
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
    """Panel: binds the .ui to the parameter node, runs the prediction as a process, shows results."""

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
        self.saliency = display.SaliencyOverlay(self.ui.applyButton, lambda: self.run.job and self.run.job.volumeNode)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showPlotButton.connect("clicked(bool)", self.onShowPlotButton)
        self.ui.liverMaskSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateMaskControls)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module reload or application exit: end a running prediction process; it writes nothing."""
        if self.run.job is not None:
            self.run.job.abandon()
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
            self._cancel()  # a result arriving anyway finds its CT gone and is dropped (job.py)
        self.jumper.disconnect()
        self.segmentPicker.setSegmentationNode(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        from WSPCirrhosisLib import panel

        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = panel.defaultInputVolume(slicer.mrmlScene)
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
        from WSPCirrhosisLib import panel

        if self.run.running:
            return  # the button is Cancel while a job runs
        p = self._parameterNode
        ready, tip = panel.applyState(p.inputVolume, p.liverMask, p.useCustomModel, p.modelPath) if p \
            else (False, _("Select a CT volume and a liver segmentation (or labelmap)"))
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = tip
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
        """Apply starts the prediction process; while it runs the same button cancels it."""
        if self.run.starting:
            return  # second click of a double click: the run it started must go on
        if self.run.running:
            self._cancel()
            return
        from WSPCirrhosisLib import analysis, dependencies

        p = self._parameterNode
        job = None
        try:
            with slicer.util.WaitCursor():
                self.logic.ensureDependencies(askConfirmation=True)
                self.ui.statusLog.clear()
                job = self.logic.startProcess(
                    p.inputVolume, p.liverMask, segmentId=p.liverSegmentId or None, liverLabel=p.liverLabel,
                    device=p.device, model=p.modelPath if p.useCustomModel else None, batchSize=p.batchSize,
                    onProgress=self.run.onProgress, onLog=self.run.log, onStarted=self.run.onStarted,
                    onFinished=self._onFinished, saliency=self.saliency.checked)
                self.run.start(job)
        except Exception as exc:
            from wsp_cirrhosis.inference import WSPError

            expected = (WSPError, dependencies.DependencyError, analysis.TrainerMissingError)
            detail = None if isinstance(exc, expected) else traceback.format_exc()
            self._showError(_("Cannot start the prediction: {error}").format(error=exc), detail)
            if job is not None and self.run.job is job:  # the launch itself failed
                self.run.finish(_("Failed: {error}").format(error=exc))
            self._checkCanApply()

    def _cancel(self) -> None:
        from WSPCirrhosisLib import runner

        if self.run.cancel():
            runner.killLater(self.run.job, delayS=5.0)

    def _onFinished(self, outcome) -> None:
        """The process ended (main thread); `outcome` is a WSPCirrhosisLib.process.Outcome."""
        from WSPCirrhosisLib import display
        from WSPCirrhosisLib.process import JobState

        p = self._parameterNode
        if outcome.state == JobState.COMPLETED:
            result = outcome.result
            if p:
                p.resultText = outcome.message
                p.sliceTable, p.chart, p.scoreSeries = result.sliceTable, result.chart, result.scoreSeries
            self.run.finish(outcome.message, completed=True)
            display.showResult(self.run.job.volumeNode if self.run.job else None, result.chart)
            self.saliency.setNode(outcome.saliency)
            self.jumper.connect(result.sliceTable, result.scoreSeries)
        elif outcome.state == JobState.FAILED:
            self.run.finish(_("Failed: {error}").format(error=outcome.message))
            self._showError(_("Prediction failed: {error}").format(error=outcome.message), outcome.detail)
        else:  # cancelled, or dropped because its CT left the scene: logged, no dialog
            self.run.finish(outcome.message)
        self._checkCanApply()

    @staticmethod
    def _showError(message: str, detail=None) -> None:
        from WSPCirrhosisLib import panel

        args, kwargs = panel.errorDisplayArguments(message, detail)
        slicer.util.errorDisplay(*args, **kwargs)

    def onShowPlotButton(self) -> None:
        from WSPCirrhosisLib import display

        p = self._parameterNode
        if p and p.chart:
            display.showResult(p.inputVolume, p.chart)
            if p.sliceTable and p.scoreSeries:
                self.jumper.connect(p.sliceTable, p.scoreSeries)


class WSPCirrhosisLogic(ScriptedLoadableModuleLogic):
    """Computation without GUI: `process(volumeNode, liverNode, device="cpu")` works from the console
    (in this process, synchronously); `startProcess` runs the same prediction in a child process."""

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

        liverNode: vtkMRMLSegmentationNode (segment `segmentId`, default: the one named liver) or
        vtkMRMLLabelMapVolumeNode (value `liverLabel`, 0 = its only label). device: "auto", "cpu" or
        "cuda". model: bundle folder, None = bundled default. progress(fraction, message); cancel()
        returns True to stop between batches. scene: receives the nodes (default slicer.mrmlScene).
        Returns an AnalysisResult (.prediction, .probability, .sliceTable, .summaryTable, .chart,
        .scoreSeries). Raises wsp_cirrhosis.inference.WSPError (InputError, BundleError, ConfigError,
        Cancelled), leaving the scene unchanged.
        """
        from WSPCirrhosisLib import analysis

        image, mask = analysis.prepareInputs(volumeNode, liverNode, segmentId, liverLabel)  # inputs first
        prediction = analysis.predict(self.loadModel(model, device), image, mask, batchSize, progress, cancel)
        return analysis.writeOutputs(scene or slicer.mrmlScene, prediction, volumeNode, liverNode)

    def startProcess(self, volumeNode, liverNode, *, segmentId=None, liverLabel: int = 0, device: str = "auto",
                     model=None, batchSize: int = 32, scene=None, workDir=None, launch=None, **callbacks):
        """The prediction of `process` as `PythonSlicer -m wsp_cirrhosis predict` in a child process.

        Writes the inputs now (bad inputs raise InputError at once) and returns the job, not yet
        started: `job.start()` launches it; callbacks (onProgress, onLog, onStarted, onFinished)
        run on the main thread, and onFinished(Outcome) finds the result nodes in the scene.
        """
        from WSPCirrhosisLib import analysis, job, runner

        if model is None or str(model) in ("", "."):
            model = analysis.defaultModelPath()  # the in-process default, named explicitly for the child
        workDir = workDir or slicer.util.tempDirectory("WSPCirrhosis")
        return job.createJob(scene or slicer.mrmlScene, volumeNode, liverNode, workDir, segmentId=segmentId,
                             liverLabel=liverLabel, model=model, device=device, batchSize=batchSize,
                             launch=launch or runner.launch, **callbacks)


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
        import numpy as np
        from wsp_cirrhosis.inference import InputError
        from WSPCirrhosisLib import analysis

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
        import time

        import numpy as np
        import SampleData
        from WSPCirrhosisLib import analysis

        if importlib.util.find_spec("torch") is None or not os.path.isdir(analysis.defaultModelPath()):
            return self.delayDisplay("PyTorch or the bundled model is missing: model test skipped")

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
        self.delayDisplay("The same prediction in a PythonSlicer process (what Apply runs)")
        finished = []
        WSPCirrhosisLogic().startProcess(volume, mask, device="cpu", onFinished=finished.append).start()
        while not finished:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(finished[0].state.value, "completed", finished[0].message)
        self.assertAlmostEqual(finished[0].result.probability, result.probability, places=5)
        self.delayDisplay("Test passed")
