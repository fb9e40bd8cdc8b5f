"""The shortcut audit's human-readable outputs: audit.md and a PNG of cue distributions per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_path
from .cues import SLICE_CUES, VOLUME_CUES

PLOTTED = (*VOLUME_CUES, *SLICE_CUES, "random_encoder_probe")
PER_PATIENT_COLUMNS = ("patient_id", "label", "volume_ml", "extent_mm", "liver_slices", "slice_thickness_mm", "pixel_mm",
                       "liver_fraction", "hu_mean", "hu_std", "texture", "contour", "manufacturer", "model")


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.3g}"
    return "" if value is None else str(value)


def markdown_report(doc: dict) -> str:
    """audit.md: what was measured, the AUC table (whole patient, then per band), warnings, patients."""
    lines = ["# Shortcut audit", ""]
    if doc["synthetic"]:
        lines += ["> **Synthetic phantom cohort** (`wsp-cirrhosis synth`), **not patient data**.", ""]
    lines += [f"Manifest `{doc['manifest']}`: {doc['patients']} patients; label `{doc['label']}` "
              f"({doc['positive']} positive, {doc['negative']} negative).", ""]
    if doc["message"]:
        lines += [f"**{doc['message']}.**", ""]
    if doc["cues"]:
        lines += ["Cross-validated patient-level AUC of each cue alone (logistic regression fitted inside "
                  f"{doc['config']['folds']} stratified folds), percentile bootstrap 95% CI over patients. "
                  "0.5 = the cue says nothing; near 1 (or 0) it alone separates the classes.", ""]
        if doc["warnings"]:
            lines += ["## Warnings", "", *[f"- {w}" for w in doc["warnings"]], ""]
        for scope, title in (("patient", "Whole-patient cues"), ("band", "Cues per position band of d")):
            lines += [f"## {title}", "", "| cue | AUC | 95% CI | what |", "|---|---|---|---|"]
            for c in doc["cues"]:
                if c["scope"] == scope:
                    lines.append(f"| {c['cue']} | {c['auc']:.3f} | {c['ci95'][0]:.3f}-{c['ci95'][1]:.3f} | {c['description']} |")
            lines.append("")
    lines += ["## Per patient", "", "(all cues, per band too, in `patients.csv`)", "",
              "| " + " | ".join(PER_PATIENT_COLUMNS) + " |", "|" + "---|" * len(PER_PATIENT_COLUMNS)]
    for r in doc["per_patient"]:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in PER_PATIENT_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_cue_plot(rows: list[dict], label: str, path: Path, note: str = "") -> Path:
    """PNG: each whole-patient cue as points per class (jittered), so a separating cue is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in PLOTTED if any(isinstance(r.get(n), (int, float)) for r in rows)]
    cols = 4
    fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(3.2 * cols, 2.4 * -(-len(names) // cols)),
                             squeeze=False)
    rng = np.random.default_rng(0)
    groups = (("0", 0, "tab:blue"), ("1", 1, "tab:red"), ("no label", None, "0.5"))
    for ax, name in zip(axes.ravel(), names):
        for i, (text, value, colour) in enumerate(groups):
            ys = [r[name] for r in rows if r.get("label") == value and isinstance(r.get(name), (int, float))]
            if ys:
                ax.scatter(i + rng.uniform(-0.2, 0.2, len(ys)), ys, s=8, color=colour, alpha=0.7)
        ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(f"cue distributions per {label} class" + (f" ({note})" if note else ""), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
