"""A patient prediction -> MRML result nodes: slice table, z-curve chart, summary table.

Also the click-to-jump helper (table row -> RAS point -> slice views). Every function takes the
scene as an argument and imports no Qt, so it runs on a bare slicer-core scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import vtk

import slicer

SLICE_COLUMNS = ("slice_index", "R", "A", "S", "position", "score", "contribution", "read")
COLUMN_UNITS = {"R": "mm", "A": "mm", "S": "mm"}
COLUMN_DESCRIPTIONS = {
    "slice_index": "Index of the slice along the CT volume's slice axis (as stored)",
    "R": "Right coordinate of the liver centre on the slice (world RAS)",
    "A": "Anterior coordinate of the liver centre on the slice (world RAS)",
    "S": "Superior coordinate of the slice (world RAS)",
    "position": "Position d of the slice in the liver: 0 = most inferior, 1 = most superior liver slice",
    "score": "Slice cirrhosis probability from the model read on its own, 0..1",
    "contribution": "Share of the patient score on the model's scale (the contributions sum to the patient score)",
    "read": "Number of slices x contribution: the charted curve, whose mean is the patient score",
}
SCORE_COLOR = (0.12, 0.47, 0.71)
THRESHOLD_COLOR = (0.84, 0.15, 0.16)


@dataclass
class OutputNodes:
    """Nodes written for one prediction (all in one subject-hierarchy folder)."""

    sliceTable: object  # vtkMRMLTableNode, columns SLICE_COLUMNS, rows ordered by S
    summaryTable: object  # vtkMRMLTableNode, columns "property", "value"
    thresholdTable: object  # vtkMRMLTableNode, 2 rows: the threshold line of the chart
    scoreSeries: object  # vtkMRMLPlotSeriesNode, read vs S (the slice score for head mean)
    thresholdSeries: object  # vtkMRMLPlotSeriesNode, threshold on the read's scale vs S
    chart: object  # vtkMRMLPlotChartNode
    folderItemId: int  # subject-hierarchy folder holding the nodes above

    def nodes(self) -> list:
        return [self.sliceTable, self.summaryTable, self.thresholdTable,
                self.scoreSeries, self.thresholdSeries, self.chart]


def createOutputNodes(scene, prediction, volumeNode, extraSummary: dict | None = None) -> OutputNodes:
    """Add the result nodes of `prediction` to `scene`, next to `volumeNode` in the hierarchy.

    Args:
        scene: vtkMRMLScene.
        prediction: wsp_cirrhosis.inference.PatientPrediction (probability, label_name, threshold,
            model_name, model_sha256, device, slices with slice_index, z_mm, position, score,
            center_lps).
        volumeNode: the CT volume the prediction was made on (names and hierarchy placement).
        extraSummary: more (property, value) rows for the summary table.

    Returns:
        The created nodes. On any error every node created so far is removed again.
    """
    created = []
    folderItemId = 0
    try:
        baseName = volumeNode.GetName() if volumeNode is not None else "CT"
        sliceTable = _addNode(scene, created, "vtkMRMLTableNode", f"{baseName} WSP slice scores")
        _fillSliceTable(sliceTable, prediction.slices)
        summaryTable = _addNode(scene, created, "vtkMRMLTableNode", f"{baseName} WSP summary")
        _fillSummaryTable(summaryTable, summaryRows(prediction, baseName, extraSummary))
        thresholdTable = _addNode(scene, created, "vtkMRMLTableNode", f"{baseName} WSP threshold")
        _fillThresholdTable(thresholdTable, prediction)

        # One scale: the curve (each slice's read) has the patient score as its mean, and the
        # threshold line is the decision threshold on that same scale.
        logit = prediction.scale == "logit"
        scoreSeries = _addNode(scene, created, "vtkMRMLPlotSeriesNode", "slice read" if logit else "slice score")
        _configureSeries(scoreSeries, sliceTable, "S", "read", SCORE_COLOR, dashed=False)
        thresholdSeries = _addNode(scene, created, "vtkMRMLPlotSeriesNode",
                                   f"threshold (p = {prediction.threshold:.2f}{_calibrated(prediction)})")
        _configureSeries(thresholdSeries, thresholdTable, "S", "threshold", THRESHOLD_COLOR, dashed=True)

        chart = _addNode(scene, created, "vtkMRMLPlotChartNode", f"{baseName} WSP cirrhosis curve")
        chart.AddAndObservePlotSeriesNodeID(scoreSeries.GetID())
        chart.AddAndObservePlotSeriesNodeID(thresholdSeries.GetID())
        chart.SetTitle(f"{baseName}: p(cirrhosis){_calibrated(prediction)} = {prediction.probability:.2f} "
                       f"({prediction.label_name}; {prediction.patient_head} head)")
        chart.SetXAxisTitle("S (mm)")
        chart.SetYAxisTitle("slice read (patient logit scale)" if logit else "slice score")
        chart.SetYAxisRangeAuto(logit)
        if not logit:
            chart.SetYAxisRange(0.0, 1.0)
        chart.SetLegendVisibility(True)

        folderItemId = _placeInHierarchy(scene, volumeNode, f"{baseName} WSPCirrhosis", created)
        return OutputNodes(sliceTable, summaryTable, thresholdTable, scoreSeries, thresholdSeries, chart, folderItemId)
    except BaseException:
        _removeNodes(scene, created, folderItemId)
        raise


def removeOutputNodes(scene, outputs: OutputNodes) -> None:
    """Remove every node of `outputs` and its hierarchy folder from `scene`."""
    _removeNodes(scene, outputs.nodes(), outputs.folderItemId)


def summaryRows(prediction, volumeName: str, extra: dict | None = None) -> list[tuple[str, str]]:
    """(property, value) rows of the patient-level result, as shown in the summary table."""
    rows = [
        ("CT volume", volumeName),
        ("cirrhosis probability", f"{prediction.probability:.4f}"),
        ("predicted label", f"{prediction.label_name} ({prediction.label})"),
        ("decision threshold", f"{prediction.threshold:g}"),
        ("patient head", prediction.patient_head),
        (f"patient score ({prediction.scale} scale)", f"{prediction.patient_score:.4f}"),
        (f"threshold ({prediction.scale} scale)", f"{prediction.score_threshold:.4f}"),
        ("liver slices scored", str(len(prediction.slices))),
        ("model", prediction.model_name),
        ("model sha256", prediction.model_sha256),
        ("device", prediction.device),
    ]
    rows += [(str(k), str(v)) for k, v in (extra or {}).items()]
    return rows


def resultText(prediction) -> str:
    """One line for the module panel, e.g. 'p(cirrhosis) = 0.83 -> cirrhosis (threshold 0.5, mean head, ...)'."""
    return (f"p(cirrhosis){_calibrated(prediction)} = {prediction.probability:.2f} -> {prediction.label_name} "
            f"(threshold {prediction.threshold:g}, {prediction.patient_head} head, {len(prediction.slices)} slices, "
            f"{prediction.device})")


def _calibrated(prediction) -> str:
    return " calibrated" if (prediction.extra or {}).get("calibration") else ""


def rowToRas(sliceTable, row: int) -> tuple[float, float, float]:
    """World RAS point (liver centre on the slice) stored in row `row` of a slice table."""
    table = sliceTable.GetTable()
    if not 0 <= row < table.GetNumberOfRows():
        raise IndexError(f"row {row} outside the table (0..{table.GetNumberOfRows() - 1})")
    return tuple(float(table.GetColumnByName(axis).GetValue(row)) for axis in ("R", "A", "S"))


def jumpSlicesToRow(scene, sliceTable, row: int, viewGroup: int = -1) -> tuple[float, float, float]:
    """Centre every slice view of `scene` on the liver centre of table row `row`; return the point."""
    r, a, s = rowToRas(sliceTable, row)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice, viewGroup)
    return (r, a, s)


def _fillSliceTable(tableNode, slices) -> None:
    ordered = sorted(slices, key=lambda sl: sl.z_mm)  # inferior -> superior, the plot's x order
    columns = {"slice_index": vtk.vtkIntArray()}
    for name in SLICE_COLUMNS[1:]:
        columns[name] = vtk.vtkDoubleArray()
    for name, array in columns.items():
        array.SetName(name)
        array.SetNumberOfValues(len(ordered))
    for row, sl in enumerate(ordered):
        lps = sl.center_lps
        values = (int(sl.slice_index), -float(lps[0]), -float(lps[1]), float(lps[2]), float(sl.position),
                  float(sl.score), float(sl.contribution), len(ordered) * float(sl.contribution))
        for name, value in zip(SLICE_COLUMNS, values):
            columns[name].SetValue(row, value)
    table = tableNode.GetTable()
    for name in SLICE_COLUMNS:
        table.AddColumn(columns[name])
    for name in SLICE_COLUMNS:
        tableNode.SetColumnDescription(name, COLUMN_DESCRIPTIONS[name])
        if name in COLUMN_UNITS:
            tableNode.SetColumnUnitLabel(name, COLUMN_UNITS[name])
    tableNode.SetLocked(True)
    tableNode.Modified()


def _fillSummaryTable(tableNode, rows) -> None:
    keys, values = vtk.vtkStringArray(), vtk.vtkStringArray()
    keys.SetName("property")
    values.SetName("value")
    for key, value in rows:
        keys.InsertNextValue(key)
        values.InsertNextValue(value)
    tableNode.GetTable().AddColumn(keys)
    tableNode.GetTable().AddColumn(values)
    tableNode.SetLocked(True)
    tableNode.Modified()


def _fillThresholdTable(tableNode, prediction) -> None:
    zs = [sl.z_mm for sl in prediction.slices] or [0.0]
    s, threshold = vtk.vtkDoubleArray(), vtk.vtkDoubleArray()
    s.SetName("S")
    threshold.SetName("threshold")
    for z in (min(zs), max(zs)):
        s.InsertNextValue(float(z))
        threshold.InsertNextValue(float(prediction.score_threshold))
    tableNode.GetTable().AddColumn(s)
    tableNode.GetTable().AddColumn(threshold)
    tableNode.SetColumnUnitLabel("S", "mm")
    tableNode.SetLocked(True)
    tableNode.Modified()


def _configureSeries(series, tableNode, xColumn: str, yColumn: str, color, dashed: bool) -> None:
    series.SetAndObserveTableNodeID(tableNode.GetID())
    series.SetXColumnName(xColumn)
    series.SetYColumnName(yColumn)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    if dashed:
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    else:
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    series.SetColor(*color)


def _addNode(scene, created: list, className: str, name: str):
    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    if node is None:
        raise RuntimeError(f"cannot create a {className} in the scene")
    created.append(node)
    return node


def _placeInHierarchy(scene, volumeNode, folderName: str, nodes: list) -> int:
    """Put `nodes` in a new folder beside the volume (same patient/study); return the folder id."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    parent = shNode.GetSceneItemID()
    if volumeNode is not None:
        volumeItem = shNode.GetItemByDataNode(volumeNode)
        if volumeItem:
            parent = shNode.GetItemParent(volumeItem)
    folder = shNode.CreateFolderItem(parent, folderName)
    for node in nodes:
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, folder)
        else:
            shNode.CreateItem(folder, node)
    return folder


def _removeNodes(scene, nodes: list, folderItemId: int) -> None:
    """Remove `nodes`, their hierarchy items and the folder.

    Items are removed one by one before their nodes: a bare slicer-core scene has no
    subject-hierarchy logic that would drop the items of removed nodes.
    """
    shNode = scene.GetSubjectHierarchyNode()
    for node in reversed(nodes):
        if node is None:
            continue
        item = shNode.GetItemByDataNode(node) if shNode is not None else 0
        if item:
            shNode.RemoveItem(item, False, False)
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)
    if shNode is not None and folderItemId and shNode.GetItemName(folderItemId):
        shNode.RemoveItem(folderItemId, False, True)
