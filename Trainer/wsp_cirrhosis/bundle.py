"""Model bundles: export a fine-tuned run as a self-describing folder, and load it back safely.

A bundle folder holds two files::

    model.pt      weights only: {"encoder": state dict, "classifier": state dict}
                  (loadable with ``torch.load(weights_only=True)``: no pickled code)
    bundle.json   {"format_version", "name", "architecture", "preprocess", "threshold",
                   "class_names", "training", "metrics", "software_versions", "created",
                   "source_run", "model_sha256"}

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

import torch

from . import __version__
from .config import ExportConfig, PreprocessConfig, from_dict
from .errors import BundleError, ConfigError, InputError
from .files import save_torch_atomic, sha256_file, sha256_json, staged_output_dir, write_json_atomic
from .provenance import software_versions

log = logging.getLogger("wsp_cirrhosis")
FORMAT_VERSION = 1
ENV_VAR = "WSP_CIRRHOSIS_MODEL"


@dataclass
class ModelBundle:
    """A loaded, verified bundle.

    Attributes:
        name: model name shown to users.
        sha256: identity of the bundle (see the module docstring).
        encoder_name: key of the encoder in ``models.ENCODERS``.
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

    def build_model(self) -> torch.nn.Module:
        """A fresh SliceClassifier with the bundle's weights, on the CPU, in eval mode."""
        from .models import build_encoder
        from .models import SliceClassifier

        try:
            model = SliceClassifier(build_encoder(self.encoder_name), self.encoder_name)
            model.encoder.load_state_dict(self.weights["encoder"])
            model.head.load_state_dict(self.weights["classifier"])
        except (ConfigError, RuntimeError, KeyError) as exc:
            raise BundleError(f"{self.path}: model.pt does not fit architecture {self.encoder_name!r} ({exc})") from None
        model.threshold = self.threshold
        return model.eval()


def export_bundle(run_dir: str | os.PathLike, out: str | os.PathLike, name: str = "", force: bool = False) -> Path:
    """Package the model.pt of a finetune run as a bundle folder.

    Args:
        run_dir: finetune run folder (holds model.pt and config.json).
        out: bundle folder to write (refused if it exists and is not empty, unless ``force``).
        name: model name (default: the run folder's name).
        force: replace an existing ``out``.

    Returns:
        ``out``.

    Raises:
        InputError: ``run_dir`` is not a finished finetune run, or ``out`` exists.
    """
    run_dir, out = Path(run_dir), Path(out)
    source = run_dir / "model.pt"
    if not source.is_file():
        hint = "; the run has not finished (continue it with --resume)" if (run_dir / "checkpoint.pt").is_file() else ""
        raise InputError(f"{run_dir}: no model.pt, not a finished finetune run{hint}")
    try:
        trained = torch.load(source, map_location="cpu", weights_only=True)
        weights = {"encoder": trained["encoder_state"], "classifier": trained["classifier_state"]}
        meta = {
            "format_version": FORMAT_VERSION,
            "name": name or run_dir.resolve().name,
            "architecture": trained["encoder_name"],
            "preprocess": trained["preprocess"],
            "threshold": float(trained["threshold"]),
            "class_names": list(trained["class_names"]),
            "training": trained.get("training_summary", {}),
            "metrics": trained.get("metrics", {}),
        }
    except (RuntimeError, KeyError, OSError, ValueError, TypeError) as exc:
        raise InputError(f"{source}: not a readable finetune model.pt ({exc})") from None
    meta.update(software_versions=software_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                source_run=str(run_dir.resolve()))
    with staged_output_dir(out, force) as stage:
        save_torch_atomic(weights, stage / "model.pt")
        meta["model_sha256"] = sha256_file(stage / "model.pt")
        write_json_atomic(stage / "bundle.json", meta)
    log.info("bundle %r written to %s", meta["name"], out)
    return out


def run_export(cfg: ExportConfig) -> int:
    """`wsp-cirrhosis export`: write the bundle, then load it back to check it."""
    out = export_bundle(cfg.run, cfg.out, cfg.name, cfg.force)
    bundle = load_bundle(out)
    print(f"{out}: {bundle.name} ({bundle.encoder_name}, threshold {bundle.threshold:.3f}, sha256 {bundle.sha256[:12]})")
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
    if version != FORMAT_VERSION:
        raise BundleError(f"{folder}: unknown bundle format_version {version!r} (this software reads {FORMAT_VERSION}); "
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
    here = Path(__file__).resolve().parent
    candidates = [
        here.parents[1] / "WSPCirrhosis" / "Resources" / "Models" / "default",  # source checkout
        here.parent / "Resources" / "Models" / "default",  # packaged beside the Slicer module
    ]
    for path in candidates:
        if path.is_dir():
            return path
    raise BundleError(f"no default model bundle at {candidates[0]}; pass --model BUNDLE_FOLDER (or set ${ENV_VAR})")
