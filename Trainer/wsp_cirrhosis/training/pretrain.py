"""`wsp-cirrhosis pretrain`: contrastive pretraining of an encoder, with representation monitors.

Schedule: ``--epochs`` epochs of ``--slices-per-epoch`` slices (ceil(slices / batch size)
steps each; the paper: 40 epochs of 10,000 slices), whatever the cohort size. ``--recipe
paper`` sets the paper's settings (``recipes.apply_recipe``, ``augment.PAPER_AUGMENT``).

Monitors (``monitors.py``): ``--monitor-fraction`` of the weak-set patients (stratified on the
weak label, fixed seed 0, so every run and seed holds out the same patients) are never trained
on; ``--monitor-manifest`` names a separate weak-labelled set instead (all of it held out, the
whole weak set trained on), for monitors with less sampling noise. Before training (step 0),
every ``--monitor-every`` epochs and after the last epoch, rank 0 adds kNN balanced accuracy,
the weak band-probe, position R^2, alignment, uniformity and effective rank to that epoch's line
of metrics.jsonl; every epoch line has ``loss_excess``. ``curves.png`` plots them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..config import PretrainConfig
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
from ..models.encoders import build_encoder
from ..models.heads import ProjectionHead, Projector
from .augment import AUGMENTS
from .checkpoints import create_run_dir, load_patients, read_metrics, resolve_resume
from .loop import contrastive_step, train_loop
from .monitors import (
    MONITOR_KEYS,
    MonitorSet,
    loss_excess,
    representation_monitors,
    split_monitor_patients,
    weight_entropy,
)
from .recipes import apply_budget, apply_recipe, slices_seen
from .samplers import PatientSampler

log = logging.getLogger("wsp_cirrhosis")
MONITOR_SEED = 0  # the held-out monitor patients do not depend on --seed: runs stay comparable
REFERENCE_PATIENTS = 300  # at most this many training patients in the kNN reference set
SMALL_MONITOR = 200  # fewer held-out patients than this: the weak band-probe cannot resolve a 0.05 gain
REFERENCE_SLICES = HELD_OUT_SLICES = 12  # evenly spaced slices per patient (signs may sit in narrow d bands)


def _check_patients(cfg: PretrainConfig, patients: Sequence[Any]) -> None:
    if not patients:
        raise InputError(f"{cfg.manifest}: no patients to pretrain on")
    unlabelled = [p.patient_id for p in patients if p.weak_label is None]
    if cfg.method in ("supcon", "wsp") and unlabelled:
        what = "has no weak labels" if len(unlabelled) == len(patients) else \
            f"has {len(unlabelled)} patient(s) without a weak label (e.g. {', '.join(map(str, unlabelled[:3]))})"
        raise InputError(f"{cfg.manifest}: {what}; --method {cfg.method} needs the weak_label column "
                         "(simclr, positional and pcl do not)")


class _Monitor:
    """The pretraining epoch hook: loss excess from the training batches, representation monitors on rank 0."""

    def __init__(self, cfg: PretrainConfig, model: Projector, train_patients: Sequence[Any],
                 held_out: Sequence[Any], device: torch.device) -> None:
        self.cfg, self.model, self.device = cfg, model, device
        self.steps: list[tuple[torch.Tensor, float]] = []
        self.active = bool(held_out) and is_rank_zero()
        if self.active:
            rng = np.random.default_rng(MONITOR_SEED)
            ref = sorted(rng.permutation(len(train_patients))[:REFERENCE_PATIENTS].tolist())
            self.reference = MonitorSet.from_patients([train_patients[i] for i in ref], REFERENCE_SLICES)
            self.held_out = MonitorSet.from_patients(held_out, HELD_OUT_SLICES)

    def record(self, loss: torch.Tensor, labels: torch.Tensor | None, positions: torch.Tensor) -> None:
        """One training step's loss and the entropy of its batch weights (every rank: it gathers)."""
        self.steps.append((loss, weight_entropy(labels, positions, self.cfg.method, self.cfg.sigma,
                                                self.cfg.threshold)))

    def representation(self) -> dict[str, float]:
        if not self.active:
            return {}
        values = representation_monitors(self.model.encoder, self.model.head, self.reference, self.held_out,
                                         self.device, seed=MONITOR_SEED, augment=AUGMENTS[self.cfg.recipe])
        return {k: round(v, 5) for k, v in values.items()}

    def __call__(self, epoch: int, step: int, line: dict) -> None:
        if self.steps:
            excess = [loss_excess(float(loss), h, self.cfg.train.batch_size) for loss, h in self.steps]
            line["loss_excess"] = round(float(np.mean(excess)), 5)
            self.steps = []
        last = epoch + 1 == self.cfg.train.epochs
        if (epoch + 1) % self.cfg.monitor_every == 0 or last:
            line.update(self.representation())
            if self.active:
                log.info("monitors after epoch %d (step %d): %s", epoch + 1, step, _format(line))


def _format(line: dict) -> str:
    return ", ".join(f"{k} {line[k]:.3f}" for k in MONITOR_KEYS if k in line)


def pretrain(cfg: PretrainConfig, patients: Sequence[Any], monitor_patients: Sequence[Any] | None = None) -> Path:
    """Contrastive pretraining of ``cfg.encoder`` on ``patients``; returns the run folder.

    Args:
        cfg: the pretrain settings (``cfg.out`` is the run folder); its recipe is applied here.
        patients: CachedPatient-like objects (``.slices`` (S, H, W), ``.positions`` (S,),
            ``.weak_label``); ``cfg.monitor_fraction`` of them are held out for the monitors.
        monitor_patients: a separate weak-labelled set for the monitors (``--monitor-manifest``;
            `data.overlap.check_held_out` refuses one that shares patients); every one of ``patients``
            is then trained on.

    Returns:
        ``cfg.out``, holding config.json (the settings after the recipe), metrics.jsonl,
        checkpoint.pt, encoder.pt and, with monitors, curves.png.

    Raises:
        InputError: no patients, or missing weak labels for ``--method supcon / wsp``.
        ConfigError: batch size larger than the training patients or not divisible by the
            process count, etc.
    """
    cfg = resolve_resume(cfg)
    cfg, overridden = apply_recipe(cfg)
    cfg = apply_budget(cfg)
    if overridden and is_rank_zero():
        log.warning("--recipe paper sets %s", ", ".join(overridden))
    device = init_distributed(cfg.train.device)
    _check_patients(cfg, patients)
    tcfg, world = cfg.train, get_world_size()
    labels = [-1 if p.weak_label is None else int(p.weak_label) for p in patients]
    if monitor_patients is None:
        train_idx, held_idx = split_monitor_patients(labels, cfg.monitor_fraction, MONITOR_SEED)
        held_out = [patients[i] for i in held_idx]
    else:
        train_idx, held_out = list(range(len(patients))), list(monitor_patients)
    train_patients = [patients[i] for i in train_idx]
    if tcfg.batch_size > len(train_patients) and monitor_patients is None and held_out:
        raise ConfigError(f"--batch-size {tcfg.batch_size} exceeds the {len(train_patients)} training patients "
                          f"({len(held_out)} held out by --monitor-fraction {cfg.monitor_fraction}); lower "
                          "--batch-size or --monitor-fraction")
    steps_per_epoch = -(-cfg.slices_per_epoch // tcfg.batch_size)
    sampler = PatientSampler([labels[i] for i in train_idx], [len(p.slices) for p in train_patients],
                             tcfg.batch_size, tcfg.seed, get_rank(), world, steps_per_epoch, cfg.position_groups)
    local = tcfg.batch_size // world
    if tcfg.accumulate > 2 * local:
        raise ConfigError(f"--accumulate {tcfg.accumulate} exceeds the {2 * local} views per process and batch")
    run_dir = create_run_dir(cfg, "pretrain")  # after every check: a refused run leaves no folder
    if is_rank_zero():
        log.info("schedule: %d epochs x %d steps x batch %d = %d slices", tcfg.epochs, steps_per_epoch,
                 tcfg.batch_size, slices_seen(cfg))
        if 0 < len(held_out) < SMALL_MONITOR:
            log.info("monitors on %d held-out patients: their weak band-probe moves by about +-0.05 between runs; "
                     "a gain of that size needed 600 (--monitor-manifest, docs/training.md)", len(held_out))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tcfg.seed)
        model = Projector(build_encoder(cfg.encoder), ProjectionHead(512, 256, 128, norm=cfg.head_norm))
    model.to(device)
    monitor = _Monitor(cfg, model, train_patients, held_out, device)
    loss_kwargs = {"method": cfg.method, "sigma": cfg.sigma, "tau": cfg.tau, "threshold": cfg.threshold}
    augment = AUGMENTS[cfg.recipe]

    def step(net: nn.Module, batch: dict, gen: torch.Generator) -> torch.Tensor:
        loss = contrastive_step(net, batch, gen, loss_kwargs=loss_kwargs, chunks=tcfg.accumulate,
                                offset=sampler.rows.start, total=tcfg.batch_size, bf16=tcfg.bf16, augment=augment)
        monitor.record(loss, batch["labels"] if cfg.method in ("supcon", "wsp") else None, batch["positions"])
        return loss

    initial = None
    if not (tcfg.resume and (run_dir / "checkpoint.pt").is_file()) and monitor.active:
        initial = {"epoch": 0, "step": 0, **monitor.representation()}
        log.info("monitors at initialisation: %s", _format(initial))
    history = train_loop(model, list(model.parameters()), sampler, train_patients, step, tcfg, device, run_dir,
                         desc="pretrain", on_epoch_end=monitor, initial_line=initial)
    if is_rank_zero():
        save_torch_atomic({
            "encoder_name": cfg.encoder, "encoder_state": {k: v.cpu() for k, v in model.encoder.state_dict().items()},
            "method": cfg.method, "preprocess": to_dict(cfg.preprocess), "config": to_dict(cfg),
            "monitor_patients": [str(p.patient_id) for p in held_out],
        }, run_dir / "encoder.pt")
        if monitor.active:
            from .plots import plot_curves

            plot_curves(history, run_dir / "curves.png", title=f"{cfg.method} {cfg.encoder}, {run_dir.name}")
    barrier()
    return run_dir


def monitor_summary(run_dir: Path) -> dict[str, tuple[float, float]]:
    """{monitor: (first value, last value)} from a pretrain run's metrics.jsonl (for the demo's printout)."""
    history = read_metrics(run_dir)
    out = {}
    for key in MONITOR_KEYS:
        values = [line[key] for line in history if key in line]
        if values:
            out[key] = (values[0], values[-1])
    return out


def run_pretrain(cfg: PretrainConfig) -> int:
    """`wsp-cirrhosis pretrain`: load the weak-labelled cohort, pretrain, write the run folder."""
    resolve_device(cfg.train.device)
    init_distributed(cfg.train.device)
    try:
        cfg = resolve_resume(cfg)
        require = "weak" if cfg.method in ("supcon", "wsp") else None
        if cfg.monitor_manifest is not None:
            from ..data.overlap import check_held_out

            check_held_out(cfg.manifest, cfg.monitor_manifest, cfg.cache_dir)
        patients = load_patients(cfg.manifest, cfg.preprocess, cfg.cache_dir, require)
        monitor = None if cfg.monitor_manifest is None else \
            load_patients(cfg.monitor_manifest, cfg.preprocess, cfg.cache_dir, "weak")
        run_dir = pretrain(cfg, patients, monitor)
        if is_rank_zero():
            log.info("pretrained encoder: %s", run_dir / "encoder.pt")
        return 0
    finally:
        cleanup_distributed()
