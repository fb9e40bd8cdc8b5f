"""Benchmark of `preprocess --workers N` on full-size CTs; prints markdown, writes docs/benchmarks/preprocess.md.

Not a test: nothing is asserted. Run from the repository root:

    .venv/bin/python Testing/benchmarks/bench_preprocess.py [--patients 6] [--workers 1,2] [--size 512] [--slices 200]

One cirrhotic phantom (synth.make_phantom scaled to SIZE x SIZE x SLICES, stored RAI so the
reorientation does real work) and its liver mask are written as NIfTI (.nii.gz) and copied to
PATIENTS patients (distinct files, same bytes). For each worker count, `load_cohort` builds the
default cache (224 x 224) of the whole manifest into a fresh folder, in a fresh process; wall
time, CPU time (this process and its workers) and the cache bytes per patient are reported. The
3,000-scan projection assumes the CPU-seconds per patient of the 1-worker run spread over 16
cores with the parallel efficiency measured at the largest worker count here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))


def make_cohort(folder: Path, patients: int, size: int, slices: int) -> Path:
    """PATIENTS copies of one full-size phantom CT + mask, and their manifest."""
    from bench_predict import write_phantom

    write_phantom(folder, size, slices)
    rows = ["patient_id,image,liver_mask,weak_label,histo_label"]
    for i in range(patients):
        for name in ("ct", "liver"):
            shutil.copyfile(folder / f"{name}.nii.gz", folder / f"{name}{i:03d}.nii.gz")
        rows.append(f"p{i:03d},ct{i:03d}.nii.gz,liver{i:03d}.nii.gz,1,")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "cohort.csv"


def run_case(manifest: Path, workers: int, cache: Path) -> dict:
    """In this (fresh) process: build the cache with `workers` processes; time it."""
    import SimpleITK as sitk
    import torch

    from wsp_cirrhosis.data.preprocess import load_cohort
    from wsp_cirrhosis.config import PreprocessConfig

    torch.set_num_threads(1)  # the 1-worker case runs here: one thread, like each pool worker
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    logging.basicConfig(level=logging.INFO)
    seen = _Lines()
    logging.getLogger("wsp_cirrhosis").addHandler(seen)
    start, own = time.perf_counter(), time.process_time()
    patients = load_cohort(manifest, PreprocessConfig(), cache_dir=cache, workers=workers)
    wall = time.perf_counter() - start
    # pool processes are children of the fork server, not of this process: their CPU time comes from
    # the pool's own accounting (the log line of data.pool.build_entries: all builds, and those built
    # here, which this process's own CPU time already holds)
    total, here = map(float, re.search(r"([\d.]+) CPU-s in preprocessing \(([\d.]+) in this", seen.text).groups())
    cpu = total - here + time.process_time() - own
    size = sum(p.stat().st_size for p in cache.iterdir() if p.suffix in (".npy", ".json") and p.name != "hashes.json")
    return {"workers": workers, "patients": len(patients), "wall_s": wall, "cpu_s": cpu,
            "slices": sum(len(p.slices) for p in patients), "bytes_per_patient": size / len(patients),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + "\n"


def describe_machine() -> str:
    from wsp_cirrhosis.provenance import cpu_model

    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}; "
            f"load average before: {os.getloadavg()[0]:.1f}")


def report(args: argparse.Namespace, rows: list[dict], machine: str, load_after: float, load_before: float = 0.0) -> str:
    one = next(r for r in rows if r["workers"] == 1)
    best = max(rows, key=lambda r: r["workers"])
    per_patient_wall = one["wall_s"] / one["patients"]
    per_patient_cpu = one["cpu_s"] / one["patients"]
    efficiency = (one["wall_s"] / best["wall_s"]) / best["workers"]
    ideal = 3000 * per_patient_cpu / 16
    measured = 3000 * per_patient_wall / (16 * efficiency)
    lines = [
        "# Preprocessing benchmark (`preprocess --workers N`)",
        "",
        f"Measured with `Testing/benchmarks/bench_preprocess.py --patients {args.patients} --workers {args.workers} "
        f"--size {args.size} --slices {args.slices}` on {machine}; load average after: {load_after:.1f}.",
        "",
        f"Data: a synthetic phantom (not a patient) of {args.size} x {args.size} x {args.slices} voxels, int16 "
        f"NIfTI (.nii.gz, stored RAI), copied to {args.patients} patients; default preprocessing (224 x 224, "
        "liver window). Each row builds the whole cache into a fresh folder in a fresh process.",
        "",
        "| workers | patients | wall (s) | patients/s | CPU time (s) | CPU s / patient | cores used (CPU / wall) | liver slices | cache MB / patient | peak RSS main process (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['patients']} | {r['wall_s']:.1f} | {r['patients'] / r['wall_s']:.2f} | "
                     f"{r['cpu_s']:.1f} | {r['cpu_s'] / r['patients']:.2f} | {r['cpu_s'] / r['wall_s']:.2f} | {r['slices']} | "
                     f"{r['bytes_per_patient'] / 1e6:.1f} | {r['peak_rss_mb']:.0f} |")
    lines += [
        "",
        "CPU time: the pool processes' own CPU time plus the main process's (pool start-up excluded; it "
        "is in the wall time). With N workers the main process is one of them and the pool has N - 1 "
        "processes; peak RSS is the main process's, and each pool process needs about as much.",
        f"Speed-up with {best['workers']} workers: {one['wall_s'] / best['wall_s']:.2f}x "
        f"(parallel efficiency {100 * efficiency:.0f}%)."
        + (f" The machine was shared (load average {load_before:.1f}-{load_after:.1f} on {os.cpu_count()} CPUs): "
           "the workers had no free core, so this row measures contention and pool start-up, not the pool's "
           "scaling; rerun on a quiet machine." if max(load_before, load_after) > (os.cpu_count() or 1) else ""),
        "Projections for 3,000 such scans on 16 cores (not measured): "
        f"{ideal / 60:.0f} min if 16 free cores each spend the CPU time measured here per patient "
        f"(3000 x {per_patient_cpu:.2f} s / 16); "
        f"{measured / 60:.0f} min if 16 cores scale as poorly as {best['workers']} did on this loaded machine "
        f"(3000 x {per_patient_wall:.2f} s / (16 x {efficiency:.2f})).",
        f"Cache size: {one['bytes_per_patient'] / 1e6:.1f} MB per patient here "
        f"({one['slices'] // one['patients']} liver slices of 224 x 224 float32); 3,000 such scans: "
        f"{3000 * one['bytes_per_patient'] / 1e9:.0f} GB.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (must include 1)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "preprocess.md")
    parser.add_argument("--case", nargs=3, metavar=("MANIFEST", "WORKERS", "CACHE"), help=argparse.SUPPRESS)
    parser.add_argument("--make-data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(Path(args.case[0]), int(args.case[1]), Path(args.case[2]))))
        return
    if args.make_data:
        make_cohort(args.make_data, args.patients, args.size, args.slices)
        return
    machine, load_before = describe_machine(), os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="wsp-bench-preprocess-") as tmp:
        # the phantom is made in its own process: Linux carries a parent's peak RSS over exec
        subprocess.run([sys.executable, __file__, "--make-data", tmp, "--patients", str(args.patients),
                        "--size", str(args.size), "--slices", str(args.slices)], check=True)
        manifest = Path(tmp) / "cohort.csv"
        for w in [int(x) for x in args.workers.split(",")]:
            cache = Path(tmp) / f"cache-{w}"
            done = subprocess.run([sys.executable, __file__, "--case", str(manifest), str(w), str(cache)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"workers={w}: {rows[-1]['wall_s']:.1f} s", file=sys.stderr)
    text = report(args, rows, machine, os.getloadavg()[0], load_before)
    print(text)
    from wsp_cirrhosis.files import write_text_atomic

    write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
