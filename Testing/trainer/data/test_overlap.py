"""Disjoint weak / histology sets: overlap by patient_id and by image content, refused or recorded."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest_train import make_cohort
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.errors import InputError
from wsp_cirrhosis.data.manifest import read_manifest
from wsp_cirrhosis.data.overlap import check_manifests, check_run_overlap, find_overlap

TOY = ["--image-size", "32", "--epochs", "1", "--batch-size", "8", "--folds", "2", "--protocols", "frozen"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("overlap") / "cohort", patients=6, histo_patients=6, seed=1)


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def _write(manifest: Path, rows: list[dict]) -> Path:
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _leaky_histo(cohort: Path) -> Path:
    """histo.csv where histo-0000 is renamed to a weak id and histo-0001's CT is a copy of weak-0002's."""
    rows, weak = _rows(cohort / "histo.csv"), _rows(cohort / "weak.csv")
    rows[0]["patient_id"] = weak[0]["patient_id"]
    shutil.copyfile(cohort / weak[2]["image"], cohort / "images" / "copy-of-weak-0002.nii.gz")
    rows[1]["image"] = "images/copy-of-weak-0002.nii.gz"
    return _write(cohort / "histo-leaky.csv", rows)


def test_disjoint_synthetic_sets_pass(cohort):
    assert check_manifests(cohort / "weak.csv", cohort / "histo.csv") == []


def test_overlap_by_id_and_by_content_is_refused_with_the_list(cohort):
    leaky = _leaky_histo(cohort)
    with pytest.raises(InputError) as exc:
        check_manifests(cohort / "weak.csv", leaky)
    msg = str(exc.value)
    assert msg.startswith("2 histology patient(s)") and "\n" not in msg and "--allow-overlap" in msg
    assert "weak-0000 (same patient_id)" in msg and "histo-0001 (same image content as weak-0002)" in msg
    shared = check_manifests(cohort / "weak.csv", leaky, allow_overlap=True)
    assert [(s["patient_id"], s["weak_patient_id"], s["by"]) for s in shared] == [
        ("weak-0000", "weak-0000", "patient_id"), ("histo-0001", "weak-0002", "image content")]


def test_find_overlap_reports_both_reasons_for_one_patient(cohort):
    weak, histo = read_manifest(cohort / "weak.csv"), read_manifest(cohort / "histo.csv")
    same = {r.patient_id: "h" + r.patient_id for r in weak}
    hashes = {r.patient_id: r.patient_id for r in histo} | {weak[0].patient_id: same[weak[0].patient_id]}
    histo_twin = [weak[0]] + list(histo[1:])  # the weak patient itself, listed in the histology set
    assert find_overlap(weak, histo_twin, same, hashes) == [
        {"patient_id": weak[0].patient_id, "weak_patient_id": weak[0].patient_id, "by": "patient_id and image content"}]


def test_missing_image_is_an_input_error_not_a_false_match(cohort, tmp_path):
    rows = _rows(cohort / "histo.csv")
    rows[0]["image"] = str(tmp_path / "gone.nii.gz")
    bad = _write(cohort / "histo-missing.csv", rows)
    with pytest.raises(InputError, match="gone.nii.gz"):
        check_manifests(cohort / "weak.csv", bad)


def test_random_init_and_runs_without_config_are_recorded_unchecked(cohort, tmp_path):
    assert check_run_overlap("none", cohort / "histo.csv")["checked"] is False
    assert check_run_overlap(tmp_path, cohort / "histo.csv")["checked"] is False


def test_evaluate_refuses_an_overlap_before_preprocessing_and_records_an_allowed_one(cohort, tmp_path, capsys):
    run = tmp_path / "pretrain"
    assert main(["pretrain", "--manifest", str(cohort / "weak.csv"), "--out", str(run), "--image-size", "32",
                 "--epochs", "1", "--batch-size", "6", "--slices-per-epoch", "6", "--monitor-fraction", "0"]) == 0
    leaky = _leaky_histo(cohort)
    capsys.readouterr()
    cache = tmp_path / "histo-cache"
    out = tmp_path / "eval.json"
    args = ["evaluate", "--manifest", str(leaky), "--encoder", str(run), "--json", str(out), "--cache-dir", str(cache), *TOY]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weak-0000" in err[0] and "histo-0001" in err[0], err
    assert not out.exists() and not any(cache.glob("*.npy"))  # refused before any slice was prepared
    assert main(args + ["--allow-overlap"]) == 0
    doc = json.loads(out.read_text())
    assert doc["weak_overlap"]["checked"] and doc["weak_overlap"]["allowed"]
    assert [s["patient_id"] for s in doc["weak_overlap"]["overlap"]] == ["weak-0000", "histo-0001"]
    assert doc["config"]["allow_overlap"] is True
