"""Prediction outputs: slices.csv, prediction.json, curve.png (and a cohort's summary.csv), and
`read_prediction`, which rebuilds a prediction from its prediction.json.

prediction.json, every prediction (README "prediction.json"):
  patient_head                   mean (the paper's read), bands or attention
  scale                          probability (head mean) or logit (bands, attention): the scale
                                 of patient_score, threshold_on_scale and slices[i].read
  patient_score                  the patient's read on that scale (uncalibrated P, or the logit)
  threshold_on_scale             the decision threshold there (label 1 when patient_score >= it)
  slices[i].contribution         the slice's share of patient_score (they sum to it)
  slices[i].read                 n_slices x contribution (their mean is patient_score): the curve
  slices[i].attention            the attention weight of the slice (attention head only)
  probability_axis               {"score": [...], "probability": [...]}: the (calibrated) patient
                                 probability at points of the scale (curve.png's right axis)
Fields beyond a single uncalibrated model's (absent otherwise):
  n_members                      members of an ensemble bundle (absent = 1)
  member_probabilities           each member's patient probability (calibrated when the bundle is)
  probability_min/max/std        spread of member_probabilities (std: ddof=0)
  slices[i].score_min/max/std    spread of the members' scores on that slice (slice scores are
                                 never calibrated: the calibrator is fitted on patient probabilities)
  raw_probability, raw_threshold uncalibrated mean slice score and the bundle's threshold on it
  calibration                    {"method", "n_patients"} of the bundle's calibrator
  saliency                       file names of saliency.nii.gz / saliency.png (predict --saliency)

Every writer takes a `PatientPrediction` and a path; nothing here runs a model. The plot uses
matplotlib's object API with the Agg canvas, so it never touches a GUI backend (Slicer, servers).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np

from ..files import atomic_path, sha256_path, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from .scoring import PatientPrediction

SLICE_COLUMNS = ("slice_index", "z_mm", "position", "score", "contribution", "read")
SUMMARY_COLUMNS = ("patient_id", "probability", "label", "threshold", "n_slices", "error")
SPREAD_COLUMNS = ("score_min", "score_max", "score_std")
_PATIENT_EXTRA = ("patient_head", "scale", "patient_score", "threshold_on_scale", "probability_axis", "n_members", "member_probabilities", "probability_min", "probability_max", "probability_std",
                  "raw_probability", "raw_threshold", "calibration", "saliency")


def _slice_spread(prediction: "PatientPrediction") -> dict[str, list[float]]:
    """{"score_min": [...], ...} per slice in z order for an ensemble, {} otherwise."""
    extra = getattr(prediction, "extra", None) or {}
    if "slice_min" not in extra:
        return {}
    return {"score_min": extra["slice_min"], "score_max": extra["slice_max"], "score_std": extra["slice_std"]}


def _attention(prediction: "PatientPrediction") -> list[float] | None:
    return (getattr(prediction, "extra", None) or {}).get("slice_attention")


def write_slices_csv(prediction: "PatientPrediction", path: str | os.PathLike) -> None:
    """One row per liver slice, ordered by z (inferior first):
    slice_index,z_mm,position,score,contribution,read[,attention][,score_min,score_max,score_std]."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    spread, attention = _slice_spread(prediction), _attention(prediction)
    writer.writerow(SLICE_COLUMNS + (("attention",) if attention else ()) + (SPREAD_COLUMNS if spread else ()))
    n = prediction.n_slices
    for i, s in enumerate(sorted(prediction.slices, key=lambda s: s.z_mm)):
        extra = [f"{attention[i]:.6f}"] if attention else []
        extra += [f"{spread[k][i]:.6f}" for k in SPREAD_COLUMNS] if spread else []
        writer.writerow([s.slice_index, f"{s.z_mm:.4f}", f"{s.position:.6f}", f"{s.score:.6f}",
                         f"{s.contribution:.6g}", f"{n * s.contribution:.6f}", *extra])
    write_text_atomic(path, buf.getvalue())


def prediction_record(
    prediction: "PatientPrediction",
    image_path: Optional[str | os.PathLike] = None,
    mask_path: Optional[str | os.PathLike] = None,
    image_sha256: Optional[str] = None,
    mask_sha256: Optional[str] = None,
) -> dict[str, Any]:
    """The JSON-ready content of prediction.json (result, model, inputs, versions, timings)."""
    from ..provenance import software_versions

    p = prediction
    spread, attention = _slice_spread(p), _attention(p)
    slices = [{"slice_index": s.slice_index, "z_mm": s.z_mm, "position": s.position, "score": s.score,
               "contribution": s.contribution, "read": p.n_slices * s.contribution,
               "center_lps": list(s.center_lps)} for s in sorted(p.slices, key=lambda s: s.z_mm)]
    for i, row in enumerate(slices):
        row.update({k: spread[k][i] for k in spread})
        if attention:
            row["attention"] = attention[i]
    extra = {k: p.extra[k] for k in _PATIENT_EXTRA if k in (getattr(p, "extra", None) or {})}
    return {
        "probability": p.probability,
        "label": p.label,
        "threshold": p.threshold,
        "label_name": p.label_name,
        "class_names": list(p.class_names),
        "n_slices": p.n_slices,
        "model": {"name": p.model_name, "sha256": p.model_sha256},
        "inputs": {
            "image": str(image_path) if image_path is not None else None,
            "image_sha256": image_sha256,
            "liver_mask": str(mask_path) if mask_path is not None else None,
            "liver_mask_sha256": mask_sha256,
        },
        "device": p.device,
        # Full precision (JSON floats round-trip exactly): read_prediction rebuilds the prediction.
        "slices": slices,
        **extra,
        "timings_s": {k: round(v, 4) for k, v in p.timings.items()},
        "software": software_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_prediction(path: str | os.PathLike) -> "PatientPrediction":
    """The PatientPrediction stored in a prediction.json (what another process computed).

    Raises:
        InputError: unreadable file, or a prediction.json without the per-slice results.
    """
    from ..errors import InputError
    from .scoring import PatientPrediction, SliceScore

    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        n = len(record["slices"])
        # files older than patient heads: head mean, whose contribution is the slice score / S
        slices = [SliceScore(int(s["slice_index"]), float(s["z_mm"]), float(s["position"]), float(s["score"]),
                             tuple(float(c) for c in s["center_lps"]), float(s.get("contribution", float(s["score"]) / n)))
                  for s in record["slices"]]
        extra = {k: record[k] for k in _PATIENT_EXTRA if k in record}
        if record["slices"] and "attention" in record["slices"][0]:
            extra["slice_attention"] = [float(s["attention"]) for s in record["slices"]]
        if record["slices"] and "score_min" in record["slices"][0]:
            extra.update({f"slice_{k[6:]}": [float(s[k]) for s in record["slices"]] for k in SPREAD_COLUMNS})
        return PatientPrediction(
            probability=float(record["probability"]), label=int(record["label"]), label_name=str(record["label_name"]),
            threshold=float(record["threshold"]), model_name=str(record["model"]["name"]),
            model_sha256=str(record["model"]["sha256"]), device=str(record["device"]), slices=slices,
            class_names=tuple(record["class_names"]), timings=dict(record.get("timings_s", {})), extra=extra)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a readable prediction.json with per-slice results ({exc})") from None


def write_prediction_json(prediction: "PatientPrediction", path: str | os.PathLike, **inputs: Any) -> None:
    """prediction.json; `inputs` are `prediction_record`'s path and hash arguments."""
    write_json_atomic(path, prediction_record(prediction, **inputs))


def plot_curve(prediction: "PatientPrediction", path: str | os.PathLike, dpi: int = 120) -> None:
    """curve.png: each slice's read along physical z, the patient score, its threshold, the liver extent.

    One scale: the slice reads (n_slices x contribution: the slice probability for head mean, a
    share of the patient logit for the position-aware heads) have the patient score as their
    mean, and the decision is patient score >= threshold, both drawn on the same axis. When that
    scale is not the reported probability's (a logit, or a calibrated bundle), the right axis
    gives the patient probability a patient scoring there would get.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = prediction
    ex = p.extra or {}
    logit = p.scale == "logit"
    calibrated = " calibrated" if ex.get("calibration") else ""
    slices = sorted(p.slices, key=lambda s: s.z_mm)
    z = [s.z_mm for s in slices]
    reads = p.slice_reads
    fig = Figure(figsize=(8.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if z:
        lo, hi = min(z), max(z)
        pad = max((hi - lo) * 0.05, 2.0)
        ax.axvspan(lo, hi, color="tab:brown", alpha=0.08, lw=0, label="liver extent")
        ax.set_xlim(lo - pad, hi + pad)
        spread = _slice_spread(p)
        n_members = ex.get("n_members", 1)
        if spread and not logit:  # the ensemble's band: lowest to highest member score on each slice
            ax.fill_between(z, spread["score_min"], spread["score_max"], color="tab:blue", alpha=0.18, lw=0,
                            label=f"range across {n_members} models")
        what = f"slice read ({p.patient_head} head: share of the patient logit x {p.n_slices})" if logit \
            else "slice score"
        ax.plot(z, reads, "-o", color="tab:blue", ms=3, lw=1,
                label=what + (f", mean of {n_members} models" if n_members > 1 else ""))
        if hi > lo:  # d = 0 at the most inferior liver slice, 1 at the most superior
            top = ax.secondary_xaxis("top", functions=(lambda v: (v - lo) / (hi - lo), lambda d: lo + d * (hi - lo)))
            top.set_xlabel("position d in the liver (0 = inferior, 1 = superior)")
    name = p.class_names[-1]
    ax.axhline(p.score_threshold, color="tab:red", lw=1.2,
               label=f"threshold (P{calibrated} = {p.threshold:.2f})")
    ax.axhline(p.patient_score, color="black", ls="--", lw=1,
               label=f"patient: mean of the slice {'reads' if logit else 'scores'} (P{calibrated} = {p.probability:.2f})")
    axis = ex.get("probability_axis")
    if logit and axis:
        ax.set_ylim(axis["score"][0], axis["score"][-1])
    else:
        ax.set_ylim(-0.02, 1.02)
    if axis and (logit or calibrated):
        right = ax.twinx()
        right.set_ylim(ax.get_ylim())
        # round probabilities, placed where the (monotone) map reaches them
        probs = np.maximum.accumulate(np.asarray(axis["probability"], dtype=float))
        y_lo, y_hi = ax.get_ylim()
        ticks: list[tuple[float, str]] = []
        for q in (0.5, 0.25, 0.75, 0.1, 0.9, 0.05, 0.95, 0.01, 0.99):  # the most telling first
            y = float(np.interp(q, probs, axis["score"]))
            if probs[0] <= q <= probs[-1] and all(abs(y - t) > 0.05 * (y_hi - y_lo) for t, _ in ticks):
                ticks.append((y, f"{q:g}"))  # labels closer than 5% of the axis would overlap
        right.set_yticks([t for t, _ in ticks], [label for _, label in ticks])
        right.set_ylabel(f"patient P({name}){calibrated} at this level")
    ax.set_xlabel("z (mm, LPS: inferior → superior)")
    ax.set_ylabel("patient logit scale" if logit else f"P({name}), uncalibrated" if calibrated else f"P({name})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small", framealpha=0.8)
    from ..models.ensemble import spread_text

    headline = spread_text(ex, p.probability).replace("P =", f"P({name}){calibrated} =")
    ax.set_title(f"{headline} → {p.label_name} (threshold {p.threshold:.2f})\nmodel {p.model_name}, "
                 f"patient head {p.patient_head}", fontsize="medium")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def write_patient_outputs(
    folder: str | os.PathLike,
    prediction: "PatientPrediction",
    image_path: Optional[str | os.PathLike] = None,
    mask_path: Optional[str | os.PathLike] = None,
) -> Path:
    """Write slices.csv, curve.png and prediction.json (inputs hashed) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_slices_csv(prediction, folder / "slices.csv")
    plot_curve(prediction, folder / "curve.png")
    prediction.timings["write_s"] = time.perf_counter() - start
    start = time.perf_counter()
    hashes = {
        "image_sha256": sha256_path(image_path) if image_path is not None else None,
        "mask_sha256": sha256_path(mask_path) if mask_path is not None else None,
    }
    prediction.timings["hash_s"] = time.perf_counter() - start
    write_prediction_json(prediction, folder / "prediction.json", image_path=image_path, mask_path=mask_path, **hashes)
    return folder


def write_summary_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> None:
    """A cohort's summary.csv: one row per patient; failed patients have only `error` filled."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        out = {k: row.get(k, "") for k in SUMMARY_COLUMNS}
        if isinstance(out["probability"], float):
            out["probability"] = f"{out['probability']:.6f}"
        if isinstance(out["threshold"], float):
            out["threshold"] = f"{out['threshold']:.6f}"
        out["error"] = " ".join(str(out["error"]).split())  # one line per patient
        writer.writerow(out)
    write_text_atomic(path, buf.getvalue())
