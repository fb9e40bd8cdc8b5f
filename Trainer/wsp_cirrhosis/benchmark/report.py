"""The benchmark's report: tables, paired comparisons, the sigma chosen on the monitors, results.md.

Everything here is a function of `results.json` records (one per grid cell and protocol), so the
report can be rebuilt from a finished or interrupted run. Plots live in `plots`, the writing of both in `outputs`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..config import PretrainConfig
from ..evaluation.evaluate import mean_std
from ..training.monitors import DID_NOT_LEARN_EXCESS, learned_objective
from .grid import BASELINE, SIGMA_METHODS, SUPCON, row_label, sigma_from_json

_PRETRAIN_DEFAULTS = PretrainConfig(manifest=Path("-"), out=Path("-"))
SELECTION_MONITOR = "weak_band_auc"  # the weak-set monitor the sigma is chosen on (never histology)
Row = tuple[str, Optional[float]]


def rows_and_columns(records: list[dict[str, Any]]) -> tuple[list[Row], list[tuple[str, str]]]:
    """Row keys (method, sigma) in first-seen method order, sigmas sorted; (encoder, protocol) columns."""
    order = list(dict.fromkeys(r["method"] for r in records))
    rows = sorted({(r["method"], sigma_from_json(r.get("sigma"))) for r in records},
                  key=lambda k: (order.index(k[0]), -1.0 if k[1] is None else k[1]))
    columns = list(dict.fromkeys((r["encoder"], r["protocol"]) for r in records))
    return rows, columns


def _key(r: dict[str, Any]) -> tuple:
    return (r["method"], sigma_from_json(r.get("sigma")), r["encoder"], r["protocol"])


def aggregate(records: list[dict[str, Any]], metric: str = "fold_auc") -> dict[tuple, tuple[float, float, int, int]]:
    """(method, sigma, encoder, protocol) -> (mean, std, number of values, number of seeds) over all folds and seeds."""
    pooled: dict[tuple, list[float]] = {}
    seeds: dict[tuple, set] = {}
    for r in records:
        value = r[metric]
        pooled.setdefault(_key(r), []).extend(value if isinstance(value, list) else [value])
        seeds.setdefault(_key(r), set()).add(r["seed"])
    return {k: (*mean_std(v), len(v), len(seeds[k])) for k, v in pooled.items()}


def format_table(records: list[dict[str, Any]], metric: str = "fold_auc", pooled: bool = False) -> str:
    """Markdown table: rows = method (+ sigma), columns = encoder x protocol, "mean ± std" of `metric`
    over all folds, repeats and seeds (with `pooled`, also the mean pooled out-of-fold AUC after a slash);
    the best mean per column in bold."""
    rows, columns = rows_and_columns(records)
    stats = aggregate(records, metric)
    pooled_stats = aggregate(records, "pooled_auc") if pooled else {}
    lines = ["| method | " + " | ".join(f"{enc} {prot}" for enc, prot in columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    best = {c: max((stats[(m, s, *c)][0] for m, s in rows if (m, s, *c) in stats), default=None) for c in columns}
    for method, sigma in rows:
        cells = []
        for col in columns:
            st = stats.get((method, sigma, *col))
            text = "" if st is None else f"{st[0]:.3f} ± {st[1]:.3f}"
            if st is not None and abs(st[0] - best[col]) < 5e-4:
                text = f"**{text}**"
            if st is not None and pooled:
                text += f" / {pooled_stats[(method, sigma, *col)][0]:.3f}"
            cells.append(text)
        lines.append(f"| {row_label(method, sigma)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def monitor_means(records: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    """(method, sigma, encoder) -> mean over seeds of every monitor value (one record per cell counted once)."""
    cells: dict[tuple, dict[int, dict]] = {}
    for r in records:
        cells.setdefault((r["method"], sigma_from_json(r.get("sigma")), r["encoder"]), {})[r["seed"]] = r.get("monitors") or {}
    out = {}
    for key, by_seed in cells.items():
        names = sorted({k for m in by_seed.values() for k in m})
        out[key] = {n: float(np.mean(v)) if (v := [m[n] for m in by_seed.values() if m.get(n) is not None])
                    else math.nan for n in names}
        out[key]["seeds"] = len(by_seed)
    return out


def chosen_sigmas(records: list[dict[str, Any]], encoder: str) -> dict[str, float]:
    """{method: sigma} for WSP and positional: the grid sigma with the best mean weak-set band-probe AUC
    (`SELECTION_MONITOR`, weak labels of held-out weak patients only); ties go to the larger sigma."""
    means = monitor_means(records)
    out = {}
    for method in SIGMA_METHODS:
        cand = [(v.get(SELECTION_MONITOR, math.nan), s) for (m, s, e), v in means.items()
                if m == method and e == encoder and s is not None]
        cand = [(a, s) for a, s in cand if math.isfinite(a)]
        if cand:
            out[method] = max(cand)[1]
    return out


def learned_verdict(baseline: bool, last_excess: float | None, band_gain: float) -> str:
    """The table's *learned?* cell. A loss excess ending >= DID_NOT_LEARN_EXCESS means the encoder did not
    learn its own objective, whatever the probe says; otherwise "yes" needs the weak band-probe >= 0.05
    above random init's."""
    if baseline:
        return "(reference)"
    if learned_objective(last_excess) is False:
        return f"no: loss excess ≥ {DID_NOT_LEARN_EXCESS:g}"
    if not math.isfinite(band_gain):
        return ""
    return "yes" if band_gain >= 0.05 else "no clear gain"


def format_monitors(records: list[dict[str, Any]]) -> str:
    """Per cell (mean over seeds): slice-level monitors first -> last, and the weak-set probes."""
    means = monitor_means(records)
    base = {e: v.get("weak_band_auc", math.nan) for (m, s, e), v in means.items() if m == BASELINE}

    def f(v: dict, k: str) -> str:
        x = v.get(k, math.nan)
        return "" if not math.isfinite(x) else f"{x:.2f}"

    lines = ["| method | encoder | kNN bal. acc. (first → last) | position R² (last) | eff. rank (last) | "
             "loss excess (last) | weak band-probe AUC | weak mean-pool AUC | learned? |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for (m, s, e), v in means.items():
        band, ref = v.get("weak_band_auc", math.nan), base.get(e, math.nan)
        verdict = learned_verdict(m == BASELINE, v.get("loss_excess_last"), band - ref)
        knn = f"{f(v, 'knn_bal_acc_first')} → {f(v, 'knn_bal_acc_last')}" if "knn_bal_acc_last" in v else ""
        lines.append(f"| {row_label(m, s)} | {e} | {knn} | {f(v, 'position_r2_last')} | {f(v, 'effective_rank_last')} | "
                     f"{f(v, 'loss_excess_last')} | {f(v, 'weak_band_auc')} | {f(v, 'weak_mean_auc')} | {verdict} |")
    return "\n".join(lines)


def paired(records: list[dict[str, Any]], a: Row, b: Row, encoder: str, protocol: str, n_boot: int = 2000,
           label_size: str | None = None) -> dict[str, Any] | None:
    """`stats.paired_auc_difference` of row a minus row b: out-of-fold scores of the seeds both ran
    (seed-matched: the same folds and, for random init, the same init seed), every CV repeat a row."""
    from ..evaluation.stats import paired_auc_difference

    def oof(row: Row) -> dict[int, list]:
        out = {}
        for r in records:
            if (r["method"], sigma_from_json(r.get("sigma")), r["encoder"], r["protocol"]) == (*row, encoder, protocol):
                src = r if label_size is None else (r.get("label_efficiency") or {}).get(label_size)
                if src and "oof_probability" in src:
                    out[r["seed"]] = (src["oof_probability"], r["labels"])
        return out

    sa, sb = oof(a), oof(b)
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        return None
    labels = sa[seeds[0]][1]
    xa = [row for s in seeds for row in sa[s][0]]
    xb = [row for s in seeds for row in sb[s][0]]
    res = paired_auc_difference(np.array(labels), np.array(xa), np.array(xb), n_boot=n_boot, seed=0)
    return dict(res, seeds=len(seeds))


def _fmt_diff(d: dict[str, Any] | None) -> str:
    if d is None:
        return ""
    mark = "resolved" if d["resolved"] else "not resolved"
    return f"{d['difference']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], p = {d['p_value']:.3f} ({mark})"


def comparison_rows(records: list[dict[str, Any]], encoder: str) -> list[Row]:
    """The rows compared: every method once; WSP and positional at their monitor-chosen sigma."""
    rows, _ = rows_and_columns([r for r in records if r["encoder"] == encoder])
    chosen = chosen_sigmas(records, encoder)
    return [(m, s) for m, s in rows if m not in SIGMA_METHODS or s is None or chosen.get(m) == s]


def format_comparisons(records: list[dict[str, Any]], encoder: str, protocols: list[str]) -> str:
    """Paired AUC differences (95% patient-level bootstrap CI, paired test) vs random init and vs SupCon."""
    rows = comparison_rows(records, encoder)
    lines = ["| method | protocol | − random init | − SupCon |", "| --- | --- | --- | --- |"]
    for row in rows:
        if row[0] == BASELINE:
            continue
        for protocol in protocols:
            vs_none = paired(records, row, (BASELINE, None), encoder, protocol)
            vs_sup = None if row[0] == SUPCON else paired(records, row, (SUPCON, None), encoder, protocol)
            if vs_none is None and vs_sup is None:  # e.g. a method that was not fine-tuned
                continue
            lines.append(f"| {row_label(*row)} | {protocol} | {_fmt_diff(vs_none)} | {_fmt_diff(vs_sup)} |")
    return "\n".join(lines)


def primary_endpoint(records: list[dict[str, Any]], encoder: str, protocol: str = "frozen_bands") -> dict[str, Any] | None:
    """The pre-registered endpoint: paired `protocol` AUC of WSP at the monitor-chosen sigma minus SupCon."""
    sigma = chosen_sigmas(records, encoder).get("wsp")
    if sigma is None:
        return None
    d = paired(records, ("wsp", sigma), (SUPCON, None), encoder, protocol)
    return None if d is None else dict(d, sigma=sigma, protocol=protocol)


def label_efficiency(records: list[dict[str, Any]], encoder: str, protocol: str) -> dict[Row, dict[str, tuple]]:
    """{row: {n: (mean fold AUC, std, mean training patients)}} of the frozen probe's label-efficiency curve
    ("all" = the full training folds)."""
    out: dict[Row, dict[str, tuple]] = {}
    for row in comparison_rows(records, encoder):
        rs = [r for r in records if (r["method"], sigma_from_json(r.get("sigma")), r["encoder"], r["protocol"])
              == (*row, encoder, protocol)]
        if not rs:
            continue
        sizes = sorted({n for r in rs for n in (r.get("label_efficiency") or {})}, key=int)
        curve = {}
        for n in sizes:
            aucs = [a for r in rs for a in r["label_efficiency"].get(n, {}).get("fold_auc", [])]
            ns = [a for r in rs for a in r["label_efficiency"].get(n, {}).get("n_train", [])]
            curve[n] = (*mean_std(aucs), float(np.mean(ns)) if ns else math.nan)
        aucs = [a for r in rs for a in r["fold_auc"]]
        curve["all"] = (*mean_std(aucs), math.nan)
        out[row] = curve
    return out


def format_label_efficiency(records: list[dict[str, Any]], encoder: str, protocol: str) -> str:
    curves = label_efficiency(records, encoder, protocol)
    if not curves:
        return ""
    sizes = list(next(iter(curves.values())))
    lines = ["| method | " + " | ".join(f"n = {n}" for n in sizes) + " |", "| --- |" + " ---: |" * len(sizes)]
    for row, curve in curves.items():
        lines.append(f"| {row_label(*row)} | " + " | ".join(
            f"{curve[n][0]:.3f} ± {curve[n][1]:.3f}" if n in curve else "" for n in sizes) + " |")
    return "\n".join(lines)
