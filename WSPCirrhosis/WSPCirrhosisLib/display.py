"""Showing a result in the Slicer application: chart in a plot view, click on a point -> jump.

Needs the full application (layout manager, plot widgets); the nodes themselves come from
outputs.py, and the jump from `outputs.jumpSlicesToRow`.
"""

from __future__ import annotations

import logging

import slicer

from . import outputs


def registerSampleData(title: str) -> None:
    """List Slicer's built-in CTLiver sample (a liver CT) under a WSPCirrhosis category."""
    import SampleData

    source = SampleData.SampleDataLogic().sourceForSampleName("CTLiver")
    if source is None:
        return
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory("WSPCirrhosis", title=title)
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="WSPCirrhosis", sampleName="CTLiver", uris=source.uris, fileNames=source.fileNames,
        nodeNames=source.nodeNames, checksums=source.checksums, thumbnailFileName=source.thumbnailFileName,
        loadFileTypes=source.loadFileTypes)


def showResult(volumeNode, chartNode) -> None:
    """CT in the slice views and the z-curve chart in a layout with a plot view."""
    if volumeNode is not None:
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=False)
    if chartNode is not None:
        slicer.modules.plots.logic().ShowChartInLayout(chartNode)


def showSaliency(volumeNode, saliencyNode, show: bool = True) -> None:
    """The relevance map as a coloured foreground over the CT in every slice view (or hidden).

    The map lies on the CT's grid, so the slice views' jump to a clicked curve point (which moves
    the slice planes, not the layers) shows the map of that slice too.
    """
    from . import nodes

    if saliencyNode is None:
        return  # this run made no map: leave the user's layers alone
    if not show:
        slicer.util.setSliceViewerLayers(foregroundOpacity=0.0, fit=False)
        return
    slicer.util.setSliceViewerLayers(background=volumeNode, foreground=saliencyNode,
                                     foregroundOpacity=nodes.SALIENCY_OPACITY, fit=False)


class SaliencyOverlay:
    """The 'Show where the score comes from' checkbox and the last run's relevance map.

    Args:
        applyButton: the checkbox is placed just above it.
        volumeOf: volumeOf() -> the CT node the map belongs over.
    """

    def __init__(self, applyButton, volumeOf) -> None:
        self.node = None
        self._volumeOf = volumeOf
        self.checkBox = addSaliencyCheckBox(applyButton, self.show)

    @property
    def checked(self) -> bool:
        return bool(self.checkBox.checked)

    def setNode(self, saliencyNode) -> None:
        """A finished run's map (None: that run made none); shown when the box is ticked."""
        self.node = saliencyNode
        self.show(self.checked)

    def show(self, on: bool = True) -> None:
        showSaliency(self._volumeOf(), self.node, on)


def addSaliencyCheckBox(applyButton, onToggled):
    """A 'Show where the score comes from' checkbox placed just above Apply; returns it."""
    import qt

    box = qt.QCheckBox("Show where the score comes from (relevance map)")
    box.toolTip = ("Also compute a Grad-CAM relevance map of every liver slice (one more pass per model) and "
                   "show it as a coloured overlay on the CT; 1 = the most relevant region of this patient")
    layout = applyButton.parentWidget().layout()
    index = layout.indexOf(applyButton) if hasattr(layout, "indexOf") else -1
    if hasattr(layout, "insertWidget") and index >= 0:
        layout.insertWidget(index, box)
    else:
        layout.addWidget(box)
    box.connect("toggled(bool)", onToggled)
    return box


class PlotClickJumper:
    """Clicking a point of the score curve centres the slice views on that liver slice."""

    SIGNAL = "dataSelected(vtkStringArray*, vtkCollection*)"

    def __init__(self) -> None:
        self._plotView = None
        self._sliceTable = None
        self._seriesId = None

    def connect(self, sliceTable, scoreSeries) -> bool:
        """Follow clicks on `scoreSeries` in the first plot view; False when none is shown."""
        self.disconnect()
        layoutManager = slicer.app.layoutManager()
        slicer.app.processEvents()  # the plot widget appears only after the layout switch is processed
        if layoutManager is None or layoutManager.plotViewCount < 1:
            return False
        self._plotView = layoutManager.plotWidget(0).plotView()
        self._sliceTable = sliceTable
        self._seriesId = scoreSeries.GetID()
        self._plotView.connect(self.SIGNAL, self._onDataSelected)
        return True

    def disconnect(self) -> None:
        if self._plotView is not None:
            try:
                self._plotView.disconnect(self.SIGNAL, self._onDataSelected)
            except Exception:  # the view may already be gone with a layout change
                logging.debug("WSPCirrhosis: plot view already disconnected")
        self._plotView = self._sliceTable = self._seriesId = None

    def _onDataSelected(self, seriesIds, selections) -> None:
        if self._sliceTable is None or slicer.mrmlScene.GetNodeByID(self._sliceTable.GetID()) is None:
            return
        for i in range(seriesIds.GetNumberOfValues()):
            if seriesIds.GetValue(i) != self._seriesId:
                continue
            rows = selections.GetItemAsObject(i)
            if rows is not None and rows.GetNumberOfTuples() > 0:  # an empty click clears the selection
                outputs.jumpSlicesToRow(slicer.mrmlScene, self._sliceTable, int(rows.GetValue(0)))
            return


class SegmentPicker:
    """A QComboBox listing the segments of one segmentation node, kept current as segments change.

    Args:
        comboBox: QComboBox; item text = segment name, item data = segment id.
        onChanged: onChanged(segmentId) after the user or a refresh changes the choice.
    """

    EVENTS = ("SegmentAdded", "SegmentRemoved", "SegmentModified")

    def __init__(self, comboBox, onChanged) -> None:
        self.comboBox = comboBox
        self._onChanged = onChanged
        self._node = None
        self._preferred = ""
        self._observed = None
        self._tags = []
        comboBox.connect("currentIndexChanged(int)", self._emit)

    def setSegmentationNode(self, segmentationNode, preferredSegmentId: str = "") -> None:
        """Show the segments of `segmentationNode` (None empties the list)."""
        self._node = segmentationNode
        self._preferred = preferredSegmentId
        self._observe(segmentationNode.GetSegmentation() if segmentationNode is not None else None)
        self.refresh()

    def refresh(self, caller=None, event=None) -> None:
        """Rebuild the list; keep the current segment, else the preferred one, else the liver."""
        segments, liverId = [], None
        if self._node is not None:  # nodes.py pulls in SimpleITK: only when there is something to list
            from . import nodes

            segments, liverId = nodes.listSegments(self._node), nodes.findLiverSegmentId(self._node)
        ids = [sid for sid, _ in segments]
        candidates = (self.comboBox.currentData, self._preferred, liverId)
        wanted = next((sid for sid in candidates if sid in ids), ids[0] if ids else "")
        wasBlocked = self.comboBox.blockSignals(True)
        self.comboBox.clear()
        for sid, name in segments:
            self.comboBox.addItem(name, sid)
        self.comboBox.currentIndex = max(self.comboBox.findData(wanted), 0) if ids else -1
        self.comboBox.blockSignals(wasBlocked)
        self._emit()

    def cleanup(self) -> None:
        self._observe(None)

    def _emit(self, index=None) -> None:
        self._onChanged(self.comboBox.currentData or "")

    def _observe(self, segmentation) -> None:
        if self._observed is not None:
            for tag in self._tags:
                self._observed.RemoveObserver(tag)
        self._observed, self._tags = segmentation, []
        if segmentation is not None:
            self._tags = [segmentation.AddObserver(getattr(slicer.vtkSegmentation, event), self.refresh)
                          for event in self.EVENTS]
