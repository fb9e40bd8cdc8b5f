"""Ensembles of the k fine-tuned fold models of `evaluate --keep-fold-models`.

`evaluate --keep-fold-models` writes, beside its results JSON, a folder ``<stem>.folds/``:

    fold0/model.pt ... fold{k-1}/model.pt   the fold models, in finetune's model.pt format
    oof.json                                {"patients", "labels", "test_fold", "oof_probability"}

`export --run <stem>.folds --ensemble` packs them into one bundle (model.pt holds
{"members": [{"encoder", "classifier"}, ...]}). At prediction time every member scores every
slice; the slice score is the members' mean, the patient probability the mean over slices (=
the mean of the members' patient probabilities), and the spread across members (min, max, std,
ddof=0) is reported per patient and per slice (`summarise`).
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
    """One fold's fine-tuned SliceClassifier as `folder/model.pt` (finetune's format)."""
    from ..files import save_torch_atomic
    from .heads import CLASS_NAMES

    folder.mkdir(parents=True, exist_ok=True)
    save_torch_atomic({
        "encoder_name": model.encoder_name,
        "encoder_state": {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()},
        "classifier_state": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
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
        for key in ("encoder_name", "preprocess", "class_names"):
            if m.get(key) != first.get(key):
                diff = key
                if key == "preprocess" and isinstance(m.get(key), dict) and isinstance(first.get(key), dict):
                    keys = sorted(set(m[key]) | set(first[key]))
                    diff = ", ".join(f"{k} {m[key].get(k)!r} vs {first[key].get(k)!r}"
                                     for k in keys if m[key].get(k) != first[key].get(k))
                raise InputError(f"{path}: ensemble members disagree on {key} ({diff}; reference {first_path}); "
                                 "all members must share architecture and preprocessing")
    return members


class EnsembleClassifier(nn.Module):
    """M SliceClassifiers: (B, 1, H, W) slices -> (B, M) logits, one column per member."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.encoder_name = getattr(members[0], "encoder_name", "")
        self.threshold = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=1)


def summarise(member_scores: np.ndarray, bundle: Any,
              order: np.ndarray) -> tuple[np.ndarray, float, float, int, dict[str, Any]]:
    """Members' slice scores -> (slice scores, patient probability, threshold, label, extra fields).

    Args:
        member_scores: (S,) or (S, M) sigmoid scores per slice (and member), slices in the
            order of `prepare_ct`.
        bundle: the ModelBundle (its calibration and threshold).
        order: the order in which the prediction lists the slices (by z).

    Returns:
        slice scores (S,) = mean over members; probability = calibrated (if the bundle has a
        calibrator) mean over slices; the threshold on that scale; the label (raw probability >=
        the bundle's threshold, as without calibration); and the extra fields of
        prediction.json ("n_members", "raw_probability", "member_probabilities",
        "probability_min/max/std", "slice_min/max/std", "calibration") -- empty for a
        single uncalibrated model, so its output stays as before.
    """
    from .calibration import apply_calibration

    scores = np.asarray(member_scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    slice_scores = scores.mean(axis=1)
    raw = float(slice_scores.mean())
    member_p = scores.mean(axis=0)  # each member's patient probability
    spec = bundle.meta.get("calibration") if isinstance(getattr(bundle, "meta", None), dict) else None
    threshold = float(bundle.threshold)
    extra: dict[str, Any] = {}
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
        o = np.asarray(order)
        extra.update(n_members=int(scores.shape[1]), member_probabilities=[float(v) for v in member_p],
                     probability_min=float(member_p.min()), probability_max=float(member_p.max()),
                     probability_std=float(member_p.std()),
                     slice_min=[float(v) for v in scores.min(axis=1)[o]],
                     slice_max=[float(v) for v in scores.max(axis=1)[o]],
                     slice_std=[float(v) for v in scores.std(axis=1)[o]])
    return slice_scores, probability, threshold, int(raw >= float(bundle.threshold)), extra


def spread_text(extra: dict[str, Any], probability: float) -> str:
    """'P = 0.62 (0.48-0.71 across 5 models)' for an ensemble, 'P = 0.62' otherwise."""
    text = f"P = {probability:.2f}"
    if extra.get("n_members", 1) > 1:
        text += f" ({extra['probability_min']:.2f}-{extra['probability_max']:.2f} across {extra['n_members']} models)"
    return text
