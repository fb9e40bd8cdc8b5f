"""Cohort manifests: schema, every bad row reported at once, explicit skipping."""

import pytest

from wsp_cirrhosis.cli import main
from wsp_cirrhosis.errors import InputError
from wsp_cirrhosis.data.manifest import COLUMNS, ManifestError, read_manifest

HEADER = ",".join(COLUMNS)


@pytest.fixture
def files(tmp_path):
    for name in ("a.nii.gz", "a_mask.nii.gz", "b.nii.gz", "b_mask.nii.gz"):
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / name).write_bytes(b"")
    return tmp_path


def _csv(folder, *rows, header=HEADER):
    path = folder / "cohort.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_paths_are_relative_to_the_csv_folder_and_labels_parsed(files):
    records = read_manifest(_csv(files, "p1,img/a.nii.gz,img/a_mask.nii.gz,2,", "p2,img/b.nii.gz,img/b_mask.nii.gz,,1"))
    assert [r.patient_id for r in records] == ["p1", "p2"]
    assert records[0].image == (files / "img/a.nii.gz").resolve()
    assert (records[0].weak_label, records[0].histo_label) == (2, None)
    assert (records[1].weak_label, records[1].histo_label) == (None, 1)


BAD_ROWS = [
    ("duplicate id", ["p1,img/a.nii.gz,img/a_mask.nii.gz,0,", "p1,img/b.nii.gz,img/b_mask.nii.gz,1,"], "duplicate patient_id"),
    ("missing image", ["p1,img/zz.nii.gz,img/a_mask.nii.gz,0,"], "image not found"),
    ("weak not int", ["p1,img/a.nii.gz,img/a_mask.nii.gz,high,"], "weak_label 'high' is not an integer"),
    ("weak negative", ["p1,img/a.nii.gz,img/a_mask.nii.gz,-1,"], "weak_label '-1' out of range"),
    ("histo 2", ["p1,img/a.nii.gz,img/a_mask.nii.gz,,2"], "histo_label '2' out of range"),
    ("empty id", [",img/a.nii.gz,img/a_mask.nii.gz,0,"], "empty patient_id"),
]


@pytest.mark.parametrize("case,rows,message", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_bad_rows_are_named(files, case, rows, message):
    with pytest.raises(ManifestError, match=message):
        read_manifest(_csv(files, *rows))


def test_every_bad_row_is_reported_and_skip_bad_keeps_the_good_ones(files):
    good = [f"g{i},img/a.nii.gz,img/a_mask.nii.gz,{i % 3}," for i in range(200)]
    bad = ["x1,img/missing.nii.gz,img/a_mask.nii.gz,0,", "x2,img/a.nii.gz,img/a_mask.nii.gz,7.5,"]
    path = _csv(files, *good[:100], bad[0], *good[100:], bad[1])
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    text = str(err.value)
    assert "2 bad row(s) of 202" in text and "line 102 (x1)" in text and "line 203 (x2): weak_label '7.5' is not an integer" in text and "--skip-bad" in text
    assert len(read_manifest(path, skip_bad=True)) == 200


@pytest.mark.parametrize("header,message", [
    ("patient_id,image,liver_mask,weak_label", "missing column(s) histo_label"),
    (HEADER + ",age", "unknown column(s) age"),
])
def test_columns_are_checked(files, header, message):
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(_csv(files, header=header))


def test_require_keeps_labelled_rows_and_refuses_a_manifest_without_any(files):
    path = _csv(files, "p1,img/a.nii.gz,img/a_mask.nii.gz,1,", "p2,img/b.nii.gz,img/b_mask.nii.gz,,")
    assert [r.patient_id for r in read_manifest(path, require="weak")] == ["p1"]
    with pytest.raises(InputError, match="no row has a histo_label"):
        read_manifest(path, require="histo")


def test_cli_reports_a_bad_manifest_in_one_line_with_exit_code_2(files, capsys):
    path = _csv(files, "p1,img/zz.nii.gz,img/a_mask.nii.gz,0,")
    assert main(["preprocess", "--manifest", str(path)]) == 2
    err = capsys.readouterr().err
    assert "image not found" in err and "Traceback" not in err
