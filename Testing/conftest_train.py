"""Helpers shared by the training tests: hand-made patients and a tiny synthetic cohort on disk."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from wsp_cirrhosis.cli import main


@dataclass
class FakePatient:
    """CachedPatient-like: (S, H, W) float32 slices in [0, 1], positions, labels."""

    patient_id: str
    slices: np.ndarray
    positions: np.ndarray
    weak_label: Optional[int]
    histo_label: Optional[int]


def fake_patients(n: int = 8, size: int = 32, n_classes: int = 3, seed: int = 0,
                  slices: tuple[int, int] = (4, 9)) -> list[FakePatient]:
    """`n` patients with 4-8 random slices each; weak label i % n_classes, histology i % 2."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = int(rng.integers(*slices))
        images = rng.random((s, size, size), dtype=np.float32)
        out.append(FakePatient(f"p{i:02d}", images, np.linspace(0, 1, s, dtype=np.float32), i % n_classes, i % 2))
    return out


def make_cohort(out: Path, patients: int = 8, histo_patients: int = 6, seed: int = 0) -> Path:
    """A synthetic cohort (phantoms of side 48) with weak.csv and histo.csv, via the CLI."""
    assert main(["synth", "--out", str(out), "--patients", str(patients), "--histo-patients", str(histo_patients),
                 "--cirrhosis-fraction", "0.5", "--size", "48", "--seed", str(seed)]) == 0
    return out


def rewrite_manifest(src: Path, dst: Path, **columns: object) -> Path:
    """A copy of manifest `src` at `dst` (same folder, so relative paths hold) with columns replaced."""
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.update({k: "" if v is None else str(v) for k, v in columns.items()})
    with open(dst, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dst


_COHORTS: dict[str, Path] = {}


def shared_cohort(tmp_path_factory) -> Path:
    """One synthetic cohort per test session (8 weak + 6 histology patients), reused by every module."""
    if "tiny" not in _COHORTS:
        _COHORTS["tiny"] = make_cohort(tmp_path_factory.mktemp("train-cohort") / "cohort")
    return _COHORTS["tiny"]


def run_states(run_dir: Path) -> dict:
    """Encoder and head state dicts of a run's checkpoint.pt, prefixed."""
    import torch

    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    return {**{f"encoder.{k}": v for k, v in ckpt["encoder"].items()},
            **{f"head.{k}": v for k, v in ckpt["head"].items()}}
