"""The module's logic on a real MRML scene (slicer-core, no Slicer application).

Nodes are built from a synthetic CT with a non-trivial IJK-to-RAS matrix (two flipped axes,
anisotropic spacing, non-zero origin); the result must match `predict_patient` run on the same
data written to NIfTI files, and bad inputs must raise the documented errors and leave the
scene as it was.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install 'slicer-core>=5.10')")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no vtkMRMLScene", allow_module_level=True)

import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from support import export_spread_bundle, flip_storage, make_ct  # noqa: E402
from wsp_cirrhosis.config import PreprocessConfig  # noqa: E402
from wsp_cirrhosis.errors import BundleError, Cancelled, InputError  # noqa: E402
from wsp_cirrhosis.inference.scoring import predict_patient  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[2] / "WSPCirrhosis"
sys.path.insert(0, str(MODULE_DIR))

from WSPCirrhosisLib import analysis, nodes, outputs  # noqa: E402

PREPROCESS = PreprocessConfig(image_size=32)
LPS = np.diag([-1.0, -1.0, 1.0])


# --- data ---------------------------------------------------------------------------------


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """4x4 IJK -> RAS of a SimpleITK image, written independently of nodes.py."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS @ direction @ np.diag(image.GetSpacing())
    m[:3, 3] = LPS @ np.array(image.GetOrigin())
    return m


def add_volume(scene, image: sitk.Image, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(image)))
    return node


def add_segmentation(scene, mask: sitk.Image, name: str = "segmentation"):
    """A segmentation with a 'Spleen' decoy and a 'Liver' segment on the mask's grid."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    for segment_name, array in (("Spleen", np.roll(sitk.GetArrayFromImage(mask), 5, axis=2)),
                                ("Liver", sitk.GetArrayFromImage(mask))):
        labelmap = slicer.vtkOrientedImageData()
        k, j, i = array.shape
        labelmap.SetDimensions(i, j, k)
        labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        labelmap.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(array.ravel().astype(np.uint8)))
        labelmap.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(mask)))
        node.AddSegmentFromBinaryLabelmapRepresentation(labelmap, segment_name)
    return node


@pytest.fixture(scope="module")
def images() -> dict[str, sitk.Image]:
    """The test CT and mask stored with flipped x and z axes (direction diag(-1, 1, -1))."""
    ct, mask = make_ct()
    ct, mask = flip_storage(flip_storage(ct, 2), 0), flip_storage(flip_storage(mask, 2), 0)
    assert np.allclose(np.diag(np.array(ct.GetDirection()).reshape(3, 3)), [-1, 1, -1])
    return {"ct": ct, "mask": mask}


@pytest.fixture(scope="module")
def nifti(tmp_path_factory, images) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nifti")
    paths = {"ct": folder / "ct.nii.gz", "mask": folder / "liver.nii.gz"}
    sitk.WriteImage(images["ct"], str(paths["ct"]))
    sitk.WriteImage(images["mask"], str(paths["mask"]))
    return paths


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, nifti) -> Path:
    """A random TinyNet exported as a bundle; its head spreads the slice scores over (0, 1)."""
    return export_spread_bundle(nifti["ct"], nifti["mask"], PREPROCESS, tmp_path_factory.mktemp("run"),
                                tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="module")
def reference(nifti, bundle_dir):
    """`predict_patient` on the NIfTI files: what the CLI computes."""
    return predict_patient(nifti["ct"], nifti["mask"], bundle=bundle_dir, device="cpu", batch_size=8)


@pytest.fixture
def scene(images):
    scene = slicer.vtkMRMLScene()
    scene.ct = add_volume(scene, images["ct"], "CT")
    scene.labelmap = add_volume(scene, images["mask"], "liver label", "vtkMRMLLabelMapVolumeNode")
    return scene


def run(scene, bundle_dir, volume=None, mask=None, **kwargs):
    return analysis.process(scene, volume or scene.ct, mask or scene.labelmap, model=bundle_dir,
                            device="cpu", batchSize=8, **kwargs)


def column(table_node, name: str) -> np.ndarray:
    return slicer.util.arrayFromTableColumn(table_node, name).copy()


def strings(table_node, name: str) -> list[str]:
    array = table_node.GetTable().GetColumnByName(name)
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]


def scene_state(scene) -> tuple[int, int]:
    """(number of nodes, number of subject-hierarchy items)."""
    sh = scene.GetSubjectHierarchyNode()
    items = vtk.vtkIdList()
    if sh is not None:
        sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    return scene.GetNumberOfNodes(), items.GetNumberOfIds()


# --- geometry -------------------------------------------------------------------------------


def test_volume_node_converts_to_the_nifti_geometry(scene, nifti):
    image = nodes.volumeToImage(scene.ct)
    expected = sitk.ReadImage(str(nifti["ct"]))
    assert image.GetSize() == expected.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(expected))


def test_segment_named_liver_converts_like_the_labelmap(scene):
    segmentation = add_segmentation(scene, nodes.maskToImage(scene.labelmap))
    assert [name for _, name in nodes.listSegments(segmentation)] == ["Spleen", "Liver"]
    from_segment = nodes.maskToImage(segmentation)
    from_labelmap = nodes.maskToImage(scene.labelmap)
    resampled = sitk.Resample(from_segment, from_labelmap, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(resampled), sitk.GetArrayViewFromImage(from_labelmap))


# --- one prediction -------------------------------------------------------------------------


def test_process_writes_table_plot_and_chart(scene, bundle_dir):
    result = run(scene, bundle_dir)
    table = result.sliceTable
    names = [table.GetTable().GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())]
    assert names == list(outputs.SLICE_COLUMNS)
    assert table.GetNumberOfRows() == len(result.prediction.slices) > 5
    assert np.all(np.diff(column(table, "S")) > 0), "rows run inferior -> superior"
    chart = result.chart
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = [chart.GetNthPlotSeriesNode(i) for i in range(2)]
    # one scale: the curve is each slice's read (its score, for head mean), the line the threshold there
    assert [(s.GetXColumnName(), s.GetYColumnName()) for s in series] == [("S", "read"), ("S", "threshold")]
    assert series[0].GetTableNode() is table
    np.testing.assert_allclose(column(table, "read"), column(table, "score"), atol=1e-6)
    np.testing.assert_allclose(column(table, "contribution").sum(), result.probability, atol=1e-6)
    np.testing.assert_allclose(column(series[1].GetTableNode(), "threshold"), [0.5, 0.5])
    summary = dict(zip(*(strings(result.summaryTable, c) for c in ("property", "value"))))
    assert summary["patient head"] == "mean" and float(summary["threshold (probability scale)"]) == 0.5
    assert float(summary["cirrhosis probability"]) == pytest.approx(result.probability, abs=1e-4)
    assert summary["model"] == "tiny-test" and summary["device"] == "cpu"
    sh = scene.GetSubjectHierarchyNode()
    folder = sh.GetItemParent(sh.GetItemByDataNode(table))
    assert sh.GetItemName(folder) == "CT WSPCirrhosis"
    assert all(sh.GetItemParent(sh.GetItemByDataNode(n)) == folder for n in result.outputs.nodes())


def test_scores_equal_predict_patient_on_nifti_files(scene, bundle_dir, reference):
    result = run(scene, bundle_dir)
    by_index = {s.slice_index: s for s in reference.slices}
    rows = column(result.sliceTable, "slice_index").astype(int)
    assert sorted(rows) == sorted(by_index)
    np.testing.assert_allclose(column(result.sliceTable, "score"), [by_index[k].score for k in rows], atol=1e-6)
    np.testing.assert_allclose(column(result.sliceTable, "position"), [by_index[k].position for k in rows], atol=1e-6)
    assert result.probability == pytest.approx(reference.probability, abs=1e-6)
    assert np.ptp(column(result.sliceTable, "score")) > 0.1, "a flat curve would not test the slice order"


def test_ras_columns_follow_the_volume_ijk_to_ras(scene, bundle_dir, images):
    table = run(scene, bundle_dir).sliceTable
    ras = np.stack([column(table, c) for c in "RAS"] + [np.ones(table.GetNumberOfRows())], axis=1)
    ijk = (np.linalg.inv(ijk_to_ras(images["ct"])) @ ras.T).T[:, :3]
    np.testing.assert_allclose(ijk[:, 2], column(table, "slice_index"), atol=1e-6)
    mask = sitk.GetArrayViewFromImage(images["mask"])  # (k, j, i)
    for (i, j, k) in np.round(ijk).astype(int):
        js, is_ = np.nonzero(mask[k])
        assert js.min() - 1 <= j <= js.max() + 1 and is_.min() - 1 <= i <= is_.max() + 1


def test_parent_transform_moves_ras_not_scores(scene, bundle_dir):
    plain = run(scene, bundle_dir).sliceTable
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (10.0, -20.0, 30.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    for node in (scene.ct, scene.labelmap):
        node.SetAndObserveTransformNodeID(transform.GetID())
    moved = run(scene, bundle_dir).sliceTable
    np.testing.assert_allclose(column(moved, "score"), column(plain, "score"), atol=1e-6)
    for axis, offset in zip("RAS", (10.0, -20.0, 30.0)):
        np.testing.assert_allclose(column(moved, axis), column(plain, axis) + offset, atol=1e-4)


def test_segmentation_input_gives_the_labelmap_scores(scene, bundle_dir):
    segmentation = add_segmentation(scene, nodes.maskToImage(scene.labelmap))
    from_labelmap = run(scene, bundle_dir)
    from_segment = run(scene, bundle_dir, mask=segmentation)
    np.testing.assert_allclose(column(from_segment.sliceTable, "score"), column(from_labelmap.sliceTable, "score"),
                               atol=1e-6)


def test_click_on_a_row_jumps_slice_views_to_its_point(scene, bundle_dir):
    table = run(scene, bundle_dir).sliceTable
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    row = table.GetNumberOfRows() // 2
    point = outputs.jumpSlicesToRow(scene, table, row)
    assert point == outputs.rowToRas(table, row)
    slice_to_ras = slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS())
    np.testing.assert_allclose(slice_to_ras[:3, 3], point, atol=1e-6)
    with pytest.raises(IndexError):
        outputs.rowToRas(table, table.GetNumberOfRows())


# --- bad inputs -----------------------------------------------------------------------------


def _shifted(scene, images):
    far = sitk.Image(images["mask"])
    far.SetOrigin(tuple(np.array(far.GetOrigin()) + 1000.0))
    return {"mask": add_volume(scene, far, "far mask", "vtkMRMLLabelMapVolumeNode")}


def _mr_like(scene, images):
    mr = sitk.GetArrayFromImage(images["ct"]).astype(np.int16) + 1000  # no air at -1000 HU
    image = sitk.GetImageFromArray(mr)
    image.CopyInformation(images["ct"])
    return {"volume": add_volume(scene, image, "MR-like")}


def _rgb(scene, images):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    data = vtk.vtkImageData()
    data.SetDimensions(8, 8, 8)
    data.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(data)
    return {"volume": node}


def _single_slice(scene, images):
    return {"volume": add_volume(scene, images["ct"][:, :, 12:13], "one slice")}


def _multi_label(scene, images):
    labels = sitk.GetArrayFromImage(images["mask"]).astype(np.uint8) * 5
    labels[0, 0, 0] = 2
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(images["mask"])
    return {"mask": add_volume(scene, image, "multi-label", "vtkMRMLLabelMapVolumeNode")}


def _empty_segment(scene, images):
    segmentation = add_segmentation(scene, sitk.Image(images["mask"]) * 0)
    return {"mask": segmentation}


def _bad_bundle(scene, images, bundle_dir, tmp_path):
    bad = tmp_path / "future-bundle"
    shutil.copytree(bundle_dir, bad)
    meta = json.loads((bad / "bundle.json").read_text())
    meta["format_version"] = 99
    (bad / "bundle.json").write_text(json.dumps(meta))
    return {"model": bad}


BAD_INPUTS = [
    ("no-volume", lambda s, im: {"volume": "none"}, InputError, "no CT volume selected"),
    ("no-mask", lambda s, im: {"mask": "none"}, InputError, "no liver mask selected"),
    ("labelmap-as-ct", lambda s, im: {"volume": s.labelmap}, InputError, "not a CT volume"),
    ("mask-not-overlapping", _shifted, InputError, "does not overlap"),
    ("non-ct-intensities", _mr_like, InputError, "does not look like CT"),
    ("rgb-volume", _rgb, InputError, "3 components per voxel"),
    ("2d-image", _single_slice, InputError, "single slice"),
    ("multi-label-without-label", _multi_label, InputError, "several labels"),
    ("empty-segment", _empty_segment, InputError, "is empty"),
    ("incompatible-bundle", _bad_bundle, BundleError, "format_version"),
]


@pytest.mark.parametrize("build, error, fragment", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_raises_and_leaves_no_node(scene, images, bundle_dir, tmp_path, build, error, fragment):
    args = build(scene, images, bundle_dir, tmp_path) if build is _bad_bundle else build(scene, images)
    volume = None if args.get("volume") == "none" else args.get("volume", scene.ct)
    mask = None if args.get("mask") == "none" else args.get("mask", scene.labelmap)
    before = scene_state(scene)
    with pytest.raises(error, match=fragment):
        analysis.process(scene, volume, mask, model=args.get("model", bundle_dir), device="cpu")
    assert scene_state(scene) == before


def test_cancel_raises_cancelled_and_leaves_no_node(scene, bundle_dir):
    before = scene_state(scene)
    with pytest.raises(Cancelled):
        run(scene, bundle_dir, cancel=lambda: True)
    assert scene_state(scene) == before


def test_failure_while_writing_outputs_removes_the_partial_nodes(scene, bundle_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("plot series broke")

    monkeypatch.setattr(outputs, "_configureSeries", broken)
    before = scene_state(scene)
    with pytest.raises(RuntimeError, match="plot series broke"):
        run(scene, bundle_dir)
    assert scene_state(scene) == before


# --- the module's Logic, as called from Slicer's Python console ------------------------------


@pytest.fixture
def module_file(monkeypatch, scene):
    """Import WSPCirrhosis.py with stand-ins for the parts only the Slicer application has
    (ScriptedLoadableModule, parameterNodeWrapper, i18n, slicer.mrmlScene)."""
    import types

    def stub(name, **attrs):
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    slm = stub("slicer.ScriptedLoadableModule", ScriptedLoadableModule=Base, ScriptedLoadableModuleWidget=Base,
               ScriptedLoadableModuleLogic=Base, ScriptedLoadableModuleTest=Base)
    pnw = stub("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
               WithinRange=lambda *a: None, Choice=lambda *a: None)
    i18n = stub("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    for attr, module in (("ScriptedLoadableModule", slm), ("parameterNodeWrapper", pnw), ("i18n", i18n)):
        monkeypatch.setattr(slicer, attr, module, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    sys.modules.pop("WSPCirrhosis", None)
    import WSPCirrhosis

    yield WSPCirrhosis
    sys.modules.pop("WSPCirrhosis", None)  # it holds the stand-ins: never reuse it


def test_logic_process_is_the_console_api(module_file, scene, bundle_dir, reference):
    logic = module_file.WSPCirrhosisLogic()
    result = logic.process(scene.ct, scene.labelmap, device="cpu", model=bundle_dir)
    assert result.probability == pytest.approx(reference.probability, abs=1e-6)
    assert result.label_name == reference.label_name and result.threshold == 0.5
    assert scene.IsNodePresent(result.sliceTable) and scene.IsNodePresent(result.chart)
    assert logic.loadModel(bundle_dir, "cpu") is logic.loadModel(bundle_dir, "cpu"), "the model is reused"
    with pytest.raises(InputError, match="no CT volume"):  # inputs are checked before any model is loaded
        logic.process(None, scene.labelmap, device="cpu", model="/nonexistent/bundle")


def test_logic_start_process_writes_the_result_of_process(module_file, scene, bundle_dir, tmp_path):
    """Apply's path (a `python -m wsp_cirrhosis predict` child, its files read back) and the console's
    `logic.process` (in this process) give the same nodes."""
    from WSPCirrhosisLib import job, process

    logic = module_file.WSPCirrhosisLogic()
    direct = logic.process(scene.ct, scene.labelmap, device="cpu", model=bundle_dir, batchSize=8)
    finished = []
    run = logic.startProcess(scene.ct, scene.labelmap, device="cpu", model=bundle_dir, batchSize=8,
                             workDir=tmp_path / "work", launch=job.popenLaunch, onFinished=finished.append)
    assert "--progress" in run.command and run.command[:3] == [sys.executable, "-m", "wsp_cirrhosis"]
    run.start()
    assert run.handle.wait(120)
    (outcome,) = finished
    assert outcome.state == process.JobState.COMPLETED, outcome.message
    result = outcome.result
    assert result.probability == pytest.approx(direct.probability, abs=1e-6)
    for name in outputs.SLICE_COLUMNS:
        assert np.allclose(column(result.sliceTable, name), column(direct.sliceTable, name), atol=1e-6), name
    same = dict(zip(strings(direct.summaryTable, "property"), strings(direct.summaryTable, "value")))
    assert dict(zip(strings(result.summaryTable, "property"), strings(result.summaryTable, "value"))) == same
    assert result.chart.GetTitle() == direct.chart.GetTitle() and result.chart.GetNumberOfPlotSeriesNodes() == 2
    assert not (tmp_path / "work").exists(), "inputs and result files are removed once read"


# --- the segment picker, with a stand-in combo box (PythonQt exists only inside Slicer) ------


class FakeComboBox:
    def __init__(self):
        self.items, self.currentIndex, self.blocked = [], -1, False

    def connect(self, signal, slot): pass
    def blockSignals(self, block): was, self.blocked = self.blocked, block; return was  # noqa: E702
    def clear(self): self.items, self.currentIndex = [], -1  # noqa: E702
    def addItem(self, text, data): self.items.append((text, data))
    def findData(self, data): return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None


def test_segment_picker_follows_the_segmentation(scene):
    from WSPCirrhosisLib import display

    chosen = []
    combo = FakeComboBox()
    picker = display.SegmentPicker(combo, chosen.append)
    segmentation = add_segmentation(scene, nodes.maskToImage(scene.labelmap))
    picker.setSegmentationNode(segmentation)
    assert [text for text, _ in combo.items] == ["Spleen", "Liver"]
    assert chosen[-1] == nodes.findLiverSegmentId(segmentation), "the liver segment is picked by name"
    combo.currentIndex = 0  # the user picks the spleen; a change of the segment list must keep it
    spleen = combo.currentData
    liver_id = nodes.findLiverSegmentId(segmentation)
    segmentation.GetSegmentation().RemoveSegment(liver_id)
    assert [text for text, _ in combo.items] == ["Spleen"] and chosen[-1] == spleen, "the list follows removals"
    picker.setSegmentationNode(None)
    assert combo.items == [] and chosen[-1] == ""
    picker.cleanup()
