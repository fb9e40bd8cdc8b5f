"""The slice cache: built once, memory-mapped, rebuilt when inputs or parameters change."""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from support import make_ct
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import PreprocessConfig
from wsp_cirrhosis.errors import InputError
from wsp_cirrhosis.data.preprocess import load_cohort
from wsp_cirrhosis.data.slices import prepare_ct

CFG = PreprocessConfig(image_size=32)


@pytest.fixture
def cohort(tmp_path):
    rows = []
    for i in range(3):
        ct, mask = make_ct(seed=i)
        sitk.WriteImage(ct, str(tmp_path / f"ct{i}.nii.gz"))
        sitk.WriteImage(mask, str(tmp_path / f"mask{i}.nii.gz"))
        rows.append(f"p{i},ct{i}.nii.gz,mask{i}.nii.gz,{i % 2},{1 - i % 2}")
    path = tmp_path / "cohort.csv"
    path.write_text("patient_id,image,liver_mask,weak_label,histo_label\n" + "\n".join(rows) + "\n")
    return path


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy")}


def test_cache_holds_the_preprocessed_slices_memory_mapped(cohort):
    patients = load_cohort(cohort, CFG)
    assert [p.patient_id for p in patients] == ["p0", "p1", "p2"]
    direct = prepare_ct(cohort.parent / "ct1.nii.gz", cohort.parent / "mask1.nii.gz", CFG)
    assert isinstance(patients[1].slices, np.memmap)
    assert np.array_equal(np.asarray(patients[1].slices), direct.slices)
    assert np.allclose(patients[1].positions, direct.positions)
    assert (patients[1].weak_label, patients[1].histo_label) == (1, 0)


def test_cache_is_reused_then_rebuilt_when_parameters_or_content_change(cohort):
    cache = cohort.parent / ".wsp-cache"
    load_cohort(cohort, CFG)
    first = _mtimes(cache)
    load_cohort(cohort, CFG)
    assert _mtimes(cache) == first  # nothing rebuilt

    load_cohort(cohort, PreprocessConfig(image_size=32, window_min_hu=-100))
    assert all(_mtimes(cache)[k] != v for k, v in first.items())  # parameters changed: all rebuilt
    second = _mtimes(cache)

    ct, _ = make_ct(seed=99)
    sitk.WriteImage(ct, str(cohort.parent / "ct2.nii.gz"))  # new content for one patient
    os.utime(cohort.parent / "ct2.nii.gz", ns=(1, 1))
    patients = load_cohort(cohort, PreprocessConfig(image_size=32, window_min_hu=-100))
    third = _mtimes(cache)
    changed = [k for k in third if third[k] != second[k]]
    assert len(changed) == 1 and changed[0].startswith("p2-")
    assert np.asarray(patients[2].slices).shape[1:] == (32, 32)


def test_no_temporary_files_are_left_in_the_cache(cohort):
    load_cohort(cohort, CFG)
    leftovers = [p.name for p in (cohort.parent / ".wsp-cache").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_unreadable_patients_are_all_listed_or_skipped_on_request(cohort):
    (cohort.parent / "ct0.nii.gz").write_bytes(b"broken")
    (cohort.parent / "mask2.nii.gz").write_bytes(b"broken")
    with pytest.raises(InputError) as err:
        load_cohort(cohort, CFG)
    assert "2 patient(s) could not be preprocessed" in str(err.value)
    assert "p0:" in str(err.value) and "p2:" in str(err.value)
    assert [p.patient_id for p in load_cohort(cohort, CFG, skip_bad=True)] == ["p1"]


def test_preprocess_command_writes_cache_and_preview(cohort, tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["preprocess", "--manifest", str(cohort), "--image-size", "32", "--preview", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 patients" in capsys.readouterr().out
