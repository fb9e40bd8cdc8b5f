"""Model bundles: export a fine-tuned run as a self-describing folder, and load it back safely.

A bundle folder holds two files::

    model.pt      weights only: {"encoder": state dict, "classifier": state dict} (head mean) or
                  {"encoder", "patient_head": state dict} (bands, attention), or for an
                  ensemble {"members": [{"encoder", "classifier" | "patient_head"}, ...]}
                  (loadable with ``torch.load(weights_only=True)``: no pickled code)
    bundle.json   {"format_version", "name", "architecture", "preprocess", "threshold",
                   "class_names", "training", "metrics", "software_versions", "created",
                   "source_run", "model_sha256", "n_members", "calibration", "patient_head"}

Format versions: 1 = one model, no calibration; 2 adds "n_members" (1, or k for an ensemble of
fold models, ensemble.py) and "calibration" (null, or a Platt / isotonic calibrator fitted on
out-of-fold probabilities, calibration.py); 3 (this one) adds "patient_head" (the head's config,
``models.patient_heads``: {"name": "mean"} or e.g. {"name": "attention", "in_dim": 512, ...}).
Version-1 and -2 bundles still load, as head ``mean`` (version 1 as one uncalibrated model).

``load_bundle`` refuses a missing file, a ``model.pt`` whose SHA-256 is not the recorded one, an
unknown format version, and a bundle written by a newer major version of wsp_cirrhosis.
``ModelBundle.sha256`` identifies a bundle: the SHA-256 of the canonical JSON of bundle.json,
which itself holds the SHA-256 of model.pt, so it changes whenever either file does.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..config import ExportConfig, PreprocessConfig, from_dict
from ..errors import BundleError, ConfigError, InputError
from ..files import save_torch_atomic, sha256_file, sha256_json, staged_output_dir, write_json_atomic
from ..models.saved import member_weights, stored_head
from ..provenance import software_versions

log = logging.getLogger("wsp_cirrhosis")
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
ENV_VAR = "WSP_CIRRHOSIS_MODEL"


@dataclass
class ModelBundle:
    """A loaded, verified bundle.

    Attributes:
        name: model name shown to users.
        sha256: identity of the bundle (see the module docstring).
        encoder_name: key of the encoder in ``models.encoders.ENCODERS``.
        preprocess: the preprocessing the model was trained with (use it for inference).
        threshold: decision threshold on the patient probability.
        class_names: [negative name, positive name].
        meta: the whole bundle.json.
        path: the bundle folder.
    """

    name: str
    sha256: str
    encoder_name: str
    preprocess: PreprocessConfig
    threshold: float
    class_names: list[str]
    meta: dict[str, Any]
    path: Path
    weights: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def members(self) -> list[dict[str, Any]]:
        """The weights of each member: one for a single model, k for an ensemble."""
        return list(self.weights["members"]) if "members" in self.weights else [self.weights]

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def patient_head_config(self) -> dict[str, Any]:
        """The patient head's config ({"name": "mean"} for format 1-2 bundles)."""
        return stored_head(self.meta)

    @property
    def patient_head(self) -> str:
        """The patient head's name: mean, bands or attention."""
        return str(self.patient_head_config.get("name", "mean"))

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The calibrator of bundle.json (calibration.py), or None."""
        return self.meta.get("calibration") or None

    def build_model(self) -> torch.nn.Module:
        """A fresh fine-tuned model (SliceClassifier for head mean, PatientClassifier otherwise; an
        EnsembleClassifier of them for an ensemble bundle) with the bundle's weights, on the CPU,
        in eval mode."""
        from ..models.saved import build_classifier

        models = []
        try:
            for weights in self.members:
                model = build_classifier(self.encoder_name, weights, self.patient_head_config)
                model.threshold = self.threshold
                models.append(model)
        except (ConfigError, RuntimeError, KeyError) as exc:
            raise BundleError(f"{self.path}: model.pt does not fit architecture {self.encoder_name!r} ({exc})") from None
        if len(models) == 1:
            return models[0].eval()
        from ..models.ensemble import EnsembleClassifier

        ensemble = EnsembleClassifier(models)
        ensemble.threshold = self.threshold
        return ensemble.eval()


def export_bundle(run_dir: str | os.PathLike, out: str | os.PathLike, name: str = "", force: bool = False,
                  ensemble: bool = False, calibrate: str = "none", oof: str | os.PathLike | None = None) -> Path:
    """Package the model.pt of a finetune run (or the fold models of `evaluate
    --keep-fold-models`, with ``ensemble``) as a bundle folder.

    Args:
        run_dir: finetune run folder (holds model.pt and config.json), or with ``ensemble`` the
            ``<results>.folds`` folder of `evaluate --keep-fold-models`.
        out: bundle folder to write (refused if it exists and is not empty, unless ``force``).
        name: model name (default: the run folder's name).
        force: replace an existing ``out``.
        ensemble: bundle every fold model of ``run_dir`` as one ensemble.
        calibrate: "none", "platt" or "isotonic": fit a calibrator on out-of-fold probabilities.
        oof: out-of-fold probabilities for ``calibrate``: an `evaluate` results JSON or an
            oof.json (default: ``run_dir/oof.json`` when it exists).

    Returns:
        ``out``.

    Raises:
        InputError: ``run_dir`` is not a finished finetune run (or holds no fold models),
            members disagree on preprocessing, ``calibrate`` without out-of-fold
            probabilities, or ``out`` exists.
    """
    run_dir, out = Path(run_dir), Path(out)
    oof_path = Path(oof) if oof is not None else (run_dir / "oof.json" if (run_dir / "oof.json").is_file() else None)
    if calibrate not in ("none", "", None) and oof_path is None:
        raise InputError(f"--calibrate {calibrate}: needs out-of-fold probabilities; pass --oof RESULTS.json from "
                         "`evaluate` (finetune protocol), or --run a folder of `evaluate --keep-fold-models`")
    if ensemble:
        weights, meta = _ensemble_content(run_dir, name, oof_path)
    else:
        weights, meta = _single_content(run_dir, name)
    meta["calibration"] = None
    if calibrate not in ("none", "", None):
        from ..models.calibration import fit_calibrator
        from ..models.ensemble import read_oof

        labels, probs, source = read_oof(oof_path)
        meta["calibration"] = fit_calibrator(calibrate, labels, probs, source=source)
    meta.update(software_versions=software_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                source_run=str(run_dir.resolve()))
    with staged_output_dir(out, force) as stage:
        save_torch_atomic(weights, stage / "model.pt")
        meta["model_sha256"] = sha256_file(stage / "model.pt")
        write_json_atomic(stage / "bundle.json", meta)
    log.info("bundle %r written to %s", meta["name"], out)
    return out


def _single_content(run_dir: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, bundle.json without provenance) of one finetune run."""
    source = run_dir / "model.pt"
    if not source.is_file():
        hint = "; the run has not finished (continue it with --resume)" if (run_dir / "checkpoint.pt").is_file() else ""
        raise InputError(f"{run_dir}: no model.pt, not a finished finetune run{hint}")
    try:
        trained = torch.load(source, map_location="cpu", weights_only=True)
        weights = member_weights(trained)
        meta = {
            "format_version": FORMAT_VERSION,
            "name": name or run_dir.resolve().name,
            "architecture": trained["encoder_name"],
            "preprocess": trained["preprocess"],
            "threshold": float(trained["threshold"]),
            "class_names": list(trained["class_names"]),
            "training": trained.get("training_summary", {}),
            "metrics": trained.get("metrics", {}),
            "n_members": 1,
            "patient_head": stored_head(trained),
        }
    except (RuntimeError, KeyError, OSError, ValueError, TypeError) as exc:
        raise InputError(f"{source}: not a readable finetune model.pt ({exc})") from None
    return weights, meta


def _ensemble_content(folds: Path, name: str, oof_path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, bundle.json without provenance) of the fold models of `evaluate --keep-fold-models`.

    Threshold: Youden on the out-of-fold probabilities when available (the ensemble's own scale
    is closest to them), else the median of the members' training-fold thresholds.
    """
    from ..models.calibration import youden_threshold
    from ..models.ensemble import read_fold_models, read_oof

    members = read_fold_models(folds)
    first = members[0][1]
    try:
        weights = {"members": [member_weights(m) for _, m in members]}
        thresholds = [float(m["threshold"]) for _, m in members]
        if oof_path is not None:
            labels, probs, _ = read_oof(oof_path)
            threshold, rule = float(youden_threshold(labels, probs)), "youden_out_of_fold"
        else:
            threshold, rule = float(np.median(thresholds)), "median_member_threshold"
        meta = {
            "format_version": FORMAT_VERSION, "name": name or folds.resolve().name,
            "architecture": first["encoder_name"], "preprocess": first["preprocess"], "threshold": threshold,
            "threshold_rule": rule, "class_names": list(first["class_names"]),
            "training": {"ensemble_of": [str(p) for p, _ in members], "member_thresholds": thresholds,
                         "members": [m.get("training_summary", {}) for _, m in members]},
            "metrics": {}, "n_members": len(members), "patient_head": stored_head(first),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{folds}: fold models are incomplete ({exc})") from None
    return weights, meta


def run_export(cfg: ExportConfig) -> int:
    """`wsp-cirrhosis export`: write the bundle, then load it back to check it."""
    out = export_bundle(cfg.run, cfg.out, cfg.name, cfg.force, ensemble=getattr(cfg, "ensemble", False),
                        calibrate=getattr(cfg, "calibrate", "none"), oof=getattr(cfg, "oof", None))
    bundle = load_bundle(out)
    extra = f", {bundle.n_members} members" if bundle.n_members > 1 else ""
    if bundle.calibration:
        extra += f", {bundle.calibration['method']} calibration"
    print(f"{out}: {bundle.name} ({bundle.encoder_name}, patient head {bundle.patient_head}{extra}, threshold {bundle.threshold:.3f}, "
          f"sha256 {bundle.sha256[:12]})")
    return 0


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return -1


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Read and verify a bundle folder (or its bundle.json).

    Raises:
        BundleError: a missing folder or file, a model.pt whose hash differs from the recorded
            one, an unknown format version, a bundle from a newer major version of
            wsp_cirrhosis, or unreadable content. The message names the folder and the problem.
    """
    folder = Path(path)
    if folder.name == "bundle.json" and folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise BundleError(f"{folder}: model bundle folder not found")
    for file in ("bundle.json", "model.pt"):
        if not (folder / file).is_file():
            raise BundleError(f"{folder}: not a model bundle, {file} is missing")
    try:
        meta = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder}: bundle.json is not readable JSON ({exc})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{folder}: unknown bundle format_version {version!r} (this software reads "
                          f"{', '.join(map(str, READABLE_VERSIONS))}); "
                          "update wsp_cirrhosis or re-export the model")
    made_by = str(meta.get("software_versions", {}).get("wsp_cirrhosis", "0"))
    if _major(made_by) > _major(__version__):
        raise BundleError(f"{folder}: made by wsp_cirrhosis {made_by}, newer than this {__version__}; "
                          "update wsp_cirrhosis to use this model")
    actual = sha256_file(folder / "model.pt")
    if actual != meta.get("model_sha256"):
        raise BundleError(f"{folder}: model.pt is corrupt or was modified (sha256 {actual[:12]}..., "
                          f"bundle.json records {str(meta.get('model_sha256'))[:12]}...)")
    try:
        weights = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        preprocess = from_dict(PreprocessConfig, meta["preprocess"])
        bundle = ModelBundle(
            name=str(meta["name"]), sha256=sha256_json(meta), encoder_name=str(meta["architecture"]),
            preprocess=preprocess, threshold=float(meta["threshold"]), class_names=list(meta["class_names"]),
            meta=meta, path=folder, weights=weights,
        )
        if "members" in weights and (not weights["members"] or int(meta.get("n_members", 0)) != len(weights["members"])):
            raise ValueError(f"model.pt holds {len(weights['members'])} members, bundle.json says {meta.get('n_members')}")
    except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as exc:
        raise BundleError(f"{folder}: bundle.json or model.pt is incomplete ({type(exc).__name__}: {exc})") from None
    return bundle


def default_bundle_path() -> Path:
    """The bundle used when none is given: ``$WSP_CIRRHOSIS_MODEL``, else the one shipped with the
    Slicer module (``<repository>/WSPCirrhosis/Resources/Models/default`` in a checkout, or the
    module's ``Resources/Models/default`` when the package is installed beside the module).

    Raises:
        BundleError: that folder does not exist.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_dir():
            raise BundleError(f"{path} (from ${ENV_VAR}): model bundle folder not found; fix the variable or pass --model")
        return path
    package = Path(__file__).resolve().parents[1]  # .../wsp_cirrhosis
    candidates = [
        package.parents[1] / "WSPCirrhosis" / "Resources" / "Models" / "default",  # source checkout
        package.parent / "Resources" / "Models" / "default",  # packaged beside the Slicer module
    ]
    for path in candidates:
        if path.is_dir():
            return path
    raise BundleError(f"no default model bundle at {candidates[0]}; pass --model BUNDLE_FOLDER (or set ${ENV_VAR})")
