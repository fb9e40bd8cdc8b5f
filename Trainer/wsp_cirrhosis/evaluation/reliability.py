"""How well calibrated are patient probabilities: the reliability diagram (with the Brier score and
expected calibration error of `models.calibration`) written beside an evaluation result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..models.calibration import calibration_metrics


def plot_reliability(curves: dict[str, tuple[Sequence[int], Sequence[float]]], path: str | os.PathLike,
                     title: str = "", n_bins: int = 10) -> Path:
    """Reliability diagram (observed rate vs mean probability per bin, marker area ~ count), one
    line per named (labels, probabilities) pair, with Brier and ECE in the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..files import atomic_path

    fig = Figure(figsize=(4.8, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8, label="perfect calibration")
    for name, (labels, probs) in curves.items():
        m = calibration_metrics(labels, probs, n_bins)
        xs = [b["mean_probability"] for b in m["bins"]]
        ys = [b["observed_rate"] for b in m["bins"]]
        sizes = [12 + 6 * b["count"] for b in m["bins"]]
        line, = ax.plot(xs, ys, "-", lw=1, label=f"{name}: Brier {m['brier']:.3f}, ECE {m['ece']:.3f}")
        ax.scatter(xs, ys, s=sizes, color=line.get_color(), alpha=0.7)
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="mean predicted probability (bin)",
           ylabel="observed fraction positive", title=title or "reliability (out-of-fold)")
    ax.title.set_fontsize(8)
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return Path(path)


def reliability_png_path(json_path: str | os.PathLike) -> Path:
    """The reliability diagram beside a results JSON: `x.json` -> `x.reliability.png`."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + ".reliability.png")


def add_calibration_to_result(result: dict[str, Any], json_path: str | os.PathLike) -> Path:
    """`evaluate`: Brier/ECE of each protocol's out-of-fold probabilities into `result` (key
    "calibration" per protocol) and the reliability diagram beside the JSON."""
    labels = result["labels"]
    curves = {}
    for name, res in result["protocols"].items():
        oof = res["oof_probability"]
        m = calibration_metrics(labels, oof)
        res["calibration"] = {"brier": m["brier"], "ece": m["ece"], "n_bins": m["n_bins"], "bins": m["bins"]}
        curves[name] = (labels, oof)
    title = f"{Path(str(result.get('encoder', ''))).name}: {result.get('folds')}-fold out-of-fold probabilities"
    return plot_reliability(curves, reliability_png_path(json_path), title=title)
