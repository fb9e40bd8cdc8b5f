"""`wsp-cirrhosis predict --progress jsonl` as another program sees it: a real child process
(`python -m wsp_cirrhosis`), its stdout read line by line while it runs, signals sent to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from support import export_spread_bundle, make_ct
from wsp_cirrhosis.config import PreprocessConfig
from wsp_cirrhosis.progress import PROTOCOL_VERSION
from wsp_cirrhosis.inference.report import read_prediction

STAGE_ORDER = ["load", "read", "preprocess", "model", "write"]


@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> dict[str, Path]:
    """A CT with about 55 liver slices: with --batch-size 1 the run is long enough to be interrupted."""
    folder = tmp_path_factory.mktemp("patient")
    ct, mask = make_ct(shape_zyx=(80, 40, 48))
    paths = {"ct": folder / "ct.nii.gz", "mask": folder / "liver.nii.gz"}
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(mask, str(paths["mask"]))
    paths["bundle"] = export_spread_bundle(paths["ct"], paths["mask"], PreprocessConfig(image_size=32),
                                           tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("b") / "tiny")
    return paths


def start(patient, out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "wsp_cirrhosis", "predict", str(patient["ct"]), "--liver-mask", str(patient["mask"]),
            "--model", str(patient["bundle"]), "--out", str(out), "--device", "cpu", "--progress", "jsonl", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def events_of(proc: subprocess.Popen, until=None) -> list[dict]:
    """Every stdout line as JSON, read as the child writes them; stop early once `until(event)`."""
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))  # a line that is not one JSON object fails the test here
        if until is not None and until(events[-1]):
            break
    return events


def test_events_arrive_in_order_up_to_done(patient, tmp_path):
    out = tmp_path / "out"
    proc = start(patient, out, "--batch-size", "16")
    events = events_of(proc)
    assert proc.wait(60) == 0
    stderr = proc.stderr.read()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"progress"}
    assert events[0]["protocol"] == PROTOCOL_VERSION and events[0]["pid"] == proc.pid
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert sorted(set(stages), key=STAGE_ORDER.index) == STAGE_ORDER
    assert stages == sorted(stages, key=STAGE_ORDER.index), "stages never go back"
    assert sum(s == "model" for s in stages) >= 4, "one event per batch of slices"
    done = events[-1]
    assert done["exit_code"] == 0 and Path(done["out"]) == out
    assert sorted(Path(p).name for p in done["files"].values()) == ["curve.png", "prediction.json", "slices.csv"]
    assert all(Path(p).is_file() for p in done["files"].values())
    prediction = read_prediction(done["files"]["prediction_json"])
    assert done["probability"] == prediction.probability and done["n_slices"] == prediction.n_slices > 40
    assert "P(cirrhosis) =" in stderr, "the line for people goes to stderr, stdout is the protocol's"


def test_sigterm_mid_run_leaves_no_output_folder(patient, tmp_path):
    out = tmp_path / "out"
    proc = start(patient, out, "--batch-size", "1")
    seen = events_of(proc, until=lambda e: e.get("stage") == "model")
    assert seen[-1]["stage"] == "model" and "batch 1/" in seen[-1]["message"]
    proc.send_signal(signal.SIGTERM)  # the other batches and the result files are still to come
    rest = events_of(proc)
    assert proc.wait(60) == 130
    assert rest[-1]["event"] == "error" and rest[-1]["exit_code"] == 130 and "SIGTERM" in rest[-1]["message"]
    assert not any(e["event"] == "done" for e in rest)
    assert list(tmp_path.iterdir()) == [], "neither OUT nor its hidden staging folder"


@pytest.mark.parametrize("flags, fragment", [
    (["--ct-missing"], "missing.nii.gz"),
    (["--batch-size", "0"], "--batch-size 0"),
])
def test_bad_input_gives_one_json_error_line_and_exit_2(patient, tmp_path, flags, fragment):
    out = tmp_path / "out"
    if "--ct-missing" in flags:
        patient = {**patient, "ct": tmp_path / "missing.nii.gz"}
        flags = []
    proc = start(patient, out, *flags)
    events = events_of(proc)
    assert proc.wait(60) == 2
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 2 and fragment in events[-1]["message"]
    assert [e["event"] for e in events if e["event"] not in ("start", "progress")] == ["error"]
    assert f"error: {events[-1]['message']}" in proc.stderr.read()
    assert not out.exists()
