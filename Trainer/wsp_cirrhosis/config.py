"""One frozen dataclass per command; the CLI flags are generated from these fields.

Defaults live here only. Each field's `metadata` carries its help text (and choices);
checks raise ConfigError naming the flag, never `assert`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

METHODS = ("wsp", "positional", "supcon", "simclr", "pcl")
ENCODER_NAMES = ("tinynet", "resnet18")
DEVICES = ("auto", "cpu", "cuda")
RECIPE_NAMES = ("default", "paper")
HEAD_NORMS = ("batch", "none")
SYNTH_SIGNS = ("positional", "global", "none")
PATIENT_HEADS = ("mean", "bands", "attention")  # models.patient_heads; mean = the paper's read
PROGRESS_MODES = ("auto", "bar", "log", "jsonl", "none")  # --progress of predict (progress.progress_callback)


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with CLI help text (and optional `choices`, `flag`, `positional`)."""
    return field(default=default, metadata={"help": help, **extra})


def req(help: str, **extra: Any) -> Any:
    """A required dataclass field (a required flag on the command line)."""
    return field(metadata={"help": help, "required": True, **extra})


def _check_workers(value: Any) -> None:
    """``--workers``: auto or an integer from 0 to 1024."""
    text = str(value).strip().lower()
    if text != "auto" and not (text.isdigit() and int(text) <= 1024):
        raise ConfigError(f"--workers {value}: give auto, or a number of processes from 0 (one per core) to 1024")


def _check_choices(cfg: Any) -> None:
    """Every field of ``cfg`` with ``choices`` holds one of them (configs built in code skip argparse)."""
    for f in dataclasses.fields(cfg):
        value, choices = getattr(cfg, f.name), f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"--{f.name.replace('_', '-')} {value!r}: choose one of {', '.join(choices)}")


def _check_range(name: str, value: float, lo: float | None = None, hi: float | None = None, strict_lo: bool = False) -> None:
    flag = "--" + name.replace("_", "-")
    if lo is not None and (value <= lo if strict_lo else value < lo):
        raise ConfigError(f"{flag} {value}: must be {'>' if strict_lo else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{flag} {value}: must be <= {hi}")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT becomes liver slices; stored in caches and model bundles."""

    window_min_hu: float = opt(-160.0, "lower end of the HU window (liver window W400/L40 by default)")
    window_max_hu: float = opt(240.0, "upper end of the HU window")
    image_size: int = opt(224, "side of the square model input in pixels")
    margin_mm: float = opt(10.0, "margin around the liver bounding box, in mm")
    liver_label: Optional[int] = opt(None, "mask value of the liver; default: every non-zero voxel (required for multi-label masks)")

    def __post_init__(self) -> None:
        if not self.window_max_hu > self.window_min_hu:
            raise ConfigError(f"--window-max-hu {self.window_max_hu} must be above --window-min-hu {self.window_min_hu}")
        _check_range("image_size", self.image_size, 16, 1024)
        _check_range("margin_mm", self.margin_mm, 0.0, 200.0)


@dataclass(frozen=True)
class SynthConfig:
    out: Path = req("output folder of the synthetic cohort")
    patients: int = opt(120, "number of weak-labelled (pretraining) patients")
    histo_patients: int = opt(50, "number of histology-labelled patients (a separate set)")
    cirrhosis_fraction: float = opt(0.3, "fraction of histology patients with cirrhosis (stage 4)")
    size: int = opt(96, "in-plane matrix of the phantoms (voxels)")
    reader_noise: float = opt(0.85, "std of the weak reading around the true stage (0.85 misreads about 25%%; 0 = exact)")
    signs: str = opt("positional", "how the stage shows: positional (only where signs sit along the liver), "
                     "global (whole-liver signs: an easy negative control), none (no effect: a null control)",
                     choices=SYNTH_SIGNS)
    seed: int = opt(0, "random seed")
    id_prefix: str = opt("", "prefix of every patient id and file name (keeps two phantom cohorts' ids apart)")
    force: bool = opt(False, "replace an existing output folder")

    def __post_init__(self) -> None:
        if self.signs not in SYNTH_SIGNS:
            raise ConfigError(f"--signs {self.signs!r}: choose one of {', '.join(SYNTH_SIGNS)}")
        if not all(c.isalnum() or c in "._-" for c in self.id_prefix):
            raise ConfigError(f"--id-prefix {self.id_prefix!r}: use letters, digits, '.', '_' and '-' only")
        _check_range("patients", self.patients, 0)
        _check_range("histo_patients", self.histo_patients, 0)
        _check_range("cirrhosis_fraction", self.cirrhosis_fraction, 0.0, 1.0)
        _check_range("size", self.size, 32, 1024)
        _check_range("reader_noise", self.reader_noise, 0.0, 10.0)


@dataclass(frozen=True)
class PreprocessCmdConfig:
    manifest: Path = req("cohort CSV (patient_id,image,liver_mask,weak_label,histo_label)")
    cache_dir: Optional[Path] = opt(None, "slice cache folder (default: .wsp-cache beside the manifest)")
    preview: Optional[Path] = opt(None, "write a PNG preview of a few patients' slices here")
    skip_bad: bool = opt(False, "skip bad manifest rows / unreadable patients (listed) instead of stopping")
    workers: str = opt("auto", "preprocessing processes: auto (one per CPU core when the cohort is large enough to "
                       "pay for a pool, else 1; the log says which), or a number (0 = one per core, shared by the "
                       "ranks of a machine under torchrun)")
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        _check_workers(self.workers)


MANIFEST_PRESETS = ("none", "lihc")


@dataclass(frozen=True)
class ManifestConfig:
    images: Path = req("folder searched (nested) for CTs: NIfTI, NRRD, MetaImage files and DICOM series")
    out: Path = req("manifest CSV to write (a report <out>.report.txt is written beside it)")
    masks: Optional[Path] = opt(None, "folder of liver masks, paired with the CTs by name (see README)")
    labels: Optional[Path] = opt(None, "CSV/TSV of labels joined on --id-column (with --preset lihc: dataframe_lihc.csv)")
    id_column: str = opt("patient_id", "column of --labels holding the patient id")
    weak_column: str = opt("", "column of --labels holding the weak (radiological) label, an integer class")
    histo_column: str = opt("", "column of --labels holding the histology label, 0/1")
    preset: str = opt("none", "lihc: read --labels as the authors' dataframe_lihc.csv (TCGA-LIHC)", choices=MANIFEST_PRESETS)
    auto_mask: bool = opt(False, "segment livers without a mask with TotalSegmentator (must be installed)")
    device: str = opt("auto", "device for --auto-mask", choices=DEVICES)
    force: bool = opt(False, "replace an existing manifest")

    def __post_init__(self) -> None:
        if self.preset not in MANIFEST_PRESETS:
            raise ConfigError(f"--preset {self.preset!r}: choose one of {', '.join(MANIFEST_PRESETS)}")


@dataclass(frozen=True)
class LihcConfig:
    csv: Path = req("the authors' dataframe_lihc.csv (columns: index, subject, score, class, label)")
    images: Path = req("folder holding the lihc__TCGA-XX-XXXX__<date>__VEN.nii.gz files (nested folders searched)")
    out: Path = req("manifest CSV to write (a report <out>.report.txt is written beside it)")
    masks: Optional[Path] = opt(None, "folder of liver masks, paired with the CTs by name (see README)")
    auto_mask: bool = opt(False, "segment livers without a mask with TotalSegmentator (must be installed)")
    device: str = opt("auto", "device for --auto-mask", choices=DEVICES)
    force: bool = opt(False, "replace an existing manifest")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by pretrain and finetune."""

    epochs: int = opt(40, "number of epochs")
    batch_size: int = opt(64, "slices per batch (global, over all ranks)")
    lr: float = opt(1e-4, "peak learning rate (Adam, cosine schedule)")
    weight_decay: float = opt(1e-5, "Adam weight decay")
    seed: int = opt(0, "random seed (weights, sampling, augmentation)")
    device: str = opt("auto", "auto picks CUDA when available", choices=DEVICES)
    bf16: bool = opt(False, "bfloat16 autocast + channels_last (faster on recent CPUs and GPUs)")
    accumulate: int = opt(1, "split each contrastive batch into this many chunks (gradient caching: same loss, less memory)")
    resume: bool = opt(False, "continue an interrupted run in --out")
    force: bool = opt(False, "replace an existing run folder")

    def __post_init__(self) -> None:
        _check_range("epochs", self.epochs, 1)
        _check_range("batch_size", self.batch_size, 2)
        _check_range("lr", self.lr, 0.0, strict_lo=True)
        _check_range("weight_decay", self.weight_decay, 0.0)
        _check_range("accumulate", self.accumulate, 1)
        if self.resume and self.force:
            raise ConfigError("--resume and --force exclude each other")


@dataclass(frozen=True)
class PretrainConfig:
    manifest: Path = req("weak-labelled cohort CSV")
    out: Path = req("run folder")
    method: str = opt("wsp", "contrastive loss preset", choices=METHODS)
    encoder: str = opt("tinynet", "backbone", choices=ENCODER_NAMES)
    sigma: float = opt(0.1, "width of the positional Gaussian kernel on d in [0, 1] (inf = no position; the "
                       "paper's config: 0.85, in --recipe paper; why 0.1: docs/training.md)")
    tau: float = opt(0.1, "temperature")
    threshold: float = opt(0.1, "PCL position window")
    recipe: str = opt("default", "paper = the paper's exact settings (overrides --lr, --weight-decay, --epochs, "
                      "--batch-size, --slices-per-epoch, --head-norm, --sigma, --position-groups, augmentations; docs/method.md); default = "
                      "the flags as given with this project's augmentations", choices=RECIPE_NAMES)
    head_norm: str = opt("batch", "normalisation in the projection head: batch (SimCLR's; lets label-weighted "
                         "losses leave the collapsed start, docs/training.md) or none (the paper's)", choices=HEAD_NORMS)
    slices_per_epoch: int = opt(2000, "slices per epoch (the paper: 10000); steps per epoch = this / --batch-size, "
                                "rounded up")
    slices: int = opt(0, "training budget in slices seen (0 = --epochs x --slices-per-epoch): sets --epochs (about "
                      "slices / slices per epoch, within a batch per epoch), so runs of any batch size compare at an equal budget")
    position_groups: int = opt(4, "0 = each patient's slice drawn uniformly (the paper's); G > 0 = every batch in G "
                               "groups that share a slice position (close-position partners; docs/training.md)")
    monitor_fraction: float = opt(0.15, "share of the weak-set patients held out (stratified, fixed seed) for the "
                                  "representation monitors; 0 = no monitors")
    monitor_manifest: Optional[Path] = opt(None, "weak-labelled monitor patients, never trained on (replaces --monitor-fraction)")
    monitor_every: int = opt(1, "log the representation monitors every this many epochs (and at the end)")
    cache_dir: Optional[Path] = opt(None, "slice cache folder (default: .wsp-cache beside the manifest)")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=1e-3))
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_range("sigma", self.sigma, 0.0, strict_lo=True)
        _check_range("tau", self.tau, 0.0, strict_lo=True)
        _check_range("threshold", self.threshold, 0.0, 1.0, strict_lo=True)
        _check_range("slices_per_epoch", self.slices_per_epoch, 1)
        _check_range("slices", self.slices, 0)
        _check_range("monitor_fraction", self.monitor_fraction, 0.0, 0.5)
        _check_range("monitor_every", self.monitor_every, 1)
        _check_range("position_groups", self.position_groups, 0, 64)


_HEAD_HELP = ("how a patient is read from its slices: mean (the paper's: mean slice probability, position-blind), bands "
              "(features pooled in bands of liver height) or attention (attention pooling that sees the height)")
_BAG_HELP = "slices per patient bag in each step, one per equal stratum of liver height (bands, attention heads)"


@dataclass(frozen=True)
class FinetuneConfig:
    manifest: Path = req("histology-labelled cohort CSV")
    out: Path = req("run folder")
    init: Optional[str] = opt(None, "pretrain run folder to start from (default: random init; 'none' too)")
    encoder: str = opt("tinynet", "backbone when --init is not given", choices=ENCODER_NAMES)
    freeze: bool = opt(False, "train only the classifier head on frozen features")
    slices_per_patient: int = opt(0, "slices drawn per patient and epoch, histology-balanced (0 = all slices; mean head)")
    patient_head: str = opt("mean", _HEAD_HELP, choices=PATIENT_HEADS)
    bag_size: int = opt(8, _BAG_HELP)
    cache_dir: Optional[Path] = opt(None, "slice cache folder (default: .wsp-cache beside the manifest)")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=32, lr=1e-4))
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        _check_range("slices_per_patient", self.slices_per_patient, 0)
        _check_choices(self)
        _check_range("bag_size", self.bag_size, 1)


@dataclass(frozen=True)
class EvaluateConfig:
    manifest: Path = req("histology-labelled cohort CSV")
    encoder: str = req("pretrain run folder, or 'none' (random init, given --arch)")
    json: Path = req("write the results here (JSON)")
    arch: str = opt("tinynet", "backbone for --encoder none", choices=ENCODER_NAMES)
    folds: int = opt(5, "stratified folds over patients")
    protocols: str = opt("frozen,finetune", "comma-separated: frozen (logistic regression on pooled features), finetune")
    slices_per_patient: int = opt(0, "fine-tuning slices drawn per patient and epoch (0 = all slices)")
    patient_head: str = opt("mean", _HEAD_HELP + " (finetune protocol)", choices=PATIENT_HEADS)
    bag_size: int = opt(8, _BAG_HELP)
    cache_dir: Optional[Path] = opt(None, "slice cache folder (default: .wsp-cache beside the manifest)")
    keep_fold_models: bool = opt(False, "keep the k fine-tuned fold models and their out-of-fold probabilities in "
                                 "<json stem>.folds/ (for export --ensemble / --calibrate)")
    allow_overlap: bool = opt(False, "evaluate even if histology patients are in the encoder's pretraining set "
                              "(same patient_id or image content; recorded in the results)")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, batch_size=32, lr=1e-4))
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        _check_range("folds", self.folds, 2)
        _check_choices(self)
        _check_range("bag_size", self.bag_size, 1)
        bad = set(self.protocols.split(",")) - {"frozen", "frozen_bands", "finetune"}
        if bad:
            raise ConfigError(f"--protocols: unknown {sorted(bad)}; choose from frozen, frozen_bands, finetune")


@dataclass(frozen=True)
class BenchmarkConfig:
    weak: Path = req("weak-labelled cohort CSV (pretraining)")
    strong: Path = req("histology-labelled cohort CSV (evaluation)")
    out: Path = req("output folder (results.json, results.md, plot)")
    methods: str = opt("none,simclr,supcon,positional,pcl,wsp", "comma-separated methods; none = random init")
    encoders: str = opt("tinynet", "comma-separated encoders")
    seeds: str = opt("0,1,2", "comma-separated seeds")
    sigmas: str = opt("", "sigma grid of wsp and positional, e.g. 0.05,0.1,0.2,0.4,0.85 (empty: their default sigma)")
    epochs: int = opt(10, "pretraining epochs (one epoch = as many slices as weak patients)")
    slices: int = opt(0, "pretraining budget in slices seen, the same for every cell (0 = --epochs passes)")
    position_groups: int = opt(4, "pretraining batches in G groups sharing a slice position (see pretrain; "
                               "0 = the paper's uniform draw)")
    finetune_epochs: int = opt(5, "fine-tuning epochs per fold")
    folds: int = opt(5, "stratified folds over patients")
    cv_repeats: int = opt(1, "repeats of the stratified k-fold split, each with its own fold seed")
    protocols: str = opt("frozen,frozen_bands,finetune",
                         "comma-separated evaluation protocols: frozen, frozen_bands (position-band probe), finetune")
    bands: int = opt(5, "position bands of d for the frozen_bands probe")
    label_sizes: str = opt("", "label-efficiency curve: also fit the frozen probes on this many training patients, "
                           "e.g. 10,20,40 (all is always there)")
    finetune_slices: int = opt(0, "fine-tuning slices drawn per patient and epoch (0 = all slices)")
    patient_heads: str = opt("mean", "comma-separated patient heads of the finetune protocol: mean, bands, attention "
                             "(protocols finetune, finetune_bands, finetune_attention; see finetune --patient-head)")
    bag_size: int = opt(8, _BAG_HELP)
    monitor_manifest: Optional[Path] = opt(None, "weak-labelled patients for the monitors and the weak-set probe "
                                           "only (never trained on; default: 20%% of --weak held out)")
    batch_size: int = opt(64, "pretraining batch size")
    lr: float = opt(1e-3, "pretraining learning rate (the default recipe's; the paper's head needs ~1e-4)")
    head_norm: str = opt("batch", "projection-head normalisation of every pretraining cell (see pretrain --head-norm)",
                         choices=HEAD_NORMS)
    finetune_lr: float = opt(1e-4, "fine-tuning learning rate (finetune protocol)")
    device: str = opt("auto", "auto picks CUDA when available", choices=DEVICES)
    bf16: bool = opt(False, "bfloat16 autocast + channels_last")
    cache_dir: Optional[Path] = opt(None, "slice cache folder (default: .wsp-cache beside each manifest)")
    resume: bool = opt(False, "skip grid cells already in --out/results.json")
    force: bool = opt(False, "replace an existing output folder")
    allow_overlap: bool = opt(False, "run even if histology patients are in the weak set (same patient_id or "
                              "image content; recorded in the results)")
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(image_size=64))


@dataclass(frozen=True)
class AuditConfig:
    manifest: Path = req("cohort CSV to audit (real or synthetic)")
    out: Path = req("output folder (audit.json, audit.md, patients.csv, cues.png)")
    label: str = opt("histo", "label the cues are scored against: histo (1 = cirrhosis) or weak (reading 2 = cirrhosis vs rest)",
                     choices=("histo", "weak"))
    folds: int = opt(5, "stratified folds of the cross-validated AUCs (fewer when a class is smaller)")
    boot: int = opt(2000, "bootstrap resamples of each 95%% CI")
    probe_arch: str = opt("tinynet", "random-init encoder of the frozen probe", choices=ENCODER_NAMES)
    no_probe: bool = opt(False, "skip the random-init encoder probe")
    seed: int = opt(0, "random seed (folds, bootstrap, probe weights)")
    warn_auc: float = opt(0.75, "warn when one cue alone reaches this cross-validated AUC")
    cache_dir: Optional[Path] = opt(None, "slice cache folder (default: .wsp-cache beside the manifest)")
    skip_bad: bool = opt(False, "skip bad manifest rows / unreadable patients (listed) instead of stopping")
    force: bool = opt(False, "replace an existing output folder")
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(image_size=64))

    def __post_init__(self) -> None:
        _check_range("folds", self.folds, 2)
        _check_range("boot", self.boot, 100)
        _check_range("warn_auc", self.warn_auc, 0.5, 1.0)


@dataclass(frozen=True)
class ExportConfig:
    run: Path = req("finetune run folder (with --ensemble: the <json stem>.folds folder of evaluate --keep-fold-models)")
    out: Path = req("bundle folder to write")
    name: str = opt("", "model name shown to users (default: derived from the run)")
    ensemble: bool = opt(False, "bundle all fold models of --run as one ensemble (mean probability + spread)")
    calibrate: str = opt("none", "fit a calibrator on out-of-fold probabilities (--oof, or --run's oof.json)",
                         choices=("none", "platt", "isotonic"))
    oof: Optional[Path] = opt(None, "out-of-fold probabilities for --calibrate: evaluate's results JSON or an oof.json")
    force: bool = opt(False, "replace an existing bundle folder")


@dataclass(frozen=True)
class PredictConfig:
    ct: Path = req("CT file / DICOM folder, or a cohort CSV for batch mode", positional=True)
    out: Path = req("output folder")
    liver_mask: Optional[Path] = opt(None, "liver mask (file or DICOM folder); required unless TotalSegmentator is installed and --auto-mask")
    liver_label: Optional[int] = opt(None, "mask value of the liver in a multi-label mask")
    auto_mask: bool = opt(False, "segment the liver with TotalSegmentator when it is installed and no mask is given")
    model: Optional[Path] = opt(None, "model bundle folder (default: the bundled demonstration model)")
    device: str = opt("auto", "auto picks CUDA when available", choices=DEVICES)
    batch_size: int = opt(32, "slices per forward pass")
    workers: str = opt("auto", "batch mode: processes preprocessing the next patients while the model runs "
                       "(auto = a pool of one per core when the first patient says it pays, else 1; 0 = one per "
                       "CPU core; 1 = all in this process)")
    bf16: bool = opt(False, "bfloat16 autocast on CPU too (GPU always uses half precision); faster on recent CPUs")
    saliency: bool = opt(False, "also write saliency.nii.gz (Grad-CAM relevance on the CT's grid) and saliency.png")
    force: bool = opt(False, "replace an existing output folder")
    progress: str = opt("auto", "how progress is shown: a bar (auto on a terminal), log lines (auto otherwise), "
                        "jsonl = one JSON object per line on stdout for other programs (README), or none",
                        choices=PROGRESS_MODES)

    def __post_init__(self) -> None:
        _check_range("batch_size", self.batch_size, 1)
        _check_workers(self.workers)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config saved by `to_dict` (unknown keys -> ConfigError)."""
    kwargs: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    nested = {"PreprocessConfig": PreprocessConfig, "TrainConfig": TrainConfig}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"config: unknown key {key!r} for {cls.__name__}")
        f = names[key]
        typ = nested.get(f.type, f.type) if isinstance(f.type, str) else f.type
        if dataclasses.is_dataclass(typ):
            value = from_dict(typ, value)
        elif value == "inf":
            value = math.inf
        elif value is not None and "Path" in str(f.type):
            value = Path(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_config(cls: type, path: Path) -> Any:
    """Read a config.json written in a run folder (the `config` key) back into `cls`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    return from_dict(cls, data.get("config", data))
