"""Synthetic phantom cohort: files and manifests, labels, determinism, geometry, stage-driven signs."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from wsp_cirrhosis.phantom import synth
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import SynthConfig
from wsp_cirrhosis.errors import InputError
from wsp_cirrhosis.files import sha256_path
from wsp_cirrhosis.data.manifest import COLUMNS, read_manifest

TINY = ["--patients", "3", "--histo-patients", "4", "--cirrhosis-fraction", "0.5", "--size", "48"]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_path(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _phantom(stage: int, seed: int, size: int = 48, signs: str = "positional", **changes):
    """(ct, mask) arrays in canonical storage with the confounders of `seed`, whatever the stage."""
    params = synth.draw_params(stage, np.random.default_rng(seed), signs)
    params = dataclasses.replace(params, orientation="LPS", **changes)
    ct, mask = synth.make_phantom(stage, np.random.default_rng(seed), size, params=params)
    return sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(mask), ct, mask


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    assert main(["synth", "--out", str(out), "--seed", "3", *TINY]) == 0
    return out


def test_tiny_cohort_writes_images_masks_and_manifests(cohort):
    assert {p.name for p in cohort.iterdir()} == {"images", "masks", "weak.csv", "histo.csv", "cohort.json", "README.md"}
    for name, n in (("weak", 3), ("histo", 4)):
        with open(cohort / f"{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0].keys()) == COLUMNS and len(rows) == n
        for row in rows:
            assert not Path(row["image"]).is_absolute() and (cohort / row["image"]).is_file()
            assert (cohort / row["liver_mask"]).is_file()
        records = read_manifest(cohort / f"{name}.csv")
        assert all(r.weak_label in (0, 1, 2) for r in records)
        if name == "weak":
            assert all(r.histo_label is None for r in records)
        else:
            assert sorted(r.histo_label for r in records) == [0, 0, 1, 1]
    ct = sitk.ReadImage(str(cohort / "images" / "histo-0000.nii.gz"))
    mask = sitk.ReadImage(str(cohort / "masks" / "histo-0000.nii.gz"))
    assert ct.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
    assert ct.GetSize()[:2] == (48, 48) and 30 <= ct.GetSize()[2] <= 80
    doc = json.loads((cohort / "cohort.json").read_text())
    assert doc["synthetic"] is True and doc["seed"] == 3 and len(doc["patients"]) == 7
    assert {"stage", "weak_label", "histo_label", "phantom"} <= doc["patients"][0].keys()
    assert {"noise_hu", "hu_offset", "slice_thickness_mm", "orientation", "liver_hu"} <= doc["patients"][0]["phantom"].keys()
    assert all((p["stage"] == 4) == (p["histo_label"] == 1) for p in doc["patients"] if p["set"] == "histo")
    assert "not patient data" in (cohort / "README.md").read_text().lower()
    assert "not patient data" in synth.__doc__.lower()


def test_same_seed_gives_identical_files_and_another_seed_differs(cohort, tmp_path):
    again = tmp_path / "again"
    assert main(["synth", "--out", str(again), "--seed", "3", *TINY]) == 0
    assert _hashes(again) == _hashes(cohort)
    other = tmp_path / "other"
    assert main(["synth", "--out", str(other), "--seed", "4", *TINY]) == 0
    first, second = _hashes(cohort), _hashes(other)
    assert all(first[k] != second[k] for k in first if k.startswith("images/"))


def test_id_prefix_renames_the_patients_and_keeps_their_phantoms(cohort, tmp_path, capsys):
    out = tmp_path / "prefixed"
    assert main(["synth", "--out", str(out), "--seed", "3", "--id-prefix", "site2-", *TINY]) == 0
    ids = [r.patient_id for r in read_manifest(out / "weak.csv")]
    assert ids == ["site2-weak-0000", "site2-weak-0001", "site2-weak-0002"]
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / "images" / "histo-0001.nii.gz")))
    renamed = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "images" / "site2-histo-0001.nii.gz")))
    assert np.array_equal(plain, renamed)  # the same phantom under another id: the draws do not depend on it
    assert main(["synth", "--out", str(tmp_path / "bad"), "--id-prefix", "../x"]) == 2
    assert "--id-prefix" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_existing_folder_is_refused_without_force_and_replaced_with_it(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    cfg = SynthConfig(out=out, patients=1, histo_patients=1, size=32)
    with pytest.raises(InputError, match="--force"):
        synth.write_synthetic_cohort(cfg)
    assert (out / "keep.txt").is_file() and not (out / "weak.csv").exists()
    assert synth.run_synth(dataclasses.replace(cfg, force=True)) == 0
    assert (out / "weak.csv").is_file() and not (out / "keep.txt").exists()


def test_stage_draws_match_the_requested_distributions():
    rng = np.random.default_rng(0)
    histo = synth.draw_stages(1000, rng, "histo", cirrhosis_fraction=0.3)
    assert np.mean(histo == 4) == pytest.approx(0.3, abs=0.01) and set(histo) == {0, 1, 2, 3, 4}
    weak = synth.draw_stages(999, rng, "weak")
    classes = np.searchsorted([1.5, 3.5], weak)
    assert np.bincount(classes).tolist() == [333, 333, 333]
    readings = np.array([synth.read_weak_label(int(s), rng) for s in weak])
    assert set(readings) == {0, 1, 2}
    assert np.mean(readings != classes) == pytest.approx(0.25, abs=0.05)
    assert np.mean(np.abs(readings - classes) > 1) < 0.01  # misreadings go to a neighbouring class
    assert [synth.read_weak_label(s, rng, reader_noise=0.0) for s in range(5)] == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("stage", [0, 2, 4])
def test_liver_mask_lies_inside_the_body_with_plausible_hu(stage):
    ct, mask, _, _ = _phantom(stage, seed=stage + 10)
    liver = mask.astype(bool)
    assert liver.any() and set(np.unique(mask)) == {0, 1}
    zs = np.flatnonzero(liver.any(axis=(1, 2)))
    assert zs[0] > 0 and zs[-1] < len(mask) - 1  # scanned range has a margin above and below the liver
    assert 10 <= len(zs) and np.all(np.diff(zs) == 1)
    body = ct > -300
    for axis in (1, 2):
        lo, hi = np.flatnonzero(body.any(axis=(0, 3 - axis)))[[0, -1]]
        in_liver = np.flatnonzero(liver.any(axis=(0, 3 - axis)))
        assert lo < in_liver[0] and in_liver[-1] < hi
    assert 30.0 <= np.median(ct[liver]) <= 150.0
    assert np.mean(ct[liver] < -300) < 0.01


def test_flipped_storage_keeps_the_physical_anatomy(tmp_path):
    params = synth.draw_params(3, np.random.default_rng(5))
    ref = None
    for name in synth.ORIENTATIONS:
        ct, mask = synth.make_phantom(3, np.random.default_rng(9), 40, params=dataclasses.replace(params, orientation=name))
        sitk.WriteImage(ct, str(tmp_path / f"{name}.nii.gz"))
        ct = sitk.ReadImage(str(tmp_path / f"{name}.nii.gz"))  # through the file: NIfTI keeps the directions
        if ref is None:
            ref = ct
            assert np.allclose(ct.GetDirection(), np.eye(3).ravel())
            continue
        assert not np.allclose(ct.GetDirection(), ref.GetDirection())
        back = sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkNearestNeighbor, -2000)
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ref)), name
        point = ref.TransformIndexToPhysicalPoint((7, 20, 11))
        assert ct[ct.TransformPhysicalPointToIndex(point)] == ref[7, 20, 11]


def test_global_phantom_signs_grow_with_the_stage():
    """Global phantom (negative control), confounders fixed per seed, no image noise:
    parenchymal heterogeneity and contour irregularity grow with the stage."""
    def measure(stage: int, seed: int) -> tuple[float, float]:
        ct, mask, _, mask_img = _phantom(stage, seed, size=64, signs="global", noise_hu=0.0)
        interior = sitk.GetArrayFromImage(sitk.BinaryErode(mask_img, [1, 1, 0])).astype(bool)
        liver = mask.astype(bool)
        inner = liver.copy()
        inner[:, 1:-1, 1:-1] &= liver[:, :-2, 1:-1] & liver[:, 2:, 1:-1] & liver[:, 1:-1, :-2] & liver[:, 1:-1, 2:]
        contour = (liver & ~inner).sum() / np.sqrt(liver.sum() * len(liver))
        return float(ct[interior].std()), float(contour)

    stats = {s: np.mean([measure(s, seed) for seed in range(3)], axis=0) for s in (0, 2, 4)}
    assert stats[0][0] < stats[2][0] < stats[4][0]
    assert stats[4][0] > 2 * stats[0][0]
    assert stats[4][1] > stats[0][1]


def test_make_phantom_rejects_bad_stages():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="0..4"):
        synth.make_phantom(5, rng)
    with pytest.raises(ValueError, match="differs"):
        synth.make_phantom(1, rng, params=synth.draw_params(2, rng))


def _liver_by_position(stage: int, seed: int, signs: str = "positional") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(liver pixels per slice, slice position d, in-plane bounding box) of a noiseless phantom."""
    _, mask, _, _ = _phantom(stage, seed, size=64, signs=signs, noise_hu=0.0)
    liver = mask.astype(bool)
    ks = np.flatnonzero(liver.any(axis=(1, 2)))
    area = liver.sum(axis=(1, 2)).astype(float)[ks]
    d = (ks - ks[0]) / max(ks[-1] - ks[0], 1)
    ys, xs = np.flatnonzero(liver.any(axis=(0, 2))), np.flatnonzero(liver.any(axis=(0, 1)))
    return area, d, np.array([ys[0], ys[-1], xs[0], xs[-1]])


def test_positional_phantom_moves_the_nodules_along_the_liver_without_whole_liver_change():
    """Same confounders and texture, stage 0 vs 4: the stage only moves where the liver loses area
    to inward nodules (sign band d 0.25-0.42 vs decoy band d 0.58-0.75); volume and box stay put."""
    sign_loss, decoy_loss, volume_ratio = [], [], []
    for seed in range(3):
        a0, d, box0 = _liver_by_position(0, seed)
        a4, d4, box4 = _liver_by_position(4, seed)
        assert np.array_equal(d, d4)  # the same slices hold liver
        sign, decoy = (d > 0.25) & (d < 0.42), (d > 0.58) & (d < 0.75)
        sign_loss.append(1 - a4[sign].sum() / a0[sign].sum())      # stage 4 loses area where the sign sits
        decoy_loss.append(1 - a0[decoy].sum() / a4[decoy].sum())   # stage 0 carries the decoy instead
        volume_ratio.append(a4.sum() / a0.sum())
        assert np.all(box4[[0, 2]] >= box0[[0, 2]] - 1) and np.all(box4[[1, 3]] <= box0[[1, 3]] + 1)  # inward only
    assert min(sign_loss) > 0.06 and min(decoy_loss) > 0.02
    assert max(abs(1 - r) for r in volume_ratio) < 0.05  # whole-liver volume within 5% whatever the stage


def test_null_phantom_draws_the_same_images_whatever_the_stage():
    params = [synth.draw_params(s, np.random.default_rng(7), "none") for s in range(5)]
    assert len({dataclasses.replace(p, stage=0) for p in params}) == 1  # only the (unused) stage differs
    positional = [synth.draw_params(s, np.random.default_rng(7), "positional").sign_level for s in range(5)]
    assert positional == sorted(positional) and positional[0] == 0.0 and positional[4] == 1.0


def test_global_phantom_draws_are_unchanged_by_the_signs_option():
    g = synth.draw_params(3, np.random.default_rng(2), "global")
    p = synth.draw_params(3, np.random.default_rng(2), "positional")
    assert g.signs == "global" and g.sign_level == 0.0 and p.signs == "positional"
    assert (g.fov_mm, g.slice_thickness_mm, g.noise_hu) == (p.fov_mm, p.slice_thickness_mm, p.noise_hu)


def test_cohort_readme_and_json_name_the_variant(tmp_path):
    for signs in ("global", "none"):
        out = tmp_path / signs
        assert main(["synth", "--out", str(out), "--patients", "1", "--histo-patients", "0", "--size", "32",
                     "--signs", signs]) == 0
        readme = (out / "README.md").read_text()
        assert "NOT patient data" in readme and f"`--signs {signs}`" in readme
        assert json.loads((out / "cohort.json").read_text())["config"]["signs"] == signs


def test_unknown_signs_are_refused(capsys):
    with pytest.raises(ValueError, match="signs"):
        synth.draw_params(1, np.random.default_rng(0), "stage")
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", "x", "--signs", "stage"])
    assert exc.value.code == 2 and "--signs" in capsys.readouterr().err
