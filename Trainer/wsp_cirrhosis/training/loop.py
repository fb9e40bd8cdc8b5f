"""The one training loop shared by pretrain and finetune: learning rate, steps, epochs, resume.

Exact resume: the learning rate is a function of the global step, the batches of (seed, epoch)
and the augmentations of (seed, step), so ``--resume`` from the last checkpoint gives the same
weights as an uninterrupted run, and K processes give the weights of one (``samplers.py``,
``augment.py``). Run folders and checkpoints: ``checkpoints.py``.

Several processes (torchrun): every rank starts from rank 0's weights and, after each backward,
the gradients are averaged over ranks (one all-reduce per step, in place of
DistributedDataParallel: the contrastive step runs the encoder and the projection head as two
passes, which DDP's one-forward-one-backward bookkeeping does not allow).

Gradient caching (``--accumulate K``, Gao et al. 2021, "Scaling deep contrastive learning batch
size under memory limited setup"): encoder features of the whole batch are computed without
graph in K chunks; the projection head runs once over the features of the whole (global) batch
with graph, the whole-batch loss is differentiated w.r.t. the features, then each chunk is re-run
through the encoder with graph and back-propagated with its cached feature gradient. The head's
BatchNorm (``--head-norm batch``) therefore always normalises with the statistics of the whole
global batch: features are all-gathered (with gradient) before the head, so one process, K
processes and K chunks compute the same projections. With TinyNet (GroupNorm, per sample) the
cached step equals the plain step; ResNet-18's batch norms in the encoder normalise each chunk
(and each process) with its own statistics, so there it is close, not equal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..distributed import all_gather_with_grad, get_rank, get_world_size, is_distributed, is_rank_zero, mean_over_ranks
from ..progress import track
from .augment import Augment, random_views
from .checkpoints import load_checkpoint, save_checkpoint, write_metrics
from .losses import contrastive_loss
from .samplers import BagSampler, PatientSampler, SliceSampler, load_batch, prefetch

log = logging.getLogger("wsp_cirrhosis")
StepFn = Callable[[nn.Module, dict, torch.Generator], torch.Tensor]
EpochHook = Callable[[int, int, dict], None]


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
        net: a ``models.heads.Projector`` (``.encoder`` (B, 1, H, W) -> (B, F), ``.head`` (B, F) -> (B, D)).
        batch: this rank's part: "images" (b, 1, H, W), "labels" (b,) int weak labels,
            "positions" (b,) float d in [0, 1], all on the model's device.
        generator: CPU generator of this step's augmentations (shared by every rank).
        loss_kwargs: method, sigma, tau, threshold for ``contrastive_loss``.
        chunks: gradient-caching chunks of the encoder pass (1 = plain step).
        offset: row of ``batch`` in the global batch; total: global batch size.
        bf16: bfloat16 autocast + channels_last.
        augment: the view distribution.

    Returns:
        The loss on the global batch (scalar, detached).
    """
    v1, v2 = random_views(batch["images"], generator, augment, 2, offset, total)
    x, b = torch.cat([v1, v2]), len(v1)
    device = x.device
    labels = batch["labels"] if loss_kwargs["method"] in ("supcon", "wsp") else None

    def encode(rows: slice) -> torch.Tensor:
        with _autocast(device, bf16):
            return _at_least_float32(net.encoder(_layout(x[rows], bf16)))

    def loss_of(h: torch.Tensor) -> torch.Tensor:
        # The head sees the features of the whole global batch at once (its BatchNorm statistics);
        # this rank keeps its own 2b rows, in the (view 1, view 2) order the loss expects.
        everything = all_gather_with_grad(h)
        with _autocast(device, bf16):
            z = _at_least_float32(net.head(everything))
        z1, z2 = z[get_rank() * 2 * b:(get_rank() + 1) * 2 * b].chunk(2)
        return contrastive_loss(z1, z2, labels, batch["positions"], **loss_kwargs)

    if chunks == 1:
        loss = loss_of(encode(slice(None)))
        loss.backward()
        return loss.detach()
    bounds = [slice(int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(2 * b), chunks)]
    with torch.no_grad():
        h = torch.cat([encode(rows) for rows in bounds])
    h.requires_grad_()
    loss = loss_of(h)
    loss.backward()  # head gradients, and d loss / d features of the whole batch: the cached gradients
    for rows in bounds:
        encode(rows).backward(h.grad[rows])
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


def bag_step(net: nn.Module, batch: dict, generator: torch.Generator, *, bag_size: int, offset: int = 0,
             total: int | None = None, bf16: bool = False, augment: Augment | None = Augment()) -> torch.Tensor:
    """Forward + backward of one patient-bag batch: BCE of each bag's patient logit on its histology label.

    Args:
        net: a ``models.patient_heads.PatientClassifier`` (``.encoder``, ``.read(h, d)``).
        batch: this rank's whole bags, patient-major (``samplers.BagSampler``): "images"
            (b, 1, H, W), "positions" (b,), "histo_labels" (b,).
        bag_size: slices per bag (b is a multiple of it).
        augment: the view distribution; None: the slices as cached.

    Returns:
        The mean BCE over the bags of the global batch (scalar, detached).
    """
    x = batch["images"] if augment is None else random_views(batch["images"], generator, augment, 1, offset, total)[0]
    with _autocast(x.device, bf16):
        h = net.encoder(_layout(x, bf16))
    h = _at_least_float32(h).reshape(-1, bag_size, h.shape[-1])
    d = batch["positions"].reshape(-1, bag_size).to(h.dtype)
    logits = torch.stack([net.read(h_p, d_p)[0] for h_p, d_p in zip(h, d)])
    y = batch["histo_labels"].reshape(-1, bag_size)[:, 0].to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, y)
    loss.backward()
    return mean_over_ranks(loss)


def _host_batch(patients: Sequence[Any], patient_idx: np.ndarray, slice_idx: np.ndarray, pin: bool) -> dict:
    b = load_batch(patients, patient_idx, slice_idx)
    out = {"images": torch.from_numpy(b.images).unsqueeze(1), "labels": torch.from_numpy(b.labels),
           "histo_labels": torch.from_numpy(b.histo_labels), "positions": torch.from_numpy(b.positions)}
    return {k: v.pin_memory() for k, v in out.items()} if pin else out


def _broadcast_parameters(model: nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers."""
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def _average_gradients(params: list[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks (one flattened all-reduce)."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= get_world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def _average_buffers(model: nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks.

    Gradients are averaged every step, so parameters stay identical on every rank, but each rank's
    BatchNorm running mean/var only sees its own batches. The running statistics are used only in
    eval mode (monitors, checkpoints, export), so one averaging per epoch, before those, suffices.
    """
    import torch.distributed as dist

    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= get_world_size()
    with torch.no_grad():
        for b, part in zip(bufs, flat.split([b.numel() for b in bufs])):
            b.copy_(part.view_as(b))


def train_loop(model: nn.Module, params: list[nn.Parameter], sampler: PatientSampler | SliceSampler | BagSampler,
               patients: Sequence[Any], step_fn: StepFn, tcfg: TrainConfig, device: torch.device,
               run_dir: Path | None = None, freeze_encoder: bool = False, desc: str = "train",
               on_epoch_end: EpochHook | None = None, initial_line: dict | None = None) -> list[dict]:
    """Run (or resume) the epochs of ``tcfg`` on ``model`` (with ``.encoder`` and ``.head``).

    Args:
        model: trained in place; moved to ``device``.
        params: the parameters the optimizer updates.
        sampler: gives this rank's batches of each epoch (``.steps_per_epoch``, ``.batch_size``).
        patients: CachedPatient-like objects the sampler indexes.
        step_fn: forward + backward of one batch, returns the (global) loss.
        tcfg: epochs, lr, weight decay, seed, bf16, resume.
        device: this rank's device.
        run_dir: where checkpoint.pt and metrics.jsonl go (None: nothing written).
        freeze_encoder: keep the encoder in eval mode (frozen fine-tuning).
        desc: progress label.
        on_epoch_end: called on every rank as ``hook(epoch, step, line)`` after each epoch, before
            the checkpoint; it may add keys to ``line`` (the representation monitors). Must not
            draw from torch's global generator (resume exactness).
        initial_line: a first metrics line (step 0, before any update) for a new run.

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
        start_epoch, history = load_checkpoint(ckpt_path, model, optimizer)
    elif tcfg.resume and run_dir is not None:
        log.info("%s: no checkpoint yet, starting from epoch 1", run_dir)
    if start_epoch == 0 and initial_line is not None:
        history.append(initial_line)
    if is_distributed():
        _broadcast_parameters(model)
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
                loss_sum += step_fn(model, batch, torch.Generator().manual_seed(step_seed(tcfg.seed, step)))
                if is_distributed():
                    _average_gradients(params)
                optimizer.step()
                ready = time.perf_counter()
        finally:
            stream.close()  # stops the prefetch thread after an error or Ctrl-C
        if is_distributed():
            _average_buffers(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        line = {"epoch": epoch + 1, "step": (epoch + 1) * spe, "loss": loss_sum.item() / spe, "lr": lr,
                "time_s": round(seconds, 3), "slices_per_s": round(spe * sampler.batch_size / seconds, 2),
                "data_wait_fraction": round(wait / seconds, 4), "world_size": world}
        if on_epoch_end is not None:
            on_epoch_end(epoch, (epoch + 1) * spe, line)
        history.append(line)
        if is_rank_zero():
            log.info("%s epoch %d/%d: loss %.4f, lr %.2e, %.1f slices/s, data wait %.1f%%", desc, epoch + 1,
                     tcfg.epochs, line["loss"], lr, line["slices_per_s"], 100 * line["data_wait_fraction"])
        if run_dir is not None and is_rank_zero():
            save_checkpoint(ckpt_path, model, optimizer, epoch + 1, (epoch + 1) * spe, sampler.state_dict(), history)
            write_metrics(run_dir, history)
    model.eval()
    return history
