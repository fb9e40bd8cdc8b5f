"""One patient's read from its slices: slice scores, each slice's contribution, the patient probability.

The same function serves ``predict``, the Slicer module, fine-tuning's threshold and evaluation,
for every patient head and for ensembles:

- ``mean`` (the paper's read, and every format 1-2 bundle): the patient probability is the mean
  of the slice probabilities (method.md, "Evaluation"), so the read is on the **probability
  scale**: slice s contributes p_s / S, and its read (S x contribution) is p_s itself.
- ``bands`` / ``attention``: the patient probability is sigmoid(patient logit), the logit being
  the sum of the head's contributions (``patient_heads``), so the read is on the **logit scale**:
  slice s's read S x c_s has the patient logit as its mean.

Either way the patient score is the mean of the per-slice reads, on the scale of the threshold
(``threshold_on_scale``): one curve, one threshold line. Ensembles average the members' reads
(probabilities for ``mean``, logits and contributions otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

SCALES = {"mean": "probability", "bands": "logit", "attention": "logit"}


@dataclass
class PatientRead:
    """The read of one patient, slices in the order given.

    Attributes:
        head: the patient head ("mean", "bands", "attention").
        scale: "probability" (mean) or "logit" (bands, attention).
        slice_scores: (S,) each slice's own P(positive), mean over members.
        member_slice_scores: (S, M) the same per member.
        contributions: (S,) each slice's share of the patient score on ``scale`` (they sum to it).
        member_probabilities: (M,) each member's raw patient probability.
        probability: the raw (uncalibrated) patient probability.
        weights: (S,) attention weights (attention head; mean over members), else None.
    """

    head: str
    scale: str
    slice_scores: np.ndarray
    member_slice_scores: np.ndarray
    contributions: np.ndarray
    member_probabilities: np.ndarray
    probability: float
    weights: np.ndarray | None = None

    @property
    def reads(self) -> np.ndarray:
        """(S,) S x contribution: each slice's read on the patient's scale (their mean is the patient score)."""
        return self.contributions * len(self.contributions)

    @property
    def score(self) -> float:
        """The patient score on ``scale``: the probability, or the patient logit."""
        return float(self.contributions.sum())


def threshold_on_scale(threshold: float, scale: str) -> float:
    """A probability threshold on the read's scale (its logit on the logit scale)."""
    if scale == "probability":
        return float(threshold)
    t = min(max(float(threshold), 1e-12), 1 - 1e-12)
    return math.log(t / (1 - t))


def read_patient(outputs: Any, positions: Any, heads: Sequence[nn.Module] | None = None) -> PatientRead:
    """Read one patient from its models' outputs.

    Args:
        outputs: for ``mean`` (``heads`` None): (S,) or (S, M) slice logits; otherwise (S, F) or
            (S, M, F) slice features from the encoder(s).
        positions: (S,) liver heights d in [0, 1].
        heads: one patient head per member (``patient_heads.PatientHead``), None for ``mean``
            read by slice probabilities.

    Returns:
        The PatientRead (float64 arrays).
    """
    out = torch.as_tensor(np.asarray(outputs) if not isinstance(outputs, torch.Tensor) else outputs).double()
    if heads is None:
        logits = out.reshape(len(out), -1)
        p = torch.sigmoid(logits).numpy()
        scores = p.mean(axis=1)
        return PatientRead("mean", "probability", scores, p, scores / len(scores), p.mean(axis=0), float(scores.mean()))
    if out.ndim == 2:
        out = out[:, None, :]
    d = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
    members_logit, members_contrib, members_slices, members_weights = [], [], [], []
    with torch.no_grad():
        for m, head in enumerate(heads):
            w = next(head.parameters())  # the head's dtype and device: the model is not modified
            h, dm = out[:, m].to(w.device, w.dtype), d.to(w.device, w.dtype)
            logit, contributions = head(h, dm)
            members_logit.append(float(logit))
            members_contrib.append(contributions.double().cpu().numpy())
            members_slices.append(torch.sigmoid(head.slice_logits(h, dm)).double().cpu().numpy())
            if hasattr(head, "attention"):
                members_weights.append(head.attention(h, dm).double().cpu().numpy())
    contributions = np.mean(members_contrib, axis=0)
    member_p = 1.0 / (1.0 + np.exp(-np.asarray(members_logit)))
    sl = np.stack(members_slices, axis=1)
    logit = float(contributions.sum())
    weights = np.mean(members_weights, axis=0) if members_weights else None
    return PatientRead(heads[0].name, "logit", sl.mean(axis=1), sl, contributions, member_p,
                       1.0 / (1.0 + math.exp(-logit)), weights)


def members_of(model: nn.Module) -> list[nn.Module]:
    """The classifiers of a model: itself, or an ensemble's members."""
    return list(getattr(model, "members", [model]))


def model_heads(model: nn.Module) -> list[nn.Module] | None:
    """The patient heads of a PatientClassifier (or of an ensemble of them); None for slice classifiers."""
    members = members_of(model)
    if all(getattr(m, "patient_head", "mean") == "mean" for m in members):
        return None
    return [m.head for m in members]
