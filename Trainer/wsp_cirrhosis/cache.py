"""Per-patient slice cache: memory-mapped .npy + .json keyed by content and parameter hash.

Training reads slices from here and never re-reads NIfTI/DICOM. An entry is rebuilt when the
image or mask bytes, the preprocessing parameters or the pipeline version change.

Building is parallel (`cache_pool.py`): a process pool on one machine, and under torchrun each
rank builds its share of the manifest; every rank then waits for the whole cache. An entry's
bytes do not depend on which process built it.
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


class HashMemo:
    """Content hashes remembered by (path, size, mtime) so unchanged inputs are not re-read."""

    def __init__(self, path: Path | None, table: dict | None = None):
        self.path = path
        if table is not None:
            self.table = table
        else:
            try:
                self.table = json.loads(path.read_text()) if path is not None else {}
            except (OSError, ValueError):
                self.table = {}
        self.dirty = False

    @staticmethod
    def _stamp(p: Path) -> list:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]

    def known(self, p: Path) -> str | None:
        """The remembered hash of `p` if its files are unchanged, else None (nothing is read)."""
        hit = self.table.get(str(p))
        try:
            return hit["sha256"] if hit and hit["stamp"] == self._stamp(p) else None
        except OSError:
            return None

    def __call__(self, p: Path) -> str:
        digest = self.known(p)
        if digest is not None:
            return digest
        digest = sha256_path(p)
        self.table[str(p)] = {"stamp": self._stamp(p), "sha256": digest}
        self.dirty = True
        return digest

    def subset(self, *paths: Path) -> dict:
        """The entries of `paths` (handed to a worker process)."""
        return {str(p): self.table[str(p)] for p in paths if str(p) in self.table}

    def update(self, entries: dict) -> None:
        """Merge entries computed elsewhere (a worker, another rank)."""
        for k, v in entries.items():
            if self.table.get(k) != v:
                self.table[k] = v
                self.dirty = True

    def save(self) -> None:
        if self.dirty and self.path is not None:
            # sorted keys: the file does not depend on the order in which workers finished
            write_json_atomic(self.path, dict(sorted(self.table.items())))


def _entry_paths(cache_dir: Path, patient_id: str) -> tuple[Path, Path]:
    base = cache_dir / _entry_name(patient_id)
    return base.with_suffix(".json"), base.with_suffix(".npy")


def entry_key(record: PatientRecord, cfg: PreprocessConfig, image_sha: str, mask_sha: str) -> str:
    """The content key of a cache entry: input bytes, preprocessing parameters, pipeline version."""
    return hashlib.sha256(json.dumps(
        {"image": image_sha, "mask": mask_sha, "preprocess": to_dict(cfg), "pipeline": PIPELINE_VERSION},
        sort_keys=True).encode()).hexdigest()


def fresh_meta(record: PatientRecord, cfg: PreprocessConfig, cache_dir: Path, memo: HashMemo,
               hash_inputs: bool = True) -> dict | None:
    """The entry's metadata when it is complete and current, else None.

    With `hash_inputs` False, inputs whose hash is not remembered count as stale (nothing is read).
    """
    digests = [memo(p) if hash_inputs else memo.known(p) for p in (record.image, record.liver_mask)]
    if None in digests:
        return None
    meta_path, npy_path = _entry_paths(cache_dir, record.patient_id)
    meta = _read_meta(meta_path)
    key = entry_key(record, cfg, *digests)
    return meta if meta is not None and meta.get("key") == key and npy_path.exists() else None


def open_entry(record: PatientRecord, meta: dict, cache_dir: Path) -> CachedPatient:
    """Memory-map a complete entry."""
    slices = np.load(_entry_paths(cache_dir, record.patient_id)[1], mmap_mode="r")
    return CachedPatient(record.patient_id, slices, np.asarray(meta["positions"], np.float32),
                         record.weak_label, record.histo_label, np.asarray(meta["z_mm"], np.float64))


def build_entry(record: PatientRecord, cfg: PreprocessConfig, cache_dir: Path, memo: HashMemo) -> dict:
    """Build one patient's entry if missing or stale; return its metadata.

    Raises:
        InputError: unreadable or inconsistent image / mask.
    """
    params = to_dict(cfg)
    key = entry_key(record, cfg, memo(record.image), memo(record.liver_mask))
    meta_path, npy_path = _entry_paths(cache_dir, record.patient_id)
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
    return meta


def cache_patient(record: PatientRecord, cfg: PreprocessConfig, cache_dir: Path, memo: HashMemo | None = None) -> CachedPatient:
    """Return the cached slices of one patient, building the entry if missing or stale."""
    memo = memo or HashMemo(cache_dir / "hashes.json")
    return open_entry(record, build_entry(record, cfg, cache_dir, memo), cache_dir)


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
    workers: int | None = 1,
    shard_ranks: bool = False,
) -> list[CachedPatient]:
    """Read a manifest and return every patient's cached slices (built on first use).

    Missing or stale entries are built by `workers` processes (None or 0: one per CPU core, shared
    by the ranks of a machine). With `shard_ranks` in an initialised process group (torchrun),
    every rank must call this at the same time: each builds its share of the manifest, then all
    wait for the whole cache. Without it each caller builds what it finds missing (the pattern
    "rank 0 first, barrier, then the others" stays valid).

    Raises:
        InputError: bad manifest rows or unreadable patients (all listed), unless `skip_bad`.
    """
    from .cache_pool import build_cohort_cache

    records = read_manifest(manifest, require=require, skip_bad=skip_bad)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(manifest)
    cache_dir.mkdir(parents=True, exist_ok=True)
    memo = HashMemo(cache_dir / "hashes.json")
    failed = build_cohort_cache(records, cfg, cache_dir, memo, workers, shard_ranks)
    patients, failures = [], []
    for record in records:
        if record.patient_id in failed:
            failures.append(f"{record.patient_id}: {failed[record.patient_id]}")
            continue
        meta = fresh_meta(record, cfg, cache_dir, memo)
        if meta is None:  # another process changed an input meanwhile
            failures.append(f"{record.patient_id}: cache entry missing after preprocessing (input changed?)")
            continue
        patients.append(open_entry(record, meta, cache_dir))
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
    """`wsp-cirrhosis preprocess`: build the cache of a cohort and write a preview PNG.

    Under torchrun each rank builds its share of the manifest (gloo, CPU); rank 0 reports.
    """
    from .distributed import cleanup_distributed, init_distributed, is_rank_zero

    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(cfg.manifest)
    init_distributed("cpu")
    try:
        patients = load_cohort(cfg.manifest, cfg.preprocess, cache_dir, skip_bad=cfg.skip_bad, workers=cfg.workers,
                               shard_ranks=True)
        if not is_rank_zero():
            return 0
        n_slices = sum(len(p.slices) for p in patients)
        preview = write_preview(patients, cfg.preview or cache_dir / "preview.png")
        print(f"{len(patients)} patients, {n_slices} liver slices of {cfg.preprocess.image_size}x{cfg.preprocess.image_size} "
              f"cached in {cache_dir}\npreview: {preview}")
        return 0
    finally:
        cleanup_distributed()
