"""`wsp-cirrhosis preprocess` and cohort loading: a manifest -> every patient's cached liver slices.

Missing or stale cache entries (`cache.py`) are built by the worker pool (`pool.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import PreprocessCmdConfig, PreprocessConfig
from ..errors import InputError
from ..files import atomic_path
from .cache import CachedPatient, HashMemo, default_cache_dir, fresh_meta, open_entry
from .manifest import read_manifest

log = logging.getLogger("wsp_cirrhosis")


def load_cohort(
    manifest: str | Path,
    cfg: PreprocessConfig,
    cache_dir: str | Path | None = None,
    require: str | None = None,
    skip_bad: bool = False,
    workers: int | str | None = 1,
    shard_ranks: bool = False,
) -> list[CachedPatient]:
    """Read a manifest and return every patient's cached slices (built on first use).

    Missing or stale entries are built by `workers` processes (0: one per CPU core, shared by the
    ranks of a machine; None or "auto": a pool only when the first patient's time says it pays). With `shard_ranks` in an initialised process group (torchrun),
    every rank must call this at the same time: each builds its share of the manifest, then all
    wait for the whole cache. Without it each caller builds what it finds missing (the pattern
    "rank 0 first, barrier, then the others" stays valid).

    Raises:
        InputError: bad manifest rows or unreadable patients (all listed), unless `skip_bad`.
    """
    from .pool import build_cohort_cache

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
    from ..distributed import cleanup_distributed, init_distributed, is_rank_zero

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
