"""Per-patient slice cache: memory-mapped .npy + .json keyed by content and parameter hash.

Training reads slices from here and never re-reads NIfTI/DICOM. An entry is rebuilt when the
image or mask bytes, the preprocessing parameters or the pipeline version change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .config import PreprocessCmdConfig, PreprocessConfig, to_dict
from .errors import InputError
from .files import atomic_path, sha256_path, write_json_atomic
from .manifest import PatientRecord, read_manifest
from .progress import track
from .slices import prepare_ct

log = logging.getLogger("wsp_cirrhosis")

# Bump when slices.py changes what it produces: every cache entry is then rebuilt.
PIPELINE_VERSION = 1


@dataclass
class CachedPatient:
    """One patient's preprocessed liver slices (memory-mapped) and labels."""

    patient_id: str
    slices: np.ndarray  # (S, H, W) float32 in [0, 1], read-only memmap
    positions: np.ndarray  # (S,) float32 d in [0, 1]
    weak_label: Optional[int]
    histo_label: Optional[int]
    z_mm: Optional[np.ndarray] = None  # (S,) physical z, mm


def default_cache_dir(manifest: str | Path) -> Path:
    """`.wsp-cache` beside the manifest."""
    return Path(manifest).resolve().parent / ".wsp-cache"


def _entry_name(patient_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", patient_id)[:80]
    return f"{safe}-{hashlib.sha256(patient_id.encode()).hexdigest()[:8]}"


class _HashMemo:
    """Content hashes remembered by (path, size, mtime) so unchanged inputs are not re-read."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.table = json.loads(path.read_text())
        except (OSError, ValueError):
            self.table = {}
        self.dirty = False

    def __call__(self, p: Path) -> str:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        stamp = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        hit = self.table.get(str(p))
        if hit and hit["stamp"] == stamp:
            return hit["sha256"]
        digest = sha256_path(p)
        self.table[str(p)] = {"stamp": stamp, "sha256": digest}
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            write_json_atomic(self.path, self.table)


def cache_patient(record: PatientRecord, cfg: PreprocessConfig, cache_dir: Path, memo: _HashMemo | None = None) -> CachedPatient:
    """Return the cached slices of one patient, building the entry if missing or stale."""
    memo = memo or _HashMemo(cache_dir / "hashes.json")
    params = to_dict(cfg)
    key = hashlib.sha256(json.dumps(
        {"image": memo(record.image), "mask": memo(record.liver_mask), "preprocess": params, "pipeline": PIPELINE_VERSION},
        sort_keys=True).encode()).hexdigest()
    base = cache_dir / _entry_name(record.patient_id)
    meta_path, npy_path = base.with_suffix(".json"), base.with_suffix(".npy")
    meta = _read_meta(meta_path)
    if meta is None or meta.get("key") != key or not npy_path.exists():
        liver = prepare_ct(record.image, record.liver_mask, cfg)
        with atomic_path(npy_path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, liver.slices)
        meta = {
            "key": key, "patient_id": record.patient_id, "image": str(record.image), "liver_mask": str(record.liver_mask),
            "preprocess": params, "pipeline": PIPELINE_VERSION, "shape": list(liver.slices.shape),
            "positions": liver.positions.tolist(), "z_mm": liver.z_mm.tolist(), "slice_index": liver.slice_index.tolist(),
        }
        write_json_atomic(meta_path, meta)  # written last: its key marks the entry complete
    slices = np.load(npy_path, mmap_mode="r")
    return CachedPatient(record.patient_id, slices, np.asarray(meta["positions"], np.float32),
                         record.weak_label, record.histo_label, np.asarray(meta["z_mm"], np.float64))


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_cohort(
    manifest: str | Path,
    cfg: PreprocessConfig,
    cache_dir: str | Path | None = None,
    require: str | None = None,
    skip_bad: bool = False,
) -> list[CachedPatient]:
    """Read a manifest and return every patient's cached slices (built on first use).

    Raises:
        InputError: bad manifest rows or unreadable patients (all listed), unless `skip_bad`.
    """
    records = read_manifest(manifest, require=require, skip_bad=skip_bad)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(manifest)
    cache_dir.mkdir(parents=True, exist_ok=True)
    memo = _HashMemo(cache_dir / "hashes.json")
    patients, failures = [], []
    try:
        for record in track(records, desc="preprocess"):
            try:
                patients.append(cache_patient(record, cfg, cache_dir, memo))
            except InputError as exc:
                failures.append(f"{record.patient_id}: {exc}")
    finally:
        memo.save()
    if failures:
        text = "\n  ".join(failures)
        if not skip_bad:
            raise InputError(f"{manifest}: {len(failures)} patient(s) could not be preprocessed:\n  {text}\n"
                             "fix them, or pass --skip-bad to leave them out")
        log.warning("%s: skipped %d patient(s):\n  %s", manifest, len(failures), text)
    if not patients:
        raise InputError(f"{manifest}: no patient could be preprocessed")
    return patients


def write_preview(patients: list[CachedPatient], path: str | Path, n_patients: int = 4,
                  positions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> Path:
    """PNG grid: a few patients (rows) at a few positions d (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = patients[:n_patients]
    fig, axes = plt.subplots(len(shown), len(positions), figsize=(2.0 * len(positions), 2.1 * len(shown)), squeeze=False)
    for row, p in zip(axes, shown):
        for ax, d in zip(row, positions):
            k = int(np.argmin(np.abs(p.positions - d)))
            ax.imshow(p.slices[k], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{p.patient_id} d={p.positions[k]:.2f}\nweak={p.weak_label} histo={p.histo_label}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def run_preprocess(cfg: PreprocessCmdConfig) -> int:
    """`wsp-cirrhosis preprocess`: build the cache of a cohort and write a preview PNG."""
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(cfg.manifest)
    patients = load_cohort(cfg.manifest, cfg.preprocess, cache_dir, skip_bad=cfg.skip_bad)
    n_slices = sum(len(p.slices) for p in patients)
    preview = write_preview(patients, cfg.preview or cache_dir / "preview.png")
    print(f"{len(patients)} patients, {n_slices} liver slices of {cfg.preprocess.image_size}x{cfg.preprocess.image_size} "
          f"cached in {cache_dir}\npreview: {preview}")
    return 0
