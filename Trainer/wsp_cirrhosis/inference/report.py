"""Prediction outputs: slices.csv, prediction.json, curve.png (and a cohort's summary.csv), and
`read_prediction`, which rebuilds a prediction from its prediction.json.

prediction.json fields beyond a single uncalibrated model's (absent otherwise, so old readers and
old files still match; README "prediction.json"):
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

from ..files import atomic_path, sha256_path, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from .scoring import PatientPrediction

SLICE_COLUMNS = ("slice_index", "z_mm", "position", "score")
SUMMARY_COLUMNS = ("patient_id", "probability", "label", "threshold", "n_slices", "error")
SPREAD_COLUMNS = ("score_min", "score_max", "score_std")
_PATIENT_EXTRA = ("n_members", "member_probabilities", "probability_min", "probability_max", "probability_std",
                  "raw_probability", "raw_threshold", "calibration", "saliency")


def _slice_spread(prediction: "PatientPrediction") -> dict[str, list[float]]:
    """{"score_min": [...], ...} per slice in z order for an ensemble, {} otherwise."""
    extra = getattr(prediction, "extra", None) or {}
    if "slice_min" not in extra:
        return {}
    return {"score_min": extra["slice_min"], "score_max": extra["slice_max"], "score_std": extra["slice_std"]}


def write_slices_csv(prediction: "PatientPrediction", path: str | os.PathLike) -> None:
    """One row per liver slice, ordered by z (inferior first): slice_index,z_mm,position,score."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    spread = _slice_spread(prediction)
    writer.writerow(SLICE_COLUMNS + (SPREAD_COLUMNS if spread else ()))
    for i, s in enumerate(sorted(prediction.slices, key=lambda s: s.z_mm)):
        extra = [f"{spread[k][i]:.6f}" for k in SPREAD_COLUMNS] if spread else []
        writer.writerow([s.slice_index, f"{s.z_mm:.4f}", f"{s.position:.6f}", f"{s.score:.6f}", *extra])
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
    spread = _slice_spread(p)
    slices = [{"slice_index": s.slice_index, "z_mm": s.z_mm, "position": s.position, "score": s.score,
               "center_lps": list(s.center_lps)} for s in sorted(p.slices, key=lambda s: s.z_mm)]
    for i, row in enumerate(slices):
        row.update({k: spread[k][i] for k in spread})
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
        slices = [SliceScore(int(s["slice_index"]), float(s["z_mm"]), float(s["position"]), float(s["score"]),
                             tuple(float(c) for c in s["center_lps"])) for s in record["slices"]]
        extra = {k: record[k] for k in _PATIENT_EXTRA if k in record}
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
    """curve.png: slice score along physical z, the decision threshold and the liver extent.

    Slice scores are drawn against the threshold for orientation only: the decision is on their
    mean, the patient probability, shown in the title and as a dashed line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = prediction
    slices = sorted(p.slices, key=lambda s: s.z_mm)
    z = [s.z_mm for s in slices]
    scores = [s.score for s in slices]
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if z:
        lo, hi = min(z), max(z)
        pad = max((hi - lo) * 0.05, 2.0)
        ax.axvspan(lo, hi, color="tab:brown", alpha=0.08, lw=0, label="liver extent")
        ax.set_xlim(lo - pad, hi + pad)
        spread = _slice_spread(p)
        n_members = (p.extra or {}).get("n_members", 1)
        if spread:  # the ensemble's band: lowest to highest member score on each slice
            ax.fill_between(z, spread["score_min"], spread["score_max"], color="tab:blue", alpha=0.18, lw=0,
                            label=f"range across {n_members} models")
        ax.plot(z, scores, "-o", color="tab:blue", ms=3, lw=1,
                label="slice score" + (f" (mean of {n_members} models)" if spread else ""))
        if hi > lo:  # d = 0 at the most inferior liver slice, 1 at the most superior
            top = ax.secondary_xaxis("top", functions=(lambda v: (v - lo) / (hi - lo), lambda d: lo + d * (hi - lo)))
            top.set_xlabel("position d in the liver (0 = inferior, 1 = superior)")
    ex = p.extra or {}
    if "raw_threshold" in ex:  # slice scores are uncalibrated: draw the decision on their scale
        ax.axhline(ex["raw_threshold"], color="tab:red", lw=1.2, label=f"threshold {ex['raw_threshold']:.2f} (uncalibrated)")
        ax.axhline(ex["raw_probability"], color="black", ls="--", lw=1,
                   label=f"mean slice score {ex['raw_probability']:.2f} (calibrated P {p.probability:.2f})")
    else:
        ax.axhline(p.threshold, color="tab:red", lw=1.2, label=f"threshold {p.threshold:.2f}")
        ax.axhline(p.probability, color="black", ls="--", lw=1, label=f"patient probability {p.probability:.2f}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("z (mm, LPS: inferior → superior)")
    ax.set_ylabel(f"P({p.class_names[-1]}) per slice")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small", framealpha=0.8)
    from ..models.ensemble import spread_text

    calibrated = " calibrated" if (p.extra or {}).get("calibration") else ""
    headline = spread_text(p.extra or {}, p.probability).replace("P =", f"P({p.class_names[-1]}){calibrated} =")
    # an ensemble's headline is long: the model name goes on a second line
    sep = "\n" if (p.extra or {}).get("n_members", 1) > 1 or calibrated else " — "
    ax.set_title(f"{headline} → {p.label_name} (threshold {p.threshold:.2f}){sep}model {p.model_name}",
                 fontsize="medium")
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
