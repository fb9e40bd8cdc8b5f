"""Reading CTs and masks from every supported format, and refusing bad input clearly."""


import numpy as np
import pytest
import SimpleITK as sitk

from support import make_ct, write_dicom_series
from wsp_cirrhosis.errors import InputError
from wsp_cirrhosis.data.images import check_ct, read_image, read_mask


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_each_file_format_reads_the_same_voxels_and_geometry(tmp_path, suffix):
    ct, _ = make_ct()
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(ct, str(path))
    back = read_image(path)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ct))
    assert np.allclose(back.GetSpacing(), ct.GetSpacing())
    assert np.allclose(back.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), ct.GetDirection())


def test_dicom_series_written_by_simpleitk_reads_back(tmp_path):
    ct, _ = make_ct()
    folder = write_dicom_series(ct, tmp_path / "series")
    back = read_image(folder)
    assert back.GetSize() == ct.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ct))
    assert np.allclose(back.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetSpacing(), ct.GetSpacing(), atol=1e-4)


def test_real_dicom_ct_reads_in_hounsfield_units(real_ct):
    image = read_image(real_ct / "ct_dicom")
    assert image.GetSize() == (512, 512, 20)
    check_ct(image, real_ct)
    liver = read_mask(real_ct / "segmentation.nii.gz", liver_label=5)
    assert sitk.GetArrayViewFromImage(liver).sum() == 366708


def _write(tmp_path, name, array, spacing=None):
    image = sitk.GetImageFromArray(array, isVector=False)
    if spacing:
        image.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def _bytes(path, data):
    path.write_bytes(data)
    return path


BAD_IMAGES = [
    ("missing", lambda d: d / "nope.nii.gz", "file not found"),
    ("garbage", lambda d: _bytes(d / "bad.nii.gz", b"not an image at all"), "cannot read"),
    ("unsupported", lambda d: _bytes(d / "ct.png", b"x"), "unsupported format"),
    ("2d", lambda d: _write(d, "flat.nii.gz", np.zeros((32, 32), np.int16)), "2D image"),
    ("4d", lambda d: _write(d, "time.nii.gz", np.zeros((2, 3, 8, 8), np.int16)), "4D image"),
    ("one-slice", lambda d: _write(d, "one.nii.gz", np.zeros((1, 8, 8), np.int16)), "single slice"),
    ("empty-dir", lambda d: (d / "empty").mkdir() or d / "empty", "no DICOM series"),
]


@pytest.mark.parametrize("case,build,message", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_is_refused_with_the_file_named(tmp_path, case, build, message):
    path = build(tmp_path)
    with pytest.raises(InputError) as err:
        read_image(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("values,message", [
    (np.random.default_rng(0).uniform(0, 4000, (8, 16, 16)), "does not look like CT"),  # MR-like / unrescaled CT
    (np.full((8, 16, 16), 40.0), "does not look like CT"),  # no air at all
])
def test_non_ct_intensities_are_refused(values, message):
    with pytest.raises(InputError, match=message):
        check_ct(sitk.GetImageFromArray(values.astype(np.float32)), "scan.nii.gz")


def test_mask_labels(tmp_path):
    arr = np.zeros((6, 8, 8), np.uint8)
    arr[1:4, 2:5, 2:5] = 5
    arr[4, 1, 1] = 2
    path = _write(tmp_path, "labels.nii.gz", arr)
    with pytest.raises(InputError, match="multi-label mask .*--liver-label"):
        read_mask(path)
    liver = sitk.GetArrayFromImage(read_mask(path, liver_label=5))
    assert liver.dtype == np.uint8 and liver.sum() == 27
    with pytest.raises(InputError, match="liver label 7 not in mask"):
        read_mask(path, liver_label=7)
    empty = _write(tmp_path, "empty.nii.gz", np.zeros((6, 8, 8), np.uint8))
    with pytest.raises(InputError, match="mask is empty"):
        read_mask(empty)


def test_probability_map_mask_is_thresholded_at_one_half(tmp_path):
    prob = np.zeros((4, 6, 6), np.float32)
    prob[1:3, 1:4, 1:4] = 0.8
    prob[0, 0, 0] = 0.3
    liver = sitk.GetArrayFromImage(read_mask(_write(tmp_path, "p.nii.gz", prob)))
    assert liver.sum() == 18
