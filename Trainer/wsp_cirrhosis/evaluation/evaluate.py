"""Patient-level stratified k-fold evaluation of an encoder: frozen features + logistic regression, fine-tuning; AUC.

The paper's protocol (method.md, "Evaluation"): the histology-labelled patients are split into
k stratified folds (scikit-learn ``StratifiedKFold``, shuffled with the seed); no patient is in
two folds, so its slices never leak between training and test. Per fold and protocol:

- frozen: the encoder's 512-d representation averaged over the patient's slices, then a
  ``StandardScaler`` + ``LogisticRegression(class_weight="balanced")`` pipeline;
- finetune: ``finetune.fit_classifier`` from the (pretrained or random) encoder on the training
  patients; the patient probability is read by its patient head (``--patient-head``; ``mean``,
  the paper's: the mean of its slice probabilities).

Metrics per fold: patient-level AUC, and balanced accuracy at the Youden threshold chosen on
the training folds' own predictions (the test fold never picks its threshold).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import PATIENT_HEADS
from ..errors import ConfigError, InputError
from ..models.calibration import youden_threshold
from .probes import frozen_fold_scores

log = logging.getLogger("wsp_cirrhosis")

PROTOCOLS = ("frozen", "frozen_bands", "finetune")  # frozen_bands: protocols.py, position-band probe
# finetune with a position-aware patient head (benchmark --patient-heads): finetune_bands, finetune_attention
HEAD_PROTOCOLS = tuple(f"finetune_{h}" for h in PATIENT_HEADS if h != "mean")


def protocol_head(protocol: str) -> str:
    """The patient head a protocol reads patients with: finetune -> mean, finetune_<head> -> head,
    frozen -> mean (pooled features), frozen_bands -> bands."""
    if protocol.startswith("finetune_"):
        return protocol[len("finetune_"):]
    return "bands" if protocol == "frozen_bands" else "mean"


def head_protocol(head: str) -> str:
    """The finetune protocol of a patient head: mean -> finetune, bands -> finetune_bands."""
    return "finetune" if head == "mean" else f"finetune_{head}"


def parse_protocols(text: str | Sequence[str]) -> list[str]:
    """Comma-separated (or listed) protocol names -> validated list, order kept, no duplicates.

    Raises:
        ConfigError: an unknown or empty protocol list.
    """
    names = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    bad = [p for p in names if p not in PROTOCOLS + HEAD_PROTOCOLS]
    if bad or not names:
        raise ConfigError(f"--protocols {','.join(names) or '(empty)'}: choose from {', '.join(PROTOCOLS)}")
    return list(dict.fromkeys(names))


def split_folds(histo_labels: Sequence[int], folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold split of patients on their histology label.

    Args:
        histo_labels: (P,) int in {0, 1}, one per patient (not per slice).
        folds: number of folds k >= 2.
        seed: shuffles the patients before splitting.

    Returns:
        k pairs (train_indices, test_indices) into the patient list; every patient is in
        exactly one test fold, and each fold holds at least one patient of each class.

    Raises:
        InputError: fewer positive (or negative) patients than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(histo_labels, dtype=int)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if n_pos + n_neg != labels.size:
        raise InputError(f"histology labels must be 0 or 1; got {sorted(set(labels.tolist()))}")
    if min(n_pos, n_neg) < folds:
        hint = (f"use --folds {min(n_pos, n_neg)} or fewer, or add patients" if min(n_pos, n_neg) >= 2
                else "add patients of the missing class")
        raise InputError(
            f"--folds {folds}: the cohort has {n_pos} positive and {n_neg} negative histology patients; "
            f"every fold needs at least one of each, so each class needs >= {folds} patients ({hint})"
        )
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(train, test) for train, test in skf.split(np.zeros(labels.size), labels)]


def fold_metrics(train_labels: Sequence[int], train_scores: Sequence[float],
                 test_labels: Sequence[int], test_scores: Sequence[float]) -> dict[str, float]:
    """AUC on the test fold, and balanced accuracy at the training folds' Youden threshold.

    Returns:
        {"auc", "balanced_accuracy", "threshold"}.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    threshold = youden_threshold(train_labels, train_scores)
    test_scores = np.asarray(test_scores, dtype=float)
    return {
        "auc": float(roc_auc_score(np.asarray(test_labels), test_scores)),
        "balanced_accuracy": float(balanced_accuracy_score(np.asarray(test_labels), test_scores >= threshold)),
        "threshold": threshold,
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation (numpy's, ddof=0) of a list of fold values."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std())


def _load_encoder(encoder_source: str | Path, arch: str, seed: int) -> tuple[str, Any]:
    """The encoder to evaluate; for "none" the random init is a function of `seed` alone."""
    import torch

    from ..models.features import load_pretrained_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_pretrained_encoder(encoder_source, arch=arch)


def evaluate_encoder(encoder_source: str | Path, patients: Sequence[Any], folds: int = 5,
                     protocols: str | Sequence[str] = PROTOCOLS, train_cfg: Any = None, seed: int = 0,
                     arch: str = "tinynet", slices_per_patient: int = 0, keep_models: Path | None = None,
                     preprocess: dict[str, Any] | None = None, patient_head: str = "mean",
                     bag_size: int = 8) -> dict[str, Any]:
    """Stratified k-fold evaluation of one encoder on histology-labelled patients.

    Args:
        encoder_source: a pretrain run folder, or "none" for a random init of `arch`.
        patients: CachedPatient-like objects with `.patient_id`, `.slices` (S, H, W) float32 in
            [0, 1] and `.histo_label` in {0, 1}.
        folds: number of stratified folds over patients.
        protocols: subset of ("frozen", "finetune"), as a list or comma-separated text.
        train_cfg: `config.TrainConfig` for fine-tuning (epochs, batch size, lr, device); its
            batch size is also the feature-extraction batch. Default: EvaluateConfig's.
        seed: shuffles the folds, seeds the random init, the classifiers and fine-tuning.
        arch: backbone built for "none" (ignored for a run folder, which names its own).
        slices_per_patient: fine-tuning draws this many slices per patient and epoch (0 = all).
        keep_models: save each fold's fine-tuned model as keep_models/fold<k>/model.pt
            (ensemble.py; `preprocess` is recorded in them).
        patient_head, bag_size: the patient head fine-tuned by the finetune protocol (finetune.py).

    Returns:
        {"encoder", "arch", "seed", "folds", "n_patients", "n_positive", "patients",
         "test_fold" (per patient), "labels", "protocols": {name: {"fold_auc",
         "fold_balanced_accuracy", "fold_threshold", "auc_mean", "auc_std",
         "balanced_accuracy_mean", "balanced_accuracy_std", "pooled_auc", "oof_probability",
         "seconds"}}}. Lists are in the order of `patients`/folds; std is over folds (ddof=0).

    Raises:
        InputError: a patient without a histology label, or too few patients per class.
    """
    from sklearn.metrics import roc_auc_score

    from ..config import EvaluateConfig
    from ..distributed import resolve_device

    names = parse_protocols(protocols)
    if train_cfg is None:
        train_cfg = next(f for f in dataclasses.fields(EvaluateConfig) if f.name == "train").default_factory()
    missing = [p.patient_id for p in patients if p.histo_label is None]
    if missing:
        raise InputError(f"{len(missing)} patient(s) have no histo_label (e.g. {missing[:3]}); "
                         "evaluation needs histology")
    labels = np.array([int(p.histo_label) for p in patients], dtype=int)
    splits = split_folds(labels, folds, seed)
    device = resolve_device(train_cfg.device)
    test_fold = np.empty(len(patients), dtype=int)
    for k, (_, test) in enumerate(splits):
        test_fold[test] = k

    arch_name, encoder = _load_encoder(encoder_source, arch, seed)
    result: dict[str, Any] = {
        "encoder": str(encoder_source), "arch": arch_name, "seed": seed, "folds": folds,
        "n_patients": len(patients), "n_positive": int(labels.sum()),
        "patients": [str(p.patient_id) for p in patients], "test_fold": test_fold.tolist(),
        "labels": labels.tolist(), "patient_head": patient_head, "protocols": {},
    }
    for name in names:
        start = time.monotonic()
        oof = np.full(len(patients), np.nan)
        per_fold: list[dict[str, float]] = []
        if name.startswith("frozen"):
            from .protocols import patient_features, slice_features

            features = patient_features(name, slice_features(encoder, patients, device, train_cfg.batch_size), patients)
            fold_scores = (frozen_fold_scores(features, labels, tr, te, seed) for tr, te in splits)
        else:
            fold_scores = (_finetune_fold_scores(encoder_source, arch, patients, tr, te, train_cfg, seed, device, k,
                                                 slices_per_patient,
                                                 keep_models / f"fold{k}" if keep_models is not None else None,
                                                 preprocess, patient_head, bag_size)
                           for k, (tr, te) in enumerate(splits))
        for (train, test), (train_scores, test_scores) in zip(splits, fold_scores):
            oof[test] = test_scores
            per_fold.append(fold_metrics(labels[train], train_scores, labels[test], test_scores))
        aucs = [m["auc"] for m in per_fold]
        baccs = [m["balanced_accuracy"] for m in per_fold]
        auc_mean, auc_std = mean_std(aucs)
        bacc_mean, bacc_std = mean_std(baccs)
        result["protocols"][name] = {
            "fold_auc": aucs, "fold_balanced_accuracy": baccs, "fold_threshold": [m["threshold"] for m in per_fold],
            "auc_mean": auc_mean, "auc_std": auc_std,
            "balanced_accuracy_mean": bacc_mean, "balanced_accuracy_std": bacc_std,
            "pooled_auc": float(roc_auc_score(labels, oof)), "oof_probability": oof.tolist(),
            "seconds": round(time.monotonic() - start, 3),
        }
        log.info("%s %s: AUC %.3f ± %.3f over %d folds", encoder_source, name, auc_mean, auc_std, folds)
    return result


def _finetune_fold_scores(encoder_source: str | Path, arch: str, patients: Sequence[Any], train: np.ndarray,
                          test: np.ndarray, train_cfg: Any, seed: int, device: Any,
                          fold: int, slices_per_patient: int = 0, save_to: Path | None = None,
                          preprocess: dict[str, Any] | None = None, patient_head: str = "mean",
                          bag_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Fine-tune a fresh copy of the encoder on the training patients; patient probabilities for both sets
    (`save_to`: also keep the fold model there, ensemble.save_fold_model)."""
    from ..models.features import patient_probabilities
    from ..training.finetune import fit_classifier

    _, encoder = _load_encoder(encoder_source, arch, seed)  # every fold starts from the same weights
    train_patients = [patients[i] for i in train]
    model = fit_classifier(encoder, train_patients, train_cfg, freeze=False, seed=seed + 1000 * fold,
                           slices_per_patient=slices_per_patient or None, patient_head=patient_head,
                           bag_size=bag_size)
    batch = train_cfg.batch_size
    train_scores = np.asarray(patient_probabilities(model, train_patients, device, batch), dtype=float)
    if save_to is not None:
        from ..models.ensemble import save_fold_model

        train_labels = [int(p.histo_label) for p in train_patients]
        save_fold_model(save_to, model, preprocess or {}, youden_threshold(train_labels, train_scores),
                        {"fold": fold, "n_patients": len(train), "n_positive": int(sum(train_labels)),
                         "epochs": train_cfg.epochs, "seed": seed + 1000 * fold, "patient_head": patient_head})
    return train_scores, np.asarray(patient_probabilities(model, [patients[i] for i in test], device, batch), dtype=float)


def plot_roc(result: dict[str, Any], path: str | Path) -> Path:
    """Pooled out-of-fold ROC curve per protocol (one PNG), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from ..files import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    labels = np.asarray(result["labels"])
    for name, res in result["protocols"].items():
        fpr, tpr, _ = roc_curve(labels, np.asarray(res["oof_probability"]))
        ax.plot(fpr, tpr, label=f"{name}: fold AUC {res['auc_mean']:.3f} ± {res['auc_std']:.3f}, "
                                f"pooled {res['pooled_auc']:.3f}")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{Path(str(result['encoder'])).name} ({result['arch']}), {result['folds']}-fold, pooled out-of-fold")
    ax.title.set_fontsize(8)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def roc_png_path(json_path: str | Path) -> Path:
    """The ROC plot beside a results JSON: `x.json` -> `x.roc.png`."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + ".roc.png")


def run_evaluate(cfg: Any) -> int:
    """`wsp-cirrhosis evaluate`: k-fold AUC of one encoder -> JSON + ROC plot; prints the summary."""
    from ..files import to_dict
    from ..data.preprocess import load_cohort
    from ..files import write_json_atomic
    from ..provenance import git_revision, software_versions

    protocols = parse_protocols(cfg.protocols)
    source: str | Path = "none" if str(cfg.encoder).lower() == "none" else Path(cfg.encoder)
    if source != "none" and not Path(source).is_dir():
        raise InputError(f"--encoder {cfg.encoder}: not a pretrain run folder (or 'none' for random init)")
    if cfg.json.exists() and cfg.json.is_dir():
        raise InputError(f"--json {cfg.json}: is a folder; give a file name such as results.json")
    if source != "none":
        _warn_preprocess_mismatch(Path(source), to_dict(cfg.preprocess))
    keep = None
    if getattr(cfg, "keep_fold_models", False):
        from ..models.ensemble import folds_dir_of

        if "finetune" not in protocols:
            raise ConfigError("--keep-fold-models: needs the finetune protocol (--protocols ...,finetune)")
        keep = folds_dir_of(cfg.json)
        if keep.exists() and any(keep.iterdir()):
            raise InputError(f"{keep}: exists and is not empty; remove it or write --json elsewhere")
    from ..data.overlap import check_run_overlap

    # before any preprocessing or training: the histology set must not share patients with the weak set
    overlap = check_run_overlap(source, cfg.manifest, cfg.cache_dir, getattr(cfg, "allow_overlap", False))
    patients = load_cohort(cfg.manifest, cfg.preprocess, cache_dir=cfg.cache_dir, require="histo")
    start = time.monotonic()
    result = evaluate_encoder(source, patients, cfg.folds, protocols, cfg.train, cfg.train.seed, cfg.arch,
                              cfg.slices_per_patient, keep_models=keep, preprocess=to_dict(cfg.preprocess),
                              patient_head=cfg.patient_head, bag_size=cfg.bag_size)
    png = plot_roc(result, roc_png_path(cfg.json))
    from .reliability import add_calibration_to_result

    reliability = add_calibration_to_result(result, cfg.json)
    if keep is not None:
        from ..models.ensemble import write_oof

        write_oof(keep, result)
    doc = {
        "command": "evaluate", "manifest": str(cfg.manifest), **result, "weak_overlap": overlap,
        "roc_png": png.name, "reliability_png": reliability.name, "seconds": round(time.monotonic() - start, 3),
        "config": to_dict(cfg), "versions": software_versions(), "git_revision": git_revision(),
    }
    write_json_atomic(cfg.json, doc)
    print(format_summary(result))
    print(f"wrote {cfg.json}, {png} and {reliability}" + (f"; fold models in {keep}" if keep is not None else ""))
    return 0


def _warn_preprocess_mismatch(run_dir: Path, preprocess: dict[str, Any]) -> None:
    """Log when the evaluation slices are not prepared like the pretraining ones (window, size, margin)."""
    import json

    try:
        saved = json.loads((run_dir / "config.json").read_text())["config"]["preprocess"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    diff = [f"--{k.replace('_', '-')} {preprocess.get(k)} (pretrained with {v})"
            for k, v in saved.items() if preprocess.get(k) != v]
    if diff:
        log.warning("%s: evaluating with different preprocessing: %s", run_dir, "; ".join(diff))


def format_summary(result: dict[str, Any]) -> str:
    """A few lines: one per protocol with AUC and balanced accuracy (mean ± std over folds)."""
    lines = [f"encoder {result['encoder']} ({result['arch']}), {result['n_patients']} patients "
             f"({result['n_positive']} positive), {result['folds']}-fold, seed {result['seed']}"]
    for name, res in result["protocols"].items():
        cal = res.get("calibration")
        lines.append(f"  {name:9s} AUC {res['auc_mean']:.3f} ± {res['auc_std']:.3f}   "
                     f"balanced accuracy {res['balanced_accuracy_mean']:.3f} ± {res['balanced_accuracy_std']:.3f}"
                     + (f"   Brier {cal['brier']:.3f}  ECE {cal['ece']:.3f} (out-of-fold)" if cal else ""))
    return "\n".join(lines)
