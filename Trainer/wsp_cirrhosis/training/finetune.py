"""`wsp-cirrhosis finetune`, and ``fit_classifier`` (the same training, no files) for evaluation.

``--patient-head mean`` (the paper's): a SliceClassifier (encoder + linear head) is trained with
BCE on the histology label of each slice, histology-balanced (``samplers.SliceSampler``); the
patient probability is the mean of its slice probabilities.

``--patient-head bands|attention``: a PatientClassifier (encoder + position-aware patient head,
``models.patient_heads``) is trained with BCE on the patient logit of position-stratified bags of
``--bag-size`` slices per patient, histology-balanced (``samplers.BagSampler``,
``loop.bag_step``); with ``--freeze`` only the head learns. The head is first fitted on the
starting encoder's frozen features (``head_fit``: linear probing, then fine-tuning), and the bags
are the cached slices, not augmented views: the head was fitted on those, and augmented bags
undid part of what the fit had read (docs/results.md, 2026-12-07, part 4). At read time the head sees
all of a patient's slices.

Either way the decision threshold is Youden's on the training patients' raw patient probabilities.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..config import FinetuneConfig, TrainConfig
from ..distributed import (
    barrier,
    cleanup_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_rank_zero,
    resolve_device,
)
from ..errors import ConfigError, InputError
from ..files import save_torch_atomic, to_dict
from ..models.calibration import youden_threshold
from ..models.features import load_pretrained_encoder, patient_probabilities
from ..models.heads import CLASS_NAMES, SliceClassifier
from ..models.patient_heads import PatientClassifier, build_patient_head
from ..models.saved import model_states
from .checkpoints import create_run_dir, load_patients, read_metrics, resolve_resume
from .augment import Augment
from .loop import bag_step, classifier_step, train_loop
from .samplers import BagSampler, SliceSampler

log = logging.getLogger("wsp_cirrhosis")


def check_histology(patients: Sequence[Any], where: str) -> np.ndarray:
    """(P,) int histology labels; InputError (naming ``where``) unless every patient has 0 or 1 and both occur."""
    missing = [p.patient_id for p in patients if p.histo_label is None]
    if missing:
        raise InputError(f"{where}: {len(missing)} patient(s) have no histo_label (e.g. {', '.join(map(str, missing[:3]))})")
    labels = np.array([int(p.histo_label) for p in patients])
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0 or n_pos + n_neg != len(labels):
        raise InputError(f"{where}: fine-tuning needs histo_label 0 and 1 patients; found {n_pos} positive, "
                         f"{n_neg} negative, {len(labels) - n_pos - n_neg} other")
    return labels


def _finetune(encoder: nn.Module, patients: Sequence[Any], tcfg: TrainConfig, freeze: bool, seed: int,
              slices_per_patient: int | None, run_dir: Path | None, device: torch.device,
              patient_head: str = "mean", bag_size: int = 8, warm_start: bool = True,
              augment_bags: bool = False) -> nn.Module:
    labels = check_histology(patients, str(run_dir or "fine-tuning"))
    n_slices = [len(p.slices) for p in patients]
    sampler: SliceSampler | BagSampler
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if patient_head == "mean":
            model: nn.Module = SliceClassifier(encoder)
            sampler = SliceSampler(labels, n_slices, tcfg.batch_size, seed, slices_per_patient, True, get_rank(),
                                   get_world_size())
            step_fn, options = classifier_step, {}
        else:
            model = PatientClassifier(encoder, build_patient_head(patient_head, encoder.feature_dim))
            _start_head(model, patients, labels, device, warm_start)
            sampler = BagSampler(labels, n_slices, tcfg.batch_size, bag_size, seed, get_rank(), get_world_size())
            step_fn, options = bag_step, {"bag_size": bag_size, "augment": Augment() if augment_bags else None}
    model.encoder.requires_grad_(not freeze)
    params = list(model.head.parameters()) if freeze else list(model.parameters())

    def step(net: nn.Module, batch: dict, gen: torch.Generator) -> torch.Tensor:
        return step_fn(net, batch, gen, offset=sampler.rows.start, total=tcfg.batch_size, bf16=tcfg.bf16, **options)

    tcfg = dataclasses.replace(tcfg, seed=seed)
    train_loop(model, params, sampler, patients, step, tcfg, device, run_dir, freeze, desc="finetune")
    return model


def _start_head(model: PatientClassifier, patients: Sequence[Any], labels: np.ndarray,
                device: torch.device, warm_start: bool) -> None:
    """Fix a fresh head's standardisation to the starting encoder's features of the training slices
    and, with ``warm_start``, fit it on those frozen features first (``head_fit``: LP-FT)."""
    from .head_fit import fit_head, frozen_slice_features

    features = frozen_slice_features(model.encoder, patients, device)
    model.head.set_standardisation(torch.cat(features))
    if warm_start:
        loss = fit_head(model.head, features, [torch.from_numpy(np.asarray(p.positions)) for p in patients], labels)
        log.info("%s head fitted on frozen features of %d patients (loss %.4f)", model.head.name, len(patients), loss)


def fit_classifier(encoder: nn.Module, patients: Sequence[Any], train_cfg: TrainConfig, freeze: bool = False,
                   seed: int | None = None, slices_per_patient: int | None = None, patient_head: str = "mean",
                   bag_size: int = 8, warm_start: bool = True, augment_bags: bool = False) -> nn.Module:
    """Fine-tune ``encoder`` with a patient head on histology labels (no files written; single process).

    Args:
        encoder: starting encoder; trained in place unless ``freeze``.
        patients: CachedPatient-like objects with ``.histo_label`` in {0, 1} (both present).
        train_cfg: epochs, batch size, lr, weight decay, device, bf16 (resume and force unused).
        freeze: train the head only (encoder in eval mode, no gradient).
        seed: head init, sampling and augmentation seed (default ``train_cfg.seed``).
        slices_per_patient: slices per patient per epoch (None: all; ``mean`` only).
        patient_head: "mean" (a SliceClassifier), "bands" or "attention" (a PatientClassifier).
        bag_size: slices per patient bag (position-aware heads).
        warm_start: fit a position-aware head on the frozen features before training (``head_fit``).
        augment_bags: train a position-aware head on augmented views of the bag slices (the
            pre-2026-12-07 recipe) instead of the cached slices.

    Returns:
        The model, in eval mode, on ``train_cfg.device``.
    """
    seed = train_cfg.seed if seed is None else seed
    tcfg = dataclasses.replace(train_cfg, resume=False)
    return _finetune(encoder, patients, tcfg, freeze, seed, slices_per_patient, None, resolve_device(train_cfg.device),
                     patient_head, bag_size, warm_start, augment_bags)


def run_finetune(cfg: FinetuneConfig) -> int:
    """`wsp-cirrhosis finetune`: fine-tune on histology, pick the threshold, write model.pt."""
    from sklearn.metrics import roc_auc_score

    resolve_device(cfg.train.device)
    device = init_distributed(cfg.train.device)
    try:
        cfg = resolve_resume(cfg)
        patients = load_patients(cfg.manifest, cfg.preprocess, cfg.cache_dir, "histo")
        labels = check_histology(patients, str(cfg.manifest))
        with torch.random.fork_rng(devices=[]):  # a random init is a function of the seed alone
            torch.manual_seed(cfg.train.seed)
            name, encoder = load_pretrained_encoder(cfg.init, cfg.encoder)
        if cfg.init not in (None, "none") and name != cfg.encoder:
            log.info("--init %s holds a %s encoder (--encoder %s ignored)", cfg.init, name, cfg.encoder)
        if cfg.train.accumulate > 1:
            log.warning("--accumulate applies to contrastive pretraining only; fine-tuning ignores it")
        if cfg.train.batch_size % get_world_size():
            raise ConfigError(f"--batch-size {cfg.train.batch_size} must be a multiple of the number of processes "
                              f"({get_world_size()})")
        run_dir = create_run_dir(cfg, "finetune")
        model = _finetune(encoder, patients, cfg.train, cfg.freeze, cfg.train.seed, cfg.slices_per_patient or None,
                          run_dir, device, cfg.patient_head, cfg.bag_size)
        if is_rank_zero():
            probs = patient_probabilities(model, patients, device, cfg.train.batch_size)
            threshold = youden_threshold(labels, probs)
            predicted = probs >= threshold
            history = read_metrics(run_dir)
            save_torch_atomic({
                **model_states(model),
                "preprocess": to_dict(cfg.preprocess), "threshold": threshold, "class_names": list(CLASS_NAMES),
                "training_summary": {
                    "manifest": str(cfg.manifest), "n_patients": len(patients), "n_positive": int(labels.sum()),
                    "n_negative": int((labels == 0).sum()), "n_slices": int(sum(len(p.slices) for p in patients)),
                    "init": str(cfg.init or "none"), "freeze": cfg.freeze, "patient_head": cfg.patient_head,
                    "bag_size": cfg.bag_size, "epochs": cfg.train.epochs, "seed": cfg.train.seed, "world_size": get_world_size(),
                },
                "metrics": {
                    "train_auc": float(roc_auc_score(labels, probs)),
                    "train_sensitivity": float(predicted[labels == 1].mean()),
                    "train_specificity": float((~predicted[labels == 0]).mean()),
                    "final_loss": history[-1]["loss"] if history else None,
                },
            }, run_dir / "model.pt")
            log.info("fine-tuned model: %s (patient head %s, threshold %.3f)", run_dir / "model.pt", cfg.patient_head,
                     threshold)
        barrier()
        return 0
    finally:
        cleanup_distributed()
