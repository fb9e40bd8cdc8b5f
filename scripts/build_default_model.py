"""`make bundle`: rebuild the bundled demonstration model, reproducibly.

synth (seed 0) -> pretrain WSP TinyNet -> finetune on the histology set -> export to
WSPCirrhosis/Resources/Models/default (where the Slicer module and `predict` find it).

Trained on synthetic phantoms only: a demonstration default, not for clinical use.
Same machine type, same seed -> the same weights (CPU; the bundle records the versions).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from wsp_cirrhosis.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "WSPCirrhosis" / "Resources" / "Models" / "default"


def run(argv: list[str]) -> None:
    print("wsp-cirrhosis " + " ".join(argv), flush=True)
    code = cli(argv)
    if code != 0:
        sys.exit(f"build_default_model: step failed with exit code {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=None, help="keep intermediate runs here (default: a temp folder)")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--histo-patients", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="wsp-bundle-"))
    size, seed = ["--image-size", str(args.image_size)], ["--seed", str(args.seed)]
    try:
        run(["synth", "--out", str(work / "cohort"), "--patients", str(args.patients),
             "--histo-patients", str(args.histo_patients), *seed, "--force"])
        run(["pretrain", "--manifest", str(work / "cohort" / "weak.csv"), "--method", "wsp", "--encoder", "tinynet",
             "--out", str(work / "pretrain"), "--epochs", str(args.pretrain_epochs), "--batch-size", "32",
             "--device", "cpu", *size, *seed, "--force"])
        run(["finetune", "--manifest", str(work / "cohort" / "histo.csv"), "--init", str(work / "pretrain"),
             "--out", str(work / "finetune"), "--epochs", str(args.finetune_epochs), "--device", "cpu",
             "--slices-per-patient", "8",
             *size, *seed, "--force"])
        run(["export", "--run", str(work / "finetune"), "--out", str(args.out),
             "--name", "wsp-tinynet-synthetic-demo", "--force"])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"bundle written to {args.out} (synthetic phantoms only: not for clinical use)")


if __name__ == "__main__":
    main()
