"""Synthetic phantom cohorts: labels, manifests and files (`wsp-cirrhosis synth`).

**These are phantoms, not patient data.** The anatomy and the three ways the latent fibrosis
stage can show (`--signs positional|global|none`) are in anatomy.py. This module draws each
patient's stage and labels, renders its phantom and writes the cohort folder.
The weak label is a noisy radiological reading of the stage; the histology label is stage == 4.
Same seed -> byte-identical files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..config import SynthConfig
from ..data.manifest import COLUMNS
from ..files import staged_output_dir, to_dict, write_json_atomic, write_text_atomic
from ..progress import track
from .anatomy import ORIENTATIONS, SIGNS, PhantomParams, draw_params, make_phantom, severity

log = logging.getLogger("wsp_cirrhosis")

WEAK_CLASS_NAMES = ("normal", "signs of fibrosis", "cirrhosis")
SETS = {"weak": 1, "histo": 2}  # part of each patient's seed, so the two sets never share a phantom
__all__ = ["ORIENTATIONS", "SIGNS", "PhantomParams", "draw_params", "make_phantom", "severity", "plan_cohort",
           "write_synthetic_cohort", "run_synth", "draw_stages", "read_weak_label"]


# ------------------------------------------------------------------ cohorts: labels, manifests, files


def read_weak_label(stage: int, rng: np.random.Generator, reader_noise: float = 0.85) -> int:
    """A radiologist's noisy reading: stage + N(0, reader_noise) binned at 1.5 / 3.5 into 0, 1, 2.

    Misreadings go mostly to the neighbouring class; reader_noise 0.85 misreads about 25% of a
    class-balanced cohort, 0 gives the true class (0: stage 0-1, 1: stage 2-3, 2: stage 4).
    """
    score = stage + reader_noise * rng.standard_normal()
    return int(np.searchsorted([1.5, 3.5], score))


def draw_stages(n: int, rng: np.random.Generator, kind: str, cirrhosis_fraction: float = 0.3) -> np.ndarray:
    """(n,) int stages in random order.

    kind "weak": the three true weak classes (stages 0-1, 2-3, 4) in equal numbers (+-1);
    kind "histo": round(cirrhosis_fraction * n) patients at stage 4, the rest uniform over 0..3.

    Raises:
        ValueError: unknown `kind`.
    """
    if kind == "weak":
        cls = np.arange(n) % 3
        stages = np.where(cls == 0, rng.integers(0, 2, n), np.where(cls == 1, rng.integers(2, 4, n), 4))
    elif kind == "histo":
        n_pos = int(round(cirrhosis_fraction * n))
        stages = np.concatenate([np.full(n_pos, 4), rng.integers(0, 4, n - n_pos)])
    else:
        raise ValueError(f"kind {kind!r}: choose 'weak' or 'histo'")
    return rng.permutation(stages).astype(int)


def plan_cohort(cfg: SynthConfig) -> list[dict]:
    """One dict per patient (set, index, patient_id, stage, weak_label, histo_label), weak set first."""
    reader_noise = cfg.reader_noise
    plan = []
    for name, n in (("weak", cfg.patients), ("histo", cfg.histo_patients)):
        rng = np.random.default_rng([cfg.seed, SETS[name]])
        for i, stage in enumerate(draw_stages(n, rng, name, cfg.cirrhosis_fraction)):
            plan.append({"set": name, "index": i, "patient_id": f"{cfg.id_prefix}{name}-{i:04d}", "stage": int(stage),
                         "weak_label": read_weak_label(int(stage), rng, reader_noise),
                         "histo_label": int(stage == 4) if name == "histo" else None})
    return plan


def write_synthetic_cohort(cfg: SynthConfig) -> Path:
    """Write the phantom cohort into `cfg.out` (staged: no partial folder on failure).

    Layout: images/<pid>.nii.gz (int16 HU), masks/<pid>.nii.gz (uint8, 1 = liver), weak.csv,
    histo.csv (columns patient_id,image,liver_mask,weak_label,histo_label; paths relative to the
    CSV), cohort.json (parameters, seed, per-patient stage and confounders), README.md.

    Raises:
        InputError: `cfg.out` exists and is not empty, and `cfg.force` is False.
    """
    plan = plan_cohort(cfg)
    with staged_output_dir(cfg.out, cfg.force) as stage_dir:
        for sub in ("images", "masks"):
            (stage_dir / sub).mkdir()
        for rec in track(plan, desc="synth"):
            rng = np.random.default_rng([cfg.seed, SETS[rec["set"]], rec["index"]])
            params = draw_params(rec["stage"], rng, cfg.signs)
            ct, mask = make_phantom(rec["stage"], rng, cfg.size, params=params)
            rec["image"], rec["liver_mask"] = f"images/{rec['patient_id']}.nii.gz", f"masks/{rec['patient_id']}.nii.gz"
            sitk.WriteImage(ct, str(stage_dir / rec["image"]), True)
            sitk.WriteImage(mask, str(stage_dir / rec["liver_mask"]), True)
            liver_slices = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask).any(axis=(1, 2))))
            rec["phantom"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(params).items()
                              if k != "stage"}
            rec["phantom"].update(n_slices=params.n_slices, liver_slices=liver_slices, severity=round(severity(rec["stage"]), 4),
                                  spacing_mm=[round(v, 4) for v in ct.GetSpacing()])
        for name in SETS:
            write_text_atomic(stage_dir / f"{name}.csv", _manifest_text([r for r in plan if r["set"] == name]))
        write_json_atomic(stage_dir / "cohort.json", _cohort_doc(cfg, plan))
        write_text_atomic(stage_dir / "README.md", _readme(cfg))
    return Path(cfg.out)


def _manifest_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r["patient_id"], r["image"], r["liver_mask"], r["weak_label"],
                         "" if r["histo_label"] is None else r["histo_label"]])
    return buf.getvalue()


def _cohort_doc(cfg: SynthConfig, plan: list[dict]) -> dict:
    summary = {}
    for name in SETS:
        rows = [r for r in plan if r["set"] == name]
        true_cls = [int(np.searchsorted([1.5, 3.5], r["stage"])) for r in rows]
        summary[name] = {
            "patients": len(rows),
            "stage_counts": [sum(r["stage"] == k for r in rows) for k in range(5)],
            "weak_label_counts": [sum(r["weak_label"] == k for r in rows) for k in range(3)],
            "weak_misread_fraction": round(float(np.mean([r["weak_label"] != c for r, c in zip(rows, true_cls)])), 4) if rows else None,
        }
        if name == "histo":
            summary[name]["histo_positive"] = sum(r["histo_label"] for r in rows)
    config = to_dict(cfg)
    config.pop("out", None)  # the folder name is not a parameter: same seed -> same bytes anywhere
    config.pop("force", None)
    return {
        "synthetic": True,
        "note": "Synthetic phantoms generated by wsp-cirrhosis synth: NOT patient data.",
        "generator": f"wsp_cirrhosis {__version__}",
        "seed": cfg.seed,
        "config": config,
        "weak_classes": list(WEAK_CLASS_NAMES),
        "summary": summary,
        "patients": [{k: v for k, v in r.items() if k != "index"} for r in plan],
    }


SIGNS_TEXT = {
    "positional": """Positional phantom (the default): the stage decides only WHERE a sign sits along the liver
(d = 0 inferior tip, 1 = dome), never how much of it a liver has. The sign is inward-only surface
nodularity (the liver's bounding box cannot grow): a share (stage/4)^3 of it sits at d 0.25-0.42;
the rest, plus a stage-independent extra, sits at d 0.58-0.75 as a decoy in every patient. A slice
detector that ignores position sees about the same nodules in every patient; whole-liver cues
(volume, extent, liver fraction of the crop) do not follow the stage.
Parenchymal heterogeneity, ascites (25% of patients) and splenomegaly are drawn independently of the
stage. Check any cohort with `wsp-cirrhosis audit --manifest histo.csv --out audit/`: on 300
histology patients at --size 64 the hand-made whole-patient cues stay at or below AUC 0.61, a
random-init encoder's mean-pooled probe reads 0.59-0.63, and the sign in its band (solidity at
d 0.2-0.4) reaches 0.91-0.95 (docs/benchmarks/audit.md in the repository). The probe is not 0.5:
compare methods against the random-init baseline, not against chance.""",
    "global": """Global phantom (a negative control that stays easy): magnitude grows with the stage everywhere.
- surface nodularity (all levels); heterogeneous parenchyma: septa around regenerative nodules, mottling;
- right-lobe atrophy with caudate and left-lobe hypertrophy (mid and superior liver);
- ascites (stage 3: 30% of patients, stage 4: 75%; perihepatic and paracolic, mostly inferior);
- splenomegaly.
Whole-liver cues give the stage away (the liver fraction of its bounding box reaches AUC 0.97 in
`wsp-cirrhosis audit`): no comparison of pretraining methods on it can show what slice position adds.""",
    "none": """Null phantom: the positional phantom with the sign's position drawn from a random stage, so the
latent stage has no effect on the images. Labels are still drawn from the stage: every method should
score AUC about 0.5 here; anything higher is a leak.""",
}


def _readme(cfg: SynthConfig) -> str:
    return f"""# Synthetic phantom cohort: NOT patient data

Written by `wsp-cirrhosis synth` (wsp_cirrhosis {__version__}), seed {cfg.seed}. Every CT here is a
parametric **phantom** of the upper abdomen with a liver mask. It exists to test and benchmark the
pipeline end to end; results on it say nothing about cirrhosis on real CT.

## Files
- `images/<patient_id>.nii.gz`: int16 CT in HU. `masks/<patient_id>.nii.gz`: uint8, 1 = liver.
  Some volumes are stored with flipped x/y and/or z axes; their direction cosines keep the physical
  (LPS) anatomy identical, so use physical space, never raw array order.
- `weak.csv`: {cfg.patients} weak-labelled patients (pretraining); `histo_label` empty.
- `histo.csv`: {cfg.histo_patients} other patients with a histology label (1 = cirrhosis, i.e. stage 4;
  {cfg.cirrhosis_fraction:.0%} positive) and a weak label too.
- `cohort.json`: the parameters, per-patient latent stage, labels and every confounder drawn.

## Labels
- Latent fibrosis stage 0..4. Weak label = a noisy radiological reading binned into
  0 normal (stage 0-1), 1 signs of fibrosis (2-3), 2 cirrhosis (4): stage + N(0, reader noise),
  thresholds 1.5 and 3.5, so misreadings go to the neighbouring class (about 25% at the default).
- Histology label = 1 iff stage == 4. Weak set: the three true classes in equal numbers;
  histology set: {cfg.cirrhosis_fraction:.0%} at stage 4, the rest uniform over stages 0-3.

## What the stage changes: `--signs {cfg.signs}`
{SIGNS_TEXT[cfg.signs]}

## Confounders, independent of the stage
noise 8-25 HU; HU offset +-20; contrast enhancement (liver 50-120 HU, vessels, spleen, kidneys,
aorta follow it); slice thickness 1.5-5 mm (30-80 slices); in-plane field of view 340-420 mm over
a {cfg.size} x {cfg.size} matrix; body size, fat thickness, position; natural lobe, spleen and
gallbladder sizes; stomach gas; storage orientation (LPS 40%, RAS 30%, LPI 20%, RAI 10%).

## Parameters
- `--patients {cfg.patients}`: weak-labelled patients; `--histo-patients {cfg.histo_patients}`: histology patients.
- `--cirrhosis-fraction {cfg.cirrhosis_fraction}`: share of stage-4 patients in the histology set.
- `--size {cfg.size}`: in-plane matrix; `--seed {cfg.seed}`: every draw derives from it
  (same seed, same files byte for byte).
- `--reader-noise {cfg.reader_noise}`: standard deviation of the weak reading around the stage.
- `--signs {cfg.signs}`: how the stage shows (positional, global, none; see above).
"""


def run_synth(cfg: SynthConfig) -> int:
    """`wsp-cirrhosis synth`: write the cohort and log a one-line summary; returns 0."""
    start = time.monotonic()
    out = write_synthetic_cohort(cfg)
    positives = sum(r["histo_label"] == 1 for r in plan_cohort(cfg))
    log.info("wrote %d weak + %d histology phantoms (%d with cirrhosis) to %s in %.1f s; synthetic, not patient data",
             cfg.patients, cfg.histo_patients, positives, out, time.monotonic() - start)
    return 0
