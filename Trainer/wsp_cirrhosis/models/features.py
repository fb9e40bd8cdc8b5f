"""One home for trained encoders and what they compute: loading, slice features, pooled features,
slice and patient probabilities.

Used by pretraining monitors, fine-tuning, evaluation, benchmark, audits and bundles; it imports
no training code, so none of them import each other through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..distributed import resolve_device
from ..errors import InputError
from .encoders import build_encoder


def load_pretrained_encoder(source: str | Path | None, arch: str = "tinynet") -> tuple[str, nn.Module]:
    """The encoder of a pretrain run, or a fresh random one.

    Args:
        source: a pretrain run folder (or its encoder.pt); None or "none" for a random init
            (drawn from torch's global generator: seed it first for a reproducible init).
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


def batched_outputs(model: nn.Module, slices: Any, device: str | torch.device = "auto",
                    batch_size: int = 32) -> torch.Tensor:
    """Run ``model`` (eval mode, no gradient) over (S, H, W) slices in batches.

    Args:
        model: maps (B, 1, H, W) float32 to (B, ...).
        slices: (S, H, W) float32 in [0, 1], numpy (memmap) or torch.
        device: "auto", "cpu", "cuda" or a torch.device.
        batch_size: slices per forward pass.

    Returns:
        (S, ...) float32 outputs on the CPU.
    """
    device = resolve_device(device)
    model.to(device).eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(slices), batch_size):
            chunk = slices[start:start + batch_size]
            x = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk, dtype=np.float32))
            outputs.append(model(x.to(device, torch.float32).unsqueeze(1)).float().cpu())
    return torch.cat(outputs)


def slice_features(encoder: nn.Module, slices: Any, device: str | torch.device = "auto",
                   batch_size: int = 32) -> np.ndarray:
    """The encoder's pooled representation of every slice: (S, feature_dim) float64."""
    return batched_outputs(encoder, slices, device, batch_size).double().numpy()


def pooled_features(encoder: nn.Module, patients: Sequence[Any], device: str | torch.device = "auto",
                    batch_size: int = 32) -> np.ndarray:
    """Encoder features averaged over each patient's slices: (P, 512) float64 (frozen evaluation)."""
    return np.stack([slice_features(encoder, p.slices, device, batch_size).mean(0) for p in patients])


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
    return torch.sigmoid(batched_outputs(model, slices, device, batch_size)).double().numpy()


def patient_probabilities(model: nn.Module, patients: Sequence[Any], device: str | torch.device = "auto",
                          batch_size: int = 32) -> np.ndarray:
    """(P,) float64 raw patient probabilities of a fine-tuned model, read by its patient head.

    A SliceClassifier (head ``mean``): the mean of the slice probabilities (method.md,
    "Evaluation"). A PatientClassifier (``bands``, ``attention``): sigmoid of the head's logit
    over all of the patient's slices and their heights (``patient_read.read_patient``).
    """
    from .patient_read import model_heads, read_patient

    heads = model_heads(model)
    if heads is None:
        return np.array([slice_probabilities(model, p.slices, device, batch_size).mean() for p in patients])
    return np.array([read_patient(batched_outputs(model, p.slices, device, batch_size), p.positions, heads).probability
                     for p in patients])
