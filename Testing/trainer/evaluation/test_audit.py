"""`wsp-cirrhosis audit`: small-cohort gates on the three phantoms, the real CT, bad input.

The gates here are statistical checks on 60-patient phantom cohorts with wide margins around
the issue-10 thresholds (measured on 200-300 patients in docs/benchmarks/audit.md).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from wsp_cirrhosis.evaluation.audit import load_audit
from wsp_cirrhosis.evaluation.cues import band_of
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.errors import InputError

N = 60
SIGN_CUE = "solidity@d1"  # positional phantom: inward nodules at d 0.25-0.42 lie in band d 0.2-0.4


def _cohort(root: Path, signs: str) -> Path:
    out = root / signs
    assert main(["synth", "--out", str(out), "--patients", "0", "--histo-patients", str(N),
                 "--cirrhosis-fraction", "0.4", "--size", "64", "--signs", signs, "--seed", "5"]) == 0
    return out / "histo.csv"


def _audit(manifest: Path, out: Path, *extra: str) -> dict:
    assert main(["audit", "--manifest", str(manifest), "--out", str(out), "--boot", "100", *extra]) == 0
    return load_audit(out / "audit.json")


def _aucs(doc: dict, scope: str) -> dict[str, float]:
    return {c["cue"]: c["auc"] for c in doc["cues"] if c["scope"] == scope}


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """audits(signs) -> (audit.json document, audit folder) of a 60-patient cohort, built once per variant."""
    root, done = tmp_path_factory.mktemp("audit"), {}

    def get(signs: str) -> tuple[dict, Path]:
        if signs not in done:
            out = root / f"audit-{signs}"
            extra = () if signs == "positional" else ("--no-probe",)  # the probe costs most of the time
            done[signs] = (_audit(_cohort(root, signs), out, *extra), out)
        return done[signs]
    return get


def test_positional_phantom_hides_the_stage_from_whole_patient_cues_but_not_from_its_band(audits):
    doc, out = audits("positional")
    patient, band = _aucs(doc, "patient"), _aucs(doc, "band")
    assert "random_encoder_probe" in patient and doc["patients"] == N and doc["positive"] == 24
    hand_made = {k: v for k, v in patient.items() if k != "random_encoder_probe"}
    # gates of issue 10 (on 200+ patients): sign in band >= 0.85, whole-patient cues <= 0.65; on 60
    # patients an AUC has a standard error of about 0.06, hence the margins
    assert band[SIGN_CUE] >= 0.72, band
    assert max(hand_made.values()) <= 0.75, hand_made
    assert band[SIGN_CUE] - max(patient.values()) >= 0.05, patient
    assert {p.name for p in out.iterdir()} == {"audit.json", "audit.md", "patients.csv", "cues.png"}
    assert doc["synthetic"] and "not patient data" in (out / "audit.md").read_text()


def test_global_phantom_is_solved_by_the_liver_fraction_and_warns(audits):
    doc, out = audits("global")
    assert _aucs(doc, "patient")["liver_fraction"] >= 0.85  # 0.9 gate on 200+ patients
    assert any("liver_fraction" in w for w in doc["warnings"])
    assert "can be solved by" in (out / "audit.md").read_text()


def test_null_phantom_gives_no_cue_the_stage(audits):
    doc, _ = audits("none")
    aucs = {c["cue"]: c["auc"] for c in doc["cues"]}
    assert len(aucs) > 30 and max(aucs.values()) <= 0.75, aucs  # 0.6 gate on 200+ patients
    assert not doc["warnings"]


def test_every_cue_has_an_auc_inside_its_ci_and_per_patient_rows(audits):
    doc, out = audits("positional")
    for cue in doc["cues"]:
        lo, hi = cue["ci95"]
        assert 0.0 <= lo <= hi <= 1.0 and lo - 0.05 <= cue["auc"] <= hi + 0.05, cue
    with open(out / "patients.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N and {"volume_ml", "extent_mm", "liver_fraction@d2", "random_encoder_probe"} <= set(rows[0])
    assert all(float(r["volume_ml"]) > 100 for r in rows)  # phantom livers hold more than 100 mL


def test_bands_split_positions_in_fifths():
    assert band_of(np.array([0.0, 0.19, 0.2, 0.55, 0.99, 1.0])).tolist() == [0, 0, 1, 2, 4, 4]


def test_weak_set_without_histology_writes_the_table_and_says_why_no_auc(tmp_path):
    out = tmp_path / "cohort"
    assert main(["synth", "--out", str(out), "--patients", "4", "--histo-patients", "0", "--size", "48"]) == 0
    doc = _audit(out / "weak.csv", tmp_path / "a")
    assert doc["cues"] == [] and "need both classes" in doc["message"] and len(doc["per_patient"]) == 4
    assert (tmp_path / "a" / "patients.csv").read_text().count("\n") == 5


def test_real_ct_one_patient_gives_a_clear_message_and_the_table(real_ct, tmp_path, capsys):
    manifest = tmp_path / "real.csv"
    manifest.write_text("patient_id,image,liver_mask,weak_label,histo_label\n"
                        f"real,{real_ct / 'ct_dicom'},{real_ct / 'segmentation.nii.gz'},0,0\n")
    doc = _audit(manifest, tmp_path / "a", "--liver-label", "5", "--cache-dir", str(tmp_path / "cache"))
    assert doc["cues"] == [] and "both classes" in doc["message"] and not doc["synthetic"]
    assert "both classes" in capsys.readouterr().out
    row = doc["per_patient"][0]
    assert row["liver_slices"] == 20 and row["slice_thickness_mm"] == pytest.approx(2.0, abs=0.01)
    assert 500 < row["volume_ml"] < 3000 and 40 < row["hu_mean"] < 140  # README: liver mean about 89 HU
    assert (tmp_path / "a" / "patients.csv").is_file() and (tmp_path / "a" / "cues.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--folds", "1"], "folds"),
    (["--warn-auc", "1.5"], "warn_auc"),
    (["--boot", "5"], "boot"),
])
def test_bad_flags_give_one_line_errors(tmp_path, capsys, args, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,image,liver_mask,weak_label,histo_label\n")
    assert main(["audit", "--manifest", str(manifest), "--out", str(tmp_path / "a"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.replace("_", "") in err[0].replace("_", "").replace("-", ""), err


@pytest.mark.parametrize("content", [None, "patient_id,image\nx,y\n", "patient_id,image,liver_mask,weak_label,histo_label\n"
                                     "p,missing.nii.gz,missing-mask.nii.gz,0,1\n"])
def test_bad_manifests_exit_2_with_the_usual_error(tmp_path, capsys, content):
    manifest = tmp_path / "m.csv"
    if content is not None:
        manifest.write_text(content)
    assert main(["audit", "--manifest", str(manifest), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # the usual manifest error: first line names the file; bad rows (if any) are listed below it, no traceback
    assert err[0].startswith("wsp-cirrhosis audit: error:") and "m.csv" in err[0], err
    assert not any("Traceback" in line for line in err) and not (tmp_path / "a").exists()


def test_unknown_label_is_refused_by_the_parser(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "a"), "--label", "stage"])
    assert exc.value.code == 2


def test_load_audit_names_an_unreadable_file(tmp_path):
    (tmp_path / "audit.json").write_text("{not json")
    with pytest.raises(InputError, match="audit.json"):
        load_audit(tmp_path / "audit.json")
