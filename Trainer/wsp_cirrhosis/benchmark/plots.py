"""The benchmark's figures: AUC bars per method, AUC against sigma, the label-efficiency curve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .grid import SIGMA_METHODS, SUPCON, format_sigma, row_label, sigma_from_json
from .report import aggregate, label_efficiency, rows_and_columns


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_results(records: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: one group per method row, one bar per encoder x protocol, error bars = std."""
    plt = _pyplot()
    rows, columns = rows_and_columns(records)
    stats = aggregate(records)
    width = 0.8 / max(len(columns), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) * max(1, len(columns)) ** 0.5 + 2), 4), dpi=120)
    x = np.arange(len(rows))
    for j, (enc, prot) in enumerate(columns):
        vals = [stats.get((m, s, enc, prot), (np.nan, 0.0, 0, 0)) for m, s in rows]
        ax.bar(x + (j - (len(columns) - 1) / 2) * width, [v[0] for v in vals], width,
               yerr=[v[1] for v in vals], capsize=2, label=f"{enc} {prot}")
    ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax.set_xticks(x, [row_label(m, s) for m, s in rows], rotation=35, ha="right", fontsize=7)
    ax.set(ylabel="patient AUC (mean ± std over folds, repeats, seeds)", ylim=(0, 1.05))
    ax.yaxis.label.set_fontsize(8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def plot_sigma(records: list[dict[str, Any]], path: Path) -> None:
    """WSP and positional AUC against sigma (log x), one panel per protocol; SupCon (= WSP at sigma = inf)
    as a horizontal band, not as a point of the curve."""
    plt = _pyplot()
    grid = [r for r in records if r["method"] in SIGMA_METHODS and r.get("sigma") is not None]
    stats = aggregate(records)
    columns = list(dict.fromkeys((r["encoder"], r["protocol"]) for r in grid))
    fig, axes = plt.subplots(1, max(1, len(columns)), figsize=(4.2 * max(1, len(columns)), 3.5), dpi=110,
                             squeeze=False)
    for ax, (enc, prot) in zip(axes[0], columns):
        for method in SIGMA_METHODS:
            sig = sorted({sigma_from_json(r["sigma"]) for r in grid if r["method"] == method} - {math.inf})
            pts = [(s, *stats[(method, s, enc, prot)][:2]) for s in sig if (method, s, enc, prot) in stats]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                            capsize=2, label=method, color=f"C{SIGMA_METHODS.index(method)}")
        sup = stats.get((SUPCON, None, enc, prot))
        if sup:
            ax.axhline(sup[0], color="k", lw=1, label="SupCon (σ = ∞)")
            ax.axhspan(sup[0] - sup[1], sup[0] + sup[1], color="k", alpha=0.08)
        ax.set_xscale("log")
        ticks = sorted({sigma_from_json(r["sigma"]) for r in grid} - {math.inf})
        ax.set_xticks(ticks, [format_sigma(s) for s in ticks])
        ax.minorticks_off()
        ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
        ax.set(xlabel="σ of the positional kernel (d in [0, 1])", ylabel="patient AUC", ylim=(0.3, 1.02),
               title=f"{enc} {prot}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_label_efficiency(records: list[dict[str, Any]], path: Path) -> None:
    """Frozen-probe fold AUC against the number of training patients (log x), one panel per frozen protocol."""
    plt = _pyplot()
    panels = [(e, p) for e, p in dict.fromkeys((r["encoder"], r["protocol"]) for r in records)
              if p.startswith("frozen")]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 3.6), dpi=110,
                             squeeze=False)
    for ax, (enc, prot) in zip(axes[0], panels):
        n_all = np.mean([r["n_patients"] * (1 - 1 / r["folds"]) for r in records])
        for row, curve in label_efficiency(records, enc, prot).items():
            xs = [curve[n][2] if n != "all" else n_all for n in curve]
            ax.errorbar(xs, [curve[n][0] for n in curve], yerr=[curve[n][1] for n in curve], marker="o",
                        capsize=2, label=row_label(*row))
        ax.set_xscale("log")
        ticks = sorted({round(x) for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
        ax.set(xlabel="histology patients the probe is trained on", ylabel="patient AUC (test folds)",
               ylim=(0.3, 1.02), title=f"{enc} {prot}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)
