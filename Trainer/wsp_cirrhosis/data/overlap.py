"""Disjoint sets: no histology (evaluation) patient may also be in the weak (pretraining) set.

A patient is shared when its patient_id appears in both manifests, or when its CT has the same
content hash (SHA-256 of the file, or of every file of a DICOM series folder) as a weak-set CT,
whatever the ids. The hashes come from the slice cache's memo (`<cache>/hashes.json`), so
inputs the cache already read are not read again. An overlap is refused (InputError, exit 2)
with the list of patients, unless the caller allows it; then the list is returned so it can be
recorded in the results.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from .cache import HashMemo, default_cache_dir
from .manifest import PatientRecord, read_manifest

log = logging.getLogger("wsp_cirrhosis")
SHOWN = 10  # patients named in the error message; the rest are counted


def image_hashes(records: Sequence[PatientRecord], cache_dir: Path) -> dict[str, str]:
    """{patient_id: content hash of its CT}, reusing (and updating) the cache's hash memo."""
    memo = HashMemo(Path(cache_dir) / "hashes.json")
    missing = [str(r.image) for r in records if not Path(r.image).exists()]
    if missing:  # two missing files would share the hash of nothing
        raise InputError(f"{missing[0]}: image not found" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    hashes = {r.patient_id: memo(Path(r.image)) for r in records}
    if Path(cache_dir).is_dir():  # remember new hashes only where a cache already lives
        memo.save()
    return hashes


def find_overlap(weak: Sequence[PatientRecord], histo: Sequence[PatientRecord],
                 weak_hashes: dict[str, str], histo_hashes: dict[str, str]) -> list[dict]:
    """Histology patients shared with the weak set: [{patient_id, weak_patient_id, by}], in histology order."""
    weak_ids = {r.patient_id for r in weak}
    by_hash: dict[str, str] = {}
    for r in weak:
        by_hash.setdefault(weak_hashes[r.patient_id], r.patient_id)
    shared = []
    for r in histo:
        twin = by_hash.get(histo_hashes[r.patient_id])
        by = (["patient_id"] if r.patient_id in weak_ids else []) + (["image content"] if twin is not None else [])
        if by:
            shared.append({"patient_id": r.patient_id, "weak_patient_id": twin or r.patient_id, "by": " and ".join(by)})
    return shared


def _listed(shared: list[dict]) -> str:
    """The first SHOWN shared patients of `find_overlap`, named with why (and their twin when the ids differ)."""
    return ", ".join(f"{s['patient_id']} (same {s['by']}" + ("" if s["weak_patient_id"] == s["patient_id"]
                                                        else f" as {s['weak_patient_id']}") + ")" for s in shared[:SHOWN])


def check_disjoint(weak: Sequence[PatientRecord], histo: Sequence[PatientRecord], weak_cache_dir: Path,
                   histo_cache_dir: Path, allow_overlap: bool = False, weak_name: str = "weak set") -> list[dict]:
    """Refuse histology patients that are in the weak set; return the overlap (empty when disjoint).

    Raises:
        InputError: an overlap and not `allow_overlap`; the message lists the patients.
    """
    shared = find_overlap(weak, histo, image_hashes(weak, weak_cache_dir), image_hashes(histo, histo_cache_dir))
    if not shared:
        return []
    listed, more = _listed(shared), f" and {len(shared) - SHOWN} more" if len(shared) > SHOWN else ""
    if not allow_overlap:
        raise InputError(f"{len(shared)} histology patient(s) are also in the {weak_name} used for pretraining: "
                         f"{listed}{more}; remove them, or pass --allow-overlap (recorded in the results)")
    log.warning("--allow-overlap: %d histology patient(s) also in the %s: %s%s", len(shared), weak_name, listed, more)
    return shared


def check_manifests(weak_manifest: str | Path, histo_manifest: str | Path, weak_cache_dir: Path | None = None,
                    histo_cache_dir: Path | None = None, allow_overlap: bool = False) -> list[dict]:
    """`check_disjoint` on two manifest files (cache folders default to .wsp-cache beside each manifest).

    Raises:
        InputError: an overlap (unless allowed), or an unreadable manifest.
    """
    weak, histo = read_manifest(weak_manifest), read_manifest(histo_manifest)
    return check_disjoint(weak, histo, Path(weak_cache_dir or default_cache_dir(weak_manifest)),
                          Path(histo_cache_dir or default_cache_dir(histo_manifest)), allow_overlap,
                          weak_name=f"weak set {weak_manifest}")


def check_run_overlap(encoder_source: str | Path, histo_manifest: str | Path, histo_cache_dir: Path | None = None,
                      allow_overlap: bool = False) -> dict:
    """`evaluate`: the histology set against the weak set the encoder was pretrained on.

    Returns {"checked": bool, "weak_manifest": str | None, "overlap": [...]} for the results;
    nothing to check for a random-init encoder ("none"); a run whose weak manifest cannot be found
    any more is logged and recorded as unchecked.

    Raises:
        InputError: an overlap and not `allow_overlap`.
    """
    if str(encoder_source).lower() == "none":
        return {"checked": False, "weak_manifest": None, "overlap": [], "reason": "random-init encoder: no weak set"}
    run_dir = Path(encoder_source)
    try:
        cfg = json.loads((run_dir / "config.json").read_text())["config"]
        weak_manifest = Path(cfg["manifest"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: no config.json with the pretraining manifest; weak/histology overlap not checked", run_dir)
        return {"checked": False, "weak_manifest": None, "overlap": [], "reason": "run has no readable config.json"}
    if not weak_manifest.is_file():
        log.warning("%s: pretraining manifest %s not found; weak/histology overlap not checked", run_dir, weak_manifest)
        return {"checked": False, "weak_manifest": str(weak_manifest), "overlap": [], "reason": "weak manifest not found"}
    weak_cache = cfg.get("cache_dir") or None
    overlap = check_manifests(weak_manifest, histo_manifest, Path(weak_cache) if weak_cache else None,
                              histo_cache_dir, allow_overlap)
    return {"checked": True, "weak_manifest": str(weak_manifest), "overlap": overlap, "allowed": bool(allow_overlap)}


def check_held_out(train_manifest: str | Path, held_manifest: str | Path, cache_dir: Path | None = None) -> None:
    """Refuse a held-out set (``--monitor-manifest``) that shares patients (id or CT content) with the
    set trained on. Cache folders: `cache_dir`, else .wsp-cache beside each manifest.

    Raises:
        InputError: naming the held-out manifest and the shared patients.
    """
    train, held = read_manifest(train_manifest), read_manifest(held_manifest)
    shared = find_overlap(train, held, image_hashes(train, Path(cache_dir or default_cache_dir(train_manifest))),
                          image_hashes(held, Path(cache_dir or default_cache_dir(held_manifest))))
    if shared:
        listed = _listed(shared) + (f" and {len(shared) - SHOWN} more" if len(shared) > SHOWN else "")
        raise InputError(f"{held_manifest}: {len(shared)} patient(s) are also in {train_manifest}: {listed}; "
                         "monitor patients must never be trained on")
