"""Method x encoder x seed grid (+ WSP sigma ablation): pretrain, evaluate -> results.json / .md / .png.

Each grid cell pretrains one encoder on the weak-labelled cohort (none for method "none", the
random-init baseline), then evaluates it on the histology cohort with every protocol of
`evaluate.evaluate_encoder`. `OUT/results.json` (a list of records, one per cell and protocol)
is rewritten atomically after every cell, so `--resume` skips finished cells; the table and
plots are rebuilt from it each time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .config import ENCODER_NAMES, METHODS, BenchmarkConfig, EvaluateConfig, PretrainConfig, TrainConfig, to_dict
from .errors import ConfigError, InputError
from .evaluate import evaluate_encoder, mean_std, parse_protocols

log = logging.getLogger("wsp_cirrhosis")
_PRETRAIN_DEFAULTS = PretrainConfig(manifest=Path("-"), out=Path("-"))

BASELINE = "none"  # random init, no pretraining
OUTPUTS = ("results.json", "results.md", "results.png", "sigma.png", "config.json")
# Settings that change the numbers: a --resume with different values would mix incomparable cells.
RESUME_FIELDS = ("weak", "strong", "epochs", "finetune_epochs", "finetune_slices", "folds", "batch_size", "lr",
                 "preprocess")


@dataclass(frozen=True)
class Cell:
    """One grid cell: a pretraining method (or "none") on one encoder with one seed.

    `sigma` is set only on the WSP sigma-ablation rows; main-grid rows use PretrainConfig's default.
    """

    method: str
    encoder: str
    seed: int
    sigma: Optional[float] = None

    @property
    def label(self) -> str:
        """Row name in the table: the method, plus sigma on ablation rows."""
        return self.method if self.sigma is None else f"{self.method}, σ = {format_sigma(self.sigma)}"

    @property
    def run_name(self) -> str:
        """Pretrain run folder, relative to OUT."""
        method = self.method if self.sigma is None else f"{self.method}-sigma{format_sigma(self.sigma)}"
        return f"runs/{method}/{self.encoder}/seed{self.seed}"

    def key(self, protocol: str) -> tuple:
        return (self.method, sigma_to_json(self.sigma), self.encoder, self.seed, protocol)


def format_sigma(sigma: float) -> str:
    return "inf" if math.isinf(sigma) else f"{sigma:g}"


def sigma_to_json(sigma: float | None) -> float | str | None:
    """JSON form of sigma: inf as the string "inf" (as in config.to_dict), None stays null."""
    return None if sigma is None else ("inf" if math.isinf(sigma) else float(sigma))


def sigma_from_json(value: Any) -> float | None:
    return None if value is None else float(value)


def _split(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    return list(dict.fromkeys(items))


def parse_grid(cfg: BenchmarkConfig) -> list[Cell]:
    """The cells of the benchmark, seed-major (a whole table per seed), ablation rows after each seed.

    Raises:
        ConfigError: an unknown method or encoder, a non-integer seed, a bad sigma, an empty list.
    """
    methods = _split(cfg.methods)
    encoders = _split(cfg.encoders)
    valid = (BASELINE,) + METHODS
    for flag, names, allowed in (("--methods", methods, valid), ("--encoders", encoders, ENCODER_NAMES)):
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise ConfigError(f"{flag} {','.join(names) or '(empty)'}: unknown {bad}; choose from {', '.join(allowed)}")
    try:
        seeds = [int(s) for s in _split(cfg.seeds)]
        sigmas = [float(s) for s in _split(cfg.sigmas)]
    except ValueError as exc:
        raise ConfigError(f"--seeds {cfg.seeds!r} / --sigmas {cfg.sigmas!r}: {exc}") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed, e.g. 0,1,2")
    if any(not s > 0 for s in sigmas):
        raise ConfigError(f"--sigmas {cfg.sigmas}: every sigma must be > 0 (inf allowed)")
    cells = []
    for seed in seeds:
        for encoder in encoders:
            cells += [Cell(m, encoder, seed) for m in methods]
            cells += [Cell("wsp", encoder, seed, s) for s in sigmas]
    return cells


def run_benchmark(cfg: BenchmarkConfig) -> int:
    """`wsp-cirrhosis benchmark`: run (or resume) the grid; write results.json, results.md, plots."""
    from .cache import load_cohort
    from .files import write_json_atomic
    from .progress import track
    from .provenance import git_revision, software_versions

    cells = parse_grid(cfg)
    protocols = parse_protocols(cfg.protocols)
    out = Path(cfg.out)
    records = _prepare_output(cfg, out)
    write_json_atomic(out / "config.json", {"config": to_dict(cfg), "versions": software_versions(),
                                            "git_revision": git_revision()})
    done = {_record_key(r) for r in records}
    todo = [(c, [p for p in protocols if c.key(p) not in done]) for c in cells]
    todo = [(c, ps) for c, ps in todo if ps]
    log.info("benchmark: %d cells, %d to run (%d records already in %s)", len(cells), len(todo), len(records), out)
    start = time.monotonic()
    weak = strong = None
    if todo:
        strong = load_cohort(cfg.strong, cfg.preprocess, cache_dir=cfg.cache_dir, require="histo")
        if any(c.method != BASELINE for c, _ in todo):
            weak = load_cohort(cfg.weak, cfg.preprocess, cache_dir=cfg.cache_dir, require="weak")
    cohort = _cohort_summary(cfg, weak, strong, records)
    for cell, cell_protocols in track(todo, desc="benchmark cells"):
        records += run_cell(cell, cfg, weak, strong, out, cell_protocols)
        write_json_atomic(out / "results.json", records)
        write_reports(records, cfg, out, cohort, time.monotonic() - start)
    write_json_atomic(out / "results.json", records)
    write_reports(records, cfg, out, cohort, time.monotonic() - start)
    print(format_table(records))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}")
    return 0


def _record_key(r: dict[str, Any]) -> tuple:
    return (r["method"], sigma_to_json(sigma_from_json(r.get("sigma"))), r["encoder"], r["seed"], r["protocol"])


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
    changed = [k for k in RESUME_FIELDS if saved.get(k) != now.get(k)]
    if changed:
        raise ConfigError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from "
                          f"{out / 'config.json'}; results would not be comparable (use a new --out or --force)")
    return records


def run_cell(cell: Cell, cfg: BenchmarkConfig, weak: Any, strong: Any, out: Path,
             protocols: list[str]) -> list[dict[str, Any]]:
    """Pretrain (unless "none") and evaluate one cell; one record per protocol."""
    from .pretrain import pretrain

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
            source = Path(pretrain(pretrain_config(cfg, cell, run_path, resume, n_patients=len(weak)), weak))
        run_dir = os.path.relpath(source, out)
    pretrain_seconds = time.monotonic() - start
    train_cfg = finetune_config(cfg, cell.seed)
    result = evaluate_encoder(source, strong, cfg.folds, protocols, train_cfg, cell.seed, cell.encoder,
                              cfg.finetune_slices)
    records = []
    for protocol in protocols:
        res = result["protocols"][protocol]
        records.append({
            "method": cell.method, "sigma": sigma_to_json(cell.sigma), "encoder": cell.encoder,
            "seed": cell.seed, "protocol": protocol,
            "fold_auc": res["fold_auc"], "fold_balanced_accuracy": res["fold_balanced_accuracy"],
            "fold_threshold": res["fold_threshold"],
            "auc_mean": res["auc_mean"], "auc_std": res["auc_std"],
            "balanced_accuracy_mean": res["balanced_accuracy_mean"],
            "balanced_accuracy_std": res["balanced_accuracy_std"], "pooled_auc": res["pooled_auc"],
            "folds": cfg.folds, "n_patients": result["n_patients"], "n_positive": result["n_positive"],
            "run_dir": run_dir, "pretrain_seconds": round(pretrain_seconds, 3), "pretrain_reused": reused,
            "evaluate_seconds": res["seconds"],
        })
        log.info("%s %s seed %d %s: AUC %.3f ± %.3f", cell.label, cell.encoder, cell.seed, protocol,
                 res["auc_mean"], res["auc_std"])
    return records


def pretrain_config(cfg: BenchmarkConfig, cell: Cell, run_path: Path, resume: bool = False,
                    n_patients: int | None = None) -> PretrainConfig:
    """Pretraining settings of a cell; a folder left without a checkpoint is started afresh.

    Until the benchmark sets its own schedule (issue 12): an epoch is one pass over the
    ``n_patients`` weak patients, no monitor hold-out, the paper's head (the earlier behaviour).
    """
    extra: dict[str, Any] = {"sigma": cell.sigma} if cell.sigma is not None else {}
    return PretrainConfig(
        manifest=cfg.weak, out=run_path, method=cell.method, encoder=cell.encoder,
        cache_dir=cfg.cache_dir, preprocess=cfg.preprocess, monitor_fraction=0.0, head_norm="none",
        slices_per_epoch=max(1, n_patients or cfg.batch_size),
        train=TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cell.seed,
                          device=cfg.device, bf16=cfg.bf16, resume=resume, force=not resume),
        **extra,
    )


def finetune_config(cfg: BenchmarkConfig, seed: int) -> TrainConfig:
    """Fine-tuning settings of a cell: EvaluateConfig's defaults with the benchmark's epochs, seed, device."""
    default = next(f for f in dataclasses.fields(EvaluateConfig) if f.name == "train").default_factory()
    return dataclasses.replace(default, epochs=cfg.finetune_epochs, seed=seed, device=cfg.device, bf16=cfg.bf16)


# ---------------------------------------------------------------- reports

def _rows_and_columns(records: list[dict[str, Any]]) -> tuple[list[tuple], list[tuple[str, str]]]:
    """Row keys (method, sigma) in first-seen order (ablation rows sorted by sigma) and (encoder, protocol) columns."""
    main = list(dict.fromkeys((r["method"], None) for r in records if r.get("sigma") is None))
    ablation = sorted({(r["method"], sigma_from_json(r["sigma"])) for r in records if r.get("sigma") is not None},
                      key=lambda k: k[1])
    columns = list(dict.fromkeys((r["encoder"], r["protocol"]) for r in records))
    return main + ablation, columns


def _row_label(method: str, sigma: float | None) -> str:
    if method == BASELINE:
        return "none (random init)"
    return Cell(method, "", 0, sigma).label


def aggregate(records: list[dict[str, Any]], metric: str = "fold_auc") -> dict[tuple, tuple[float, float, int, int]]:
    """(method, sigma, encoder, protocol) -> (mean, std, number of folds, number of seeds) over all folds and seeds."""
    pooled: dict[tuple, list[float]] = {}
    seeds: dict[tuple, set] = {}
    for r in records:
        key = (r["method"], sigma_from_json(r.get("sigma")), r["encoder"], r["protocol"])
        pooled.setdefault(key, []).extend(r[metric])
        seeds.setdefault(key, set()).add(r["seed"])
    return {k: (*mean_std(v), len(v), len(seeds[k])) for k, v in pooled.items()}


def format_table(records: list[dict[str, Any]], metric: str = "fold_auc") -> str:
    """Markdown table: rows = method (+ sigma), columns = encoder x protocol, "mean ± std" of `metric`
    over all folds of all seeds; the best mean per column in bold."""
    rows, columns = _rows_and_columns(records)
    stats = aggregate(records, metric)
    lines = ["| method | " + " | ".join(f"{enc} {prot}" for enc, prot in columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    best = {c: max((stats[(m, s, *c)][0] for m, s in rows if (m, s, *c) in stats), default=None) for c in columns}
    for method, sigma in rows:
        cells = []
        for col in columns:
            st = stats.get((method, sigma, *col))
            text = "" if st is None else f"{st[0]:.3f} ± {st[1]:.3f}"
            cells.append(f"**{text}**" if st is not None and abs(st[0] - best[col]) < 5e-4 else text)
        lines.append(f"| {_row_label(method, sigma)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _cohort_summary(cfg: BenchmarkConfig, weak: Any, strong: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"synthetic": is_synthetic(cfg.weak) or is_synthetic(cfg.strong)}
    if weak is not None:
        summary["weak_patients"] = len(weak)
        summary["weak_slices"] = int(sum(len(p.slices) for p in weak))
    if strong is not None:
        summary["histo_patients"] = len(strong)
        summary["histo_positive"] = int(sum(int(p.histo_label) for p in strong))
    elif records:
        summary["histo_patients"] = records[0]["n_patients"]
        summary["histo_positive"] = records[0]["n_positive"]
    return summary


def is_synthetic(manifest: Path) -> bool:
    """True when the manifest sits beside a `cohort.json` written by `wsp-cirrhosis synth`."""
    return (Path(manifest).parent / "cohort.json").is_file()


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

    from .provenance import cpu_model

    cpu = cpu_model()
    text = f"CPU {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
    use_cuda = torch.cuda.is_available() and device != "cpu"
    text += f"; GPU {torch.cuda.get_device_name(0)}" if use_cuda else "; no GPU (CPU run)"
    return text


def format_report(records: list[dict[str, Any]], cfg: BenchmarkConfig, cohort: dict[str, Any], wall_s: float) -> str:
    """results.md: header (data, command, machine, time, protocol) + the AUC table (+ balanced accuracy)."""
    from . import __version__
    from .provenance import git_revision

    seeds = sorted({r["seed"] for r in records})
    compute = sum(r["pretrain_seconds"] for r in records if r["protocol"] == records[0]["protocol"])
    compute += sum(r["evaluate_seconds"] for r in records)
    data = f"pretraining `{cfg.weak}`"
    if "weak_patients" in cohort:
        data += f" ({cohort['weak_patients']} patients, {cohort['weak_slices']} slices)"
    data += f"; evaluation `{cfg.strong}`"
    if "histo_patients" in cohort:
        data += f" ({cohort['histo_patients']} patients, {cohort['histo_positive']} with cirrhosis)"
    lines = ["# WSP cirrhosis benchmark", ""]
    if cohort.get("synthetic"):
        lines += ["> **Synthetic phantom cohort** (`wsp-cirrhosis synth`), **not patient data**: these numbers "
                  "check that the pipeline runs end to end; they say nothing about the method on real CT.", ""]
    lines += [
        f"- Data: {data}",
        f"- Command: `{format_command(cfg)}`",
        f"- Machine: {machine_summary(cfg.device)}",
        f"- Wall time: {wall_s:.0f} s for this invocation; {compute:.0f} s of pretraining + evaluation over all cells",
        f"- Protocol: {cfg.folds}-fold cross-validation stratified on histology, over patients; pretraining "
        f"{_plural(cfg.epochs, 'epoch')} (batch {cfg.batch_size}, lr {cfg.lr:g}), "
        f"fine-tuning {_plural(cfg.finetune_epochs, 'epoch')} per fold; "
        f"images {cfg.preprocess.image_size} px; seeds {', '.join(map(str, seeds))}",
        f"- Loss: tau {_PRETRAIN_DEFAULTS.tau:g}; sigma {_PRETRAIN_DEFAULTS.sigma:g} for wsp and positional "
        f"unless a row says otherwise (sigma = inf: no positional kernel); PCL window {_PRETRAIN_DEFAULTS.threshold:g}",
        "- Cells: patient-level AUC, mean ± std over all folds of all seeds (n = folds × seeds); "
        "frozen = logistic regression on mean-pooled features, finetune = whole network; best per column in bold",
        f"- Software: wsp_cirrhosis {__version__}, git {git_revision() or 'unknown'}",
        "",
        "## AUC",
        "",
        format_table(records),
        "",
        "## Balanced accuracy (Youden threshold from the training folds)",
        "",
        format_table(records, "fold_balanced_accuracy"),
        "",
    ]
    return "\n".join(lines)


def write_reports(records: list[dict[str, Any]], cfg: BenchmarkConfig, out: Path, cohort: dict[str, Any],
                  wall_s: float) -> None:
    """results.md, results.png and (with ablation rows) sigma.png, each written atomically."""
    from .files import write_text_atomic

    if not records:
        return
    write_text_atomic(out / "results.md", format_report(records, cfg, cohort, wall_s))
    plot_results(records, out / "results.png")
    if any(r.get("sigma") is not None for r in records):
        plot_sigma(records, out / "sigma.png")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_results(records: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: one group per method row, one bar per encoder x protocol, error bars = std."""
    plt = _pyplot()
    rows, columns = _rows_and_columns(records)
    stats = aggregate(records)
    width = 0.8 / max(len(columns), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) * max(1, len(columns)) ** 0.5 + 2), 4), dpi=120)
    x = np.arange(len(rows))
    for j, (enc, prot) in enumerate(columns):
        vals = [stats.get((m, s, enc, prot), (np.nan, 0.0, 0, 0)) for m, s in rows]
        ax.bar(x + (j - (len(columns) - 1) / 2) * width, [v[0] for v in vals], width,
               yerr=[v[1] for v in vals], capsize=2, label=f"{enc} {prot}")
    ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax.set_xticks(x, [_row_label(m, s) for m, s in rows], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="patient AUC (mean ± std over folds and seeds)", ylim=(0, 1.05))
    ax.yaxis.label.set_fontsize(8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def plot_sigma(records: list[dict[str, Any]], path: Path) -> None:
    """WSP AUC against sigma (log x); sigma = inf (no positional kernel: SupCon) drawn at the right end."""
    plt = _pyplot()
    abl = [r for r in records if r.get("sigma") is not None]
    # Main-grid WSP rows were trained at PretrainConfig's default sigma: they are points of the curve too.
    if _PRETRAIN_DEFAULTS.sigma not in {sigma_from_json(r["sigma"]) for r in abl}:
        abl += [dict(r, sigma=sigma_to_json(_PRETRAIN_DEFAULTS.sigma)) for r in records
                if r["method"] == "wsp" and r.get("sigma") is None]
    stats = aggregate(abl)
    sigmas = sorted({sigma_from_json(r["sigma"]) for r in abl})
    finite = [s for s in sigmas if math.isfinite(s)]
    inf_x = (max(finite) if finite else 1.0) * 4.0
    xs = {s: (s if math.isfinite(s) else inf_x) for s in sigmas}
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for enc, prot in dict.fromkeys((r["encoder"], r["protocol"]) for r in abl):
        pts = [(xs[s], *stats[("wsp", s, enc, prot)][:2]) for s in sigmas if ("wsp", s, enc, prot) in stats]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=2,
                    label=f"{enc} {prot}")
    ax.set_xscale("log")
    ax.set_xticks([xs[s] for s in sigmas], [format_sigma(s) if math.isfinite(s) else "∞" for s in sigmas])
    ax.minorticks_off()
    ax.set(xlabel="σ of the positional kernel (d in [0, 1])", ylabel="patient AUC", ylim=(0, 1.05),
           title="WSP σ ablation")
    ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
