"""Patient inference end to end: real files, a real exported bundle, the CLI's exit codes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import export_spread_bundle, flip_storage, make_ct
from wsp_cirrhosis.inference.bundle import default_bundle_path, load_bundle
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import PredictConfig, PreprocessConfig
from wsp_cirrhosis.errors import BundleError, Cancelled, InputError
from wsp_cirrhosis.inference.scoring import image_from_array, predict_patient
from wsp_cirrhosis.data.automask import totalsegmentator_available
from wsp_cirrhosis.inference.predict import run_predict
from wsp_cirrhosis.inference.report import read_prediction
from wsp_cirrhosis.data.slices import prepare_ct
from wsp_cirrhosis.models.features import slice_probabilities

PREPROCESS = PreprocessConfig(image_size=32)
JSON_KEYS = {"probability", "label", "threshold", "label_name", "class_names", "n_slices", "model", "inputs",
             "device", "timings_s", "software"}


@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> dict[str, Path]:
    """The test CT and its liver mask written as NIfTI by SimpleITK."""
    folder = tmp_path_factory.mktemp("patient")
    ct, mask = make_ct()
    paths = {"ct": folder / "ct.nii.gz", "mask": folder / "liver.nii.gz"}
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(mask, str(paths["mask"]))
    return paths


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, patient) -> Path:
    """A random-init TinyNet classifier exported through bundle.export_bundle (image size 32).

    Random pooled features barely vary between slices, so the head is scaled on the test CT to
    spread the slice scores over (0, 1): a curve that is flat would prove nothing about ordering.
    """
    return export_spread_bundle(patient["ct"], patient["mask"], PREPROCESS, tmp_path_factory.mktemp("finetune-run"),
                                tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_predict_command_writes_slices_prediction_and_curve(patient, bundle_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["predict", str(patient["ct"]), "--liver-mask", str(patient["mask"]), "--model", str(bundle_dir),
                 "--out", str(out), "--device", "cpu", "--batch-size", "4"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["curve.png", "prediction.json", "slices.csv"]
    columns, rows = _read_csv(out / "slices.csv")
    assert columns == ["slice_index", "z_mm", "position", "score", "contribution", "read"]
    z = [float(r["z_mm"]) for r in rows]
    assert z == sorted(z) and len(set(z)) == len(z)
    assert float(rows[0]["position"]) == 0.0 and float(rows[-1]["position"]) == 1.0
    record = json.loads((out / "prediction.json").read_text())
    assert JSON_KEYS <= set(record)
    assert record["n_slices"] == len(rows)
    assert record["probability"] == pytest.approx(np.mean([float(r["score"]) for r in rows]), abs=1e-6)
    assert record["label"] == int(record["probability"] >= record["threshold"])
    assert record["model"] == {"name": "tiny-test", "sha256": load_bundle(bundle_dir).sha256}
    assert len(record["inputs"]["image_sha256"]) == 64 and len(record["inputs"]["liver_mask_sha256"]) == 64
    assert record["device"] == "cpu" and "torch" in record["software"]
    assert {"read_s", "preprocess_s", "model_s", "write_s"} <= set(record["timings_s"])
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # prediction.json keeps every slice at full precision: another process rebuilds the same prediction.
    again = read_prediction(out / "prediction.json")
    assert again.probability == record["probability"] and again.n_slices == len(rows)
    assert [round(s.score, 6) for s in again.slices] == [float(r["score"]) for r in rows]
    assert again.probability == pytest.approx(np.mean([s.score for s in again.slices]), abs=1e-12)
    # head mean: one scale, the slice probability; each slice contributes p_s / S, the read is p_s
    assert record["patient_head"] == "mean" and record["scale"] == "probability"
    assert record["patient_score"] == pytest.approx(record["probability"], abs=1e-12)
    assert record["threshold_on_scale"] == record["threshold"]
    assert [float(r["read"]) for r in rows] == pytest.approx([float(r["score"]) for r in rows], abs=2e-6)
    assert sum(s["contribution"] for s in record["slices"]) == pytest.approx(record["probability"], abs=1e-12)
    assert again.patient_head == "mean" and again.slice_reads == pytest.approx(again.slice_scores, abs=1e-12)


def test_probability_is_the_mean_of_slice_scores_and_matches_training_code(patient, bundle):
    prediction = predict_patient(patient["ct"], patient["mask"], bundle, device="cpu", batch_size=8)
    scores = prediction.slice_scores
    assert 0.05 < scores.min() < scores.max() < 0.95  # a curve, not a constant
    assert prediction.probability == pytest.approx(scores.mean(), abs=1e-12)
    assert prediction.label_name == bundle.class_names[prediction.label]
    # evaluate.py / train.py compute patient probabilities with slice_probabilities: same numbers.
    # Inference runs channels_last (another float32 summation order), and the test head
    # magnifies feature rounding about 1e4 times, hence 1e-4 rather than 1e-6.
    liver = prepare_ct(str(patient["ct"]), str(patient["mask"]), bundle.preprocess)
    reference = slice_probabilities(bundle.build_model(), liver.slices, "cpu", 8)
    assert np.allclose(scores, reference, atol=1e-4)
    assert prediction.probability == pytest.approx(reference.mean(), abs=1e-4)


def _stored(kind: str, tmp_path: Path) -> tuple[object, object]:
    """The test CT and mask, stored another way (same physical volume)."""
    ct, mask = make_ct()
    if kind == "numpy":
        def wrap(im):
            return image_from_array(sitk.GetArrayFromImage(im), im.GetSpacing(), im.GetOrigin(),
                                    np.array(im.GetDirection()).reshape(3, 3))
        return wrap(ct), wrap(mask)
    if kind == "flip_z":
        ct, mask = flip_storage(ct, 2), flip_storage(mask, 2)
    elif kind == "flip_xy":
        ct, mask = (flip_storage(flip_storage(im, 0), 1) for im in (ct, mask))
    suffix = ".nrrd" if kind == "nrrd" else ".nii.gz"
    paths = tmp_path / f"ct{suffix}", tmp_path / f"mask{suffix}"
    sitk.WriteImage(ct, str(paths[0]))
    sitk.WriteImage(mask, str(paths[1]))
    return paths


@pytest.mark.parametrize("kind", ["flip_z", "flip_xy", "nrrd", "numpy"])
def test_storage_order_format_and_numpy_input_give_identical_curve_by_z(kind, patient, bundle, tmp_path):
    ref = predict_patient(patient["ct"], patient["mask"], bundle, device="cpu")
    image, mask = _stored(kind, tmp_path)
    other = predict_patient(image, mask, bundle, device="cpu")
    assert other.n_slices == ref.n_slices
    assert np.allclose([s.z_mm for s in other.slices], [s.z_mm for s in ref.slices], atol=1e-4)
    assert np.allclose(other.slice_scores, ref.slice_scores, atol=1e-5)
    assert other.probability == pytest.approx(ref.probability, abs=1e-5)
    if kind == "flip_z":  # slice_index follows the file's own storage order
        n = make_ct()[0].GetSize()[2]
        assert [s.slice_index for s in other.slices] == [n - 1 - s.slice_index for s in ref.slices]


def test_mask_on_another_overlapping_grid_is_resampled(patient, bundle):
    ct, mask = make_ct()
    coarse = sitk.Resample(mask, [s // 2 for s in mask.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           mask.GetOrigin(), [2 * s for s in mask.GetSpacing()], mask.GetDirection(), 0, sitk.sitkUInt8)
    prediction = predict_patient(ct, coarse, bundle, device="cpu")
    assert abs(prediction.n_slices - predict_patient(ct, mask, bundle, device="cpu").n_slices) <= 3


def test_mask_of_another_scan_is_refused(bundle):
    ct, mask = make_ct()
    mask.SetOrigin([o + 1000.0 for o in mask.GetOrigin()])
    with pytest.raises(InputError, match="does not overlap"):
        predict_patient(ct, mask, bundle, device="cpu")


def test_no_mask_explains_how_to_get_one(patient, bundle):
    with pytest.raises(InputError) as err:
        predict_patient(patient["ct"], None, bundle, device="cpu")
    for fragment in ("--liver-mask", "Segment Editor", "TotalSegmentator"):
        assert fragment in str(err.value)


@pytest.mark.skipif(totalsegmentator_available(), reason="TotalSegmentator is installed here")
def test_auto_mask_without_totalsegmentator_says_so(patient, bundle):
    with pytest.raises(InputError, match="TotalSegmentator is not installed"):
        predict_patient(patient["ct"], None, bundle, device="cpu", auto_mask=True)


def test_numpy_array_without_geometry_is_refused(bundle):
    ct, mask = make_ct()
    with pytest.raises(InputError, match="image_from_array"):
        predict_patient(sitk.GetArrayFromImage(ct), mask, bundle, device="cpu")


def test_cancel_after_first_batch_leaves_no_output(patient, bundle_dir, tmp_path):
    batches = []

    def progress(fraction: float, message: str) -> None:
        if message.startswith("model:"):
            batches.append(message)

    cfg = PredictConfig(ct=patient["ct"], out=tmp_path / "out", liver_mask=patient["mask"], model=bundle_dir,
                        device="cpu", batch_size=2)
    with pytest.raises(Cancelled):
        run_predict(cfg, progress=progress, cancel=lambda: len(batches) >= 1)
    assert len(batches) == 1
    assert list(tmp_path.iterdir()) == []  # neither OUT nor its hidden staging folder


def test_sigterm_swallowed_where_it_landed_still_cancels_at_the_next_batch(patient, bundle_dir, tmp_path):
    """The SIGTERM handler's exception surfaces wherever the main thread is; a __del__ method or a
    library's broad `except` there would lose it. The progress callback plays that code here."""
    batches, swallowed = [], []
    before = signal.getsignal(signal.SIGTERM)

    def progress(fraction: float, message: str) -> None:
        if message.startswith("model:"):
            batches.append(message)
            if len(batches) == 1:
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(1.0)  # the handler runs here, within a few bytecodes
                except Exception as exc:  # what careless code does with it
                    swallowed.append(exc)

    cfg = PredictConfig(ct=patient["ct"], out=tmp_path / "out", liver_mask=patient["mask"], model=bundle_dir,
                        device="cpu", batch_size=2)
    with pytest.raises(Cancelled, match="SIGTERM"):
        run_predict(cfg, progress=progress)
    assert [type(e) for e in swallowed] == [Cancelled], "the handler raised inside the callback"
    assert len(batches) == 1, "the next batch's checkpoint saw the signal"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before, "the previous handler is back"


def test_modified_bundle_is_refused(patient, bundle_dir, tmp_path):
    bad = shutil.copytree(bundle_dir, tmp_path / "bad-bundle")
    with open(bad / "model.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="corrupt or was modified"):
        predict_patient(patient["ct"], patient["mask"], bad, device="cpu")
    out = tmp_path / "out"
    assert main(["predict", str(patient["ct"]), "--liver-mask", str(patient["mask"]), "--model", str(bad),
                 "--out", str(out)]) == 2
    assert not out.exists()


def test_batch_mode_continues_past_a_corrupt_file(patient, bundle_dir, tmp_path, capsys):
    (tmp_path / "garbage.nii.gz").write_bytes(b"this is not a NIfTI file" * 10)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        "patient_id,image,liver_mask,weak_label,histo_label\n"
        f"p1,{patient['ct']},{patient['mask']},,\n"
        f"p2,garbage.nii.gz,{patient['mask']},,\n"
        f"p3,{patient['ct']},{patient['mask']},,1\n"
    )
    out = tmp_path / "out"
    assert main(["predict", str(manifest), "--model", str(bundle_dir), "--out", str(out), "--device", "cpu"]) == 1
    columns, rows = _read_csv(out / "summary.csv")
    assert columns == ["patient_id", "probability", "label", "threshold", "n_slices", "error"]
    assert [r["patient_id"] for r in rows] == ["p1", "p2", "p3"]
    assert rows[0]["error"] == "" and rows[2]["error"] == "" and rows[0]["probability"] == rows[2]["probability"]
    assert "garbage.nii.gz" in rows[1]["error"] and rows[1]["probability"] == ""
    assert sorted(p.name for p in out.iterdir()) == ["p1", "p3", "summary.csv"]
    assert (out / "p1" / "prediction.json").is_file()
    assert "1 of 3 patient(s) failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case, argv, code",
    [
        ("ok", [], 0),
        ("existing output", ["--exists"], 2),
        ("existing output forced", ["--exists", "--force"], 0),
        ("missing CT", ["--ct", "missing.nii.gz"], 2),
        ("missing mask", ["--no-mask"], 2),
        ("missing bundle", ["--model", "no-such-bundle"], 2),
    ],
)
def test_cli_exit_codes(case, argv, code, patient, bundle_dir, tmp_path, capsys):
    out = tmp_path / "out"
    ct = str(tmp_path / argv[argv.index("--ct") + 1]) if "--ct" in argv else str(patient["ct"])
    args = ["predict", ct, "--out", str(out), "--device", "cpu"]
    args += [] if "--no-mask" in argv else ["--liver-mask", str(patient["mask"])]
    args += ["--model", str(tmp_path / "no-such-bundle") if "--model" in argv else str(bundle_dir)]
    args += ["--force"] if "--force" in argv else []
    if "--exists" in argv:
        out.mkdir()
        (out / "keep.txt").write_text("user file")
    assert main(args) == code
    err = capsys.readouterr().err
    if code == 2:
        assert err.strip().splitlines()[-1].startswith("wsp-cirrhosis predict: error:")
    if "--exists" in argv:
        assert (out / "keep.txt").exists() == (code != 0)


def test_real_dicom_ct_with_multi_label_map(real_ct, bundle_dir, tmp_path):
    args = ["predict", str(real_ct / "ct_dicom"), "--liver-mask", str(real_ct / "segmentation.nii.gz"),
            "--model", str(bundle_dir), "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "no-label")]) == 2  # multi-label map: --liver-label needed
    out = tmp_path / "out"
    assert main(args + ["--liver-label", "5", "--out", str(out)]) == 0
    record = json.loads((out / "prediction.json").read_text())
    assert record["inputs"]["image"] == str(real_ct / "ct_dicom") and len(record["inputs"]["image_sha256"]) == 64
    _, rows = _read_csv(out / "slices.csv")
    assert len(rows) == record["n_slices"] > 0


def test_cpu_bfloat16_follows_float32_with_the_bundled_model(patient):
    """--bf16 on CPU: the bundled demonstration model gives nearly the same curve in bfloat16."""
    fp32 = predict_patient(patient["ct"], patient["mask"], None, device="cpu")
    bf16 = predict_patient(patient["ct"], patient["mask"], None, device="cpu", bf16=True)
    assert fp32.model_name == bf16.model_name == load_bundle(default_bundle_path()).name
    assert np.abs(fp32.slice_scores - bf16.slice_scores).max() < 0.05
    assert bf16.probability == pytest.approx(fp32.probability, abs=0.02)
