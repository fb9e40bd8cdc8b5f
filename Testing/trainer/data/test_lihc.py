"""`wsp-cirrhosis lihc` on a fake TCGA-LIHC folder built here with the real file-name pattern and a
table in the authors' layout (`,subject,score,class,label`); ids and values are invented."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from support import make_ct
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.data.automask import totalsegmentator_available
from wsp_cirrhosis.data.manifest import read_manifest

SCORES = {0: "0 - No Fibrosis", 1: "1,2 - Portal Fibrosis", 2: "3,4 - Fibrous Speta",
          3: "5 - Nodular Formation and Incomplete Cirrhosis", 4: "6 - Established Cirrhosis"}
# (patient, date named in the table, class); TCGA-ZZ-0002 also has a later scan, TCGA-ZZ-0005 no mask
TABLE = [("TCGA-ZZ-0001", "2001-02-03", 0), ("TCGA-ZZ-0002", "1999-05-06", 4), ("TCGA-ZZ-0003", "2003-07-08", 2),
         ("TCGA-ZZ-0004", "2004-09-10", 3), ("TCGA-ZZ-0009", "2002-01-01", 1)]


def _name(patient: str, date: str, phase: str = "VEN") -> str:
    return f"lihc__{patient}__{date}__{phase}.nii.gz"


def write_table(path: Path, rows=TABLE, labels=None) -> Path:
    lines = [",subject,score,class,label"]
    for i, (patient, date, klass) in enumerate(rows):
        label = int(klass >= 3) if labels is None else labels[i]
        score = SCORES[klass]
        lines.append(f'{i},{_name(patient, date)},{chr(34) + score + chr(34) if "," in score else score},{klass},{label}')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def release(tmp_path):
    images, masks = tmp_path / "lihc" / "nifti", tmp_path / "lihc" / "masks"
    images.mkdir(parents=True), masks.mkdir(parents=True)
    files = [("TCGA-ZZ-0001", "2001-02-03"), ("TCGA-ZZ-0002", "1999-05-06"), ("TCGA-ZZ-0002", "2000-11-12"),
             ("TCGA-ZZ-0003", "2003-07-08"), ("TCGA-ZZ-0004", "2004-09-10"), ("TCGA-ZZ-0007", "2005-01-01")]
    for k, (patient, date) in enumerate(files):
        ct, mask = make_ct(seed=k)
        sub = images / patient[-4:] if k % 2 else images  # some nested, as after unpacking archives
        sub.mkdir(exist_ok=True)
        sitk.WriteImage(ct, str(sub / _name(patient, date)))
        if patient != "TCGA-ZZ-0004":
            sitk.WriteImage(mask, str(masks / _name(patient, date).replace(".nii.gz", "_liver.nii.gz")))
    sitk.WriteImage(make_ct(seed=9)[0], str(images / _name("TCGA-ZZ-0001", "2001-02-03", "ART")))
    sitk.WriteImage(make_ct(seed=4)[1], str(masks / "TCGA-ZZ-0004.nii.gz"))  # named by patient id
    return tmp_path


def test_lihc_import_keeps_the_oldest_scan_maps_class_3_4_to_cirrhosis_and_reports(release, capsys):
    table = write_table(release / "dataframe_lihc.csv")
    out = release / "lihc.csv"
    assert main(["lihc", "--csv", str(table), "--images", str(release / "lihc/nifti"),
                 "--masks", str(release / "lihc/masks"), "--out", str(out)]) == 0
    rows = {r.patient_id: r for r in read_manifest(out)}
    assert sorted(rows) == ["TCGA-ZZ-0001", "TCGA-ZZ-0002", "TCGA-ZZ-0003", "TCGA-ZZ-0004"]
    assert {p: r.histo_label for p, r in rows.items()} == {"TCGA-ZZ-0001": 0, "TCGA-ZZ-0002": 1,
                                                           "TCGA-ZZ-0003": 0, "TCGA-ZZ-0004": 1}
    assert all(r.weak_label is None for r in rows.values())
    assert rows["TCGA-ZZ-0002"].image.name == _name("TCGA-ZZ-0002", "1999-05-06")  # oldest of two dates
    assert rows["TCGA-ZZ-0004"].liver_mask.name == "TCGA-ZZ-0004.nii.gz"
    printed = capsys.readouterr()
    assert "5 rows, 2 positive" in printed.out and "4 patient(s)" in printed.out
    assert "the published dataframe_lihc.csv has 49 rows, 15 positive" in printed.err
    report = (release / "lihc.report.txt").read_text()
    for expected in ("WARNING: ", "TCGA-ZZ-0009: " + _name("TCGA-ZZ-0009", "2002-01-01") + " not found",
                     "TCGA-ZZ-0002: " + _name("TCGA-ZZ-0002", "2000-11-12"), "phase ART, not VEN",
                     "TCGA-ZZ-0007: 1 scan(s)", "rows written: 4, positive: 2"):
        assert expected in report, expected
    # the same through `manifest --preset lihc`
    assert main(["manifest", "--preset", "lihc", "--labels", str(table), "--images", str(release / "lihc/nifti"),
                 "--masks", str(release / "lihc/masks"), "--out", str(out), "--force"]) == 0
    assert sorted(r.patient_id for r in read_manifest(out)) == sorted(rows)


def test_lihc_refuses_a_label_that_disagrees_with_the_class(release, capsys):
    table = write_table(release / "bad.csv", labels=[0, 1, 1, 1, 0])  # class 2 labelled 1
    assert main(["lihc", "--csv", str(table), "--images", str(release / "lihc/nifti"), "--out", str(release / "x.csv")]) == 2
    assert "label 1 disagrees with class 2" in capsys.readouterr().err
    assert not (release / "x.csv").exists()


@pytest.mark.skipif(totalsegmentator_available(), reason="TotalSegmentator is installed here")
def test_auto_mask_without_totalsegmentator_names_the_install_command(release, capsys):
    table = write_table(release / "dataframe_lihc.csv")
    assert main(["lihc", "--csv", str(table), "--images", str(release / "lihc/nifti"), "--auto-mask",
                 "--out", str(release / "y.csv")]) == 2
    assert "pip install TotalSegmentator" in capsys.readouterr().err
