"""Fold models -> ensemble bundle with a calibrator -> predict: mean, spread, calibration, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from sklearn.metrics import brier_score_loss

from conftest_train import shared_cohort
from support import make_ct
from wsp_cirrhosis.inference.bundle import load_bundle
from wsp_cirrhosis.models.calibration import apply_calibration, expected_calibration_error
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.models.ensemble import spread_text
from wsp_cirrhosis.models.features import slice_probabilities
from wsp_cirrhosis.models.heads import SliceClassifier
from wsp_cirrhosis.models.encoders import build_encoder
from wsp_cirrhosis.data.slices import prepare_ct

TOY = ["--image-size", "16", "--epochs", "1", "--batch-size", "8", "--folds", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """`evaluate --keep-fold-models` on the shared tiny cohort: the results JSON."""
    cohort = shared_cohort(tmp_path_factory)
    out = tmp_path_factory.mktemp("ens") / "eval.json"
    assert main(["evaluate", "--manifest", str(cohort / "histo.csv"), "--encoder", "none", "--json", str(out),
                 "--protocols", "finetune", "--keep-fold-models", *TOY]) == 0
    return out


@pytest.fixture(scope="module")
def ensemble_dir(evaluated, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ens-bundle") / "ens"
    assert main(["export", "--run", str(evaluated.with_name("eval.folds")), "--out", str(out), "--ensemble",
                 "--calibrate", "platt", "--name", "ens-test"]) == 0
    return out


@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ens-patient")
    ct, mask = make_ct()
    paths = {"ct": folder / "ct.nii.gz", "mask": folder / "liver.nii.gz"}
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(mask, str(paths["mask"]))
    return paths


def test_evaluate_reports_calibration_and_keeps_the_fold_models(evaluated):
    doc = json.loads(evaluated.read_text())
    res = doc["protocols"]["finetune"]
    labels, oof = np.array(doc["labels"]), np.array(res["oof_probability"])
    assert res["calibration"]["brier"] == pytest.approx(brier_score_loss(labels, oof))
    assert res["calibration"]["ece"] == pytest.approx(expected_calibration_error(labels, oof))
    png = evaluated.with_name(doc["reliability_png"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    folds = evaluated.with_name("eval.folds")
    assert sorted(p.parent.name for p in folds.glob("fold*/model.pt")) == ["fold0", "fold1"]
    oof_doc = json.loads((folds / "oof.json").read_text())
    assert oof_doc["oof_probability"] == res["oof_probability"] and oof_doc["labels"] == doc["labels"]
    fold0 = torch.load(folds / "fold0" / "model.pt", weights_only=True)
    assert fold0["preprocess"]["image_size"] == 16 and fold0["encoder_name"] == "tinynet"


def test_ensemble_bundle_records_members_and_calibrator(ensemble_dir, evaluated):
    bundle = load_bundle(ensemble_dir)
    meta = json.loads((ensemble_dir / "bundle.json").read_text())
    assert meta["format_version"] == 3 and meta["n_members"] == bundle.n_members == 2
    assert meta["patient_head"] == {"name": "mean"} and bundle.patient_head == "mean"
    assert meta["calibration"]["method"] == "platt" and meta["calibration"]["n_patients"] == 6
    assert meta["threshold_rule"] == "youden_out_of_fold"
    assert len(torch.load(ensemble_dir / "model.pt", weights_only=True)["members"]) == 2


def _member_scores(folds: Path, liver) -> np.ndarray:
    """(S, M) slice scores of each fold model, computed without the bundle code."""
    out = []
    for path in sorted(folds.glob("fold*/model.pt")):
        m = torch.load(path, weights_only=True)
        model = SliceClassifier(build_encoder(m["encoder_name"]))
        model.encoder.load_state_dict(m["encoder_state"])
        model.head.load_state_dict(m["classifier_state"])
        out.append(slice_probabilities(model.eval(), liver.slices, "cpu", 64))
    return np.stack(out, axis=1)


def test_predict_gives_mean_and_spread_of_the_members(ensemble_dir, evaluated, patient, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", str(patient["ct"]), "--liver-mask", str(patient["mask"]), "--model", str(ensemble_dir),
                 "--out", str(out), "--device", "cpu", "--progress", "none"]) == 0
    record = json.loads((out / "prediction.json").read_text())
    bundle = load_bundle(ensemble_dir)
    liver = prepare_ct(str(patient["ct"]), str(patient["mask"]), bundle.preprocess)
    scores = _member_scores(evaluated.with_name("eval.folds"), liver)
    member_p = apply_calibration(bundle.calibration, scores.mean(axis=0))
    assert record["n_members"] == 2
    assert record["member_probabilities"] == pytest.approx(member_p.tolist(), abs=1e-5)
    assert record["probability_min"] == pytest.approx(member_p.min(), abs=1e-5)
    assert record["probability_max"] == pytest.approx(member_p.max(), abs=1e-5)
    assert record["probability_std"] == pytest.approx(member_p.std(), abs=1e-5)
    assert record["raw_probability"] == pytest.approx(scores.mean(), abs=1e-5)
    assert record["probability"] == pytest.approx(float(apply_calibration(bundle.calibration, scores.mean())), abs=1e-5)
    assert record["probability_min"] <= record["probability"] <= record["probability_max"]
    assert record["label"] == int(record["raw_probability"] >= bundle.threshold)
    assert record["calibration"]["method"] == "platt" and record["raw_threshold"] == bundle.threshold
    slices = record["slices"]
    assert [s["score"] for s in slices] == pytest.approx(scores.mean(axis=1).tolist(), abs=1e-5)
    assert [s["score_min"] for s in slices] == pytest.approx(scores.min(axis=1).tolist(), abs=1e-5)
    assert [s["score_max"] for s in slices] == pytest.approx(scores.max(axis=1).tolist(), abs=1e-5)
    with open(out / "slices.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[-3:] == ["score_min", "score_max", "score_std"]
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    text = spread_text(record, record["probability"])
    assert text == (f"P = {record['probability']:.2f} ({record['probability_min']:.2f}-"
                    f"{record['probability_max']:.2f} across 2 models)")


def test_calibrate_without_out_of_fold_predictions_is_a_one_line_error(evaluated, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(evaluated.with_name("eval.folds") / "fold0" / "model.pt", run / "model.pt")
    code = main(["export", "--run", str(run), "--out", str(tmp_path / "b"), "--calibrate", "isotonic"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs out-of-fold probabilities" in err and "\n" not in err
    assert not (tmp_path / "b").exists()
    # with --oof the same run exports a calibrated single model; its prediction keeps one member
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "b"), "--calibrate", "isotonic",
                 "--oof", str(evaluated)]) == 0
    bundle = load_bundle(tmp_path / "b")
    assert bundle.n_members == 1 and bundle.calibration["method"] == "isotonic"


def test_members_that_disagree_on_preprocessing_are_refused(evaluated, tmp_path, capsys):
    folds = tmp_path / "folds"
    shutil.copytree(evaluated.with_name("eval.folds"), folds)
    m = torch.load(folds / "fold1" / "model.pt", weights_only=True)
    m["preprocess"]["image_size"] = 32
    torch.save(m, folds / "fold1" / "model.pt")
    code = main(["export", "--run", str(folds), "--out", str(tmp_path / "b"), "--ensemble"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "disagree on preprocess" in err and "image_size 32 vs 16" in err and "\n" not in err


def test_single_uncalibrated_model_keeps_todays_output(evaluated, patient, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(evaluated.with_name("eval.folds") / "fold0" / "model.pt", run / "model.pt")
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "b")]) == 0
    out = tmp_path / "pred"
    assert main(["predict", str(patient["ct"]), "--liver-mask", str(patient["mask"]), "--model", str(tmp_path / "b"),
                 "--out", str(out), "--device", "cpu", "--progress", "none"]) == 0
    record = json.loads((out / "prediction.json").read_text())
    new_keys = {"n_members", "member_probabilities", "probability_min", "raw_probability", "calibration", "saliency"}
    assert not new_keys & record.keys() and "score_min" not in record["slices"][0]
    assert record["probability"] == pytest.approx(np.mean([s["score"] for s in record["slices"]]))
    assert spread_text(record, record["probability"]) == f"P = {record['probability']:.2f}"
