"""Benchmark: one prediction as Apply runs it (a child process) vs in Slicer's own process.

Not a test: nothing is asserted. Prints markdown and writes docs/benchmarks/predict-process.md.
Run from the repository root (slicer-core must be installed: the module's process.py is used):

    .venv/bin/python Testing/benchmarks/bench_process.py [--repeats 3] [--size 512] [--slices 200] [--model BUNDLE]

Both paths start where the module starts: the CT and the liver mask as SimpleITK images in
memory (what nodes.py makes of the MRML nodes), the bundled demo model (or --model), CPU.
- in process, warm: `LoadedModel.predict` with torch imported and the model loaded, as
  `logic.process` on a second Apply;
- in process, first call: a fresh Python that imports torch, loads the model and predicts;
- child process (Apply): inputs written as NRRD (process.writeImages), `python -m wsp_cirrhosis
  predict ... --progress jsonl` launched and followed through process.PopenLauncher (Slicer
  5.10's path; 5.12's launchConsoleProcess reads the same pipe), prediction.json read back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "WSPCirrhosis"))

from bench_predict import describe_machine, write_phantom  # noqa: E402


def read_inputs(data: Path):
    import SimpleITK as sitk

    return sitk.ReadImage(str(data / "ct.nii.gz")), sitk.ReadImage(str(data / "liver.nii.gz")) > 0


def cold_in_process(data: Path, model: Path | None) -> dict:
    """In this fresh process: imports + model load + predict, the inputs already in memory."""
    image, mask = read_inputs(data)
    start = time.perf_counter()
    from wsp_cirrhosis.inference.scoring import load_model

    loaded = load_model(model, "cpu")
    prediction = loaded.predict(image, mask, liver_label=1)
    return {"total_s": time.perf_counter() - start, "probability": prediction.probability}


def child_process(image, mask, work: Path, model: Path | None) -> dict:
    """Apply's path, timed at each step; returns seconds since the start of each mark."""
    from wsp_cirrhosis.inference.report import read_prediction
    from WSPCirrhosisLib import process

    marks: dict[str, float] = {}
    start = time.perf_counter()
    ct_path, mask_path = process.writeImages(image, mask, work / "inputs")
    marks["inputs written"] = time.perf_counter() - start
    reader = process.ProtocolReader()
    exit_code = []

    def on_line(line: str) -> None:
        event = reader.feed(line)
        now = time.perf_counter() - start
        if event and event["event"] == "start":
            marks["start event"] = now
        elif event and event.get("stage") == "model" and "first model batch" not in marks:
            marks["first model batch"] = now
        elif event and event["event"] == "done":
            marks["done event"] = now

    command = process.predictCommand(sys.executable, ct_path, mask_path, work / "result", model=model, device="cpu")
    launcher = process.PopenLauncher(command, process.processEnvironment(), on_line, exit_code.append)
    assert launcher.wait(600) and exit_code == [0], reader.tail
    marks["child ended"] = time.perf_counter() - start
    prediction = read_prediction(reader.done["files"]["prediction_json"])
    marks["result read"] = time.perf_counter() - start
    return {"marks": marks, "total_s": marks["result read"], "probability": prediction.probability}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "predict-process.md")
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the bundled model)")
    parser.add_argument("--cold", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:  # child: the first in-process call of a fresh Python
        print(json.dumps(cold_in_process(args.cold, args.model)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmp:
        work = Path(tmp)
        write_phantom(work, args.size, args.slices)
        image, mask = read_inputs(work)
        load = [os.getloadavg()[0]]
        from wsp_cirrhosis.inference.scoring import load_model

        loaded = load_model(args.model, "cpu")
        warm, cold, child = [], [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            prediction = loaded.predict(image, mask, liver_label=1)
            warm.append({"total_s": time.perf_counter() - t, "probability": prediction.probability})
            model_args = ["--model", str(args.model)] if args.model else []
            out = subprocess.run([sys.executable, __file__, "--cold", str(work), *model_args], check=True,
                                 capture_output=True, text=True)
            cold.append(json.loads(out.stdout.strip().splitlines()[-1]))
            child.append(child_process(image, mask, work / f"run-{r}", args.model))
            print(f"run {r + 1}: warm {warm[-1]['total_s']:.2f} s, first call {cold[-1]['total_s']:.2f} s, "
                  f"child {child[-1]['total_s']:.2f} s {child[-1]['marks']}", file=sys.stderr)
        load.append(os.getloadavg()[0])
        n_slices = prediction.n_slices
        same = max(abs(c["probability"] - warm[0]["probability"]) for c in cold + child)
    text = report(args, warm, cold, child, n_slices, load, same, loaded.bundle.name)
    print(text)
    from wsp_cirrhosis.files import write_text_atomic

    write_text_atomic(args.out, text)


def report(args, warm, cold, child, n_slices, load, same, model_name) -> str:
    def cell(runs, key="total_s"):
        values = [r[key] for r in runs]
        return f"{statistics.median(values):.2f} s (min {min(values):.2f})"

    base = statistics.median(r["total_s"] for r in warm)
    lines = [
        "# Apply in a child process vs in Slicer's process (`predict`, CPU)",
        "",
        f"Generated by `Testing/benchmarks/bench_process.py` on {time.strftime('%Y-%m-%d')}.",
        f"Machine: {describe_machine()}.",
        f"Input: synthetic phantom CT {args.size} x {args.size} x {args.slices} slices (int16) + liver mask, "
        f"{n_slices} liver slices; {'model' if args.model else 'bundled model'} `{model_name}`; {args.repeats} runs of each path, "
        "interleaved; median (fastest).",
        f"The 2 CPUs are shared with other jobs (other sessions' tests and benchmarks): 1-minute load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after (2 = both cores busy).",
        "",
        "| path | wall time | vs in process, warm |",
        "| --- | --- | --- |",
        f"| in process, warm (`logic.process`, second Apply: torch imported, model loaded) | {cell(warm)} | 1.00x |",
        f"| in process, first call (imports torch, loads the model) | {cell(cold)} | "
        f"{statistics.median(r['total_s'] for r in cold) / base:.2f}x |",
        f"| child process (Apply: write NRRD, `python -m wsp_cirrhosis predict --progress jsonl`, read back) | "
        f"{cell(child)} | {statistics.median(r['total_s'] for r in child) / base:.2f}x |",
        "",
        f"Start-up overhead of the process: {statistics.median(r['total_s'] for r in child) - base:+.2f} s against "
        f"a warm in-process call, {statistics.median(r['total_s'] for r in child) - statistics.median(r['total_s'] for r in cold):+.2f} s "
        "against a first in-process call (medians).",
        "",
        "Where the child process's time goes (median seconds from the start of Apply):",
        "",
        "| mark (\"done event\" to \"child ended\" is the child's interpreter shutdown) | seconds |",
        "| --- | --- |",
    ]
    for mark in child[0]["marks"]:
        lines.append(f"| {mark} | {statistics.median(r['marks'][mark] for r in child):.2f} |")
    lines += [
        "",
        f"Largest difference of the patient probability between the paths: {same:.1e} (same inputs, same model).",
        "",
        "Reading: the process pays the Python start-up, `import torch`, the model load, reading the inputs "
        "back from disk and writing slices.csv / curve.png / prediction.json on every Apply; in exchange the "
        "Slicer GUI stays responsive, the model computes at full speed instead of only in the gaps that Slicer's "
        "GUI thread leaves a worker thread (it holds Python's GIL while idle; issue 13), Cancel "
        "is immediate, and the process's memory (GPU memory included) is returned when it ends. "
        "`logic.process` keeps the in-process path for the Python console and tests.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
