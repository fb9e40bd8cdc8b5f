"""Render Resources/Screenshot01.png: a labelled mock-up of the module panel showing real output.

The picture is drawn with matplotlib, not captured from Slicer (no Slicer runs here). Every
number on it is read from a prediction.json written by `wsp-cirrhosis predict` with the bundled
demo model on a synthetic phantom, and the banner says so. Steps (README, "Screenshot"):

    wsp-cirrhosis synth --out /tmp/synth --patients 2 --histo-patients 4 --cirrhosis-fraction 0.5 --signs positional --seed 7
    wsp-cirrhosis predict /tmp/synth/images/histo-0001.nii.gz --liver-mask /tmp/synth/masks/histo-0001.nii.gz --out /tmp/pred --device cpu --saliency
    python Resources/render_screenshot.py /tmp/pred /tmp/synth/images/histo-0001.nii.gz /tmp/synth/masks/histo-0001.nii.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "WSPCirrhosis"))


def render(prediction_dir: Path, ct_path: Path, mask_path: Path, out: Path) -> None:
    from wsp_cirrhosis.inference.report import read_prediction
    from WSPCirrhosisLib import nodes, outputs, panel as module_panel

    p = read_prediction(prediction_dir / "prediction.json")
    saliency_path = prediction_dir / "saliency.nii.gz"
    name = ct_path.name.split(".")[0]
    ct = sitk.DICOMOrient(sitk.ReadImage(str(ct_path)), "LPS")
    mask = sitk.DICOMOrient(sitk.ReadImage(str(mask_path)), "LPS")
    slices = sorted(p.slices, key=lambda s: s.z_mm)
    middle = slices[len(slices) // 2]
    k = ct.TransformPhysicalPointToIndex(middle.center_lps)[2]
    image = sitk.GetArrayFromImage(ct)[k]
    liver = sitk.GetArrayFromImage(mask)[k] > 0
    relevance = (sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(saliency_path)), "LPS"))[k]
                 if saliency_path.is_file() else None)

    fig = Figure(figsize=(12.8, 7.2), dpi=100)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("#f3f3f3")
    fig.text(0.5, 0.975, "MOCK-UP of the WSP Cirrhosis module panel (drawn, not a Slicer screen capture)",
             ha="center", va="top", fontsize=13, weight="bold", color="#8b0000")
    fig.text(0.5, 0.935, f"Numbers: real output of `wsp-cirrhosis predict` with the bundled demo model "
             f"'{p.model_name}' (trained on phantoms only)\non a synthetic phantom CT ({name}): not a patient, "
             "not for diagnosis", ha="center", va="top", fontsize=9.5, color="#333333", linespacing=1.4)

    panel = fig.add_axes((0.015, 0.01, 0.36, 0.86))
    panel.set_axis_off()
    panel.set_xlim(0, 1)
    panel.set_ylim(0, 1)
    panel.add_patch(FancyBboxPatch((0.01, 0.01), 0.98, 0.98, boxstyle="round,pad=0.005", fc="white", ec="#b0b0b0"))
    rows = [("Inputs", None), ("Input volume:", f"{name} (synthetic phantom)"), ("Liver mask:", f"{name} liver mask"),
            ("Device:", p.device), ("Advanced", None), ("Batch size:", "32"),
            ("Other model bundle:", "no (bundled demo model)"),
            ("[x] Show where the score comes from (relevance map)", "")]
    y = 0.955
    for label, value in rows:
        if value is None:
            panel.text(0.04, y, "▾ " + label, fontsize=10.5, weight="bold")
        else:
            panel.text(0.07, y, label, fontsize=9.5)
            panel.text(0.45, y, value, fontsize=9.5, color="#1f4e79")
        y -= 0.055
    panel.add_patch(FancyBboxPatch((0.06, y - 0.03), 0.88, 0.055, boxstyle="round,pad=0.004", fc="#e6e6e6", ec="#888"))
    panel.text(0.5, y - 0.003, "Apply", ha="center", va="center", fontsize=10.5)
    y -= 0.09
    panel.add_patch(FancyBboxPatch((0.06, y - 0.02), 0.88, 0.04, boxstyle="square,pad=0", fc="#4caf50", ec="#888"))
    panel.text(0.5, y, "finished in a PythonSlicer process  100%", ha="center", va="center", fontsize=8.5, color="white")
    y -= 0.075
    panel.text(0.04, y, module_panel.resultText(p).replace(" (threshold", "\n   (threshold"), fontsize=8.6,
               weight="bold", va="center", linespacing=1.3)
    y -= 0.075
    panel.text(0.04, y, "Summary table", fontsize=10, weight="bold")
    for key, value in outputs.summaryRows(p, name):
        y -= 0.04
        shown = value if len(value) <= 30 else value[:14] + "..." + value[-10:]
        panel.text(0.07, y, key, fontsize=8.3)
        panel.text(0.5, y, shown, fontsize=8.3, color="#1f4e79")

    view = fig.add_axes((0.39, 0.45, 0.3, 0.4))
    view.imshow(np.clip(image, -160, 240), cmap="gray", origin="upper")
    view.contour(liver, levels=[0.5], colors=["#e8a317"], linewidths=1.2)
    if relevance is not None:  # the module's overlay defaults: colour map, opacity, transparent below threshold
        view.imshow(np.ma.masked_less(relevance, nodes.SALIENCY_LOWER_THRESHOLD), cmap="inferno",
                    vmin=nodes.SALIENCY_RANGE[0], vmax=nodes.SALIENCY_RANGE[1], alpha=nodes.SALIENCY_OPACITY,
                    origin="upper")
    view.set_title(f"axial slice {middle.slice_index} (S = {middle.z_mm:.1f} mm), liver outline"
                   + (", relevance map" if relevance is not None else ""), fontsize=9)
    view.set_xticks([])
    view.set_yticks([])

    chart = fig.add_axes((0.45, 0.08, 0.52, 0.32))
    z = [s.z_mm for s in slices]
    extra = p.extra or {}
    logit = p.scale == "logit"
    if "slice_min" in extra and not logit:  # the members' spread is drawn on the probability scale only
        chart.fill_between(z, extra["slice_min"], extra["slice_max"], color=outputs.SCORE_COLOR, alpha=0.2, lw=0,
                           label=f"range across {extra['n_members']} models")
    # as the module's chart (outputs.createOutputNodes): each slice's read, whose mean is the
    # patient score, against the threshold on the same scale
    label = "slice read" if logit else "slice score"
    chart.plot(z, p.slice_reads, "-o", ms=3, lw=1, color=outputs.SCORE_COLOR, label=label)
    threshold = p.score_threshold
    chart.plot([z[0], z[-1]], [threshold] * 2, "--", color=outputs.THRESHOLD_COLOR,
               label=f"threshold {threshold:.2f} ({p.scale} scale)")
    if not logit:
        chart.set_ylim(0, 1)
    chart.set_xlabel("S (mm)")
    chart.set_ylabel("slice read (patient logit scale)" if logit else "slice score")
    chart.set_title(f"{name}: {module_panel.resultText(p).split(' -> ')[0]} ({p.label_name})", fontsize=9.5)
    chart.legend(fontsize=8, loc="lower right")
    chart.grid(alpha=0.3)
    fig.text(0.72, 0.82, "Chart: per-slice read along z\n(click a point in Slicer to jump\nthe slice views to that slice)",
             fontsize=8.5, va="top", color="#333333")
    fig.savefig(out, dpi=100, facecolor=fig.get_facecolor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prediction_dir", type=Path)
    parser.add_argument("ct", type=Path)
    parser.add_argument("mask", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshot01.png")
    args = parser.parse_args()
    render(args.prediction_dir, args.ct, args.mask, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
