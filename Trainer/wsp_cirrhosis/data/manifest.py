"""Cohort manifest: a CSV with columns patient_id,image,liver_mask,weak_label,histo_label.

Paths are relative to the CSV's folder; `weak_label` is a non-negative integer class or empty;
`histo_label` is 0/1 or empty. Every bad row is reported at once.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..files import write_text_atomic

log = logging.getLogger("wsp_cirrhosis")

COLUMNS = ("patient_id", "image", "liver_mask", "weak_label", "histo_label")
MAX_WEAK_CLASSES = 100
_SHOWN = 30


class ManifestError(InputError):
    """One or more rows of a manifest are bad; the message lists them all."""


@dataclass(frozen=True)
class PatientRecord:
    """One manifest row, with absolute paths."""

    patient_id: str
    image: Path
    liver_mask: Path
    weak_label: Optional[int]
    histo_label: Optional[int]


def _parse_label(text: str, column: str, allowed: range) -> tuple[Optional[int], Optional[str]]:
    text = text.strip()
    if text == "":
        return None, None
    try:
        value = float(text)
    except ValueError:
        return None, f"{column} {text!r} is not an integer"
    if value != int(value):
        return None, f"{column} {text!r} is not an integer"
    if int(value) not in allowed:
        return None, f"{column} {text!r} out of range ({allowed.start}..{allowed.stop - 1})"
    return int(value), None


def read_manifest(path: str | Path, require: str | None = None, skip_bad: bool = False) -> list[PatientRecord]:
    """Parse and check a cohort manifest.

    Args:
        path: the CSV file.
        require: "weak" or "histo" keeps only rows carrying that label (error if none does).
        skip_bad: drop bad rows with a warning instead of raising.

    Raises:
        ManifestError: missing/unknown columns, or bad rows (all listed) when not `skip_bad`.
        InputError: no usable row.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read manifest ({exc})") from None
    header = [h.strip() if h else "" for h in header if h is not None]
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        parts = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown column(s) {', '.join(unknown)}"] if unknown else [])
        raise ManifestError(f"{path}: {'; '.join(parts)}; expected exactly: {','.join(COLUMNS)}")

    records: list[PatientRecord] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        pid = row["patient_id"]
        errs: list[str] = []
        if not pid:
            errs.append("empty patient_id")
        elif pid in seen:
            errs.append(f"duplicate patient_id (first on line {seen[pid]})")
        else:
            seen[pid] = line
        paths = {}
        for col in ("image", "liver_mask"):
            if not row[col]:
                errs.append(f"empty {col}")
                continue
            p = (path.parent / row[col]).resolve()
            if not p.exists():
                errs.append(f"{col} not found: {p}")
            paths[col] = p
        weak, err = _parse_label(row["weak_label"], "weak_label", range(MAX_WEAK_CLASSES))
        errs += [err] if err else []
        histo, err = _parse_label(row["histo_label"], "histo_label", range(2))
        errs += [err] if err else []
        if errs:
            problems.append(f"line {line} ({pid or '?'}): " + "; ".join(errs))
            continue
        records.append(PatientRecord(pid, paths["image"], paths["liver_mask"], weak, histo))

    if problems:
        shown = "\n  ".join(problems[:_SHOWN]) + (f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")
        if not skip_bad:
            raise ManifestError(f"{path}: {len(problems)} bad row(s) of {len(rows)}:\n  {shown}\n"
                                "fix them, or pass --skip-bad to leave them out")
        log.warning("%s: skipping %d bad row(s):\n  %s", path, len(problems), shown)
    if require is not None:
        column = {"weak": "weak_label", "histo": "histo_label"}[require]
        kept = [r for r in records if getattr(r, column) is not None]
        if not kept:
            raise InputError(f"{path}: no row has a {column}; this command needs {column} values")
        if len(kept) < len(records):
            log.info("%s: %d of %d rows have a %s; using those", path, len(kept), len(records), column)
        records = kept
    if not records:
        raise InputError(f"{path}: no usable patient rows")
    return records


def write_manifest(rows: list[dict], path: str | Path, force: bool = False) -> Path:
    """Write a manifest with `COLUMNS` atomically; image and mask paths become relative to its folder.

    Args:
        rows: dicts with patient_id, image, liver_mask (paths), weak_label, histo_label (int or None).
        path: the CSV to write.
        force: replace an existing file.

    Raises:
        InputError: `path` exists and not `force`.
    """
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path}: manifest already exists; pass --force to replace it")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    base = path.resolve().parent
    for row in rows:
        rel = [Path(os.path.relpath(Path(row[c]).resolve(), base)).as_posix() for c in ("image", "liver_mask")]
        labels = ["" if row.get(c) is None else int(row[c]) for c in ("weak_label", "histo_label")]
        writer.writerow([row["patient_id"], *rel, *labels])
    write_text_atomic(path, buf.getvalue())
    return path
