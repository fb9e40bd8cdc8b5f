"""evaluate.py: stratified patient folds, Youden threshold from the training folds, AUC, the `evaluate` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest_train import make_cohort
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.errors import ConfigError, InputError
from wsp_cirrhosis.evaluation.evaluate import fold_metrics, mean_std, parse_protocols, roc_png_path, split_folds
from wsp_cirrhosis.evaluation.probes import frozen_fold_scores
from wsp_cirrhosis.models.calibration import youden_threshold

# ------------------------------------------------------------------ pure parts, hand-made data


@pytest.mark.parametrize("n_pos,n_neg,folds", [(5, 5, 5), (7, 13, 5), (3, 20, 3), (10, 4, 2)])
def test_folds_partition_patients_and_keep_both_classes_in_every_fold(n_pos, n_neg, folds):
    labels = np.array([1] * n_pos + [0] * n_neg)
    splits = split_folds(labels, folds, seed=3)
    assert len(splits) == folds
    tests = np.concatenate([te for _, te in splits])
    assert sorted(tests.tolist()) == list(range(labels.size))  # every patient in exactly one test fold
    for train, test in splits:
        assert not set(train) & set(test)
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(labels.size))
        assert labels[test].sum() >= 1 and (1 - labels[test]).sum() >= 1
        # stratified: each fold's positive count within one of the ideal share
        assert abs(labels[test].sum() - n_pos / folds) < 1
        assert labels[train].sum() >= 1 and (1 - labels[train]).sum() >= 1


def test_folds_are_a_function_of_the_seed():
    labels = np.array([1] * 6 + [0] * 14)
    same = [te.tolist() for _, te in split_folds(labels, 4, seed=1)]
    assert same == [te.tolist() for _, te in split_folds(labels, 4, seed=1)]
    assert same != [te.tolist() for _, te in split_folds(labels, 4, seed=2)]


@pytest.mark.parametrize("labels,folds,fragment", [
    ([1, 1, 0, 0, 0, 0, 0], 3, "2 positive and 5 negative"),
    ([0] * 8 + [1] * 8, 9, "--folds 9"),
    ([0] * 8, 2, "0 positive"),
    ([1] * 6 + [0], 2, "add patients of the missing class"),
    ([0, 1, 2, 1, 0, 1], 2, "must be 0 or 1"),
])
def test_too_few_patients_per_class_is_an_input_error(labels, folds, fragment):
    with pytest.raises(InputError, match=fragment.replace("-", r"\-")):
        split_folds(labels, folds, seed=0)


def test_youden_threshold_on_hand_made_scores():
    labels = [0, 0, 0, 1, 1, 1]
    # the one perfect cut lies between 0.55 and 0.6: its midpoint
    assert youden_threshold(labels, [0.1, 0.2, 0.55, 0.6, 0.8, 0.9]) == pytest.approx(0.575)
    # separated training scores: the middle of the gap, not its upper edge
    assert youden_threshold(labels, [0.01, 0.02, 0.03, 0.97, 0.98, 0.99]) == pytest.approx(0.5)
    # no useful cut (all positives below all negatives): finite, never +inf
    assert math.isfinite(youden_threshold(labels, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]))


def test_youden_threshold_reproduces_the_best_training_split():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    labels[:2] = [0, 1]
    scores = rng.random(40) + 0.3 * labels
    t = youden_threshold(labels, scores)
    pred = scores >= t
    j = pred[labels == 1].mean() + (~pred[labels == 0]).mean() - 1
    best = max(((scores >= c)[labels == 1].mean() + (scores < c)[labels == 0].mean() - 1) for c in scores)
    assert j == pytest.approx(best)


def test_balanced_accuracy_uses_the_threshold_chosen_on_the_training_folds():
    train_labels, train_scores = [0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.55, 0.6, 0.8, 0.9]
    test_labels, test_scores = [0, 0, 1, 1], [0.3, 0.65, 0.5, 0.9]
    m = fold_metrics(train_labels, train_scores, test_labels, test_scores)
    assert m["threshold"] == pytest.approx(0.575)
    # at 0.575: negatives 0.3 -> 0, 0.65 -> 1; positives 0.5 -> 0, 0.9 -> 1: sensitivity = specificity = 0.5.
    # A threshold picked on the test fold (0.5) would give 0.75: the test fold must not choose it.
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered
    assert fold_metrics(test_labels, test_scores, test_labels, test_scores)["balanced_accuracy"] == pytest.approx(0.75)


def test_frozen_protocol_gives_auc_one_on_separable_features():
    rng = np.random.default_rng(0)
    labels = np.array([1] * 6 + [0] * 10)
    features = rng.normal(size=(16, 8))
    features[:, 3] += 6.0 * labels  # one feature separates the classes
    aucs, baccs = [], []
    for train, test in split_folds(labels, 3, seed=0):
        tr, te = frozen_fold_scores(features, labels, train, test, seed=0)
        m = fold_metrics(labels[train], tr, labels[test], te)
        aucs.append(m["auc"])
        baccs.append(m["balanced_accuracy"])
    assert aucs == [1.0, 1.0, 1.0]
    assert mean_std(aucs) == (1.0, 0.0)
    assert min(baccs) >= 0.5


def test_mean_std_is_numpy_population_std():
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, np.std([0.5, 0.7, 0.9])))


def test_protocol_list_is_validated():
    assert parse_protocols("finetune,frozen,frozen") == ["finetune", "frozen"]
    with pytest.raises(ConfigError, match="choose from frozen"):
        parse_protocols("frozen,linear")
    with pytest.raises(ConfigError):
        parse_protocols(" , ")


def test_roc_plot_sits_beside_the_json():
    assert roc_png_path(Path("/x/eval.json")) == Path("/x/eval.roc.png")


# ------------------------------------------------------------------ the command, on a tiny synthetic cohort

TOY = ["--image-size", "32", "--epochs", "1", "--batch-size", "8", "--folds", "2"]
RESULT_KEYS = {"encoder", "arch", "seed", "folds", "n_patients", "n_positive", "patients", "test_fold", "labels",
               "protocols", "config", "versions", "git_revision", "roc_png", "manifest"}
PROTOCOL_KEYS = {"fold_auc", "fold_balanced_accuracy", "fold_threshold", "auc_mean", "auc_std",
                 "balanced_accuracy_mean", "balanced_accuracy_std", "pooled_auc", "oof_probability", "seconds"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A tiny synthetic cohort (size 48): weak.csv for pretraining, histo.csv with 3 + 3 patients."""
    out = tmp_path_factory.mktemp("eval-cohort") / "cohort"
    return make_cohort(out, patients=6, histo_patients=6, seed=0)


def _check_result(doc: dict, protocols: list[str], folds: int) -> None:
    assert RESULT_KEYS <= doc.keys()
    assert list(doc["protocols"]) == protocols
    assert len(doc["patients"]) == len(doc["test_fold"]) == doc["n_patients"]
    for res in doc["protocols"].values():
        assert PROTOCOL_KEYS <= res.keys()
        assert len(res["fold_auc"]) == len(res["fold_balanced_accuracy"]) == folds
        assert all(0.0 <= a <= 1.0 for a in res["fold_auc"] + res["fold_balanced_accuracy"])
        assert res["auc_mean"] == pytest.approx(np.mean(res["fold_auc"]))


def test_evaluate_random_init_writes_json_and_roc(cohort, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--manifest", str(cohort / "histo.csv"), "--encoder", "none", "--json", str(out), *TOY])
    assert code == 0
    doc = json.loads(out.read_text())
    _check_result(doc, ["frozen", "finetune"], 2)
    assert doc["encoder"] == "none" and doc["arch"] == "tinynet"
    assert roc_png_path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "AUC" in capsys.readouterr().out


def test_evaluate_pretrained_run(cohort, tmp_path):
    run = tmp_path / "pretrain"
    assert main(["pretrain", "--manifest", str(cohort / "weak.csv"), "--out", str(run), "--image-size", "32",
                 "--epochs", "1", "--batch-size", "6", "--slices-per-epoch", "6", "--monitor-fraction", "0"]) == 0
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--manifest", str(cohort / "histo.csv"), "--encoder", str(run), "--json", str(out),
                 "--protocols", "finetune", *TOY])
    assert code == 0
    doc = json.loads(out.read_text())
    _check_result(doc, ["finetune"], 2)
    assert Path(doc["encoder"]) == run


def test_too_few_positives_exits_2_with_a_message(cohort, tmp_path, capsys):
    code = main(["evaluate", "--manifest", str(cohort / "histo.csv"), "--encoder", "none",
                 "--json", str(tmp_path / "e.json"), *TOY[:-1], "5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--folds 5" in err and "positive" in err
    assert not (tmp_path / "e.json").exists()
