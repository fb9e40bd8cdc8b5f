"""Write a benchmark's reports: results.md (text.py) and its figures (plots.py), each atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import BenchmarkConfig


def write_reports(records: list[dict[str, Any]], cfg: BenchmarkConfig, out: Path, cohort: dict[str, Any],
                  wall_s: float) -> None:
    """results.md, results.png, sigma.png (with sigma-grid rows), label_efficiency.png, each written atomically."""
    from ..files import write_text_atomic
    from .plots import plot_label_efficiency, plot_results, plot_sigma
    from .text import format_report

    if not records:
        return
    write_text_atomic(out / "results.md", format_report(records, cfg, cohort, wall_s))
    plot_results(records, out / "results.png")
    if any(r.get("sigma") is not None for r in records):
        plot_sigma(records, out / "sigma.png")
    if any(r.get("label_efficiency") for r in records):
        plot_label_efficiency(records, out / "label_efficiency.png")
