"""Apply as a child process, and the panel's decisions, on a slicer-core scene (no Slicer application).

The children are real `python -m wsp_cirrhosis predict` processes on a small CT; what the
module does when the scene closes, the module reloads, a segmentation needs converting, or a
package is old is reached through the same functions the widget calls.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

# First, before WSPCirrhosisLib: slicer-core's package __init__ imports every module of each
# "slicer" folder on sys.path, this Testing/slicer folder included.
slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install 'slicer-core>=5.10')")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no vtkMRMLScene", allow_module_level=True)

import vtk  # noqa: E402

from support import export_spread_bundle, make_ct  # noqa: E402
from wsp_cirrhosis.config import PreprocessConfig  # noqa: E402
from wsp_cirrhosis.errors import InputError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "WSPCirrhosis"))

from WSPCirrhosisLib import dependencies, job, nodes, panel, process  # noqa: E402
from WSPCirrhosisLib.process import JobState  # noqa: E402


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A CT, its liver mask and a tiny bundle."""
    folder = tmp_path_factory.mktemp("small")
    ct, mask = make_ct()
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(mask, str(folder / "liver.nii.gz"))
    bundle = export_spread_bundle(folder / "ct.nii.gz", folder / "liver.nii.gz", PreprocessConfig(image_size=32),
                                  tmp_path_factory.mktemp("run"), folder / "bundle")
    return ct, mask, bundle


def volume_node(scene, image: sitk.Image, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetSpacing(image.GetSpacing())
    node.SetOrigin(-image.GetOrigin()[0], -image.GetOrigin()[1], image.GetOrigin()[2])  # LPS -> RAS
    node.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)
    return node


@pytest.fixture
def scene(small):
    scene = slicer.vtkMRMLScene()
    scene.ct = volume_node(scene, small[0], "CT")
    scene.liver = volume_node(scene, small[1], "liver", "vtkMRMLLabelMapVolumeNode")
    return scene


def new_job(scene, small, tmp_path, finished, batch_size=8):
    return job.createJob(scene, scene.ct, scene.liver, tmp_path / "work", model=small[2], device="cpu",
                         batchSize=batch_size, python=sys.executable, onFinished=finished.append)


def test_inputs_are_written_with_their_geometry(scene, small, tmp_path):
    ct_path, mask_path = process.writeInputs(scene.ct, scene.liver, tmp_path)
    for path, original in ((ct_path, small[0]), (mask_path, small[1])):
        written = sitk.ReadImage(str(path))
        assert np.allclose(written.GetOrigin(), original.GetOrigin()) and written.GetSize() == original.GetSize()
        assert np.allclose(written.GetSpacing(), original.GetSpacing())
        assert np.allclose(written.GetDirection(), original.GetDirection())
        assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original))


def test_child_finds_the_trainer_through_pythonpath():
    env = process.processEnvironment({"PYTHONPATH": "/elsewhere"})
    first, *rest = env["PYTHONPATH"].split(":")
    assert (Path(first) / "wsp_cirrhosis" / "__init__.py").is_file() and rest == ["/elsewhere"]
    command = process.predictCommand("PythonSlicer", "ct.nrrd", "liver.nrrd", "out", model=".", batchSize=4)
    assert command[:4] == ["PythonSlicer", "-m", "wsp_cirrhosis", "predict"] and "--model" not in command
    assert command[command.index("--liver-label") + 1] == "1" and command[-2:] == ["--progress", "jsonl"]


def test_result_arriving_after_the_ct_left_the_scene_is_dropped_quietly(scene, small, tmp_path):
    finished = []
    run = new_job(scene, small, tmp_path, finished)
    before = scene.GetNumberOfNodes()
    run.start()
    while run.state != JobState.RUNNING:
        run.handle.poll()
        time.sleep(0.01)
    scene.RemoveNode(scene.ct)  # the user closes the scene while the child computes
    assert run.handle.wait(120)
    (outcome,) = finished
    assert outcome.state == JobState.DROPPED and outcome.detail is None and "left the scene" in outcome.message
    assert scene.GetNumberOfNodes() == before - 1, "no result node was written"


def test_abandoned_job_ends_its_process_and_writes_nothing(scene, small, tmp_path):
    finished = []
    run = new_job(scene, small, tmp_path, finished, batch_size=1)
    before = scene.GetNumberOfNodes()
    run.start()
    while run.state != JobState.RUNNING:
        run.handle.poll()
        time.sleep(0.01)
    run.abandon()  # what the widget's cleanup does on module reload or application exit
    assert run.handle.wait(60)
    assert run.handle.proc.returncode != 0 and run.state == JobState.ABANDONED
    assert finished == [] and scene.GetNumberOfNodes() == before
    assert not (tmp_path / "work").exists()


def test_bad_input_raises_before_anything_is_written(scene, small, tmp_path):
    empty = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "empty")
    slicer.util.updateVolumeFromArray(empty, np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(InputError):
        job.createJob(scene, scene.ct, None, tmp_path / "work", python=sys.executable)
    assert not (tmp_path / "work").exists()


def test_default_ct_is_exactly_a_scalar_volume(scene, small):
    empty = slicer.vtkMRMLScene()
    for class_name in ("vtkMRMLVectorVolumeNode", "vtkMRMLDiffusionTensorVolumeNode", "vtkMRMLLabelMapVolumeNode"):
        node = empty.AddNewNodeByClass(class_name, class_name)
        assert node is not None and node.IsA("vtkMRMLScalarVolumeNode"), class_name
    assert panel.defaultInputVolume(empty) is None, "vector, tensor and label volumes are not CTs"
    ct = volume_node(empty, small[0], "CT")
    assert panel.defaultInputVolume(empty) is ct


def test_apply_waits_for_a_model_folder_when_another_bundle_is_ticked(scene, small):
    assert panel.applyState(scene.ct, scene.liver) == (True, panel.APPLY_TOOLTIP)
    for empty_path in (".", "", None):  # "." is what the path widget gives for no folder
        enabled, tip = panel.applyState(scene.ct, scene.liver, True, empty_path)
        assert not enabled and "no bundle folder is selected" in tip
    enabled, tip = panel.applyState(scene.ct, scene.liver, True, small[2].parent)
    assert not enabled and "not a model bundle folder" in tip
    assert panel.applyState(scene.ct, scene.liver, True, small[2]) == (True, panel.APPLY_TOOLTIP)
    assert not panel.applyState(None, scene.liver)[0]


def test_error_dialog_gets_details_only_when_there_are_some():
    assert panel.errorDisplayArguments("bad mask") == (("bad mask",), {})
    assert panel.errorDisplayArguments("bad mask", "  ") == (("bad mask",), {})
    assert panel.errorDisplayArguments("crash", "Traceback ...") == (("crash",), {"detailedText": "Traceback ..."})


def test_refused_segment_leaves_the_users_segmentation_untouched(scene):
    """A closed-surface-only segmentation is converted on a copy; the user's node keeps its form."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())  # Slicer's app does this
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")
    surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(surface)
    sphere = vtk.vtkSphereSource()
    sphere.SetRadius(20)
    sphere.Update()
    for segment_id, polydata in (("liver", sphere.GetOutput()), ("empty", vtk.vtkPolyData())):
        segment = slicer.vtkSegment()
        segment.SetName(segment_id)
        segment.AddRepresentation(surface, polydata)
        segmentation.AddSegment(segment, segment_id)
    liver_id, empty_id = "liver", "empty"
    labelmap = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    assert not segmentation.ContainsRepresentation(labelmap)
    with pytest.raises(InputError, match="'empty' is empty"):  # refused only after a conversion
        nodes.maskToImage(node, segmentId=empty_id)
    assert not segmentation.ContainsRepresentation(labelmap), "the refused input left the user's node as it was"
    image = nodes.maskToImage(node, segmentId=liver_id)  # the copy is converted and used
    assert sitk.GetArrayViewFromImage(image).sum() > 1000
    assert not segmentation.ContainsRepresentation(labelmap), "the user's node was not converted"


def test_slicer_packaging_is_imported_not_looked_up(tmp_path, monkeypatch):
    """slicer.packaging is an attribute of slicer only after an import; pip_ensure must be found anyway."""
    package = tmp_path / "slicer"
    package.mkdir()
    (package / "packaging.py").write_text("def pip_ensure(requirements, **kwargs):\n    return requirements\n")
    monkeypatch.setattr(slicer, "__path__", [*slicer.__path__, str(package)])
    monkeypatch.delitem(sys.modules, "slicer.packaging", raising=False)
    monkeypatch.delattr(slicer, "packaging", raising=False)
    assert getattr(slicer, "packaging", None) is None
    found = dependencies.slicerPackaging()
    assert found is not None and found.pip_ensure(["x"]) == ["x"]
    monkeypatch.delitem(sys.modules, "slicer.packaging", raising=False)


def test_too_old_torch_says_what_to_do_first(monkeypatch):
    monkeypatch.setattr(dependencies, "_installedVersion", lambda name: "1.13.1+cpu")
    with pytest.raises(dependencies.DependencyError) as info:
        dependencies._checkTorchVersion()
    text = str(info.value)
    assert text.index("Uninstall") < text.index("restart Slicer") < text.index("install with version requirement")
    source = (Path(__file__).resolve().parents[2] / "WSPCirrhosis" / "WSPCirrhosis.py").read_text()
    assert "restart()" not in source, "no 'Restart now?' offer before the old torch is uninstalled"
