"""``curves.png`` of a pretrain run: loss and representation monitors against the training step."""

from __future__ import annotations

import math
from pathlib import Path

PANELS = (("loss", "loss"), ("loss_excess", "loss excess (1 = collapsed)"), ("knn_bal_acc", "kNN balanced acc."),
          ("weak_band_auc", "weak band-probe AUC"),
          ("position_r2", "position R²"), ("alignment", "alignment"), ("uniformity", "uniformity"),
          ("effective_rank", "effective rank"))


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """One small panel per metric present in ``history`` (metrics.jsonl lines), x = step; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    panels = [(k, label) for k, label in PANELS if any(k in line for line in history)]
    cols = 4
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), dpi=110, squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        points = [(line["step"], line[key]) for line in history if key in line and line[key] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=2.5, lw=1.2)
        if key == "knn_bal_acc":
            ax.axhline(1 / 3, color="0.6", lw=0.8, ls="--", label="chance (3 classes)")
            ax.legend(fontsize=6, loc="lower right")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
