"""`pretrain --monitor-manifest`: monitors on a separate weak-labelled set, refused when it shares
patients with the training set; `scripts/experiments/weak_probe_gain.py` re-scores the same probe."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest_train import make_cohort, shared_cohort
from wsp_cirrhosis.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts" / "experiments"))

TINY = ["--image-size", "32", "--epochs", "2", "--slices-per-epoch", "16", "--batch-size", "4", "--device", "cpu",
        "--method", "wsp"]


def _renamed(src: Path, dst: Path, prefix: str) -> Path:
    """A copy of manifest `src` beside it with every patient_id prefixed (same images)."""
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(dst, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "patient_id": prefix + r["patient_id"]} for r in rows)
    return dst


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny pretrain run on the shared cohort, monitored on 16 patients of another phantom cohort."""
    train = shared_cohort(tmp_path_factory) / "weak.csv"
    other = make_cohort(tmp_path_factory.mktemp("monitor") / "cohort", patients=16, histo_patients=2, seed=5)
    monitor = _renamed(other / "weak.csv", other / "monitor.csv", "mon-")
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["pretrain", "--manifest", str(train), "--monitor-manifest", str(monitor), "--out", str(run),
                 "--monitor-every", "2", *TINY]) == 0
    return run, monitor


def test_the_monitors_see_only_the_monitor_manifest(monitored):
    run, monitor = monitored
    saved = torch.load(run / "encoder.pt", map_location="cpu", weights_only=True)
    with open(monitor, newline="") as f:
        expected = [r["patient_id"] for r in csv.DictReader(f)]
    assert saved["monitor_patients"] == expected  # all of them, and none of the 8 training patients
    assert json.loads((run / "config.json").read_text())["config"]["monitor_manifest"] == str(monitor)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and 0.0 <= lines[0]["weak_band_auc"] <= 1.0


@pytest.mark.parametrize("shared_by", ["patient_id", "image content"])
def test_a_monitor_manifest_sharing_patients_is_refused(shared_by, monitored, tmp_path_factory, tmp_path, capsys):
    train = shared_cohort(tmp_path_factory) / "weak.csv"
    # other phantoms under the training set's ids (weak-0000, ...), or the training CTs under new ids
    monitor = monitored[1].parent / "weak.csv" if shared_by == "patient_id" else \
        _renamed(train, train.parent / "same-cts.csv", "again-")
    code = main(["pretrain", "--manifest", str(train), "--monitor-manifest", str(monitor),
                 "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    why = "(same patient_id)" if shared_by == "patient_id" else "again-weak-0000 (same image content as weak-0000)"
    assert code == 2 and str(monitor) in err and why in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_gain_script_rescores_the_runs_first_and_last_monitor(monitored, tmp_path, capsys):
    import weak_probe_gain

    run, monitor = monitored
    weak_probe_gain.main([str(run), "--manifest", str(monitor), "--n-boot", "200", "--out", str(tmp_path / "g.json")])
    result = json.loads((tmp_path / "g.json").read_text())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0]["weak_band_auc"], lines[-1]["weak_band_auc"]
    row = result["runs"][0]
    # the seed's random init is the run's step-0 encoder, and the probe and its folds are the monitor's
    assert row["auc_b"] == pytest.approx(first, abs=1e-4) and row["auc_a"] == pytest.approx(last, abs=1e-4)
    assert row["difference"] == pytest.approx(last - first, abs=2e-4) and row["lo"] <= row["difference"] <= row["hi"]
    assert result["patients"] == 16 and result["pooled"]["replicates"] == 1
    assert "| mean of 1 runs |" in capsys.readouterr().out


def test_the_benchmark_monitors_every_cell_on_the_monitor_manifest(monitored, tmp_path_factory, tmp_path):
    cohort = shared_cohort(tmp_path_factory)
    _, monitor = monitored
    out = tmp_path / "bench"
    assert main(["benchmark", "--weak", str(cohort / "weak.csv"), "--strong", str(cohort / "histo.csv"),
                 "--monitor-manifest", str(monitor), "--out", str(out), "--methods", "none,wsp", "--seeds", "0",
                 "--sigmas", "0.5", "--folds", "2", "--epochs", "1", "--batch-size", "4", "--image-size", "32",
                 "--protocols", "frozen_bands", "--device", "cpu"]) == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in records} == {"none", "wsp"}
    assert all(0.0 <= r["monitors"]["weak_band_auc"] <= 1.0 for r in records)  # 16 monitor patients: defined
    saved = torch.load(out / "runs" / "wsp-sigma0.5" / "tinynet" / "seed0" / "encoder.pt", map_location="cpu",
                       weights_only=True)
    assert saved["monitor_patients"][0].startswith("mon-") and len(saved["monitor_patients"]) == 16
    assert f"monitors on the 16 patients of `{monitor}`" in (out / "results.md").read_text(encoding="utf-8")


def test_compare_runs_averages_runs_that_share_a_label(monitored, tmp_path, capsys):
    import compare_runs

    run, _ = monitored
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    shifted = [{**line, "weak_band_auc": line["weak_band_auc"] + 0.1} for line in lines if "weak_band_auc" in line]
    xs, mean, lo, hi = compare_runs._curve([(4, lines), (4, shifted)], "weak_band_auc")
    assert xs == [line["step"] * 4 for line in shifted]  # slices seen = step x batch
    base = [line["weak_band_auc"] for line in lines if "weak_band_auc" in line]
    assert mean == pytest.approx([b + 0.05 for b in base]) and lo == pytest.approx(base)
    assert hi == pytest.approx([b + 0.1 for b in base])
    compare_runs.main([str(run), str(run), "--labels", "a,a", "--out", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and capsys.readouterr().out.count("| run (a) |") == 2
    with pytest.raises(SystemExit, match="--labels"):
        compare_runs.main([str(run), "--labels", "a,b", "--out", str(tmp_path / "d.png")])


def test_a_small_monitor_says_how_much_its_probe_can_resolve(tmp_path, caplog):
    from conftest_train import fake_patients
    from wsp_cirrhosis.config import PretrainConfig, TrainConfig
    from wsp_cirrhosis.training.pretrain import pretrain

    cfg = PretrainConfig(manifest=Path("fake.csv"), out=tmp_path / "run", method="simclr", slices_per_epoch=8,
                         train=TrainConfig(epochs=1, batch_size=4, device="cpu"))
    with caplog.at_level("INFO", logger="wsp_cirrhosis"):
        monitor = [dataclasses.replace(p, patient_id=f"mon-{p.patient_id}") for p in fake_patients(6, seed=1)]
        pretrain(cfg, fake_patients(12), monitor_patients=monitor)
    assert "monitors on 6 held-out patients" in caplog.text and "--monitor-manifest" in caplog.text
