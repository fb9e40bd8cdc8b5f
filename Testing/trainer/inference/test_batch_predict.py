"""Batch `predict` with preprocessing in worker processes: same results as one process, bad patients reported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from support import export_spread_bundle, make_ct
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import PreprocessConfig

PREPROCESS = PreprocessConfig(image_size=32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    """Four distinct test CTs with masks (different seeds and shapes), one unreadable file in the
    middle of the manifest, and a small exported bundle."""
    folder = tmp_path_factory.mktemp("cohort")
    lines = ["patient_id,image,liver_mask,weak_label,histo_label"]
    for i, shape in enumerate([(24, 40, 48), (20, 36, 44), (28, 40, 40), (16, 44, 48)]):
        ct, mask = make_ct(shape_zyx=shape, seed=i)
        sitk.WriteImage(ct, str(folder / f"ct{i}.nii.gz"))
        sitk.WriteImage(mask, str(folder / f"liver{i}.nii.gz"))
        lines.append(f"p{i},ct{i}.nii.gz,liver{i}.nii.gz,,")
        if i == 1:
            (folder / "garbage.nii.gz").write_bytes(b"this is not a NIfTI file" * 10)
            lines.append("bad,garbage.nii.gz,liver1.nii.gz,,")
    manifest = folder / "cohort.csv"
    manifest.write_text("\n".join(lines) + "\n")
    bundle = export_spread_bundle(folder / "ct0.nii.gz", folder / "liver0.nii.gz", PREPROCESS,
                                  tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("bundles") / "tiny")
    return manifest, bundle


def _predict(manifest: Path, bundle: Path, out: Path, workers: int) -> int:
    return main(["predict", str(manifest), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--batch-size", "4", "--workers", str(workers), "--progress", "none"])


def _without_timings(path: Path) -> dict:
    record = json.loads(path.read_text())
    record.pop("timings_s"), record.pop("created")  # when and how fast, not what
    return record


def test_worker_pool_gives_the_one_process_results(cohort, tmp_path, capfd):
    manifest, bundle = cohort
    one, two = tmp_path / "one", tmp_path / "two"
    assert _predict(manifest, bundle, one, workers=1) == 1  # exit 1: one patient failed
    capfd.readouterr()
    assert _predict(manifest, bundle, two, workers=2) == 1
    assert "2 preprocessing worker process(es)" in capfd.readouterr().err

    assert (one / "summary.csv").read_bytes() == (two / "summary.csv").read_bytes()
    with open(two / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["patient_id"] for r in rows] == ["p0", "p1", "bad", "p2", "p3"]  # manifest order kept
    assert "garbage.nii.gz" in rows[2]["error"] and rows[2]["probability"] == ""
    assert all(r["error"] == "" and r["probability"] != "" for r in rows if r["patient_id"] != "bad")
    assert len({r["probability"] for r in rows if r["probability"]}) > 1  # distinct patients, distinct scores

    assert sorted(p.name for p in two.iterdir()) == ["p0", "p1", "p2", "p3", "summary.csv"]
    for pid in ("p0", "p1", "p2", "p3"):
        assert (one / pid / "slices.csv").read_bytes() == (two / pid / "slices.csv").read_bytes()
        assert _without_timings(one / pid / "prediction.json") == _without_timings(two / pid / "prediction.json")
        timings = json.loads((two / pid / "prediction.json").read_text())["timings_s"]
        assert "read_s" not in timings and timings["preprocess_s"] > 0  # read + preprocess ran in a worker
