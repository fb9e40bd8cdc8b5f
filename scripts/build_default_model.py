"""`make bundle`: rebuild the bundled demonstration model, reproducibly.

synth (seed 0, the positional phantom) -> pretrain WSP TinyNet (the default recipe) ->
`evaluate --patient-head bands --keep-fold-models` (k-fold fine-tuning of the encoder with the
position-aware bands head on the histology set: out-of-fold probabilities and k fold models) -> `export --ensemble --calibrate
platt` (the k fold models as one ensemble, a Platt calibrator fitted on the out-of-fold
probabilities) to WSPCirrhosis/Resources/Models/default (where the Slicer module and `predict`
find it).

Trained on synthetic phantoms only: a demonstration default, not for clinical use.
Same machine type, same seed -> the same weights (CPU; the bundle records the versions).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from wsp_cirrhosis.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "WSPCirrhosis" / "Resources" / "Models" / "default"
HEAD = "bands"  # the best fine-tuned head on the positional phantom (docs/results.md, 2026-12-07 part 4)


def run(argv: list[str]) -> None:
    print("wsp-cirrhosis " + " ".join(argv), flush=True)
    code = cli(argv)
    if code != 0:
        sys.exit(f"build_default_model: step failed with exit code {code}")


def write_model_card(bundle_dir: Path, args: argparse.Namespace, pretrain_run: Path, eval_json: Path) -> Path:
    """MODEL.md beside the bundle: what it is, how it was made, what it must not be used for."""
    import torch

    from wsp_cirrhosis.inference.bundle import load_bundle
    from wsp_cirrhosis.training.pretrain import monitor_summary

    bundle = load_bundle(bundle_dir)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    summary = monitor_summary(pretrain_run)
    monitors = "; ".join(f"{k} {a:.3f} -> {b:.3f}" for k, (a, b) in summary.items()
                         if k in ("knn_bal_acc", "loss_excess", "position_r2")) or "none"
    monitor_patients = len(torch.load(pretrain_run / "encoder.pt", weights_only=True).get("monitor_patients", []))
    ft = json.loads(eval_json.read_text())["protocols"]["finetune"]
    cal = meta["calibration"]
    calibration = (f"{cal['method']} fitted on those {cal['n_patients']} out-of-fold probabilities (Brier "
                   f"{cal['brier_before']:.3f} -> {cal['brier_after_in_sample']:.3f}, ECE {cal['ece_before']:.3f} -> "
                   f"{cal['ece_after_in_sample']:.3f}, in-sample, so optimistic). Slice scores stay uncalibrated."
                   if cal else "none.")
    card = f"""# Model card: {bundle.name}

**Trained on synthetic phantoms only. A demonstration default, not for clinical use.** It shows
that the WSPCirrhosis software runs end to end (Slicer module, `wsp-cirrhosis predict`); its
scores on a patient's CT mean nothing about that patient's liver.

- Architecture: ensemble of {bundle.n_members} {bundle.encoder_name} encoders, each with a `{bundle.patient_head}` patient head
  (`bands`: slice features pooled in 5 bands of liver height, one linear layer; README, "Patient heads"), the
  fold models of a {args.folds}-fold cross-validation; the patient score is the mean of the members' patient
  logits, the spread across them is reported; input {bundle.preprocess.image_size} x
  {bundle.preprocess.image_size} liver slices, HU window [{bundle.preprocess.window_min_hu:g}, {bundle.preprocess.window_max_hu:g}],
  liver box margin {bundle.preprocess.margin_mm:g} mm.
- Training: WSP contrastive pretraining, the default recipe (sigma 0.1, 4 position groups,
  {args.pretrain_epochs} epochs of {args.slices_per_epoch} slices, batch 32, BatchNorm projection head, lr 1e-3;
  docs/training.md) on
  {args.patients} weak-labelled synthetic phantoms ({monitor_patients} of them held out for the representation
  monitors), then fine-tuning ({args.finetune_epochs} epochs per fold, the head first fitted on the frozen
  features, then end to end at lr 1e-4 on bags of 16 cached, not augmented, slices) on {args.histo_patients} histology-labelled
  phantoms (`wsp-cirrhosis synth --seed {args.seed} --signs {args.signs}`; about 30% stage-4 "cirrhosis"; the
  sign sits at given liver heights only, with look-alike decoys elsewhere).
- Pretraining monitors (held-out weak-set phantoms), first -> last: {monitors}.
- Out-of-fold (each phantom scored by the fold model that did not train on it): AUC {ft["auc_mean"]:.3f} ±
  {ft["auc_std"]:.3f} over folds, pooled {ft["pooled_auc"]:.3f}; Brier {ft["calibration"]["brier"]:.3f}, ECE
  {ft["calibration"]["ece"]:.3f}. Synthetic phantoms of one generator: says nothing about real CTs.
- Calibration: {calibration}
- Decision threshold: {bundle.threshold:.3f} on the uncalibrated
  patient probability (Youden on the out-of-fold probabilities). Classes: {", ".join(bundle.class_names)}.
- Bundle hash: `{bundle.sha256}`; software: {", ".join(f"{k} {v}" for k, v in meta["software_versions"].items() if k != "platform")}.
- Rebuild: `make bundle` (`python scripts/build_default_model.py`), same seed -> same weights on the same
  machine type.

## Training a real model
1. Write two manifests (README, "Cohort manifest"): many CTs with a weak radiological score
   (`weak_label`), and the CTs with histology (`histo_label`), each with a liver mask.
2. `wsp-cirrhosis pretrain --manifest weak.csv --method wsp --encoder resnet18 --image-size 224 --out runs/pre`
   (GPU: `--device cuda --bf16`; several GPUs: `torchrun --nproc_per_node=K -m wsp_cirrhosis pretrain ...`).
3. `wsp-cirrhosis evaluate --manifest histo.csv --encoder runs/pre --folds 5 --json eval.json` (the paper's protocol),
   then `wsp-cirrhosis finetune --manifest histo.csv --init runs/pre --out runs/ft`; for an ensemble with a
   calibrator: `wsp-cirrhosis evaluate ... --protocols finetune --keep-fold-models --json eval.json`.
4. `wsp-cirrhosis export --run runs/ft --out my-model` (ensemble: `wsp-cirrhosis export --run eval.folds --ensemble
   --calibrate platt --out my-model`) and choose that folder in the Slicer module
   (Advanced, "Use another model bundle") or pass `--model my-model` to `predict`.
"""
    path = bundle_dir / "MODEL.md"
    path.write_text(card, encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=None, help="keep intermediate runs here (default: a temp folder)")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--histo-patients", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--slices-per-epoch", type=int, default=2000)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5, help="fold models in the ensemble")
    parser.add_argument("--calibrate", default="platt", choices=("platt", "isotonic", "none"),
                        help="calibrator fitted on the out-of-fold probabilities (platt: 2 parameters, safer on 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signs", default="positional", help="phantom kind (synth --signs); positional: the sign "
                        "sits at given liver heights, which the bands head reads (docs/results.md)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="wsp-bundle-"))
    size, seed = ["--image-size", str(args.image_size)], ["--seed", str(args.seed)]
    try:
        run(["synth", "--out", str(work / "cohort"), "--patients", str(args.patients),
             "--histo-patients", str(args.histo_patients), "--signs", args.signs, *seed, "--force"])
        run(["pretrain", "--manifest", str(work / "cohort" / "weak.csv"), "--method", "wsp", "--encoder", "tinynet",
             "--out", str(work / "pretrain"), "--epochs", str(args.pretrain_epochs), "--batch-size", "32",
             "--slices-per-epoch", str(args.slices_per_epoch), "--head-norm", "batch", "--lr", "1e-3",
             "--device", "cpu", *size, *seed, "--force"])
        eval_json = work / "eval.json"
        run(["evaluate", "--manifest", str(work / "cohort" / "histo.csv"), "--encoder", str(work / "pretrain"),
             "--json", str(eval_json), "--protocols", "finetune", "--folds", str(args.folds), "--keep-fold-models",
             "--patient-head", HEAD, "--bag-size", "16", "--lr", "1e-4", "--batch-size", "32",
             "--epochs", str(args.finetune_epochs), "--device", "cpu", *size, *seed])
        run(["export", "--run", str(work / "eval.folds"), "--ensemble", "--calibrate", args.calibrate,
             "--out", str(args.out), "--name", "wsp-tinynet-synthetic-demo", "--force"])
        write_model_card(args.out, args, work / "pretrain", eval_json)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"bundle written to {args.out} (synthetic phantoms only: not for clinical use)")


if __name__ == "__main__":
    main()
