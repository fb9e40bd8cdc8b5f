"""Curves and a table of several pretrain runs side by side, against slices seen (docs/training.md).

    python scripts/experiments/compare_runs.py RUN_DIR... --out curves.png [--labels a,b,...]

Reads each run's config.json and metrics.jsonl; x = step x batch size (slices seen), so runs of
different batch sizes compare at an equal budget. Prints a markdown table of the first and last
monitor values.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = (("loss_excess", "loss excess (1 = collapsed)"), ("weak_band_auc", "weak band-probe AUC (held out)"),
          ("knn_bal_acc", "kNN balanced acc. (chance 0.33)"), ("position_r2", "position R²"))


def read_run(run: Path) -> tuple[int, list[dict]]:
    """(batch size, metrics.jsonl lines) of a pretrain run folder."""
    cfg = json.loads((run / "config.json").read_text())["config"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return int(cfg["train"]["batch_size"]), lines


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--labels", default="")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.2 * len(PANELS), 2.8), dpi=110)
    print("| run | loss excess (last) | weak band-probe AUC (first → last) | kNN (first → last) | position R² (last) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for run, label in zip(args.runs, labels):
        batch, lines = read_run(run)
        for ax, (key, title) in zip(axes, PANELS):
            pts = [(line["step"] * batch, line[key]) for line in lines if line.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=2, lw=1.1, label=label)
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("slices seen", fontsize=7)
            ax.tick_params(labelsize=6)

        def first_last(key: str) -> tuple[float, float]:
            values = [line[key] for line in lines if line.get(key) is not None]
            return (values[0], values[-1]) if values else (float("nan"), float("nan"))

        ex, band, knn, r2 = (first_last(k) for k in ("loss_excess", "weak_band_auc", "knn_bal_acc", "position_r2"))
        print(f"| {label} | {ex[1]:.3f} | {band[0]:.3f} → {band[1]:.3f} | {knn[0]:.3f} → {knn[1]:.3f} | {r2[1]:.3f} |")
    axes[0].legend(fontsize=6)
    if args.title:
        fig.suptitle(args.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
