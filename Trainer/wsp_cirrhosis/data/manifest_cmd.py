"""`wsp-cirrhosis manifest`: folders of CTs (+ masks, + a label table) -> a cohort manifest and a report.

The scan and pairing rules live in `scan.py`; this module joins the labels, writes the manifest
(`manifest.write_manifest`) and the report `<out stem>.report.txt` beside it, and prints a summary.
Nothing is guessed silently: every choice, skipped series, unmatched id and ambiguous input is in
the report, and the summary line counts them.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..config import ManifestConfig
from ..errors import ConfigError, InputError
from .manifest_report import Report, check_out, finish, resolve_masks
from .scan import scan_folder

log = logging.getLogger("wsp_cirrhosis")


def read_label_table(path: Path, id_column: str, columns: dict[str, str]) -> dict[str, dict[str, int | None]]:
    """Read a CSV/TSV label table: id -> {label name: value or None}.

    Args:
        path: the table (.tsv/.tab: tab-separated; otherwise the delimiter is sniffed among , ; tab).
        id_column: the column holding the case id.
        columns: label name ("weak_label"/"histo_label") -> column name in the table.

    Raises:
        InputError: unreadable table, missing columns, duplicate ids or bad label values (all listed).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the label table ({exc})") from None
    if path.suffix.lower() in (".tsv", ".tab"):
        delimiter = "\t"
    else:
        try:
            delimiter = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    header = list(rows[0].keys()) if rows else []
    missing = [c for c in (id_column, *columns.values()) if c not in header]
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(missing)} not found; the table has: {', '.join(header) or 'no rows'}")
    table: dict[str, dict[str, int | None]] = {}
    problems = []
    allowed = {"weak_label": range(100), "histo_label": range(2)}
    for line, row in enumerate(rows, start=2):
        key = (row[id_column] or "").strip()
        if not key:
            problems.append(f"line {line}: empty {id_column}")
            continue
        if key in table:
            problems.append(f"line {line}: duplicate id {key!r}")
            continue
        values: dict[str, int | None] = {}
        for name, col in columns.items():
            cell = (row[col] or "").strip()
            try:
                values[name] = None if cell == "" else int(float(cell))
                ok = values[name] is None or (float(cell) == values[name] and values[name] in allowed[name])
            except (ValueError, OverflowError):
                ok = False
            if not ok:
                problems.append(f"line {line} ({key}): {col} {cell!r} is not a valid {name} "
                                f"({'an integer class >= 0' if name == 'weak_label' else '0 or 1'})")
        table[key] = values
    if problems:
        raise InputError(f"{path}: {len(problems)} bad label row(s):\n  " + "\n  ".join(problems[:30]))
    return table


def run_manifest(cfg: ManifestConfig) -> int:
    """`wsp-cirrhosis manifest`: scan, choose, pair, join, write manifest + report."""
    if cfg.preset == "lihc":
        from .lihc import build_lihc

        if cfg.labels is None:
            raise ConfigError("--preset lihc: pass the authors' dataframe_lihc.csv as --labels")
        return build_lihc(cfg.labels, cfg.images, cfg.out, cfg.masks, cfg.auto_mask, cfg.device, cfg.force)
    out = Path(cfg.out)
    check_out(out, cfg.force)
    columns = {name: col for name, col in (("weak_label", cfg.weak_column), ("histo_label", cfg.histo_column)) if col}
    if columns and cfg.labels is None:
        raise ConfigError("--weak-column/--histo-column need --labels")
    if cfg.labels is not None and not columns:
        raise ConfigError("--labels: name the label column(s) with --weak-column and/or --histo-column")
    table = read_label_table(Path(cfg.labels), cfg.id_column, columns) if cfg.labels is not None else None
    scan = scan_folder(cfg.images, cfg.masks)
    report = Report(f"manifest report: {out.name}", [f"images: {Path(cfg.images).resolve()}",
                                                       f"masks: {Path(cfg.masks).resolve() if cfg.masks else '(in --images)'}",
                                                       f"labels: {cfg.labels or '(none)'}",
                                                       f"cases found: {len(scan.cases)}"])
    report.add("DICOM series chosen", scan.choices)
    report.add("Skipped series", scan.skipped)
    report.add("Ambiguous or bad inputs (left out)", scan.problems)
    cases = resolve_masks(scan, cfg.masks, out, cfg.auto_mask, cfg.device, report)
    rows = []
    for case in cases:
        labels = table.get(case.case_id, {}) if table is not None else {}
        rows.append({"patient_id": case.case_id, "image": case.image, "liver_mask": case.mask, **labels})
    if table is not None:
        report.add("Cases with no label row (labels left empty)", [c.case_id for c in cases if c.case_id not in table])
        report.add("Label ids with no CT", sorted(set(table) - set(scan.cases)))
    return finish(rows, report, out, cfg.force)
