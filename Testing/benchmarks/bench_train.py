"""Benchmark of contrastive pretraining throughput; prints markdown, writes docs/benchmarks/train.md.

Not a test: nothing is asserted. Run from the repository root:

    .venv/bin/python Testing/benchmarks/bench_train.py [--steps 3] [--batch-size 16] [--device cpu|cuda]

Each row runs the real training loop (``train.pretrain``: sampler, prefetch thread, augmentation,
forward/backward, Adam, checkpoint) on a synthetic cohort cached at 224 x 224 (memory-mapped
slices, as in a real run), method wsp. Epoch 1 is a warm-up; the numbers are from the following
epochs: slices per second (each slice is seen in two views) and the share of the step time the
loop spent waiting for the next batch. A separate line times the batch assembly itself
(``data.load_batch`` from the memory maps, single thread) against the step time, which is the
cost the prefetch thread hides.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from wsp_cirrhosis.data.preprocess import load_cohort
from wsp_cirrhosis.cli import main as cli_main
from wsp_cirrhosis.config import PreprocessConfig, PretrainConfig, TrainConfig
from wsp_cirrhosis.training.samplers import PatientSampler, load_batch
from wsp_cirrhosis.files import write_text_atomic
from wsp_cirrhosis.provenance import cpu_model
from wsp_cirrhosis.training.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[2]
ROWS = [("tinynet", False, 1), ("tinynet", True, 1), ("resnet18", False, 1), ("resnet18", True, 1), ("tinynet", True, 4)]


def machine(device: str) -> str:
    cpu = cpu_model()
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} using {torch.get_num_threads()} "
            f"threads, Python {platform.python_version()}, device {device}{gpu}")


def run_row(patients: list, encoder: str, bf16: bool, accumulate: int, args: argparse.Namespace, work: Path) -> dict:
    steps_per_epoch = math.ceil(len(patients) / args.batch_size)
    epochs = 1 + math.ceil(args.steps / steps_per_epoch)
    cfg = PretrainConfig(manifest=Path("bench.csv"), out=work / f"{encoder}-{'bf16' if bf16 else 'fp32'}-{accumulate}",
                         encoder=encoder, monitor_fraction=0.0, slices_per_epoch=steps_per_epoch * args.batch_size,
                         train=TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=1e-4,
                                                            device=args.device, bf16=bf16, accumulate=accumulate,
                                                            force=True))
    run = pretrain(cfg, patients)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]  # drop the warm-up epoch
    seconds = sum(m["time_s"] for m in lines)
    steps = len(lines) * steps_per_epoch
    wait = sum(m["data_wait_fraction"] * m["time_s"] for m in lines)
    return {"encoder": encoder, "precision": "bf16 + channels_last" if bf16 else "fp32", "accumulate": accumulate, "steps": steps,
            "step_s": seconds / steps, "slices_per_s": steps * args.batch_size / seconds, "wait": wait / seconds}


def time_batch_assembly(patients: list, batch_size: int, repeats: int = 20) -> float:
    """Median seconds of one load_batch (memory map -> contiguous float32 batch), one thread."""
    sampler = PatientSampler([p.weak_label for p in patients], [len(p.slices) for p in patients], batch_size, 0)
    times = []
    for epoch in range(repeats):
        (p_idx, s_idx), *_ = sampler.epoch(epoch)
        start = time.perf_counter()
        load_batch(patients, p_idx, s_idx)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per row (after a warm-up epoch)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patients", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "train.md")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        assert cli_main(["synth", "--out", str(work / "cohort"), "--patients", str(args.patients),
                         "--histo-patients", "0", "--size", "64", "--seed", "0"]) == 0
        patients = load_cohort(work / "cohort" / "weak.csv", PreprocessConfig(image_size=args.image_size),
                               cache_dir=work / "cache", require="weak")
        n_slices = sum(len(p.slices) for p in patients)
        rows = [run_row(patients, encoder, bf16, accumulate, args, work) for encoder, bf16, accumulate in ROWS]
        assembly = time_batch_assembly(patients, args.batch_size)
        assembly64 = time_batch_assembly(patients, min(64, len(patients)))
    header = ["encoder", "precision", "accumulate", "steps", "s / step", "slices/s", "views/s", "data wait", "batch assembly / step"]
    table = ["| " + " | ".join(header) + " |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        table.append(f"| {r['encoder']} | {r['precision']} | {r['accumulate']} | {r['steps']} | {r['step_s']:.2f} | {r['slices_per_s']:.1f} | "
                     f"{2 * r['slices_per_s']:.1f} | {100 * r['wait']:.2f}% | {100 * assembly / r['step_s']:.2f}% |")
    by = {(r["encoder"], r["precision"], r["accumulate"]): r["slices_per_s"] for r in rows}
    speed = {e: by[(e, "bf16 + channels_last", 1)] / by[(e, "fp32", 1)] for e in ("tinynet", "resnet18")}
    cache_cost = by[("tinynet", "bf16 + channels_last", 1)] / by[("tinynet", "bf16 + channels_last", 4)]
    worst_wait = max(r["wait"] for r in rows)
    worst_assembly = max(assembly / r["step_s"] for r in rows)
    verdict = "met" if worst_wait < 0.10 and worst_assembly < 0.10 else "NOT met"
    text = "\n".join([
        "# Pretraining throughput",
        "",
        f"Machine: {machine(args.device)}; 1-min load average at start {load_start:.2f}, at the end "
        f"{os.getloadavg()[0]:.2f} (other jobs share the CPU).",
        f"Command: `python Testing/benchmarks/bench_train.py --steps {args.steps} --batch-size {args.batch_size} "
        f"--device {args.device}`.",
        "",
        f"The real loop (`train.pretrain`, method wsp) on a synthetic cohort of {len(patients)} patients "
        f"({n_slices} slices) cached at {args.image_size} x {args.image_size} as memory-mapped .npy files; "
        f"global batch {args.batch_size} slices = {2 * args.batch_size} augmented views; one warm-up epoch, then "
        "at least the stated number of steps. *data wait*: share of the measured time the loop waited for the "
        "prefetch thread. *batch assembly / step*: one `load_batch` of the same size from the memory maps "
        f"(median {1000 * assembly:.2f} ms; {1000 * assembly64:.2f} ms for 64 slices), timed alone, over the step "
        "time: the work the prefetch thread overlaps with the step.",
        "",
        *table,
        "",
        f"Requirement: data loading < 10% of step time: {verdict} (worst data wait {100 * worst_wait:.2f}%, worst "
        f"batch assembly {100 * worst_assembly:.2f}% of a step).",
        "",
        "Reading: a step costs about three forward passes for each of the 2 x batch views, so throughput is "
        "bound by the convolutions; a slice comes out of the page cache in well under 0.1 ms. bf16 + "
        "channels_last speed-up here: " + ", ".join(
            f"{e} {speed[e]:.1f}x" for e in speed) + " (it depends on native bfloat16 support, AVX512-BF16 / AMX "
        "on CPUs). Gradient caching (`--accumulate 4`) adds one no-grad forward pass per view and runs "
        f"smaller chunks: {cache_cost:.2f}x the step time of the plain step (TinyNet, bf16), for about a quarter "
        "of the activation memory.",
        "",
    ])
    print(text)
    write_text_atomic(args.out, text)


if __name__ == "__main__":
    sys.exit(main())
