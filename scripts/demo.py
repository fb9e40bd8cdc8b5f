"""`make demo`: the whole pipeline on a small synthetic phantom cohort, end to end.

synth -> preprocess (cache + preview) -> pretrain (WSP) -> finetune -> evaluate (5-fold AUC)
-> export (model bundle) -> predict (one patient: slices.csv, prediction.json, curve.png).

The cohort is a synthetic phantom, not patient data: its AUC says the pipeline works, nothing
about cirrhosis. Re-running replaces the demo folder (it belongs to the demo).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

from wsp_cirrhosis.cli import main as cli

MARKER = ".wsp-demo"


def step(title: str, argv: list[str]) -> None:
    print(f"\n=== {title}: wsp-cirrhosis {' '.join(argv)}", flush=True)
    start = time.monotonic()
    code = cli(argv)
    if code != 0:
        sys.exit(f"demo: step '{title}' failed with exit code {code}")
    print(f"=== {title}: done in {time.monotonic() - start:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--patients", type=int, default=120, help="weak-labelled patients")
    parser.add_argument("--histo-patients", type=int, default=50, help="histology-labelled patients")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30, help="pretraining epochs (one slice per patient each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out = args.out
    if out.exists():
        if not (out / MARKER).exists():
            sys.exit(f"demo: {out} exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by scripts/demo.py; safe to delete\n")
    start = time.monotonic()
    cohort, size = out / "cohort", ["--image-size", str(args.image_size)]
    seed = ["--seed", str(args.seed)]
    step("synthetic cohort", ["synth", "--out", str(cohort), "--patients", str(args.patients),
                              "--histo-patients", str(args.histo_patients), "--size", "96", *seed])
    step("preprocess", ["preprocess", "--manifest", str(cohort / "weak.csv"), *size,
                        "--preview", str(out / "preview.png")])
    step("pretrain (WSP)", ["pretrain", "--manifest", str(cohort / "weak.csv"), "--method", "wsp", "--encoder", "tinynet",
                            "--out", str(out / "pretrain"), "--epochs", str(args.epochs), "--batch-size", "32",
                            *size, *seed])
    step("finetune", ["finetune", "--manifest", str(cohort / "histo.csv"), "--init", str(out / "pretrain"),
                      "--out", str(out / "finetune"), "--epochs", "10", "--slices-per-patient", "8", *size, *seed])
    step("evaluate (5-fold)", ["evaluate", "--manifest", str(cohort / "histo.csv"), "--encoder", str(out / "pretrain"),
                               "--folds", "5", "--json", str(out / "evaluate.json"), "--epochs", "3",
                               "--slices-per-patient", "4", *size, *seed])
    step("export", ["export", "--run", str(out / "finetune"), "--out", str(out / "model"), "--name", "demo-wsp-tinynet"])
    with open(cohort / "histo.csv", newline="") as f:
        first = next(csv.DictReader(f))
    step("predict", ["predict", str(cohort / first["image"]), "--liver-mask", str(cohort / first["liver_mask"]),
                     "--model", str(out / "model"), "--out", str(out / "prediction"), "--device", "cpu"])

    results = json.loads((out / "evaluate.json").read_text())
    prediction = json.loads((out / "prediction" / "prediction.json").read_text())
    print("\n=== Demo finished in {:.0f} s (synthetic phantoms, not patient data)".format(time.monotonic() - start))
    for protocol, summary in results["protocols"].items():
        print(f"patient-level AUC ({protocol}, 5-fold): {summary['auc_mean']:.3f} ± {summary['auc_std']:.3f}")
    print(f"patient {first['patient_id']} (histology {first['histo_label']}): P(cirrhosis) = {prediction['probability']:.3f}"
          f" -> {prediction.get('label_name', prediction['label'])}")
    print(f"z-curve: {out / 'prediction' / 'curve.png'}\npreview of the slice cache: {out / 'preview.png'}")


if __name__ == "__main__":
    main()
