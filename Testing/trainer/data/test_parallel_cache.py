"""Parallel preprocessing: a process pool writes the cache of one process byte for byte; a failing
patient is reported while the others finish; under torchrun each rank builds its share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from support import make_ct
from wsp_cirrhosis.data.preprocess import load_cohort
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import PreprocessConfig
from wsp_cirrhosis.errors import InputError

CFG = PreprocessConfig(image_size=24)


@pytest.fixture
def cohort(tmp_path):
    """Four readable patients (one stored as DICOM-free NRRD) and one whose mask is empty."""
    rows = []
    for i in range(5):
        ct, mask = make_ct(seed=i, shape_zyx=(20 + 2 * i, 36, 40))
        if i == 3:
            mask = mask * 0  # empty mask: this patient cannot be preprocessed
        suffix = ".nrrd" if i == 1 else ".nii.gz"
        sitk.WriteImage(ct, str(tmp_path / f"ct{i}{suffix}"))
        sitk.WriteImage(mask, str(tmp_path / f"mask{i}{suffix}"))
        rows.append(f"p{i},ct{i}{suffix},mask{i}{suffix},{i % 2},")
    path = tmp_path / "cohort.csv"
    path.write_text("patient_id,image,liver_mask,weak_label,histo_label\n" + "\n".join(rows) + "\n")
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".npy", ".json")}


def test_two_workers_write_the_one_worker_cache_byte_for_byte_and_report_the_failing_patient(cohort, tmp_path):
    with pytest.raises(InputError, match=r"1 patient\(s\) could not be preprocessed:\n  p3: .*empty"):
        load_cohort(cohort, CFG, cache_dir=tmp_path / "pool", workers=2)
    assert len(list((tmp_path / "pool").glob("*.npy"))) == 4  # the others finished
    one = load_cohort(cohort, CFG, cache_dir=tmp_path / "one", workers=1, skip_bad=True)
    pool = load_cohort(cohort, CFG, cache_dir=tmp_path / "pool", workers=2, skip_bad=True)
    assert [p.patient_id for p in pool] == [p.patient_id for p in one] == ["p0", "p1", "p2", "p4"]
    a, b = _files(tmp_path / "one"), _files(tmp_path / "pool")
    assert sorted(a) == sorted(b) and len(a) == 9  # 4 x (.npy, .json) + hashes.json
    assert [name for name in a if a[name] != b[name]] == []
    assert all(len(p.slices) > 0 for p in pool)


def test_preprocess_command_takes_workers(cohort, capsys):
    assert main(["preprocess", "--manifest", str(cohort), "--workers", "2", "--image-size", "24", "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "4 patients" in out and "preview:" in out
    assert main(["preprocess", "--manifest", str(cohort), "--workers", "-1"]) == 2


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_torchrun_two_ranks_each_preprocess_their_share(cohort, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--manifest", str(cohort), "--image-size", "24", "--workers", "1", "--skip-bad"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "wsp_cirrhosis", "preprocess", *args, "--cache-dir", str(tmp_path / "ddp")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0/2: preprocessing its share, 3 of 5 patients" in done.stderr
    assert "rank 1/2: preprocessing its share, 2 of 5 patients" in done.stderr
    assert done.stdout.count("cached in") == 1  # rank 0 alone reports
    load_cohort(cohort, CFG, cache_dir=tmp_path / "one", workers=1, skip_bad=True)
    a, b = _files(tmp_path / "one"), _files(tmp_path / "ddp")
    assert sorted(a) == sorted(b) and [name for name in a if a[name] != b[name]] == []


def test_prepared_patients_come_in_manifest_order_equal_to_prepare_ct_with_failures_reported(cohort):
    from wsp_cirrhosis.data.pool import prepared_patients
    from wsp_cirrhosis.data.manifest import read_manifest
    from wsp_cirrhosis.data.slices import prepare_ct

    records = read_manifest(cohort)
    got = list(prepared_patients(records, CFG, workers=2))
    assert [r.patient_id for r, *_ in got] == ["p0", "p1", "p2", "p3", "p4"]
    assert [error is None for _, _, error, _ in got] == [True, True, True, False, True]
    assert "empty" in got[3][2]
    for record, liver, error, seconds in got:
        if error is None:
            direct = prepare_ct(record.image, record.liver_mask, CFG)
            assert liver.slices.tobytes() == direct.slices.tobytes() and seconds > 0
            assert (liver.slice_index == direct.slice_index).all()


def test_workers_auto_times_the_first_patient_and_keeps_small_cohorts_in_process(cohort, tmp_path, caplog):
    from wsp_cirrhosis.data import pool
    from wsp_cirrhosis.errors import ConfigError

    assert pool.parse_workers("auto") is None and pool.parse_workers(None) is None
    assert pool.parse_workers("2") == 2 and pool.parse_workers(0) == pool.default_workers()
    with pytest.raises(ConfigError, match="--workers many"):
        pool.parse_workers("many")
    # the rule: this process works while the pool starts, so the work left must exceed the start-up
    assert pool.pool_pays(15, 0.28, 2)  # 16 CTs of 384 px: measured faster with a pool (1.42x)
    assert not pool.pool_pays(4, 0.3, 2)  # 1.2 s of work: less than the start-up
    assert pool.pool_pays(7, 1.0, 2)  # 8 full-size CTs: measured faster
    assert not pool.pool_pays(100, 10.0, 1)  # one core: never
    with caplog.at_level("INFO", logger="wsp_cirrhosis"):
        auto = load_cohort(cohort, CFG, cache_dir=tmp_path / "auto", workers="auto", skip_bad=True)
    assert "--workers auto: the first patient took" in caplog.text
    assert "4 to go" in caplog.text and "1 worker (a pool's start-up" in caplog.text  # tiny CTs stay here
    assert "preprocessed 5 patient(s) with 1 worker(s)" in caplog.text
    load_cohort(cohort, CFG, cache_dir=tmp_path / "one", workers=1, skip_bad=True)
    a, b = _files(tmp_path / "one"), _files(tmp_path / "auto")
    assert [p.patient_id for p in auto] == ["p0", "p1", "p2", "p4"]
    assert sorted(a) == sorted(b) and [name for name in a if a[name] != b[name]] == []


def test_pool_tasks_come_in_chunks_that_cover_the_cohort_once():
    from wsp_cirrhosis.data.pool import chunks

    items = list(range(23))
    parts = chunks(items, workers=2)
    assert sum(parts, []) == items and len(parts) == 8 and max(map(len, parts)) == 3
    assert chunks([1], workers=4) == [[1]]


def test_prepared_patients_auto_yields_every_patient_in_order(cohort, caplog):
    from wsp_cirrhosis.data.manifest import read_manifest
    from wsp_cirrhosis.data.pool import prepared_patients

    with caplog.at_level("INFO", logger="wsp_cirrhosis"):
        got = list(prepared_patients(read_manifest(cohort), CFG, workers="auto"))
    assert [r.patient_id for r, *_ in got] == ["p0", "p1", "p2", "p3", "p4"]
    assert [error is None for _, _, error, _ in got] == [True, True, True, False, True]
    assert "--workers auto: the first patient took" in caplog.text and "1 worker" in caplog.text


def test_this_process_builds_beside_the_pool_and_each_patient_once(cohort, tmp_path):
    import SimpleITK as sitk

    from wsp_cirrhosis.data import pool
    from wsp_cirrhosis.data.manifest import read_manifest

    records = read_manifest(cohort)
    threads = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    executor = pool.make_pool(1)
    try:
        tasks = [([r], {}) for r in records]
        got = list(pool._shared_results(executor, tasks, CFG, tmp_path / "shared", pool_size=1))
    finally:
        executor.shutdown()
    assert sorted(r.patient_id for r, *_ in got) == ["p0", "p1", "p2", "p3", "p4"]
    here = {r.patient_id for r, *_, built_here in got if built_here}
    assert "p4" in here  # the pool takes from the front, this process from the back, while it starts
    assert [r.patient_id for r, _, error, *_ in got if error] == ["p3"]
    assert (torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()) == threads  # restored


def test_a_pool_that_cannot_take_work_leaves_it_to_this_process(cohort, tmp_path, monkeypatch, caplog):
    from wsp_cirrhosis.data import pool

    def broken(workers):
        executor = pool.ProcessPoolExecutor(max_workers=workers)
        executor.shutdown()  # submit now raises: the feeder must hand its task back
        return executor

    monkeypatch.setattr(pool, "make_pool", broken)
    with caplog.at_level("INFO", logger="wsp_cirrhosis"):
        load_cohort(cohort, CFG, cache_dir=tmp_path / "pool", workers=2, skip_bad=True)
    import re

    total, here = re.search(r"with 2 worker\(s\): .* ([\d.]+) CPU-s in preprocessing \(([\d.]+) in this", caplog.text).groups()
    assert total == here  # every patient was built here
    load_cohort(cohort, CFG, cache_dir=tmp_path / "one", workers=1, skip_bad=True)
    a, b = _files(tmp_path / "one"), _files(tmp_path / "pool")
    assert sorted(a) == sorted(b) and len(a) == 9 and [name for name in a if a[name] != b[name]] == []
