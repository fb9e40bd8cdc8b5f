"""Ensembles of the k fine-tuned fold models of `evaluate --keep-fold-models`.

`evaluate --keep-fold-models` writes, beside its results JSON, a folder ``<stem>.folds/``:

    fold0/model.pt ... fold{k-1}/model.pt   the fold models, in finetune's model.pt format
    oof.json                                {"patients", "labels", "test_fold", "oof_probability"}

`export --run <stem>.folds --ensemble` packs them into one bundle (model.pt holds
{"members": [{"encoder", "classifier" | "patient_head"}, ...]}). At prediction time every member
scores every slice; the slice score is the members' mean; the patient is read as
``patient_read.read_patient`` says (head mean: the mean over slices = the mean of the members'
patient probabilities; bands / attention: the mean of the members' patient logits), and the
spread across members (min, max, std, ddof=0) is reported per patient and per slice (`summarise`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError

log = logging.getLogger("wsp_cirrhosis")

OOF_FILE = "oof.json"


def folds_dir_of(json_path: str | Path) -> Path:
    """Where `evaluate --keep-fold-models` keeps the fold models: `x.json` -> `x.folds/`."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + ".folds")


def save_fold_model(folder: Path, model: nn.Module, preprocess: dict[str, Any], threshold: float,
                    summary: dict[str, Any]) -> Path:
    """One fold's fine-tuned model (any patient head) as `folder/model.pt` (finetune's format)."""
    from ..files import save_torch_atomic
    from .heads import CLASS_NAMES
    from .saved import model_states

    folder.mkdir(parents=True, exist_ok=True)
    save_torch_atomic({
        **model_states(model),
        "preprocess": dict(preprocess), "threshold": float(threshold), "class_names": list(CLASS_NAMES),
        "training_summary": summary, "metrics": {},
    }, folder / "model.pt")
    return folder / "model.pt"


def write_oof(folder: Path, result: dict[str, Any], protocol: str = "finetune") -> Path:
    """oof.json: the out-of-fold probabilities of the fold models (for `export --calibrate`)."""
    from ..files import write_json_atomic

    res = result["protocols"][protocol]
    write_json_atomic(folder / OOF_FILE, {"protocol": protocol, "patients": result["patients"],
                                          "labels": result["labels"], "test_fold": result["test_fold"],
                                          "oof_probability": res["oof_probability"]})
    return folder / OOF_FILE


def read_oof(path: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels, out-of-fold probabilities, source) from an oof.json or an `evaluate` results JSON
    (its finetune protocol).

    Raises:
        InputError: unreadable file or no out-of-fold probabilities in it.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if "protocols" in doc:
            if "finetune" not in doc["protocols"]:
                raise KeyError("protocol finetune")
            doc = {"labels": doc["labels"], "oof_probability": doc["protocols"]["finetune"]["oof_probability"]}
        labels, probs = np.asarray(doc["labels"], dtype=int), np.asarray(doc["oof_probability"], dtype=float)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: no out-of-fold probabilities (need `evaluate` results with the finetune "
                         f"protocol, or an oof.json): {exc}") from None
    if probs.ndim != 1 or probs.shape != labels.shape:
        raise InputError(f"{path}: out-of-fold probabilities of one repeat are required (got shape {probs.shape})")
    return labels, probs, str(path)


def _entry(model_pt: dict[str, Any], key: str) -> Any:
    """A model.pt entry; fold models older than patient heads read as head ``mean``."""
    from .saved import stored_head

    return stored_head(model_pt) if key == "patient_head" else model_pt.get(key)


def read_fold_models(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The fold models of a `--keep-fold-models` folder, in fold order, checked for agreement.

    Raises:
        InputError: no fold models, unreadable ones, or members that disagree on architecture,
            preprocessing or class names (one line naming the first disagreeing member).
    """
    def fold_number(path: Path) -> int:
        return int("0" + "".join(c for c in path.parent.name if c.isdigit()))

    paths = sorted(folder.glob("fold*/model.pt"), key=fold_number)
    if not paths:
        raise InputError(f"{folder}: --ensemble needs the fold models of `evaluate --keep-fold-models` "
                         "(fold*/model.pt); none found")
    members = []
    for path in paths:
        try:
            members.append((path, torch.load(path, map_location="cpu", weights_only=True)))
        except (RuntimeError, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable fold model ({exc})") from None
    first_path, first = members[0]
    for path, m in members[1:]:
        for key in ("encoder_name", "preprocess", "class_names", "patient_head"):
            if _entry(m, key) != _entry(first, key):
                diff = key
                if key == "preprocess" and isinstance(m.get(key), dict) and isinstance(first.get(key), dict):
                    keys = sorted(set(m[key]) | set(first[key]))
                    diff = ", ".join(f"{k} {m[key].get(k)!r} vs {first[key].get(k)!r}"
                                     for k in keys if m[key].get(k) != first[key].get(k))
                raise InputError(f"{path}: ensemble members disagree on {key} ({diff}; reference {first_path}); "
                                 "all members must share architecture, patient head and preprocessing")
    return members


class EnsembleClassifier(nn.Module):
    """M fine-tuned models: (B, 1, H, W) slices -> (B, M) logits (SliceClassifiers) or (B, M, F)
    features (PatientClassifiers, each member's head reads its own column: ``patient_read``)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.encoder_name = getattr(members[0], "encoder_name", "")
        self.threshold = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=1)


def _probability_axis(read: Any, threshold: float, spec: dict[str, Any] | None, points: int = 201) -> dict[str, list]:
    """{"score": grid on the read's scale, "probability": the (calibrated) patient probability a
    patient scoring there would get}: the second axis of curve.png, which puts the slice reads,
    the patient score and its threshold on the calibrated probability's scale. The grid spans
    [0, 1] (probability scale) or the reads, score and threshold with a margin (logit scale)."""
    from .calibration import apply_calibration

    if read.scale == "probability":
        grid = np.linspace(0.0, 1.0, points)
        raw = grid
    else:
        values = np.concatenate([read.reads, [read.score, threshold]])
        grid = np.linspace(values.min() - 0.5, values.max() + 0.5, points)
        raw = 1.0 / (1.0 + np.exp(-grid))
    probability = apply_calibration(spec, raw) if spec else raw
    return {"score": [float(v) for v in grid], "probability": [float(v) for v in np.asarray(probability)]}


def summarise(read: Any, bundle: Any, order: np.ndarray) -> tuple[np.ndarray, float, float, int, dict[str, Any]]:
    """A patient's read -> (slice scores, patient probability, threshold, label, extra fields).

    Args:
        read: the ``patient_read.PatientRead`` of the bundle's members, slices in the order of
            ``prepare_ct``.
        bundle: the ModelBundle (its calibration and threshold).
        order: the order in which the prediction lists the slices (by z).

    Returns:
        slice scores (S,) = mean over members; probability = calibrated (if the bundle has a
        calibrator) raw patient probability; the threshold on that scale; the label (raw
        probability >= the bundle's threshold, as without calibration); and the extra fields of
        prediction.json: always "patient_head", "scale", "patient_score" (the patient's read on
        ``scale``: the mean of the slice reads), "threshold_on_scale" (the bundle's threshold
        there) and "probability_axis" (``_probability_axis``); "slice_attention" (z order) for
        the attention head;
        for an ensemble "n_members", "member_probabilities", "probability_min/max/std",
        "slice_min/max/std"; with a calibrator "raw_probability", "raw_threshold", "calibration".
    """
    from .calibration import apply_calibration
    from .patient_read import threshold_on_scale

    o = np.asarray(order)
    scores = read.member_slice_scores
    raw, member_p = float(read.probability), np.asarray(read.member_probabilities, dtype=np.float64)
    spec = bundle.meta.get("calibration") if isinstance(getattr(bundle, "meta", None), dict) else None
    threshold = float(bundle.threshold)
    extra: dict[str, Any] = {"patient_head": read.head, "scale": read.scale, "patient_score": read.score,
                             "threshold_on_scale": threshold_on_scale(threshold, read.scale)}
    extra["probability_axis"] = _probability_axis(read, extra["threshold_on_scale"], spec)
    if read.weights is not None:
        extra["slice_attention"] = [float(v) for v in read.weights[o]]
    probability = raw
    if spec:
        # A monotone map: calibrated P >= calibrated threshold exactly when raw P >= raw threshold
        # (up to isotonic ties, where the raw comparison decides), so the decision is unchanged.
        probability = float(apply_calibration(spec, raw))
        member_p = apply_calibration(spec, member_p)
        extra.update(raw_probability=raw, raw_threshold=threshold,
                     calibration={"method": spec["method"], "n_patients": spec.get("n_patients")})
        threshold = float(apply_calibration(spec, threshold))
    if scores.shape[1] > 1:
        extra.update(n_members=int(scores.shape[1]), member_probabilities=[float(v) for v in member_p],
                     probability_min=float(member_p.min()), probability_max=float(member_p.max()),
                     probability_std=float(member_p.std()),
                     slice_min=[float(v) for v in scores.min(axis=1)[o]],
                     slice_max=[float(v) for v in scores.max(axis=1)[o]],
                     slice_std=[float(v) for v in scores.std(axis=1)[o]])
    return read.slice_scores, probability, threshold, int(raw >= float(bundle.threshold)), extra


def spread_text(extra: dict[str, Any], probability: float) -> str:
    """'P = 0.62 (0.48-0.71 across 5 models)' for an ensemble, 'P = 0.62' otherwise."""
    text = f"P = {probability:.2f}"
    if extra.get("n_members", 1) > 1:
        text += f" ({extra['probability_min']:.2f}-{extra['probability_max']:.2f} across {extra['n_members']} models)"
    return text
