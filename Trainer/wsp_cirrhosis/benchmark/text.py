"""results.md of a benchmark: header (data, command, machine, protocol), the pre-registered primary
endpoint, then the tables of `report`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..config import BenchmarkConfig
from .grid import format_sigma
from .report import (
    _PRETRAIN_DEFAULTS,
    SELECTION_MONITOR,
    _fmt_diff,
    chosen_sigmas,
    format_comparisons,
    format_label_efficiency,
    format_monitors,
    format_table,
    primary_endpoint,
)

ENDPOINT = ("**Primary endpoint (fixed before the numbers):** the paired difference in patient-level AUC of the "
            "`frozen_bands` probe (position-band pooling) between WSP at the σ chosen on the weak set's "
            f"held-out monitor (`{SELECTION_MONITOR}`: weak labels only, never histology) and SupCon "
            "(= WSP at σ = ∞), pooled over seeds and CV repeats, with a patient-level stratified bootstrap 95% CI. "
            "A CI that spans 0 means *not resolved*.")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def format_command(cfg: BenchmarkConfig) -> str:
    """The command line reproducing `cfg`: required flags and every non-default value (no --resume/--force)."""
    parts = ["wsp-cirrhosis benchmark"]

    def add(obj: Any) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name in ("resume", "force"):
                continue
            if f.default_factory is not dataclasses.MISSING:  # nested sub-config with its own defaults
                default_sub = f.default_factory()
                parts.extend(_flag(g.name, getattr(value, g.name)) for g in dataclasses.fields(value)
                             if getattr(value, g.name) != getattr(default_sub, g.name))
            elif f.metadata.get("required") or value != f.default:
                parts.append(_flag(f.name, value))

    add(cfg)
    return " ".join(p for p in parts if p)


def _flag(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else ""
    return f"{flag} {value}"


def machine_summary(device: str) -> str:
    """CPU model, threads and (when used) the GPU: one line for the report header."""
    import torch

    from ..provenance import cpu_model

    text = f"CPU {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
    use_cuda = torch.cuda.is_available() and device != "cpu"
    return text + (f"; GPU {torch.cuda.get_device_name(0)}" if use_cuda else "; no GPU (CPU run)")


def _header(records: list[dict[str, Any]], cfg: BenchmarkConfig, cohort: dict[str, Any], wall_s: float) -> list[str]:
    from .. import __version__
    from ..provenance import git_revision

    seeds = sorted({r["seed"] for r in records})
    compute = sum(r["pretrain_seconds"] for r in records if r["protocol"] == records[0]["protocol"])
    compute += sum(r["evaluate_seconds"] for r in records)
    data = f"pretraining `{cfg.weak}`"
    if "weak_patients" in cohort:
        held = f"{cohort.get('monitor_patients', '?')} held out for the monitors" if cfg.monitor_manifest is None \
            else f"monitors on the {cohort.get('monitor_patients', '?')} patients of `{cfg.monitor_manifest}`"
        data += f" ({cohort['weak_patients']} patients, {cohort['weak_slices']} slices; {held})"
    data += f"; evaluation `{cfg.strong}`"
    if "histo_patients" in cohort:
        data += f" ({cohort['histo_patients']} patients, {cohort['histo_positive']} with cirrhosis)"
    if cohort.get("signs"):
        data += f"; phantom signs: `{cohort['signs']}`"
    ov = cohort.get("overlap") or {}
    overlap = ("checked: no histology patient in the weak set (patient_id and image content)"
               if ov.get("checked") and not ov.get("overlap") else
               f"{len(ov.get('overlap', []))} shared patient(s), allowed by --allow-overlap" if ov.get("checked")
               else "not checked")
    lines = ["# WSP cirrhosis benchmark", ""]
    if cohort.get("synthetic"):
        lines += ["> **Synthetic phantom cohort** (`wsp-cirrhosis synth`), **not patient data**: these numbers "
                  "say how the methods behave on phantoms; they say nothing about the method on real CT.", ""]
    return lines + [
        f"- Data: {data}",
        f"- Weak/histology overlap: {overlap}",
        f"- Command: `{format_command(cfg)}`",
        f"- Machine: {machine_summary(cfg.device)}",
        f"- Wall time: {wall_s:.0f} s for this invocation; {compute:.0f} s of pretraining + evaluation over all cells",
        f"- Protocol: {cfg.folds}-fold stratified CV over patients × {_plural(cfg.cv_repeats, 'repeat')} "
        f"(own fold seed each); pretraining {_plural(cfg.epochs, 'epoch')} (batch {cfg.batch_size}, lr {cfg.lr:g}, "
        f"{'BatchNorm' if cfg.head_norm == 'batch' else 'plain'} projection head), "
        f"fine-tuning {_plural(cfg.finetune_epochs, 'epoch')} per fold (lr {cfg.finetune_lr:g})"
        + (f" ({cfg.finetune_slices} slices per patient and epoch)" if cfg.finetune_slices else "")
        + f"; images {cfg.preprocess.image_size} px; seeds {', '.join(map(str, seeds))}",
        f"- Loss: tau {_PRETRAIN_DEFAULTS.tau:g}; PCL window {_PRETRAIN_DEFAULTS.threshold:g}; WSP and positional run "
        "on the σ grid; SupCon is WSP at σ = ∞ and is listed once, as SupCon",
        f"- Probes: frozen = logistic regression on mean-pooled features; frozen_bands = features averaged within "
        f"{cfg.bands} bands of d and concatenated; finetune = whole network",
        f"- Software: wsp_cirrhosis {__version__}, git {git_revision() or 'unknown'}",
        "",
    ]


def format_report(records: list[dict[str, Any]], cfg: BenchmarkConfig, cohort: dict[str, Any], wall_s: float) -> str:
    """results.md: header, primary endpoint (stated first), AUC table, monitors, paired comparisons, label efficiency."""
    lines = _header(records, cfg, cohort, wall_s)
    encoders = list(dict.fromkeys(r["encoder"] for r in records))
    protocols = list(dict.fromkeys(r["protocol"] for r in records))
    lines += ["## Primary endpoint", "", ENDPOINT, ""]
    for enc in encoders:
        chosen = chosen_sigmas(records, enc)
        d = primary_endpoint(records, enc) if "frozen_bands" in protocols else None
        sig = ", ".join(f"{m} σ = {format_sigma(s)}" for m, s in chosen.items()) or "none (no sigma grid)"
        lines += [f"- {enc}: chosen on the monitors: {sig}. "
                  + (f"WSP − SupCon ({d['protocol']}): {_fmt_diff(d)}, {d['seeds']} seed(s) × {cfg.cv_repeats} "
                     "repeat(s)." if d else "Endpoint not computed (needs WSP, SupCon and frozen_bands).")]
    lines += ["", "## Patient-level AUC", "",
              "Mean ± std of the fold AUCs over all folds, repeats and seeds; after the slash the pooled "
              "out-of-fold AUC (all test folds of a repeat scored together, mean over repeats and seeds). "
              "The two agree when fold models' scores are on one scale.", "",
              format_table(records, pooled=True), "",
              "## Did each method learn? (pretraining monitors, mean over seeds)", "",
              "Slice-level kNN of the weak label pools all slices, most of which carry no sign on the positional "
              "phantom, so it stays near chance (0.33) even for a good encoder. The weak band-probe AUC "
              "(patient level, features pooled within bands of d, held-out weak patients, weak labels only) is the "
              "position-aware view; *learned?* = at least 0.05 above random init's, and never when the loss excess "
              "ends at 0.95 or above (the encoder stayed near the collapsed value of its own objective: that \"no\" is "
              "about the objective; the features can still move, and the probe columns say how far).", "",
              format_monitors(records), ""]
    for enc in encoders:
        lines += [f"## Paired differences ({enc})", "",
                  "AUC difference [95% patient-level bootstrap CI], bootstrap p-value; pooled over seeds and CV "
                  "repeats; *resolved* = the CI excludes 0. WSP and positional at their monitor-chosen σ.", "",
                  format_comparisons(records, enc, protocols), ""]
        for protocol in ("frozen", "frozen_bands"):
            table = format_label_efficiency(records, enc, protocol)
            if table and any(r.get("label_efficiency") for r in records if r["protocol"] == protocol):
                lines += [f"## Label efficiency ({enc} {protocol})", "",
                          "Fold AUC of the probe trained on a stratified subset of n patients of the training "
                          "folds (test folds untouched), mean ± std over folds, repeats and seeds.", "", table, ""]
    lines += ["## Balanced accuracy (Youden threshold from the training folds)", "",
              format_table(records, "fold_balanced_accuracy"), ""]
    return "\n".join(lines)


__all__ = ["ENDPOINT", "format_command", "format_report", "machine_summary"]
