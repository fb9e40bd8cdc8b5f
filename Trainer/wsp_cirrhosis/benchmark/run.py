"""Method x sigma x encoder x seed grid: pretrain, evaluate -> results.json / .md / .png (issue 12).

Each grid cell pretrains one encoder on the weak-labelled cohort (none for method "none", the
random-init baseline), then evaluates it on the histology cohort with repeated stratified
cross-validation (`crossval.evaluate_repeated`: frozen, frozen_bands, finetune, and the frozen
probes' label-efficiency curve). Out-of-fold scores are kept so methods can be compared patient
by patient (`report`). Each cell also records its pretraining monitors and a
position-aware weak-set probe (`monitors`). `OUT/results.json` (one record per cell and
protocol) is rewritten atomically after every cell, so `--resume` skips finished cells; the
report and plots are rebuilt from it each time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..config import PATIENT_HEADS, BenchmarkConfig, EvaluateConfig, PretrainConfig, TrainConfig
from ..files import to_dict
from ..errors import ConfigError, InputError
from ..evaluation.crossval import evaluate_repeated
from ..evaluation.evaluate import head_protocol, parse_protocols, protocol_head
from .grid import BASELINE, Cell, parse_grid, parse_label_sizes, record_key, sigma_to_json
from .monitors import MONITOR_FRACTION, cell_monitors, held_out_weak
from .outputs import write_reports
from .report import format_table

log = logging.getLogger("wsp_cirrhosis")

OUTPUTS = ("results.json", "results.md", "results.png", "sigma.png", "label_efficiency.png", "config.json")
# Settings that change the numbers: a --resume with different values would mix incomparable cells.
RESUME_FIELDS = ("weak", "strong", "epochs", "slices", "position_groups", "finetune_epochs", "finetune_slices",
                 "bag_size", "monitor_manifest", "folds", "cv_repeats", "bands", "label_sizes", "batch_size", "lr", "head_norm", "finetune_lr",
                 "preprocess")

NEWER_FIELDS = ("bag_size", "monitor_manifest")  # absent from older config.json files: their defaults held then

__all__ = ["Cell", "parse_grid", "run_benchmark", "run_cell", "pretrain_config", "finetune_config"]


def run_benchmark(cfg: BenchmarkConfig) -> int:
    """`wsp-cirrhosis benchmark`: run (or resume) the grid; write results.json, results.md, plots."""
    from ..data.preprocess import load_cohort
    from ..files import write_json_atomic
    from ..progress import track
    from ..provenance import git_revision, software_versions

    cells = parse_grid(cfg)
    protocols = expand_heads(parse_protocols(cfg.protocols), cfg.patient_heads)
    out = Path(cfg.out)
    records = _prepare_output(cfg, out)
    overlap = _check_overlap(cfg)
    write_json_atomic(out / "config.json", {"config": to_dict(cfg), "versions": software_versions(),
                                            "git_revision": git_revision(), "overlap": overlap})
    done = {record_key(r) for r in records}
    todo = [(c, [p for p in protocols if c.key(p) not in done]) for c in cells]
    todo = [(c, ps) for c, ps in todo if ps]
    log.info("benchmark: %d cells, %d to run (%d records already in %s)", len(cells), len(todo), len(records), out)
    start = time.monotonic()
    weak = strong = monitor = None
    if todo:
        strong = load_cohort(cfg.strong, cfg.preprocess, cache_dir=cfg.cache_dir, require="histo")
        weak = load_cohort(cfg.weak, cfg.preprocess, cache_dir=cfg.cache_dir, require="weak")
        if cfg.monitor_manifest is not None:
            monitor = load_cohort(cfg.monitor_manifest, cfg.preprocess, cache_dir=cfg.cache_dir, require="weak")
    cohort = _cohort_summary(cfg, weak, strong, records, overlap, monitor)
    for cell, cell_protocols in track(todo, desc="benchmark cells"):
        records += run_cell(cell, cfg, weak, strong, out, cell_protocols, monitor)
        write_json_atomic(out / "results.json", records)
        write_reports(records, cfg, out, cohort, time.monotonic() - start)
    write_json_atomic(out / "results.json", records)
    write_reports(records, cfg, out, cohort, time.monotonic() - start)
    print(format_table(records))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}")
    return 0


def expand_heads(protocols: list[str], heads: str) -> list[str]:
    """The finetune protocol once per patient head of ``--patient-heads`` (finetune, finetune_bands, ...).

    Raises:
        ConfigError: an unknown head, or heads without the finetune protocol.
    """
    names = [h.strip() for h in heads.split(",") if h.strip()] or ["mean"]
    bad = [h for h in names if h not in PATIENT_HEADS]
    if bad:
        raise ConfigError(f"--patient-heads: unknown {', '.join(bad)}; choose from {', '.join(PATIENT_HEADS)}")
    if names != ["mean"] and "finetune" not in protocols:
        raise ConfigError("--patient-heads: needs the finetune protocol (--protocols ...,finetune)")
    out: list[str] = []
    for p in protocols:
        out += [head_protocol(h) for h in dict.fromkeys(names)] if p == "finetune" else [p]
    return out


def _check_overlap(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Refuse histology patients that are also in the weak set (overlap.check_manifests, issue 10), and
    monitor patients that are trained on."""
    from ..data.overlap import check_held_out, check_manifests

    shared = check_manifests(cfg.weak, cfg.strong, cfg.cache_dir, cfg.cache_dir, cfg.allow_overlap)
    if cfg.monitor_manifest is not None:
        check_held_out(cfg.weak, cfg.monitor_manifest, cfg.cache_dir)
    return {"checked": True, "overlap": shared, "allowed": bool(cfg.allow_overlap)}


def _prepare_output(cfg: BenchmarkConfig, out: Path) -> list[dict[str, Any]]:
    """Check the output folder against --force / --resume; return the records to keep."""
    import json

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if cfg.resume and cfg.force:
        raise ConfigError("--resume and --force exclude each other")
    busy = out.is_dir() and any(out.iterdir())
    if busy and not (cfg.resume or cfg.force):
        raise InputError(f"--out {out}: folder exists and is not empty; "
                         "pass --resume to continue it or --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.force:  # only what a benchmark writes: never someone else's files in that folder
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "runs", ignore_errors=True)
        return []
    if not cfg.resume or not (out / "results.json").exists():
        return []
    try:
        records = json.loads((out / "results.json").read_text())
        saved = json.loads((out / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"--resume: cannot read {out / 'results.json'} / config.json ({exc}); "
                         "use --force to start over") from None
    now = to_dict(cfg)
    # a field newer than the saved config (bag_size) had its default then
    changed = [k for k in RESUME_FIELDS if saved.get(k, now.get(k) if k in NEWER_FIELDS else None) != now.get(k)]
    if changed:
        raise ConfigError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from "
                          f"{out / 'config.json'}; results would not be comparable (use a new --out or --force)")
    return records


def _rounded(values: Any, digits: int = 5) -> Any:
    """Floats (nested in lists/dicts) rounded: keeps results.json small."""
    if isinstance(values, float):
        return round(values, digits)
    if isinstance(values, list):
        return [_rounded(v, digits) for v in values]
    if isinstance(values, dict):
        return {k: _rounded(v, digits) for k, v in values.items()}
    return values


def run_cell(cell: Cell, cfg: BenchmarkConfig, weak: Any, strong: Any, out: Path,
             protocols: list[str], monitor: Any = None) -> list[dict[str, Any]]:
    """Pretrain (unless "none") and evaluate one cell; one record per protocol.

    ``monitor``: the ``--monitor-manifest`` patients (None: the held-out share of the weak set).
    """
    from ..training.pretrain import pretrain

    start = time.monotonic()
    source: str | Path = BASELINE
    run_dir: str | None = None
    reused = False
    if cell.method != BASELINE:
        run_path = out / cell.run_name
        if (run_path / "encoder.pt").is_file():  # finished by an interrupted benchmark: reuse it
            source, reused = run_path, True
        else:
            resume = (run_path / "checkpoint.pt").is_file()
            source = Path(pretrain(pretrain_config(cfg, cell, run_path, resume, n_patients=len(weak)), weak, monitor))
        run_dir = os.path.relpath(source, out)
    pretrain_seconds = time.monotonic() - start
    train_cfg = finetune_config(cfg, cell.seed)
    held = held_out_weak(weak) if monitor is None else monitor
    monitors = cell_monitors(source, cell, held, cfg.bands, train_cfg.device, cfg.batch_size)
    result = evaluate_repeated(source, strong, cfg.folds, cfg.cv_repeats, protocols, train_cfg, cell.seed,
                               cell.encoder, cfg.finetune_slices, cfg.bands, parse_label_sizes(cfg), cfg.bag_size)
    records = []
    for protocol in protocols:
        res = result["protocols"][protocol]
        records.append(_rounded({
            "method": cell.method, "sigma": sigma_to_json(cell.sigma), "encoder": cell.encoder,
            "seed": cell.seed, "protocol": protocol, "patient_head": protocol_head(protocol),
            **{k: v for k, v in res.items() if k != "seconds"},
            "folds": cfg.folds, "cv_repeats": cfg.cv_repeats, "fold_seeds": result["fold_seeds"],
            "n_patients": result["n_patients"], "n_positive": result["n_positive"], "labels": result["labels"],
            "run_dir": run_dir, "pretrain_seconds": round(pretrain_seconds, 3), "pretrain_reused": reused,
            "evaluate_seconds": res["seconds"], "monitors": monitors,
        }))
        log.info("%s %s seed %d %s: fold AUC %.3f ± %.3f, pooled OOF AUC %.3f", cell.label, cell.encoder, cell.seed,
                 protocol, res["auc_mean"], res["auc_std"], res["pooled_auc"])
    return records


def pretrain_config(cfg: BenchmarkConfig, cell: Cell, run_path: Path, resume: bool = False,
                    n_patients: int | None = None) -> PretrainConfig:
    """Pretraining settings of a cell; a folder left without a checkpoint is started afresh.

    An epoch is one pass over the ``n_patients`` weak patients (in slices); the head's normalisation is
    the benchmark's ``head_norm`` (BatchNorm by default: with the paper's plain head, short runs leave
    SupCon and wide-sigma WSP at the collapsed loss, docs/training.md); a
    fixed `MONITOR_FRACTION` of the weak patients is held out for the monitors (the same patients
    in every cell: the split depends only on the weak labels; ``--monitor-manifest`` replaces them
    by a separate set and every weak patient is trained on), so every cell's monitors, and the
    sigma chosen from them, are measured on patients no encoder was trained on. The slice-level
    monitors run at initialisation and after the last epoch only (they cost a pass over ~2400 slices).
    """
    extra: dict[str, Any] = {"sigma": cell.sigma} if cell.sigma is not None else {}
    per_epoch = max(1, n_patients or cfg.batch_size)
    epochs = -(-cfg.slices // per_epoch) if cfg.slices else cfg.epochs  # monitors after the last epoch only
    return PretrainConfig(
        manifest=cfg.weak, out=run_path, method=cell.method, encoder=cell.encoder,
        cache_dir=cfg.cache_dir, preprocess=cfg.preprocess, monitor_fraction=MONITOR_FRACTION, head_norm=cfg.head_norm,
        monitor_manifest=cfg.monitor_manifest,
        monitor_every=epochs, slices_per_epoch=per_epoch, slices=cfg.slices, position_groups=cfg.position_groups,
        train=TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cell.seed,
                          device=cfg.device, bf16=cfg.bf16, resume=resume, force=not resume),
        **extra,
    )


def finetune_config(cfg: BenchmarkConfig, seed: int) -> TrainConfig:
    """Fine-tuning settings of a cell: EvaluateConfig's defaults with the benchmark's epochs, lr, seed, device."""
    default = next(f for f in dataclasses.fields(EvaluateConfig) if f.name == "train").default_factory()
    return dataclasses.replace(default, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, seed=seed, device=cfg.device,
                               bf16=cfg.bf16)


def is_synthetic(manifest: Path) -> bool:
    """True when the manifest sits beside a `cohort.json` written by `wsp-cirrhosis synth`."""
    return (Path(manifest).parent / "cohort.json").is_file()


def _cohort_summary(cfg: BenchmarkConfig, weak: Any, strong: Any, records: list[dict[str, Any]],
                    overlap: dict[str, Any], monitor: Any = None) -> dict[str, Any]:
    import json

    summary: dict[str, Any] = {"synthetic": is_synthetic(cfg.weak) or is_synthetic(cfg.strong),
                               "overlap": overlap}
    meta = Path(cfg.strong).parent / "cohort.json"
    if meta.is_file():
        try:
            summary["signs"] = json.loads(meta.read_text()).get("config", {}).get("signs")
        except (OSError, ValueError, AttributeError):
            pass
    if weak is not None:
        summary["weak_patients"] = len(weak)
        summary["weak_slices"] = int(sum(len(p.slices) for p in weak))
        summary["monitor_patients"] = len(held_out_weak(weak) if monitor is None else monitor)
    if strong is not None:
        summary["histo_patients"] = len(strong)
        summary["histo_positive"] = int(sum(int(p.histo_label) for p in strong))
    elif records:
        summary["histo_patients"] = records[0]["n_patients"]
        summary["histo_positive"] = records[0]["n_positive"]
    return summary
