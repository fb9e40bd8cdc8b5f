"""Bundle format 3: a position-aware patient head from finetune / evaluate to export and predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest_train import shared_cohort
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.data.slices import prepare_ct
from wsp_cirrhosis.inference import read_prediction
from wsp_cirrhosis.inference.bundle import load_bundle
from wsp_cirrhosis.models.features import batched_outputs
from wsp_cirrhosis.models.patient_heads import PatientClassifier
from wsp_cirrhosis.models.patient_read import model_heads, read_patient
from wsp_cirrhosis.models.saved import build_classifier, member_weights

SMALL = ["--image-size", "16", "--device", "cpu", "--epochs", "1"]


@pytest.fixture(scope="module")
def attention_bundle(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(cohort, finetune run, bundle) of a 1-epoch attention-head run at 16 x 16."""
    cohort = shared_cohort(tmp_path_factory)
    root = tmp_path_factory.mktemp("attention")
    assert main(["finetune", "--manifest", str(cohort / "histo.csv"), "--out", str(root / "ft"), "--patient-head",
                 "attention", "--bag-size", "4", "--batch-size", "8", *SMALL]) == 0
    assert main(["export", "--run", str(root / "ft"), "--out", str(root / "bundle")]) == 0
    return cohort, root / "ft", root / "bundle"


def test_format_3_bundle_stores_the_head_and_rebuilds_the_run_model(attention_bundle, capsys):
    cohort, run, bundle_dir = attention_bundle
    trained = torch.load(run / "model.pt", weights_only=True)
    assert trained["patient_head"]["name"] == "attention" and "classifier_state" not in trained
    assert trained["training_summary"]["patient_head"] == "attention"
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert meta["format_version"] == 3 and meta["patient_head"] == trained["patient_head"]
    assert set(torch.load(bundle_dir / "model.pt", weights_only=True)) == {"encoder", "patient_head"}
    bundle = load_bundle(bundle_dir)
    model = bundle.build_model()
    assert isinstance(model, PatientClassifier) and bundle.patient_head == "attention" and not model.training
    reference = build_classifier(trained["encoder_name"], member_weights(trained), trained["patient_head"])
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


def test_predict_reads_the_patient_with_the_head_on_one_scale(attention_bundle, tmp_path):
    cohort, _, bundle_dir = attention_bundle
    ct, mask = cohort / "images" / "histo-0000.nii.gz", cohort / "masks" / "histo-0000.nii.gz"
    assert main(["predict", str(ct), "--liver-mask", str(mask), "--model", str(bundle_dir), "--out",
                 str(tmp_path / "p"), "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "p" / "prediction.json").read_text())
    assert record["patient_head"] == "attention" and record["scale"] == "logit"
    contributions = np.array([s["contribution"] for s in record["slices"]])
    assert contributions.sum() == pytest.approx(record["patient_score"], abs=1e-9)
    assert record["probability"] == pytest.approx(1 / (1 + np.exp(-record["patient_score"])), abs=1e-12)
    # compared as probabilities: a warm-started head on a tiny cohort can put the threshold at 1 - 1e-13
    assert 1 / (1 + np.exp(-record["threshold_on_scale"])) == pytest.approx(record["threshold"], abs=1e-9)
    assert record["label"] == int(record["patient_score"] >= record["threshold_on_scale"])
    assert sum(s["attention"] for s in record["slices"]) == pytest.approx(1.0, abs=1e-6)
    axis = record["probability_axis"]
    assert axis["probability"] == pytest.approx(list(1 / (1 + np.exp(-np.array(axis["score"])))))
    with open(tmp_path / "p" / "slices.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["slice_index", "z_mm", "position", "score", "contribution", "read", "attention"]
    reads = np.array([float(r["read"]) for r in rows])
    assert reads.mean() == pytest.approx(record["patient_score"], abs=1e-5)
    # the same read as the training code's, on the same preprocessed slices
    bundle = load_bundle(bundle_dir)
    liver = prepare_ct(str(ct), str(mask), bundle.preprocess)
    model = bundle.build_model()
    read = read_patient(batched_outputs(model, liver.slices, "cpu"), liver.positions, model_heads(model))
    assert read.score == pytest.approx(record["patient_score"], abs=1e-4)
    again = read_prediction(tmp_path / "p" / "prediction.json")
    assert again.patient_head == "attention" and again.scale == "logit"
    assert again.slice_reads == pytest.approx(reads, abs=1e-5) and len(again.extra["slice_attention"]) == len(rows)
    assert again.patient_score == record["patient_score"] and again.score_threshold == record["threshold_on_scale"]


def test_evaluate_keeps_bands_fold_models_that_export_as_one_ensemble(attention_bundle, tmp_path):
    cohort = attention_bundle[0]
    results = tmp_path / "eval.json"
    assert main(["evaluate", "--manifest", str(cohort / "histo.csv"), "--encoder", "none", "--json", str(results),
                 "--folds", "2", "--protocols", "finetune", "--patient-head", "bands", "--bag-size", "2",
                 "--batch-size", "4", "--keep-fold-models", *SMALL]) == 0
    doc = json.loads(results.read_text())
    assert doc["patient_head"] == "bands" and doc["config"]["patient_head"] == "bands"
    folds = results.with_name("eval.folds")
    assert main(["export", "--run", str(folds), "--out", str(tmp_path / "ens"), "--ensemble"]) == 0
    bundle = load_bundle(tmp_path / "ens")
    assert bundle.patient_head == "bands" and bundle.n_members == 2
    ct, mask = cohort / "images" / "histo-0001.nii.gz", cohort / "masks" / "histo-0001.nii.gz"
    assert main(["predict", str(ct), "--liver-mask", str(mask), "--model", str(tmp_path / "ens"), "--out",
                 str(tmp_path / "p"), "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "p" / "prediction.json").read_text())
    assert record["patient_head"] == "bands" and record["n_members"] == 2
    member_logits = np.log(np.array(record["member_probabilities"]) / (1 - np.array(record["member_probabilities"])))
    assert record["patient_score"] == pytest.approx(member_logits.mean(), abs=1e-6)
