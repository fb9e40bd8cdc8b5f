"""Did each grid cell's pretraining learn? Monitor summaries and a position-aware weak-set probe.

Slice-level monitors (`monitors.py`) pool every slice of the liver. On the positional phantom the
stage shows only on slices in some bands of the position d, so a slice-level kNN of the weak label
over *all* slices stays near chance even for an encoder that represents the sign perfectly: most
slices carry no sign. The benchmark therefore adds a patient-level, position-aware view:

- ``weak_band_auc``: cross-validated AUC of a logistic probe predicting the weak reading
  "cirrhosis" (weak label 2 vs the rest) from the encoder's slice features averaged within
  position bands of d and concatenated (`protocols.band_pool`), on the held-out monitor patients
  of the weak set (never seen in pretraining). ``weak_mean_auc`` is the same probe on mean-pooled
  features.

These use weak labels only: the sigma of WSP / positional is chosen on them, never on histology.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..training.monitors import MONITOR_KEYS, split_monitor_patients

MONITOR_FRACTION = 0.2  # share of weak patients held out for the monitors in a benchmark
CIRRHOSIS_READING = 2  # weak class "cirrhosis"


def held_out_weak(weak: Sequence[Any]) -> list[Any]:
    """The weak patients pretraining holds out for its monitors (the split depends on the labels only)."""
    from ..training.pretrain import MONITOR_SEED  # the same held-out patients as the pretraining monitors

    labels = [int(p.weak_label) for p in weak]
    _, held = split_monitor_patients(labels, MONITOR_FRACTION, MONITOR_SEED)
    return [weak[i] for i in held]


def weak_probe(encoder_source: str | Path, arch: str, seed: int, patients: Sequence[Any], bands: int,
               device: Any = "cpu", batch_size: int = 64, n_boot: int = 500) -> dict[str, float]:
    """Cross-validated weak-label AUCs of the band-pooled and mean-pooled probes (with bootstrap CI of the former).

    Returns NaNs when the held-out patients lack a class or have fewer than 2 of one.
    """
    from ..evaluation.evaluate import _load_encoder
    from ..evaluation.protocols import patient_features, slice_features
    from ..evaluation.stats import cv_auc, n_folds

    y = np.array([int(p.weak_label) == CIRRHOSIS_READING for p in patients], dtype=int)
    nan = {"weak_band_auc": math.nan, "weak_band_lo": math.nan, "weak_band_hi": math.nan, "weak_mean_auc": math.nan}
    if n_folds(y, 5) < 2:
        return nan
    _, encoder = _load_encoder(encoder_source, arch, seed)
    feats = slice_features(encoder, patients, device, batch_size)
    band, lo, hi = cv_auc(patient_features("frozen_bands", feats, patients, bands), y, 5, seed, n_boot)
    mean, _, _ = cv_auc(patient_features("frozen", feats, patients, bands), y, 5, seed, n_boot)
    return {"weak_band_auc": band, "weak_band_lo": lo, "weak_band_hi": hi, "weak_mean_auc": mean}


def run_monitors(run_dir: Path) -> dict[str, float]:
    """First and last value of every pretraining monitor of a run (``<key>_first``, ``<key>_last``)."""
    from ..training.pretrain import monitor_summary

    out: dict[str, float] = {}
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return out
    for key, (first, last) in monitor_summary(Path(run_dir)).items():
        out[f"{key}_first"], out[f"{key}_last"] = float(first), float(last)
    return out


def cell_monitors(source: str | Path, cell: Any, held_out: Sequence[Any], bands: int, device: Any,
                  batch_size: int) -> dict[str, float]:
    """A cell's monitor summary: the pretraining run's monitors + the weak-set probes (random init too)."""
    values = {} if str(source) == "none" else run_monitors(Path(source))
    values.update(weak_probe(source, cell.encoder, cell.seed, held_out, bands, device, batch_size))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


__all__ = ["MONITOR_FRACTION", "MONITOR_KEYS", "held_out_weak", "weak_probe", "run_monitors", "cell_monitors"]
