"""TCGA-LIHC in one command: the authors' `dataframe_lihc.csv` + their NIfTI files -> a histology manifest.

The authors' table (github.com/Guerbet-AI/wsp-contrastive, `dataframe_lihc.csv`) has an unnamed
index column, then `subject` (the file name `lihc__TCGA-XX-XXXX__<date>__VEN.nii.gz`), `score`
(the Ishak group in words), `class` (0-4) and `label`. Their `dataset.py` maps class to label with
{0: 0, 1: 0, 2: 0, 3: 1, 4: 1}: class 3 is Ishak 5 (incomplete cirrhosis), class 4 Ishak 6
(established cirrhosis); the table's `label` column agrees with that map on every row. Here
histo_label = 1 exactly for class 3-4, and a row whose `label` disagrees is refused, not guessed.

Scans: the release holds several portal-venous scans (dates) for some patients; the authors kept
the oldest, and their table names it. The file the table names is used; when it is missing, the
patient's oldest scan in the folder is used and reported. Later scans are listed as skipped.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import LihcConfig
from ..errors import InputError
from .manifest_report import Report, check_out, finish, resolve_masks
from .scan import Case, ScanResult, file_stem, scan_folder

log = logging.getLogger("wsp_cirrhosis")

SUBJECT = re.compile(r"^lihc__(?P<patient>TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})__(?P<date>\d{4}-\d{2}-\d{2})__(?P<phase>[A-Z]+)"
                     r"\.nii(?:\.gz)?$")
CIRRHOSIS_CLASSES = (3, 4)  # Ishak 5-6 (the authors' dataset.py: {0: 0, 1: 0, 2: 0, 3: 1, 4: 1})
EXPECTED_ROWS, EXPECTED_POSITIVE = 49, 15  # the published table


@dataclass(frozen=True)
class LihcRow:
    """One row of dataframe_lihc.csv."""

    patient: str
    date: str
    subject: str
    klass: int
    histo_label: int


def read_lihc_csv(path: str | Path) -> list[LihcRow]:
    """Parse and check the authors' table.

    Raises:
        InputError: missing columns, bad subject names or classes, a `label` that disagrees with
            class 3-4, or a patient listed twice (all listed).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read dataframe_lihc.csv ({exc})") from None
    header = list(rows[0].keys()) if rows else []
    missing = [c for c in ("subject", "class", "label") if c not in header]
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(missing)} not found; expected the authors' layout "
                         f"',subject,score,class,label' (found: {','.join(header) or 'no rows'})")
    out: list[LihcRow] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        subject = (row["subject"] or "").strip()
        m = SUBJECT.match(subject)
        if not m:
            problems.append(f"line {line}: subject {subject!r} is not lihc__TCGA-XX-XXXX__<date>__<phase>.nii.gz")
            continue
        try:
            klass, label = int(row["class"]), int(row["label"])
        except (TypeError, ValueError):
            problems.append(f"line {line} ({subject}): class {row['class']!r} / label {row['label']!r} are not integers")
            continue
        if klass not in range(5):
            problems.append(f"line {line} ({subject}): class {klass} outside 0..4")
            continue
        histo = int(klass in CIRRHOSIS_CLASSES)
        if label != histo:
            problems.append(f"line {line} ({subject}): label {label} disagrees with class {klass} "
                            f"(the authors' rule: label 1 exactly for class 3-4)")
            continue
        if m["patient"] in seen:
            problems.append(f"line {line}: patient {m['patient']} listed twice (first on line {seen[m['patient']]})")
            continue
        seen[m["patient"]] = line
        out.append(LihcRow(m["patient"], m["date"], subject, klass, histo))
    if problems:
        raise InputError(f"{path}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems[:30]))
    if not out:
        raise InputError(f"{path}: no rows")
    return out


def find_scans(scan: ScanResult) -> tuple[dict[str, list[tuple[str, Path]]], list[str]]:
    """patient -> [(date, path)] oldest first, for the portal-venous `lihc__` files; other files listed."""
    found: dict[str, list[tuple[str, Path]]] = {}
    skipped = []
    for case in scan.cases.values():
        m = SUBJECT.match(case.image.name) if case.kind == "file" else None
        if m is None:
            skipped.append(f"{case.image}: not a lihc__TCGA-XX-XXXX__<date>__VEN.nii.gz file")
        elif m["phase"] != "VEN":
            skipped.append(f"{case.image}: phase {m['phase']}, not VEN (portal venous)")
        else:
            found.setdefault(m["patient"], []).append((m["date"], case.image))
    for scans in found.values():
        scans.sort()
    return found, skipped


def build_lihc(csv_path: Path, images: Path, out: Path, masks: Path | None, auto_mask: bool, device: str,
               force: bool) -> int:
    """Read the table, pick one scan per listed patient, pair masks, write the manifest and report."""
    out = Path(out)
    check_out(out, force)
    table = read_lihc_csv(csv_path)
    positive = sum(r.histo_label for r in table)
    report = Report(f"TCGA-LIHC manifest report: {out.name}", [
        f"table: {Path(csv_path).resolve()}: {len(table)} rows, {positive} positive (class 3-4 = Ishak 5-6)",
        f"images: {Path(images).resolve()}"])
    print(f"{csv_path}: {len(table)} rows, {positive} positive (class 3-4 = Ishak 5-6)")
    if (len(table), positive) != (EXPECTED_ROWS, EXPECTED_POSITIVE):
        warning = (f"{csv_path}: {len(table)} rows, {positive} positive; the published dataframe_lihc.csv has "
                   f"{EXPECTED_ROWS} rows, {EXPECTED_POSITIVE} positive")
        log.warning("%s", warning)
        report.facts.append(f"WARNING: {warning}")
    found_files = scan_folder(images, masks)
    scans, skipped = find_scans(found_files)
    report.add("Files skipped", skipped)
    report.add("Ambiguous or bad inputs (left out)", found_files.problems)
    chosen = ScanResult(masks=found_files.masks)
    later, no_scan, substitutes = [], [], []
    for row in table:
        dated = scans.get(row.patient, [])
        if not dated:
            no_scan.append(f"{row.patient}: {row.subject} not found")
            continue
        named = [p for d, p in dated if p.name == row.subject]
        path = named[0] if named else dated[0][1]
        if not named:
            substitutes.append(f"{row.patient}: {row.subject} not found; using the oldest scan present, {path.name}")
        elif dated[0][1] != path:
            substitutes.append(f"{row.patient}: the table names {row.subject} but an older scan {dated[0][1].name} is present")
        later += [f"{row.patient}: {p.name} (kept {path.name})" for _, p in dated if p != path]
        chosen.cases[row.patient] = Case(row.patient, path, "file", path.parent, (file_stem(path),))
    extra = sorted(set(scans) - {r.patient for r in table})
    report.add("Table subjects with no scan in --images", no_scan)
    report.add("Scan choices to check", substitutes)
    report.add("Later scans skipped (the oldest is kept)", later)
    report.add("Patients in --images not in the table (left out)", [f"{p}: {len(scans[p])} scan(s)" for p in extra])
    cases = resolve_masks(chosen, masks, out, auto_mask, device, report)
    labels = {r.patient: r.histo_label for r in table}
    rows = [{"patient_id": c.case_id, "image": c.image, "liver_mask": c.mask, "weak_label": None,
             "histo_label": labels[c.case_id]} for c in cases]
    report.facts.append(f"rows written: {len(rows)}, positive: {sum(r['histo_label'] for r in rows)}")
    return finish(rows, report, out, force)


def run_lihc(cfg: LihcConfig) -> int:
    """`wsp-cirrhosis lihc`: the TCGA-LIHC histology manifest in one command."""
    return build_lihc(cfg.csv, cfg.images, cfg.out, cfg.masks, cfg.auto_mask, cfg.device, cfg.force)
