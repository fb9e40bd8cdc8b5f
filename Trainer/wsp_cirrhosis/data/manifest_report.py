"""A manifest built from scanned folders: masks resolved, rows written, and the report beside it.

Shared by `wsp-cirrhosis manifest` (manifest_cmd.py) and `wsp-cirrhosis lihc` (lihc.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, InputError
from ..files import write_text_atomic
from .automask import auto_masks
from .manifest import write_manifest
from .scan import Case, ScanResult, pair_masks

log = logging.getLogger("wsp_cirrhosis")


@dataclass
class Report:
    """The sections of a manifest report; `text()` renders them, `summary()` is one line."""

    title: str
    facts: list[str] = field(default_factory=list)
    sections: dict[str, list[str]] = field(default_factory=dict)

    def add(self, section: str, lines: list[str]) -> None:
        self.sections.setdefault(section, []).extend(lines)

    def text(self) -> str:
        out = [f"# {self.title}", "", *self.facts, ""]
        for name, lines in self.sections.items():
            out += [f"## {name} ({len(lines)})", *(f"- {ln}" for ln in lines), ""]
        return "\n".join(out)

    def summary(self) -> str:
        counts = [f"{len(v)} x {k}" for k, v in self.sections.items() if v]
        return "; ".join(counts) if counts else "nothing skipped or unmatched"


def report_path(out: Path) -> Path:
    """`<out stem>.report.txt` beside the manifest."""
    return out.parent / f"{out.stem}.report.txt"


def resolve_masks(scan: ScanResult, masks: Path | None, out: Path, auto_mask: bool, device: str,
                  report: Report) -> list[Case]:
    """Pair masks (and segment missing ones with --auto-mask); return the cases that have a mask."""
    problems, unmatched = pair_masks(scan, masks)
    report.add("Ambiguous masks (case left out)", problems)
    ambiguous = {p.split(":", 1)[0] for p in problems}
    missing = [c for c in scan.cases.values() if c.mask is None and c.case_id not in ambiguous]
    if auto_mask:
        report.add("Automatic masks failed (case left out)", auto_masks(missing, out.parent / f"{out.stem}.masks", device))
        report.add("Masks made with TotalSegmentator", [f"{c.case_id}: {c.mask}" for c in missing if c.mask])
    else:
        report.add("CTs without a mask (left out; give --masks or --auto-mask)", [f"{c.case_id}: {c.image}" for c in missing])
    report.add("Masks matching no CT", [str(m) for m in unmatched])
    return [c for c in sorted(scan.cases.values(), key=lambda c: c.case_id) if c.mask is not None]


def finish(rows: list[dict], report: Report, out: Path, force: bool) -> int:
    """Write the manifest and its report; print the summary. Raises InputError when no row is left."""
    path = report_path(out)
    report.facts.append(f"manifest rows: {len(rows)}")
    write_text_atomic(path, report.text())
    if not rows:
        raise InputError(f"{out}: no usable case found ({report.summary()}); see {path}")
    write_manifest(rows, out, force=force)
    print(f"wrote {out}: {len(rows)} patient(s); {report.summary()}\nreport: {path}")
    return 0


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing manifest without --force (before any slow scan)."""
    if out.exists() and not force:
        raise InputError(f"{out}: manifest already exists; pass --force to replace it")
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"--out {out}: the manifest must be a .csv file")
