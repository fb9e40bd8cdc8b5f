"""`wsp-cirrhosis manifest`: nested DICOM studies with several series, NIfTI/NRRD/MHA with masks, label join."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from support import make_ct
from wsp_cirrhosis.data.preprocess import load_cohort
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import PreprocessConfig
from wsp_cirrhosis.data.manifest import read_manifest
from wsp_cirrhosis.data.scan import choose_series, read_series


def write_series(image: sitk.Image, folder: Path, uid: str, description: str, modality: str = "CT",
                 orientation: str = "1\\0\\0\\0\\1\\0") -> Path:
    """A DICOM series (one file per slice) with the header fields the choice rules read."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        for tag, value in {"0008|0060": modality, "0008|103e": description, "0020|000d": "1.2.826.0.1.3680043.9.7.1",
                           "0020|000e": uid, "0020|0037": orientation, "0028|1052": "0", "0028|1053": "1",
                           "0018|0050": f"{image.GetSpacing()[2]:.3f}", "0020|0013": str(k + 1),
                           "0020|0032": "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))}.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def _nii(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def folders(tmp_path):
    """images/ with a DICOM study (3 series) and NIfTI/NRRD/MHA files in several layouts; masks/."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    ct, liver = make_ct(seed=1)
    # p001: nested DICOM study: arterial (24 slices), portal venous (16 slices), an MR series
    study = images / "p001" / "study-2001"
    write_series(ct, study / "arterial", "1.2.826.0.1.3680043.9.7.101", "ABD ARTERIAL 1mm")
    write_series(ct[:, :, 4:20], study / "portal", "1.2.826.0.1.3680043.9.7.102", "Portal venous 3mm")
    write_series(ct[:, :, :12], study / "mr", "1.2.826.0.1.3680043.9.7.103", "T2 HASTE", modality="MR")
    _nii(liver, masks / "p001.nii.gz")
    _nii(make_ct(seed=2)[0], images / "p002.nii.gz")  # mask in --masks with a suffix
    _nii(make_ct(seed=2)[1], masks / "p002_liver.nii.gz")
    ct3, mask3 = make_ct(seed=3)
    _nii(ct3, images / "sub" / "p003.nrrd")  # mask beside it, suffixed
    _nii(mask3, images / "sub" / "p003_seg.nrrd")
    for pid in ("p004", "p005"):  # one folder per patient: ct.nii.gz + liver.nii.gz
        c, m = make_ct(seed=int(pid[-1]))
        _nii(c, images / pid / "ct.nii.gz")
        _nii(m, images / pid / "liver.nii.gz")
    _nii(make_ct(seed=6)[0], images / "p006.mha")  # no mask anywhere
    _nii(make_ct(seed=7)[0], images / "p007.nii.gz")  # two candidate masks: ambiguous
    _nii(make_ct(seed=7)[1], masks / "p007.nii.gz")
    _nii(make_ct(seed=7)[1], masks / "p007_seg.nii.gz")
    _nii(make_ct(seed=8)[1], masks / "zzz.nii.gz")  # matches no CT
    labels = tmp_path / "labels.tsv"
    labels.write_text("case\tradiology\tbiopsy\n" + "\n".join(
        ["p001\t2\t1", "p002\t0\t", "p004\t1\t0", "p005\t3\t1", "p006\t1\t0", "ghost\t1\t1"]) + "\n")
    return tmp_path


def _manifest(folders, *extra):
    return main(["manifest", "--images", str(folders / "images"), "--masks", str(folders / "masks"),
                 "--labels", str(folders / "labels.tsv"), "--id-column", "case", "--weak-column", "radiology",
                 "--histo-column", "biopsy", "--out", str(folders / "cohort.csv"), *extra])


def test_folder_scan_chooses_series_pairs_masks_joins_labels_and_reports(folders, capsys):
    assert _manifest(folders) == 0
    records = {r.patient_id: r for r in read_manifest(folders / "cohort.csv")}
    assert sorted(records) == ["p001", "p002", "p003", "p004", "p005"]
    assert records["p001"].image == (folders / "images/p001/study-2001/portal").resolve()  # portal venous beats more slices
    assert records["p002"].liver_mask.name == "p002_liver.nii.gz"
    assert records["p003"].liver_mask.name == "p003_seg.nrrd"
    assert records["p004"].image.parent.name == "p004" and records["p004"].liver_mask.name == "liver.nii.gz"
    assert (records["p001"].weak_label, records["p001"].histo_label) == (2, 1)
    assert (records["p002"].weak_label, records["p002"].histo_label) == (0, None)
    assert (records["p003"].weak_label, records["p003"].histo_label) == (None, None)  # no label row
    report = (folders / "cohort.report.txt").read_text()
    for expected in ("portal-venous description 'Portal venous 3mm'", "modality MR, not CT",
                     "9.7.101", "p006", "p007: several masks match", "zzz.nii.gz", "- ghost", "- p003"):
        assert expected in report, expected
    out = capsys.readouterr().out
    assert "5 patient(s)" in out and "1 x Label ids with no CT" in out
    # the manifest is usable as it stands: the DICOM series and every mask preprocess
    patients = load_cohort(folders / "cohort.csv", PreprocessConfig(image_size=16), workers=1)
    assert len(patients) == 5 and all(len(p.slices) > 0 for p in patients)


def test_existing_manifest_needs_force_and_bad_labels_are_listed(folders, capsys):
    assert _manifest(folders) == 0
    assert _manifest(folders) == 2
    assert "--force" in capsys.readouterr().err
    (folders / "labels.tsv").write_text("case\tradiology\tbiopsy\np001\t2\t3\np002\tx\t0\n")
    assert _manifest(folders, "--force") == 2
    err = capsys.readouterr().err
    assert "2 bad label row(s)" in err and "biopsy '3'" in err and "radiology 'x'" in err


def test_series_rules_without_portal_description_prefer_most_then_thinnest(tmp_path):
    ct, _ = make_ct(seed=0)
    write_series(ct, tmp_path / "a", "1.2.3.1", "ABD 5mm")
    write_series(ct[:, :, :20], tmp_path / "b", "1.2.3.2", "ABD 1mm")
    write_series(ct, tmp_path / "c", "1.2.3.3", "coronal MPR", orientation="1\\0\\0\\0\\0\\-1")
    series = read_series(tmp_path / "a") + read_series(tmp_path / "b") + read_series(tmp_path / "c")
    assert [s.axial for s in series] == [True, True, False]
    chosen, why, skipped = choose_series("x", series)
    assert chosen.uid == "1.2.3.1" and why == "most slices (24 vs 20)"
    assert any("1.2.3.3" in s and "not axial" in s for s in skipped)
    assert any("1.2.3.2" in s and "not chosen" in s for s in skipped)
