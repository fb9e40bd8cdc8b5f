"""Repeated stratified cross-validation of one encoder: every protocol, out-of-fold scores kept.

The benchmark's evaluation of a grid cell. Repeat r splits the histology patients with fold seed
`seed + 1000 * r` (repeat 0 is `evaluate`'s own split), so every method of a benchmark sees the
same folds and the out-of-fold scores of two methods are paired patient by patient
(`stats.paired_auc_difference`). Frozen features are computed once per encoder; fine-tuning
runs once per fold and repeat.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .evaluate import _finetune_fold_scores, _load_encoder, fold_metrics, mean_std, protocol_head, split_folds
from .probes import frozen_fold_scores
from .protocols import DEFAULT_BANDS, FROZEN_PROTOCOLS, label_subset, patient_features, slice_features

log = logging.getLogger("wsp_cirrhosis")

FOLD_SEED_STRIDE = 1000


def cv_plans(labels: np.ndarray, folds: int, repeats: int, seed: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """`repeats` stratified k-fold splits of the patients, repeat r with fold seed seed + 1000 r.

    Raises:
        InputError: fewer patients of a class than folds (from `evaluate.split_folds`).
    """
    return [split_folds(labels, folds, seed + FOLD_SEED_STRIDE * r) for r in range(repeats)]


def _summarise(labels: np.ndarray, plans: list, scores: list[list[tuple[np.ndarray, np.ndarray]]],
               test_sets: list | None = None) -> dict[str, Any]:
    """Fold metrics, out-of-fold scores and pooled AUC per repeat from (train, test) scores of every fold."""
    from sklearn.metrics import roc_auc_score

    per_fold, oof, pooled = [], [], []
    for r, splits in enumerate(plans):
        out = np.full(labels.size, np.nan)
        for k, (train, test) in enumerate(splits):
            fit = test_sets[r][k] if test_sets is not None else train
            train_scores, test_scores = scores[r][k]
            out[test] = test_scores
            per_fold.append(fold_metrics(labels[fit], train_scores, labels[test], test_scores))
        oof.append(out.tolist())
        pooled.append(float(roc_auc_score(labels, out)))
    aucs = [m["auc"] for m in per_fold]
    baccs = [m["balanced_accuracy"] for m in per_fold]
    auc_mean, auc_std = mean_std(aucs)
    bacc_mean, bacc_std = mean_std(baccs)
    return {"fold_auc": aucs, "fold_balanced_accuracy": baccs, "fold_threshold": [m["threshold"] for m in per_fold],
            "auc_mean": auc_mean, "auc_std": auc_std, "balanced_accuracy_mean": bacc_mean,
            "balanced_accuracy_std": bacc_std, "pooled_auc": float(np.mean(pooled)), "pooled_auc_per_repeat": pooled,
            "oof_probability": oof}


def evaluate_repeated(encoder_source: str | Path, patients: Sequence[Any], folds: int, repeats: int,
                      protocols: Sequence[str], train_cfg: Any, seed: int = 0, arch: str = "tinynet",
                      slices_per_patient: int = 0, bands: int = DEFAULT_BANDS,
                      label_sizes: Sequence[int] = (), bag_size: int = 8) -> dict[str, Any]:
    """Repeated stratified k-fold evaluation of one encoder on histology-labelled patients.

    Args:
        encoder_source: a pretrain run folder, or "none" for a random init of `arch` (seeded by `seed`).
        patients: CachedPatient-like objects with `.slices`, `.positions`, `.histo_label`.
        folds, repeats: k and the number of differently seeded k-fold splits.
        protocols: names from `evaluate.PROTOCOLS` (frozen, frozen_bands, finetune) or
            `evaluate.HEAD_PROTOCOLS` (finetune_bands, finetune_attention: fine-tuning with that
            patient head, bags of ``bag_size`` slices).
        train_cfg: `config.TrainConfig` of fine-tuning (its batch size is also the feature batch).
        seed: fold seed of repeat 0, random init, classifiers and fine-tuning.
        slices_per_patient: fine-tuning slices per patient and epoch (0 = all).
        bands: position bands of `frozen_bands`.
        label_sizes: for frozen protocols, also train the probe on stratified subsets of this many
            training patients (the label-efficiency curve); sizes >= the training fold mean "all".

    Returns:
        {"n_patients", "n_positive", "patients", "labels", "fold_seeds", "protocols": {name: {
        "fold_auc" (repeats x folds, repeat-major), "fold_balanced_accuracy", "fold_threshold",
        "auc_mean", "auc_std", "balanced_accuracy_mean", "balanced_accuracy_std", "pooled_auc"
        (mean over repeats of the pooled out-of-fold AUC), "pooled_auc_per_repeat",
        "oof_probability" (repeats x patients), "label_efficiency" ({n: same keys}, frozen only),
        "seconds"}}}.
    """
    from ..distributed import resolve_device

    labels = np.array([int(p.histo_label) for p in patients], dtype=int)
    plans = cv_plans(labels, folds, repeats, seed)
    device = resolve_device(train_cfg.device)
    result: dict[str, Any] = {
        "n_patients": len(patients), "n_positive": int(labels.sum()), "patients": [str(p.patient_id) for p in patients],
        "labels": labels.tolist(), "fold_seeds": [seed + FOLD_SEED_STRIDE * r for r in range(repeats)], "protocols": {},
    }
    feats = None
    for name in protocols:
        start = time.monotonic()
        if name in FROZEN_PROTOCOLS:
            if feats is None:
                _, encoder = _load_encoder(encoder_source, arch, seed)
                feats = slice_features(encoder, patients, device, train_cfg.batch_size)
            x = patient_features(name, feats, patients, bands)
            scores = [[frozen_fold_scores(x, labels, tr, te, seed) for tr, te in splits] for splits in plans]
            res = _summarise(labels, plans, scores)
            res["label_efficiency"] = {}
            for n in label_sizes:
                subsets = [[label_subset(labels, tr, n, seed + 100 * r + k) for k, (tr, _) in enumerate(splits)]
                           for r, splits in enumerate(plans)]
                sub_scores = [[frozen_fold_scores(x, labels, sub, te, seed) for sub, (_, te) in zip(subs, splits)]
                              for subs, splits in zip(subsets, plans)]
                eff = _summarise(labels, plans, sub_scores, subsets)
                eff["n_train"] = [len(s) for subs in subsets for s in subs]
                res["label_efficiency"][str(n)] = eff
        else:
            scores = [[_finetune_fold_scores(encoder_source, arch, patients, tr, te, train_cfg, seed, device,
                                             k + folds * r, slices_per_patient, patient_head=protocol_head(name),
                                             bag_size=bag_size)
                       for k, (tr, te) in enumerate(splits)] for r, splits in enumerate(plans)]
            res = _summarise(labels, plans, scores)
        res["seconds"] = round(time.monotonic() - start, 3)
        result["protocols"][name] = res
        log.info("%s %s: fold AUC %.3f ± %.3f, pooled %.3f over %d x %d folds", encoder_source, name,
                 res["auc_mean"], res["auc_std"], res["pooled_auc"], repeats, folds)
    return result
