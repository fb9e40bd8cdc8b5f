"""Curves and a table of several pretrain runs side by side, against slices seen (docs/training.md).

    python scripts/experiments/compare_runs.py RUN_DIR... --out curves.png [--labels a,b,...]

Reads each run's config.json and metrics.jsonl; x = step x batch size (slices seen), so runs of
different batch sizes compare at an equal budget. Runs given the same label (seeds of one recipe)
are drawn as one curve, their mean, with a band from their lowest to highest value. Prints a
markdown table of the first and last monitor values, one row per run.
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


def _curve(runs: list[tuple[int, list[dict]]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """(slices seen, mean, min, max) of `key` over runs measured at the same steps."""
    import numpy as np

    series = [{line["step"] * batch: line[key] for line in lines if line.get(key) is not None} for batch, lines in runs]
    xs = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[x] for x in xs] for s in series])
    return xs, values.mean(0).tolist(), values.min(0).tolist(), values.max(0).tolist()


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--labels", default="", help="one per run; runs sharing a label are averaged")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels names {len(labels)} runs for {len(args.runs)} runs")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.2 * len(PANELS), 2.8), dpi=110)
    print("| run | loss excess (last) | weak band-probe AUC (first → last) | kNN (first → last) | position R² (last) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    groups: dict[str, list[tuple[int, list[dict]]]] = {}
    for run, label in zip(args.runs, labels):
        batch, lines = read_run(run)
        groups.setdefault(label, []).append((batch, lines))

        def first_last(key: str) -> tuple[float, float]:
            values = [line[key] for line in lines if line.get(key) is not None]
            return (values[0], values[-1]) if values else (float("nan"), float("nan"))

        ex, band, knn, r2 = (first_last(k) for k in ("loss_excess", "weak_band_auc", "knn_bal_acc", "position_r2"))
        print(f"| {run.name} ({label}) | {ex[1]:.3f} | {band[0]:.3f} → {band[1]:.3f} | {knn[0]:.3f} → {knn[1]:.3f} "
              f"| {r2[1]:.3f} |")
    for label, runs in groups.items():
        for ax, (key, title) in zip(axes, PANELS):
            xs, mean, lo, hi = _curve(runs, key)
            line, = ax.plot(xs, mean, marker="o", ms=2, lw=1.1,
                            label=label if len(runs) == 1 else f"{label} (mean of {len(runs)})")
            if len(runs) > 1:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("slices seen", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6)
    if args.title:
        fig.suptitle(args.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
