"""The one training loop shared by pretrain and finetune: step, epoch, checkpoint, resume.

Run folder (written by rank 0 only)::

    config.json     {"command", "config": to_dict(cfg), "software_versions", "git_revision",
                     "command_line", "created", "world_size"}; written first
    metrics.jsonl   one line per finished epoch: epoch, step, loss, lr, time_s, slices_per_s,
                    data_wait_fraction (share of the epoch spent waiting for a batch)
    checkpoint.pt   written atomically after every epoch: encoder, head, optimizer, epoch, step,
                    RNG states, sampler state, metrics so far
    encoder.pt      pretrain only, at the end: {"encoder_name", "encoder_state", "method", ...}
    model.pt        finetune only, at the end: the format of docs/architecture.md

Exact resume: the learning rate is a function of the global step, the batches of (seed, epoch)
and the augmentations of (seed, step), so ``--resume`` from the last checkpoint gives the same
weights as an uninterrupted run, and K processes give the weights of one (``data.py``,
``augment.py``). Pretraining: one epoch = ceil(n_patients / batch_size) steps.

Gradient caching (``--accumulate K``, Gao et al. 2021, "Scaling deep contrastive learning batch
size under memory limited setup"): embeddings of the whole batch are computed without graph in
K chunks, the whole-batch loss is differentiated w.r.t. them, then each chunk is re-run with
graph and back-propagated with its cached embedding gradient. With TinyNet this equals the
unchunked step; ResNet-18's batch norm normalises each chunk with the chunk's statistics (and
updates its running statistics in both passes), so there it is close, not equal. For the same
reason a multi-process ResNet-18 run uses per-process batch statistics (no SyncBatchNorm).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .augment import Augment, random_views
from .config import FinetuneConfig, PretrainConfig, TrainConfig, load_config, to_dict
from .data import PatientSampler, SliceSampler, load_batch, prefetch
from .distributed import (barrier, cleanup_distributed, get_rank, get_world_size, init_distributed,
                          is_distributed, is_rank_zero, mean_over_ranks, resolve_device)
from .errors import ConfigError, InputError
from .files import check_output_dir, save_torch_atomic, write_json_atomic, write_text_atomic
from .losses import contrastive_loss
from .models import ENCODERS, ClassifierHead, ProjectionHead, build_encoder
from .progress import track
from .provenance import git_revision, software_versions

log = logging.getLogger("wsp_cirrhosis")
CLASS_NAMES = ["no cirrhosis", "cirrhosis"]
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "encoder.pt", "model.pt")
StepFn = Callable[[nn.Module, dict, torch.Generator], torch.Tensor]


class SliceClassifier(nn.Module):
    """Encoder + ClassifierHead: (B, 1, H, W) slices -> (B,) logits of P(cirrhosis).

    Attributes:
        encoder_name: key of the encoder in ``models.ENCODERS``.
        threshold: decision threshold on the patient probability (Youden on the training
            patients after ``run_finetune``; 0.5 otherwise). Not part of the state dict.
    """

    def __init__(self, encoder: nn.Module, encoder_name: str | None = None, head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else ClassifierHead(encoder.feature_dim)
        self.encoder_name = encoder_name or encoder_name_of(encoder)
        self.threshold = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (B, 1, H, W) float slices in [0, 1]. Returns: (B,) logits."""
        return self.head(self.encoder(x))


class _Projector(nn.Module):
    """Encoder + ProjectionHead for pretraining: (B, 1, H, W) -> (B, 128) projections z."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def encoder_name_of(encoder: nn.Module) -> str:
    """The ``ENCODERS`` key of an encoder instance (ConfigError for an unregistered class)."""
    for name, cls in ENCODERS.items():
        if type(encoder) is cls:
            return name
    raise ConfigError(f"encoder class {type(encoder).__name__} is not in ENCODERS ({', '.join(ENCODERS)})")


def lr_at(step: int, total_steps: int, peak: float) -> float:
    """Learning rate at a global step: linear warm-up over 5% of the steps (at most 500), then cosine to 0."""
    warmup = min(500, max(1, math.ceil(0.05 * total_steps)))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def step_seed(seed: int, step: int) -> int:
    """Seed of the augmentation generator of one global step (independent streams per step)."""
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bfloat16 autocast outputs -> float32 for the loss; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _layout(x: torch.Tensor, bf16: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if bf16 else x


def contrastive_step(net: nn.Module, batch: dict, generator: torch.Generator, *, loss_kwargs: dict,
                     chunks: int = 1, offset: int = 0, total: int | None = None, bf16: bool = False,
                     augment: Augment = Augment()) -> torch.Tensor:
    """Forward + backward of one contrastive batch (gradients accumulate in ``net``'s parameters).

    Args:
        net: encoder + projection head (possibly DDP-wrapped), (B, 1, H, W) -> (B, D).
        batch: this rank's part: "images" (b, 1, H, W), "labels" (b,) int weak labels,
            "positions" (b,) float d in [0, 1], all on the model's device.
        generator: CPU generator of this step's augmentations (shared by every rank).
        loss_kwargs: method, sigma, tau, threshold for ``contrastive_loss``.
        chunks: gradient-caching chunks (1 = plain step).
        offset: row of ``batch`` in the global batch; total: global batch size.
        bf16: bfloat16 autocast + channels_last.

    Returns:
        The loss on the global batch (scalar, detached).
    """
    v1, v2 = random_views(batch["images"], generator, augment, 2, offset, total)
    device = v1.device
    labels = batch["labels"] if loss_kwargs["method"] in ("supcon", "wsp") else None

    def embed(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        with _autocast(device, bf16):
            z = net(_layout(torch.cat([v1[rows], v2[rows]]), bf16))
        return _at_least_float32(z).chunk(2)

    def loss_of(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(z1, z2, labels, batch["positions"], **loss_kwargs)

    if chunks == 1:
        loss = loss_of(*embed(slice(None)))
        loss.backward()
        return loss.detach()
    bounds = [slice(int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(len(v1)), chunks)]
    with torch.no_grad():
        parts = [embed(rows) for rows in bounds]
    z1 = torch.cat([p[0] for p in parts]).requires_grad_()
    z2 = torch.cat([p[1] for p in parts]).requires_grad_()
    loss = loss_of(z1, z2)
    loss.backward()  # d loss / d z for the whole batch: the cached gradients
    for k, rows in enumerate(bounds):
        last = k == len(bounds) - 1
        sync = net.no_sync() if isinstance(net, DistributedDataParallel) and not last else contextlib.nullcontext()
        with sync:
            c1, c2 = embed(rows)
            torch.autograd.backward([c1, c2], [z1.grad[rows], z2.grad[rows]])
    return loss.detach()


def classifier_step(net: nn.Module, batch: dict, generator: torch.Generator, *, offset: int = 0,
                    total: int | None = None, bf16: bool = False, augment: Augment = Augment()) -> torch.Tensor:
    """Forward + backward of one fine-tuning batch: BCE of slice logits on the histology labels.

    Returns:
        The mean BCE over the global batch (scalar, detached).
    """
    (x,) = random_views(batch["images"], generator, augment, 1, offset, total)
    with _autocast(x.device, bf16):
        logits = net(_layout(x, bf16))
    logits = _at_least_float32(logits)
    loss = F.binary_cross_entropy_with_logits(logits, batch["histo_labels"].to(logits.dtype))
    loss.backward()
    return mean_over_ranks(loss)


def _host_batch(patients: Sequence[Any], patient_idx: np.ndarray, slice_idx: np.ndarray, pin: bool) -> dict:
    b = load_batch(patients, patient_idx, slice_idx)
    out = {"images": torch.from_numpy(b.images).unsqueeze(1), "labels": torch.from_numpy(b.labels),
           "histo_labels": torch.from_numpy(b.histo_labels), "positions": torch.from_numpy(b.positions)}
    return {k: v.pin_memory() for k, v in out.items()} if pin else out


def _train(model: nn.Module, params: list[nn.Parameter], sampler: PatientSampler | SliceSampler,
           patients: Sequence[Any], step_fn: StepFn, tcfg: TrainConfig, device: torch.device,
           run_dir: Path | None = None, freeze_encoder: bool = False, desc: str = "train") -> list[dict]:
    """Run (or resume) the epochs of ``tcfg`` on ``model`` (with ``.encoder`` and ``.head``).

    Returns:
        The metrics of every epoch (also in ``run_dir/metrics.jsonl``).
    """
    model.to(device)
    if tcfg.bf16:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    start_epoch, history = 0, []
    ckpt_path = run_dir / "checkpoint.pt" if run_dir is not None else None
    if ckpt_path is not None and tcfg.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.encoder.load_state_dict(ckpt["encoder"])
        model.head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        start_epoch, history = int(ckpt["epoch"]), list(ckpt["metrics"])
        log.info("%s: resuming after epoch %d/%d (step %d)", run_dir, start_epoch, tcfg.epochs, ckpt["step"])
    elif tcfg.resume and run_dir is not None:
        log.info("%s: no checkpoint yet, starting from epoch 1", run_dir)
    net: nn.Module = model
    if is_distributed():
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    spe, world = sampler.steps_per_epoch, get_world_size()
    dtype = next(model.parameters()).dtype
    total_steps = tcfg.epochs * spe
    for epoch in range(start_epoch, tcfg.epochs):
        model.train()
        if freeze_encoder:
            model.encoder.eval()
        batches = sampler.epoch(epoch)
        stream = prefetch(_host_batch(patients, p, s, device.type == "cuda") for p, s in batches)
        start = ready = time.perf_counter()
        wait, loss_sum, lr = 0.0, torch.zeros((), device=device), tcfg.lr
        try:
            progress = track(stream, total=len(batches), desc=f"{desc} epoch {epoch + 1}/{tcfg.epochs}")
            for i, host in enumerate(progress):
                wait += time.perf_counter() - ready
                step = epoch * spe + i
                lr = lr_at(step, total_steps, tcfg.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                batch = {k: v.to(device, non_blocking=True) for k, v in host.items()}
                batch["images"] = batch["images"].to(dtype)  # float64 models train too (exactness tests)
                loss_sum += step_fn(net, batch, torch.Generator().manual_seed(step_seed(tcfg.seed, step)))
                optimizer.step()
                ready = time.perf_counter()
        finally:
            stream.close()  # stops the prefetch thread after an error or Ctrl-C
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        line = {"epoch": epoch + 1, "step": (epoch + 1) * spe, "loss": loss_sum.item() / spe, "lr": lr,
                "time_s": round(seconds, 3), "slices_per_s": round(spe * sampler.batch_size / seconds, 2),
                "data_wait_fraction": round(wait / seconds, 4), "world_size": world}
        history.append(line)
        if is_rank_zero():
            log.info("%s epoch %d/%d: loss %.4f, lr %.2e, %.1f slices/s, data wait %.1f%%", desc, epoch + 1,
                     tcfg.epochs, line["loss"], lr, line["slices_per_s"], 100 * line["data_wait_fraction"])
        if run_dir is not None and is_rank_zero():
            save_torch_atomic({
                "encoder": model.encoder.state_dict(), "head": model.head.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": (epoch + 1) * spe,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                "sampler": sampler.state_dict(), "metrics": history,
            }, ckpt_path)
            write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
    model.eval()
    return history


# ----------------------------------------------------------------------------- run folders

def _resolve_resume(cfg: Any) -> Any:
    """``cfg`` for a new run; for --resume the config saved in the run folder (device kept from ``cfg``)."""
    out = Path(cfg.out)
    if not cfg.train.resume:
        return cfg
    if not (out / "config.json").is_file():
        raise InputError(f"{out}: nothing to resume (no config.json); start the run without --resume")
    saved = load_config(type(cfg), out / "config.json")
    saved = dataclasses.replace(saved, out=cfg.out, train=dataclasses.replace(
        saved.train, resume=True, force=False, device=cfg.train.device))
    ignored = _differences(to_dict(saved), to_dict(cfg))
    if ignored:
        log.warning("--resume continues with the settings in %s; ignoring %s", out / "config.json", ", ".join(ignored))
    return saved


def _create_run_dir(cfg: Any, command: str) -> Path:
    """Create the run folder and write config.json first (a --resume run keeps its folder as is)."""
    out = Path(cfg.out)
    if cfg.train.resume:
        return out
    check_output_dir(out, cfg.train.force)
    barrier()  # every rank checked before rank 0 writes
    if is_rank_zero():
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        write_json_atomic(out / "config.json", {
            "command": command, "config": to_dict(cfg), "software_versions": software_versions(),
            "git_revision": git_revision(), "command_line": sys.argv,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "world_size": get_world_size(),
        })
    barrier()
    return out


def _setup_device(device: str) -> torch.device:
    """Validate ``--device``, join the torchrun process group if any, return this rank's device."""
    resolve_device(device)
    return init_distributed(device)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in a:
        if isinstance(a[key], dict):
            out += _differences(a[key], b.get(key, {}), prefix)
        elif key not in ("resume", "force", "device") and a[key] != b.get(key):
            out.append(f"--{(prefix + key).replace('_', '-')} {b.get(key)}")
    return out


def _load_patients(manifest: Path, preprocess: Any, cache_dir: Path | None, require: str | None) -> list:
    """load_cohort on rank 0 first (it builds the cache), then on the other ranks."""
    from .cache import load_cohort

    patients = load_cohort(manifest, preprocess, cache_dir=cache_dir, require=require) if is_rank_zero() else None
    barrier()
    return patients if patients is not None else load_cohort(manifest, preprocess, cache_dir=cache_dir, require=require)


# ----------------------------------------------------------------------------- pretrain

def pretrain(cfg: PretrainConfig, patients: Sequence[Any]) -> Path:
    """Contrastive pretraining of ``cfg.encoder`` on ``patients``; returns the run folder.

    Args:
        cfg: the pretrain settings (``cfg.out`` is the run folder).
        patients: CachedPatient-like objects (``.slices`` (S, H, W), ``.positions`` (S,),
            ``.weak_label``).

    Returns:
        ``cfg.out``, holding config.json, metrics.jsonl, checkpoint.pt and encoder.pt.

    Raises:
        InputError: no patients, or missing weak labels for ``--method supcon / wsp``.
        ConfigError: batch size larger than the cohort or not divisible by the process count, etc.
    """
    cfg = _resolve_resume(cfg)
    device = _setup_device(cfg.train.device)
    if not patients:
        raise InputError(f"{cfg.manifest}: no patients to pretrain on")
    unlabelled = [p.patient_id for p in patients if p.weak_label is None]
    if cfg.method in ("supcon", "wsp") and unlabelled:
        what = "has no weak labels" if len(unlabelled) == len(patients) else \
            f"has {len(unlabelled)} patient(s) without a weak label (e.g. {', '.join(map(str, unlabelled[:3]))})"
        raise InputError(f"{cfg.manifest}: {what}; --method {cfg.method} needs the weak_label column "
                         "(simclr, positional and pcl do not)")
    tcfg, world = cfg.train, get_world_size()
    labels = [-1 if p.weak_label is None else int(p.weak_label) for p in patients]
    sampler = PatientSampler(labels, [len(p.slices) for p in patients], tcfg.batch_size, tcfg.seed,
                             get_rank(), world)
    local = tcfg.batch_size // world
    if tcfg.accumulate > local:
        raise ConfigError(f"--accumulate {tcfg.accumulate} exceeds the {local} slices per process and batch")
    run_dir = _create_run_dir(cfg, "pretrain")  # after every check: a refused run leaves no folder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tcfg.seed)
        model = _Projector(build_encoder(cfg.encoder), ProjectionHead(512, 256, 128))
    loss_kwargs = {"method": cfg.method, "sigma": cfg.sigma, "tau": cfg.tau, "threshold": cfg.threshold}

    def step(net: nn.Module, batch: dict, gen: torch.Generator) -> torch.Tensor:
        return contrastive_step(net, batch, gen, loss_kwargs=loss_kwargs, chunks=tcfg.accumulate,
                                offset=sampler.rows.start, total=tcfg.batch_size, bf16=tcfg.bf16)

    _train(model, list(model.parameters()), sampler, patients, step, tcfg, device, run_dir, desc="pretrain")
    if is_rank_zero():
        save_torch_atomic({
            "encoder_name": cfg.encoder, "encoder_state": {k: v.cpu() for k, v in model.encoder.state_dict().items()},
            "method": cfg.method, "preprocess": to_dict(cfg.preprocess), "config": to_dict(cfg),
        }, run_dir / "encoder.pt")
    barrier()
    return run_dir


def run_pretrain(cfg: PretrainConfig) -> int:
    """`wsp-cirrhosis pretrain`: load the weak-labelled cohort, pretrain, write the run folder."""
    _setup_device(cfg.train.device)
    try:
        cfg = _resolve_resume(cfg)
        require = "weak" if cfg.method in ("supcon", "wsp") else None
        patients = _load_patients(cfg.manifest, cfg.preprocess, cfg.cache_dir, require)
        run_dir = pretrain(cfg, patients)
        if is_rank_zero():
            log.info("pretrained encoder: %s", run_dir / "encoder.pt")
        return 0
    finally:
        cleanup_distributed()


def load_pretrained_encoder(source: str | Path | None, arch: str = "tinynet") -> tuple[str, nn.Module]:
    """The encoder of a pretrain run, or a fresh random one.

    Args:
        source: a pretrain run folder (or its encoder.pt); None or "none" for a random init.
        arch: encoder built for "none" (a run folder names its own).

    Returns:
        (encoder name, encoder module on the CPU).

    Raises:
        InputError: not a finished pretrain run.
    """
    if source is None or str(source).lower() == "none":
        return arch, build_encoder(arch)
    path = Path(source)
    file = path / "encoder.pt" if path.is_dir() else path
    if not file.is_file():
        if (path / "checkpoint.pt").is_file():
            raise InputError(f"{path}: pretraining has not finished (no encoder.pt); continue it with --resume")
        raise InputError(f"{path}: not a pretrain run folder (no encoder.pt); pass a pretrain --out folder or 'none'")
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
        encoder = build_encoder(saved["encoder_name"])
        encoder.load_state_dict(saved["encoder_state"])
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        raise InputError(f"{file}: not a readable encoder file ({exc})") from None
    return saved["encoder_name"], encoder


# ----------------------------------------------------------------------------- finetune

def _check_histology(patients: Sequence[Any], where: str) -> np.ndarray:
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
              slices_per_patient: int | None, run_dir: Path | None, device: torch.device) -> SliceClassifier:
    labels = _check_histology(patients, str(run_dir or "fine-tuning"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SliceClassifier(encoder)
    sampler = SliceSampler(labels, [len(p.slices) for p in patients], tcfg.batch_size, seed,
                           slices_per_patient, True, get_rank(), get_world_size())
    model.encoder.requires_grad_(not freeze)
    params = list(model.head.parameters()) if freeze else list(model.parameters())

    def step(net: nn.Module, batch: dict, gen: torch.Generator) -> torch.Tensor:
        return classifier_step(net, batch, gen, offset=sampler.rows.start, total=tcfg.batch_size, bf16=tcfg.bf16)

    tcfg = dataclasses.replace(tcfg, seed=seed)
    _train(model, params, sampler, patients, step, tcfg, device, run_dir, freeze, desc="finetune")
    return model


def fit_classifier(encoder: nn.Module, patients: Sequence[Any], train_cfg: TrainConfig, freeze: bool = False,
                   seed: int | None = None, slices_per_patient: int | None = None) -> SliceClassifier:
    """Train a SliceClassifier on histology labels (no files written; single process).

    Args:
        encoder: starting encoder; trained in place unless ``freeze``.
        patients: CachedPatient-like objects with ``.histo_label`` in {0, 1} (both present).
        train_cfg: epochs, batch size, lr, weight decay, device, bf16 (resume and force unused).
        freeze: train the classifier head only (encoder in eval mode, no gradient).
        seed: head init, sampling and augmentation seed (default ``train_cfg.seed``).
        slices_per_patient: slices per patient per epoch (None: all).

    Returns:
        The classifier, in eval mode, on ``train_cfg.device``.
    """
    seed = train_cfg.seed if seed is None else seed
    tcfg = dataclasses.replace(train_cfg, resume=False)
    return _finetune(encoder, patients, tcfg, freeze, seed, slices_per_patient, None, resolve_device(train_cfg.device))


def run_finetune(cfg: FinetuneConfig) -> int:
    """`wsp-cirrhosis finetune`: fine-tune on histology, pick the threshold, write model.pt."""
    from sklearn.metrics import roc_auc_score

    from .evaluate import youden_threshold

    device = _setup_device(cfg.train.device)
    try:
        cfg = _resolve_resume(cfg)
        patients = _load_patients(cfg.manifest, cfg.preprocess, cfg.cache_dir, "histo")
        labels = _check_histology(patients, str(cfg.manifest))
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
        run_dir = _create_run_dir(cfg, "finetune")
        model = _finetune(encoder, patients, cfg.train, cfg.freeze, cfg.train.seed, cfg.slices_per_patient or None,
                          run_dir, device)
        if is_rank_zero():
            probs = patient_probabilities(model, patients, device, cfg.train.batch_size)
            threshold = youden_threshold(labels, probs)
            predicted = probs >= threshold
            sensitivity = float(predicted[labels == 1].mean())
            specificity = float((~predicted[labels == 0]).mean())
            history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
            save_torch_atomic({
                "encoder_name": name,
                "encoder_state": {k: v.cpu() for k, v in model.encoder.state_dict().items()},
                "classifier_state": {k: v.cpu() for k, v in model.head.state_dict().items()},
                "preprocess": to_dict(cfg.preprocess), "threshold": threshold, "class_names": list(CLASS_NAMES),
                "training_summary": {
                    "manifest": str(cfg.manifest), "n_patients": len(patients), "n_positive": int(labels.sum()),
                    "n_negative": int((labels == 0).sum()), "n_slices": int(sum(len(p.slices) for p in patients)),
                    "init": str(cfg.init or "none"), "freeze": cfg.freeze, "epochs": cfg.train.epochs,
                    "seed": cfg.train.seed, "world_size": get_world_size(),
                },
                "metrics": {
                    "train_auc": float(roc_auc_score(labels, probs)), "train_sensitivity": sensitivity,
                    "train_specificity": specificity, "final_loss": history[-1]["loss"] if history else None,
                },
            }, run_dir / "model.pt")
            log.info("fine-tuned model: %s (threshold %.3f)", run_dir / "model.pt", threshold)
        barrier()
        return 0
    finally:
        cleanup_distributed()


# ----------------------------------------------------------------------------- inference helpers

def _batched(model: nn.Module, slices: Any, device: str | torch.device, batch_size: int) -> torch.Tensor:
    """Run ``model`` over (S, H, W) slices in batches; (S, ...) float32 outputs on the CPU."""
    device = resolve_device(device)
    model.to(device).eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(slices), batch_size):
            chunk = slices[start:start + batch_size]
            x = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk, dtype=np.float32))
            outputs.append(model(x.to(device, torch.float32).unsqueeze(1)).float().cpu())
    return torch.cat(outputs)


def slice_probabilities(model: nn.Module, slices: Any, device: str | torch.device = "auto",
                        batch_size: int = 32) -> np.ndarray:
    """P(cirrhosis) of every slice.

    Args:
        model: a SliceClassifier (put in eval mode on ``device``).
        slices: (S, H, W) float32 in [0, 1], numpy (memmap) or torch.
        device: "auto", "cpu", "cuda" or a torch.device.
        batch_size: slices per forward pass.

    Returns:
        (S,) float64 sigmoid probabilities.
    """
    return torch.sigmoid(_batched(model, slices, device, batch_size)).double().numpy()


def patient_probabilities(model: nn.Module, patients: Sequence[Any], device: str | torch.device = "auto",
                          batch_size: int = 32) -> np.ndarray:
    """Patient probability = mean of its slice probabilities (method.md, "Evaluation"); (P,) float64."""
    return np.array([slice_probabilities(model, p.slices, device, batch_size).mean() for p in patients])


def pooled_features(encoder: nn.Module, patients: Sequence[Any], device: str | torch.device = "auto",
                    batch_size: int = 32) -> np.ndarray:
    """Encoder features averaged over each patient's slices: (P, 512) float64 (frozen evaluation)."""
    return np.stack([_batched(encoder, p.slices, device, batch_size).double().mean(0).numpy() for p in patients])
