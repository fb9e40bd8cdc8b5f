"""bundle.py: export/load round trip, hash and version checks, default bundle location."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest_train import shared_cohort
from wsp_cirrhosis import __version__
from wsp_cirrhosis.inference.bundle import FORMAT_VERSION, default_bundle_path, export_bundle, load_bundle
from wsp_cirrhosis.data.preprocess import load_cohort
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import PreprocessConfig
from wsp_cirrhosis.errors import BundleError
from wsp_cirrhosis.models.encoders import build_encoder
from wsp_cirrhosis.models.features import patient_probabilities
from wsp_cirrhosis.models.heads import SliceClassifier


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[Path, Path]:
    """(cohort folder, finetune run folder) of a 1-epoch run at 16 x 16."""
    cohort = shared_cohort(tmp_path_factory)
    run = tmp_path_factory.mktemp("bundle") / "ft"
    assert main(["finetune", "--manifest", str(cohort / "histo.csv"), "--out", str(run), "--epochs", "1",
                 "--batch-size", "16", "--slices-per-patient", "4", "--image-size", "16", "--device", "cpu"]) == 0
    return cohort, run


@pytest.fixture()
def bundle_dir(finetuned, tmp_path) -> Path:
    return export_bundle(finetuned[1], tmp_path / "bundle", name="test model")


def test_export_then_load_gives_the_run_model_and_its_probabilities(finetuned, bundle_dir, capsys):
    cohort, run = finetuned
    trained = torch.load(run / "model.pt", weights_only=True)
    reference = SliceClassifier(build_encoder(trained["encoder_name"]))
    reference.encoder.load_state_dict(trained["encoder_state"])
    reference.head.load_state_dict(trained["classifier_state"])

    bundle = load_bundle(bundle_dir)
    assert bundle.name == "test model" and bundle.encoder_name == "tinynet"
    assert bundle.preprocess == PreprocessConfig(image_size=16)
    assert bundle.threshold == trained["threshold"] and bundle.class_names == ["no cirrhosis", "cirrhosis"]
    assert bundle.meta["training"]["n_patients"] == 6 and bundle.meta["software_versions"]["wsp_cirrhosis"] == __version__
    model = bundle.build_model()
    assert isinstance(model, SliceClassifier) and not model.training and model.threshold == bundle.threshold

    patients = load_cohort(cohort / "histo.csv", bundle.preprocess)
    expected = patient_probabilities(reference, patients, "cpu", 64)
    assert (patient_probabilities(model, patients, "cpu", 64) == expected).all()
    assert set(torch.load(bundle_dir / "model.pt", weights_only=True)) == {"encoder", "classifier"}


def test_bundle_sha256_identifies_both_files(bundle_dir, tmp_path):
    first = load_bundle(bundle_dir).sha256
    assert first == load_bundle(bundle_dir / "bundle.json").sha256 and len(first) == 64
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    meta["name"] = "renamed"
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(bundle_dir).sha256 != first


def _edit(bundle: Path, **changes) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    for key, value in changes.items():
        if key == "made_by":
            meta["software_versions"]["wsp_cirrhosis"] = value
        else:
            meta[key] = value
    (bundle / "bundle.json").write_text(json.dumps(meta))


BAD = {
    "tampered model.pt": (lambda b: (b / "model.pt").write_bytes((b / "model.pt").read_bytes() + b"\0"),
                          "corrupt or was modified"),
    "missing model.pt": (lambda b: (b / "model.pt").unlink(), "model.pt is missing"),
    "missing bundle.json": (lambda b: (b / "bundle.json").unlink(), "bundle.json is missing"),
    "missing folder": (lambda b: shutil.rmtree(b), "model bundle folder not found"),
    "unknown format": (lambda b: _edit(b, format_version=FORMAT_VERSION + 1), "unknown bundle format_version"),
    "newer major version": (lambda b: _edit(b, made_by="99.0.0"), "newer than this"),
    "not JSON": (lambda b: (b / "bundle.json").write_text("{oops"), "not readable JSON"),
    "incomplete": (lambda b: _edit(b, architecture=None) or _edit(b, preprocess={"image_size": 1}), "incomplete"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_bundles_are_refused_naming_the_folder_and_the_problem(case, bundle_dir):
    damage, fragment = BAD[case]
    damage(bundle_dir)
    with pytest.raises(BundleError, match=fragment) as info:
        load_bundle(bundle_dir)
    assert str(bundle_dir) in str(info.value)


def test_export_command_refuses_an_existing_folder_without_force(finetuned, tmp_path, capsys):
    _, run = finetuned
    out = tmp_path / "b"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", "--run", str(run), "--out", str(out), "--force", "--name", "v2"]) == 0
    assert load_bundle(out).name == "v2"


def test_default_bundle_path_follows_the_environment_variable(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WSP_CIRRHOSIS_MODEL", str(bundle_dir))
    assert default_bundle_path() == bundle_dir
    monkeypatch.setenv("WSP_CIRRHOSIS_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(BundleError, match="--model"):
        default_bundle_path()
    monkeypatch.delenv("WSP_CIRRHOSIS_MODEL")
    shipped = Path(__import__("wsp_cirrhosis").__file__).resolve().parents[2] / "WSPCirrhosis/Resources/Models/default"
    if shipped.is_dir():
        assert default_bundle_path() == shipped
    else:
        with pytest.raises(BundleError, match="pass --model"):
            default_bundle_path()


def _write_old_bundle(run: Path, out: Path, version: int = 1) -> Path:
    """A bundle written the way format version 1 (before ensembles and calibration) or 2 (before
    patient heads) did."""
    from wsp_cirrhosis.files import sha256_file

    trained = torch.load(run / "model.pt", weights_only=True)
    out.mkdir()
    torch.save({"encoder": trained["encoder_state"], "classifier": trained["classifier_state"]}, out / "model.pt")
    meta = {"format_version": version, "name": "old", "architecture": trained["encoder_name"],
            "preprocess": trained["preprocess"], "threshold": float(trained["threshold"]),
            "class_names": list(trained["class_names"]), "training": {}, "metrics": {},
            "software_versions": {"wsp_cirrhosis": "0.1.0"}, "created": "2026-12-01T00:00:00+00:00",
            "source_run": str(run), "model_sha256": sha256_file(out / "model.pt")}
    if version == 2:
        meta.update(n_members=1, calibration=None)
    (out / "bundle.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("version", [1, 2])
def test_format_1_and_2_bundles_still_load_as_one_mean_head_model(finetuned, bundle_dir, tmp_path, version):
    cohort, run = finetuned
    old = load_bundle(_write_old_bundle(run, tmp_path / "old", version))
    assert old.meta["format_version"] == version and old.n_members == 1 and old.calibration is None
    assert old.patient_head == "mean" and isinstance(old.build_model(), SliceClassifier)
    patients = load_cohort(cohort / "histo.csv", old.preprocess)
    new = load_bundle(bundle_dir)
    assert new.meta["format_version"] == FORMAT_VERSION == 3 and new.meta["n_members"] == 1
    assert new.meta["calibration"] is None and new.meta["patient_head"] == {"name": "mean"}
    assert (patient_probabilities(old.build_model(), patients, "cpu", 64)
            == patient_probabilities(new.build_model(), patients, "cpu", 64)).all()
