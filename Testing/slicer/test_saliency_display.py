"""The relevance map and the ensemble summary in the module, on a slicer-core scene.

A real `python -m wsp_cirrhosis predict --saliency` child writes saliency.nii.gz; the job loads it
as a volume node that must lie exactly on the CT node's voxels, set up as a coloured overlay.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

# First, before WSPCirrhosisLib (see test_process.py).
slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install 'slicer-core>=5.10')")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no vtkMRMLScene", allow_module_level=True)

import vtk  # noqa: E402

from support import export_spread_bundle, flip_storage, make_ct  # noqa: E402
from wsp_cirrhosis.config import PreprocessConfig  # noqa: E402
from wsp_cirrhosis.inference.scoring import PatientPrediction, SliceScore, load_model  # noqa: E402
from wsp_cirrhosis.inference.saliency import compute_saliency  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "WSPCirrhosis"))

from WSPCirrhosisLib import job, nodes, panel, process  # noqa: E402
from WSPCirrhosisLib.process import JobState  # noqa: E402


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A CT stored with a flipped z axis (the module must not care), its mask, a tiny bundle."""
    folder = tmp_path_factory.mktemp("sal-small")
    ct, mask = make_ct()
    ct, mask = flip_storage(ct, 2), flip_storage(mask, 2)
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(mask, str(folder / "liver.nii.gz"))
    bundle = export_spread_bundle(folder / "ct.nii.gz", folder / "liver.nii.gz", PreprocessConfig(image_size=32),
                                  tmp_path_factory.mktemp("sal-run"), folder / "bundle")
    return ct, mask, bundle


def _matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_saliency_flag_reaches_the_child_only_when_ticked():
    plain = process.predictCommand("python", "ct.nii.gz", "m.nii.gz", "out")
    assert "--saliency" not in plain
    assert process.predictCommand("python", "ct.nii.gz", "m.nii.gz", "out", saliency=True)[-1] == "--saliency"


def test_job_loads_the_map_on_the_cts_voxels_as_a_coloured_overlay(small, tmp_path):
    ct, mask, bundle = small
    scene = slicer.vtkMRMLScene()
    ctNode = nodes.imageToVolumeNode(scene, ct, "CT")
    liverNode = nodes.imageToVolumeNode(scene, mask, "liver", "vtkMRMLLabelMapVolumeNode")
    finished = []
    run = job.createJob(scene, ctNode, liverNode, tmp_path / "work", model=bundle, device="cpu", batchSize=8,
                        python=sys.executable, saliency=True, onFinished=finished.append)
    assert "--saliency" in run.command
    run.start()
    assert run.handle.wait(120)
    (outcome,) = finished
    assert outcome.state == JobState.COMPLETED, outcome.message
    node = outcome.saliency
    assert node is not None and scene.IsNodePresent(node) and node.GetName() == "CT WSP relevance"
    assert np.allclose(_matrix(node), _matrix(ctNode), atol=1e-6), "the map must lie on the CT's voxels"
    got = slicer.util.arrayFromVolume(node)
    expected = sitk.GetArrayFromImage(compute_saliency(load_model(bundle, "cpu"), ct, mask).volume)
    assert got.shape == slicer.util.arrayFromVolume(ctNode).shape and got.max() > 0.5
    assert np.allclose(got, expected, atol=1e-5)
    display = node.GetDisplayNode()
    assert display.GetWindow() == pytest.approx(1.0) and display.GetLevel() == pytest.approx(0.5)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(nodes.SALIENCY_LOWER_THRESHOLD)
    assert outcome.message.startswith("P = ") and "across" not in outcome.message  # one model: no spread
    assert not (tmp_path / "work").exists()


def test_summary_line_shows_the_spread_of_an_ensemble():
    slices = [SliceScore(0, 0.0, 0.0, 0.5, (0.0, 0.0, 0.0))]
    extra = {"n_members": 5, "probability_min": 0.48, "probability_max": 0.71}
    ensemble = PatientPrediction(0.62, 1, "cirrhosis", 0.5, "m", "x", "cpu", slices, extra=extra)
    assert panel.resultText(ensemble).startswith("P = 0.62 (0.48-0.71 across 5 models) -> cirrhosis")
    single = PatientPrediction(0.62, 1, "cirrhosis", 0.5, "m", "x", "cpu", slices)
    assert panel.resultText(single).startswith("P = 0.62 -> cirrhosis (threshold 0.50, mean head, 1 slices")
    attention = PatientPrediction(0.62, 1, "cirrhosis", 0.5, "m", "x", "cpu", slices,
                                  extra={"patient_head": "attention", "scale": "logit"})
    assert "(threshold 0.50, attention head, 1 slices" in panel.resultText(attention)
