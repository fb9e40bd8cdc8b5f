"""Per-patient slice cache: memory-mapped .npy + .json keyed by content and parameter hash.

Training reads slices from here and never re-reads NIfTI/DICOM. An entry is rebuilt when the
image or mask bytes, the preprocessing parameters or the pipeline version change.

Building is parallel (`pool.py`): a process pool on one machine, and under torchrun each
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

from ..config import PreprocessConfig
from ..files import atomic_path, sha256_path, to_dict, write_json_atomic
from .manifest import PatientRecord
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
