"""`wsp-cirrhosis audit`: can a cohort be solved by a shortcut? Cross-validated AUC of simple cues.

For every patient: liver volume, extent, slice count, spacing, scanner tags, liver fraction of
the crop, liver HU, texture and contour shape (whole patient and per band of slice position d),
and a random-init encoder's frozen features. Each cue's cross-validated patient-level AUC
against the label (logistic regression fitted inside the folds, so a cue's direction is never
read off the test patients) comes with a bootstrap 95% CI. A cue at AUC >= --warn-auc alone
solves the cohort: a benchmark on it cannot show what a method adds.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import AuditConfig
from ..data.manifest import read_manifest
from ..data.preprocess import load_cohort
from ..errors import InputError
from ..files import staged_output_dir, to_dict, write_json_atomic, write_text_atomic
from ..models.encoders import build_encoder
from ..models.features import pooled_features
from .audit_report import markdown_report, write_cue_plot
from .cues import DICOM_TAGS, N_BANDS, SLICE_CUES, VOLUME_CUES, band_label, patient_cues
from .stats import cv_auc, cv_scores, has_both_classes, n_folds

log = logging.getLogger("wsp_cirrhosis")
PROBE = "random_encoder_probe"


def binary_label(row: dict, label: str) -> int | None:
    """The audited 0/1 label of a patient row: histology, or weak reading 2 (cirrhosis) vs the rest."""
    if label == "histo":
        return row["histo_label"]
    return None if row["weak_label"] is None else int(row["weak_label"] == 2)


def cue_table(rows: list[dict], labels: np.ndarray, probe: np.ndarray | None, cfg: AuditConfig) -> list[dict]:
    """One entry per cue: name, scope (patient / band), description, cross-validated AUC and 95% CI."""
    cues: list[tuple[str, str, int | None, str, np.ndarray]] = []
    for name, text in VOLUME_CUES.items():
        cues.append((name, "patient", None, text, _column(rows, name)))
    for name in DICOM_TAGS:
        values = [r[name] for r in rows]
        if len(set(values)) > 1:  # one-hot: the scanner itself as a feature
            cats = sorted(set(values))
            cues.append((name, "patient", None, f"DICOM {name} ({len(cats)} values)",
                         np.array([[v == c for c in cats] for v in values], float)))
    for name, text in SLICE_CUES.items():
        cues.append((name, "patient", None, f"{text}; mean over slices", _column(rows, name)))
    if probe is not None:
        cues.append((PROBE, "patient", None, f"random-init {cfg.probe_arch}, mean-pooled frozen features "
                     f"({probe.shape[1]}), logistic regression", probe))
    for name, text in SLICE_CUES.items():
        for b in range(N_BANDS):
            cues.append((f"{name}@d{b}", "band", b, f"{text}; {band_label(b)}", _column(rows, f"{name}@d{b}")))
    table = []
    for name, scope, band, text, x in cues:
        auc, lo, hi = cv_auc(x, labels, cfg.folds, cfg.seed, cfg.boot)
        table.append({"cue": name, "scope": scope, "band": band, "description": text,
                      "auc": round(auc, 4), "ci95": [round(lo, 4), round(hi, 4)]})
    return table


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows], float)


def run_audit(cfg: AuditConfig) -> int:
    """Measure every cue, score it against the label when both classes are present, write the report."""
    records = {r.patient_id: r for r in read_manifest(cfg.manifest, skip_bad=cfg.skip_bad)}
    patients = load_cohort(cfg.manifest, cfg.preprocess, cfg.cache_dir, skip_bad=cfg.skip_bad)
    rows = [patient_cues(records[p.patient_id], p, cfg.preprocess) for p in patients]
    for row in rows:
        row["label"] = binary_label(row, cfg.label)
    scored = [i for i, r in enumerate(rows) if r["label"] is not None]
    labels = np.array([rows[i]["label"] for i in scored], int)
    n_pos, n_neg = int(labels.sum()), int(len(labels) - labels.sum())
    doc: dict = {
        "generator": f"wsp_cirrhosis {__version__}", "config": to_dict(cfg), "manifest": str(cfg.manifest),
        "synthetic": (Path(cfg.manifest).parent / "cohort.json").is_file(), "label": cfg.label,
        "patients": len(rows), "scored_patients": len(scored), "positive": n_pos, "negative": n_neg,
        "cues": [], "warnings": [], "message": "",
    }
    if has_both_classes(labels) and n_folds(labels, cfg.folds) >= 2:
        probe = None
        if not cfg.no_probe:
            torch.manual_seed(cfg.seed)  # the same random encoder for every run with this seed
            features = pooled_features(build_encoder(cfg.probe_arch).eval(), [patients[i] for i in scored], "cpu")
            probe = np.asarray(features, np.float64)
            oof = cv_scores(probe, labels, cfg.folds, cfg.seed)
            for i, score in zip(scored, oof):
                rows[i][PROBE] = round(float(score), 4)
        doc["cues"] = cue_table([rows[i] for i in scored], labels, probe, cfg)
        for cue in doc["cues"]:
            if cue["auc"] >= cfg.warn_auc:
                doc["warnings"].append(f"this cohort can be solved by {cue['cue']} alone: cross-validated AUC "
                                       f"{cue['auc']:.2f} (95% CI {cue['ci95'][0]:.2f}-{cue['ci95'][1]:.2f})")
    else:
        doc["message"] = (f"AUCs need both classes, at least 2 patients in each: {cfg.label} label has {n_pos} positive "
                          f"and {n_neg} negative of {len(rows)} patient(s); only the per-patient table is written")
        log.warning("%s", doc["message"])
    doc["per_patient"] = rows
    with staged_output_dir(cfg.out, cfg.force) as out:
        write_json_atomic(out / "audit.json", doc)
        write_text_atomic(out / "patients.csv", _patients_csv(rows))
        write_text_atomic(out / "audit.md", markdown_report(doc))
        write_cue_plot(rows, cfg.label, out / "cues.png", "synthetic phantom cohort" if doc["synthetic"] else "")
    for w in doc["warnings"]:
        log.warning("%s", w)
    print(_summary(doc, Path(cfg.out)))
    return 0


def _patients_csv(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def best_cue(doc: dict, scope: str) -> dict | None:
    """The cue of `scope` ("patient": whole-patient, "band": one position band) with the highest AUC, or None."""
    cues = [c for c in doc["cues"] if c["scope"] == scope]
    return max(cues, key=lambda c: c["auc"]) if cues else None


def _summary(doc: dict, out: Path) -> str:
    if not doc["cues"]:
        return f"{doc['message']}\nper-patient table: {out / 'patients.csv'}"
    best_p, best_b = best_cue(doc, "patient"), best_cue(doc, "band")
    return (f"{doc['patients']} patients ({doc['positive']} positive): best whole-patient cue {best_p['cue']} "
            f"AUC {best_p['auc']:.2f}, best band cue {best_b['cue']} AUC {best_b['auc']:.2f}; "
            f"{len(doc['warnings'])} warning(s); report: {out / 'audit.md'}")


def load_audit(path: str | Path) -> dict:
    """Read an audit.json back (used by the benchmark script and tests).

    Raises:
        InputError: unreadable file.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read audit ({exc})") from None
