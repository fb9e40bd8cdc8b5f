"""`make demo`: the whole pipeline on a small synthetic phantom cohort, end to end.

synth -> preprocess (cache + preview) -> pretrain (WSP, with representation monitors) -> finetune
-> evaluate (5-fold AUC) -> export (model bundle) -> predict (one patient: slices.csv,
prediction.json, curve.png).

Pretraining prints its monitors at the start and at the end (kNN balanced accuracy of the weak
label on held-out patients: chance is 0.33 for the three weak classes) and writes
demo/pretrain/curves.png, so a newcomer sees whether the representation learned anything.

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
from wsp_cirrhosis.training.pretrain import monitor_summary

MARKER = ".wsp-demo"
# The pretraining recipe that learns on 2 CPU cores (docs/training.md): BatchNorm head, lr 1e-3.
DEMO_EPOCHS, DEMO_SLICES_PER_EPOCH = 12, 2000
# The demo draws the "global" phantom: its weak label shows on every slice, so 750 CPU steps
# visibly learn it. On the default "positional" phantom the monitors stayed at chance for 250+
# steps in our runs (docs/training.md); that phantom is for the benchmark.
DEMO_SIGNS = "global"
# sigma 0.85 and the uniform slice draw: the settings the demo's documented figures were measured
# with (docs/training.md); the default recipe (sigma 0.1, 4 position groups) is for position-bound
# signs, and the demo moves to the positional phantom with it (issue 24).
DEMO_PRETRAIN = ["--head-norm", "batch", "--lr", "1e-3", "--monitor-fraction", "0.15", "--monitor-every", "1",
                 "--sigma", "0.85", "--position-groups", "0"]


def step(title: str, argv: list[str]) -> None:
    print(f"\n=== {title}: wsp-cirrhosis {' '.join(argv)}", flush=True)
    start = time.monotonic()
    code = cli(argv)
    if code != 0:
        sys.exit(f"demo: step '{title}' failed with exit code {code}")
    print(f"=== {title}: done in {time.monotonic() - start:.1f} s", flush=True)


def print_monitors(run: Path) -> None:
    """The representation monitors at the start and the end of pretraining (metrics.jsonl)."""
    names = {"knn_bal_acc": "kNN weak-label balanced accuracy (held-out patients; chance 0.33)",
             "position_r2": "position R^2 (ridge from the features)", "loss_excess": "loss excess (1 = collapsed)",
             "uniformity": "uniformity (0 = collapsed)", "effective_rank": "effective rank of the features"}
    summary = monitor_summary(run)
    print("representation monitors, first -> last:")
    for key, label in names.items():
        if key in summary:
            first, last = summary[key]
            print(f"  {label:66s} {first:7.3f} -> {last:7.3f}")
    print(f"  curves: {run / 'curves.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--patients", type=int, default=120, help="weak-labelled patients")
    parser.add_argument("--histo-patients", type=int, default=50, help="histology-labelled patients")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="pretraining epochs")
    parser.add_argument("--slices-per-epoch", type=int, default=DEMO_SLICES_PER_EPOCH,
                        help="pretraining slices per epoch (batch 32)")
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
                              "--histo-patients", str(args.histo_patients), "--size", "96", "--signs", DEMO_SIGNS,
                              *seed])
    step("preprocess", ["preprocess", "--manifest", str(cohort / "weak.csv"), *size,
                        "--preview", str(out / "preview.png")])
    step("pretrain (WSP)", ["pretrain", "--manifest", str(cohort / "weak.csv"), "--method", "wsp", "--encoder", "tinynet",
                            "--out", str(out / "pretrain"), "--epochs", str(args.epochs), "--batch-size", "32",
                            "--slices-per-epoch", str(args.slices_per_epoch), *DEMO_PRETRAIN, *size, *seed])
    print_monitors(out / "pretrain")
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
    print_monitors(out / "pretrain")


if __name__ == "__main__":
    main()
