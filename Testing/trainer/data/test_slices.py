"""Orientation, mask alignment and liver-slice extraction (the preprocessing)."""

import numpy as np
import pytest
import SimpleITK as sitk

from support import flip_storage, make_ct, write_dicom_series
from wsp_cirrhosis.config import PreprocessConfig
from wsp_cirrhosis.errors import InputError
from wsp_cirrhosis.data.orientation import orient_to_canonical
from wsp_cirrhosis.data.slices import prepare_ct, window_hu

CFG = PreprocessConfig(image_size=32)


def _same(a, b):
    assert np.array_equal(a.slices, b.slices)
    assert np.allclose(a.positions, b.positions)
    assert np.allclose(a.z_mm, b.z_mm)
    assert np.allclose(a.center_lps, b.center_lps, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["x", "y", "z"])
def test_flipped_storage_gives_identical_slices_and_positions(axis):
    ct, mask = make_ct()
    ref = prepare_ct(ct, mask, CFG)
    flipped = prepare_ct(flip_storage(ct, axis), flip_storage(mask, axis), CFG)
    _same(ref, flipped)
    n = ct.GetSize()[2]
    expected = n - 1 - ref.slice_index if axis == 2 else ref.slice_index
    assert np.array_equal(flipped.slice_index, expected)


def test_permuted_axes_give_identical_slices():
    ct, mask = make_ct()
    ref = prepare_ct(ct, mask, CFG)
    # Store with z as the first array axis (a sagittal-like storage of the same physical volume).
    perm = [sitk.PermuteAxes(im, [2, 0, 1]) for im in (ct, mask)]
    assert perm[0].GetSize() != ct.GetSize()
    _same(ref, prepare_ct(perm[0], perm[1], CFG))


def test_slices_follow_physical_z_from_inferior_to_superior():
    ct, mask = make_ct()
    liver = prepare_ct(ct, mask, CFG)
    assert np.all(np.diff(liver.z_mm) > 0)
    assert liver.positions[0] == 0.0 and liver.positions[-1] == 1.0
    assert liver.slices.dtype == np.float32 and liver.slices.shape[1:] == (32, 32)
    assert 0.0 <= liver.slices.min() and liver.slices.max() <= 1.0
    n_liver = int(sitk.GetArrayViewFromImage(mask).reshape(ct.GetSize()[2], -1).any(1).sum())
    assert len(liver) == n_liver


def test_mask_on_another_grid_is_resampled():
    ct, mask = make_ct()
    ref = prepare_ct(ct, mask, CFG)
    coarse = sitk.Resample(mask, [s // 2 for s in mask.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           mask.GetOrigin(), [2 * s for s in mask.GetSpacing()], mask.GetDirection(), 0, sitk.sitkUInt8)
    moved = prepare_ct(ct, coarse, CFG)
    assert abs(len(moved) - len(ref)) <= 3  # nearest-neighbour on a 2x coarser grid


def test_mask_that_misses_the_ct_is_refused():
    ct, mask = make_ct()
    far = sitk.Image(mask)
    far.SetOrigin((5000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="does not overlap"):
        prepare_ct(ct, far, CFG, mask_path="far.nii.gz")


def test_window_maps_hu_to_unit_interval():
    cfg = PreprocessConfig(window_min_hu=-100, window_max_hu=100)
    assert np.allclose(window_hu(np.array([-1000, -100, 0, 100, 3000]), cfg), [0, 0, 0.5, 1, 1])


def test_real_ct_with_mask_stored_in_another_orientation(real_ct):
    """The real label map is stored LAS (y flipped): it lines up only through physical space."""
    cfg = PreprocessConfig(image_size=64, liver_label=5)
    liver = prepare_ct(real_ct / "ct_dicom", real_ct / "segmentation.nii.gz", cfg)
    assert len(liver) == 20
    assert np.array_equal(liver.slice_index, np.arange(20))
    mask = sitk.ReadImage(str(real_ct / "segmentation.nii.gz"))
    mask_arr = sitk.GetArrayViewFromImage(orient_to_canonical(mask)) == 5
    ct_arr = sitk.GetArrayViewFromImage(orient_to_canonical(sitk.ReadImage(
        sorted(str(p) for p in (real_ct / "ct_dicom").iterdir())[10])))
    assert mask_arr.shape[1:] == ct_arr.shape[1:]
    # Liver HU of a portal-venous CT: the mask must land on the liver, not on a mirrored region.
    image = orient_to_canonical(sitk.ReadImage(sorted(str(p) for p in (real_ct / "ct_dicom").iterdir())))
    hu = sitk.GetArrayViewFromImage(image)[mask_arr]
    assert 60 < np.median(hu) < 130
    # The centre of the liver box lies on the patient's right (negative L in LPS).
    assert np.all(liver.center_lps[:, 0] < 0)


def test_dicom_and_nifti_of_the_same_ct_give_identical_slices(tmp_path):
    ct, mask = make_ct()
    write_dicom_series(ct, tmp_path / "dcm")
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nrrd"))
    _same(prepare_ct(tmp_path / "dcm", tmp_path / "mask.nrrd", CFG), prepare_ct(tmp_path / "ct.nii.gz", tmp_path / "mask.nrrd", CFG))
