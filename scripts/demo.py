"""`make demo`: the whole pipeline on a small synthetic phantom cohort, end to end.

synth (the positional phantom) -> audit (shortcut cues) -> preprocess (cache + preview) ->
pretrain (WSP, default recipe, with representation monitors) -> finetune (the position-aware
``bands`` patient head) -> evaluate (5-fold AUC of each patient head: mean, bands, attention) ->
export (model bundle) -> predict (one patient: slices.csv, prediction.json, curve.png).

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
from wsp_cirrhosis.evaluation.audit import best_cue, load_audit
from wsp_cirrhosis.training.pretrain import monitor_summary

MARKER = ".wsp-demo"
# The pretraining recipe that learns on 2 CPU cores (docs/training.md): BatchNorm head, lr 1e-3.
DEMO_EPOCHS, DEMO_SLICES_PER_EPOCH = 12, 2000
# The positional phantom: the sign sits at given liver heights, with look-alike decoys elsewhere,
# and no whole-liver cue gives it away (the audit step shows it). The "global" phantom, whose
# liver-fraction shortcut the audit flags, stays the benchmark's negative control.
DEMO_SIGNS = "positional"
# The default recipe (sigma 0.1, 4 position groups) with the monitors on every epoch.
DEMO_PRETRAIN = ["--head-norm", "batch", "--lr", "1e-3", "--monitor-fraction", "0.15", "--monitor-every", "1"]
# Fine-tuning: the head fitted on the frozen features first, then end to end at lr 1e-4 on bags of
# 16 slices (LP-FT: docs/results.md, 2026-12-07). bands reads where each slice sits; mean cannot.
HEADS = ("mean", "bands", "attention")
DEMO_HEAD = "bands"
FINETUNE = ["--lr", "1e-4", "--batch-size", "32", "--bag-size", "16"]


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


def print_audit(path: Path) -> None:
    """The shortcut audit's verdict: the best whole-patient cue (a shortcut would show here) and band cue."""
    doc = load_audit(path)
    for scope, what in (("patient", "whole-patient cue (a shortcut)"), ("band", "cue in one liver band (the sign)")):
        best = best_cue(doc, scope)
        if best is not None:
            print(f"audit: best {what}: {best['cue']} AUC {best['auc']:.2f} "
                  f"(95% CI {best['ci95'][0]:.2f}-{best['ci95'][1]:.2f})")
    warn = doc["config"]["warn_auc"]
    flagged = [f"{c['cue']} AUC {c['auc']:.2f}" for c in doc["cues"] if c["scope"] == "patient" and c["auc"] >= warn]
    print("audit verdict: " + (f"SHORTCUT: a whole-patient cue alone reaches AUC >= {warn}: " + ", ".join(flagged)
                               if flagged else f"no whole-patient cue reaches AUC {warn}; the sign has to be learned"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--patients", type=int, default=120, help="weak-labelled patients")
    parser.add_argument("--histo-patients", type=int, default=80, help="histology-labelled patients")
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
    step("shortcut audit", ["audit", "--manifest", str(cohort / "histo.csv"), "--out", str(out / "audit"), *size])
    print_audit(out / "audit" / "audit.json")
    step("preprocess", ["preprocess", "--manifest", str(cohort / "weak.csv"), *size,
                        "--preview", str(out / "preview.png")])
    step("pretrain (WSP)", ["pretrain", "--manifest", str(cohort / "weak.csv"), "--method", "wsp", "--encoder", "tinynet",
                            "--out", str(out / "pretrain"), "--epochs", str(args.epochs), "--batch-size", "32",
                            "--slices-per-epoch", str(args.slices_per_epoch), *DEMO_PRETRAIN, *size, *seed])
    print_monitors(out / "pretrain")
    step("finetune", ["finetune", "--manifest", str(cohort / "histo.csv"), "--init", str(out / "pretrain"),
                      "--out", str(out / "finetune"), "--epochs", "6", "--patient-head", DEMO_HEAD, *FINETUNE, *size,
                      *seed])
    for head in HEADS:
        step(f"evaluate the {head} head (5-fold)",
             ["evaluate", "--manifest", str(cohort / "histo.csv"), "--encoder", str(out / "pretrain"), "--folds", "5",
              "--protocols", "finetune", "--patient-head", head, "--json", str(out / f"evaluate-{head}.json"),
              "--epochs", "4", "--slices-per-patient", "4", *FINETUNE, *size, *seed])
    step("export", ["export", "--run", str(out / "finetune"), "--out", str(out / "model"), "--name", "demo-wsp-tinynet"])
    with open(cohort / "histo.csv", newline="") as f:
        first = next(csv.DictReader(f))
    step("predict", ["predict", str(cohort / first["image"]), "--liver-mask", str(cohort / first["liver_mask"]),
                     "--model", str(out / "model"), "--out", str(out / "prediction"), "--device", "cpu"])

    prediction = json.loads((out / "prediction" / "prediction.json").read_text())
    print("\n=== Demo finished in {:.0f} s (synthetic phantoms, not patient data)".format(time.monotonic() - start))
    print_audit(out / "audit" / "audit.json")
    for head in HEADS:
        summary = json.loads((out / f"evaluate-{head}.json").read_text())["protocols"]["finetune"]
        print(f"patient-level AUC, {head:9s} head, fine-tuned (5-fold): {summary['auc_mean']:.3f} ± "
              f"{summary['auc_std']:.3f} (pooled out-of-fold {summary['pooled_auc']:.3f})")
    print(f"patient {first['patient_id']} (histology {first['histo_label']}), {prediction['patient_head']} head: "
          f"P(cirrhosis) = {prediction['probability']:.3f} -> {prediction.get('label_name', prediction['label'])} "
          f"(patient score {prediction['patient_score']:.2f} on the {prediction['scale']} scale, threshold "
          f"{prediction['threshold_on_scale']:.2f})")
    print(f"z-curve: {out / 'prediction' / 'curve.png'}\npreview of the slice cache: {out / 'preview.png'}")
    print_monitors(out / "pretrain")


if __name__ == "__main__":
    main()
